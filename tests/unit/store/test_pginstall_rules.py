"""Which directories root trusts to hold the embedded server's binaries."""

from __future__ import annotations

import stat

import pytest

from cdrsync.store.pginstall import unsafe_reason

DIR = stat.S_IFDIR


@pytest.mark.parametrize(
    ("mode", "uid", "ancestor", "unsafe"),
    [
        (DIR | 0o755, 0, False, None),
        (DIR | 0o700, 0, False, None),
        (stat.S_IFREG | 0o644, 0, False, None),
        (DIR | 0o755, 1000, False, "owned by uid 1000, not root"),
        (DIR | 0o755, 1000, True, "owned by uid 1000, not root"),
        (DIR | 0o775, 0, False, "writable by others (mode 0775)"),
        (DIR | 0o757, 0, False, "writable by others (mode 0757)"),
        (stat.S_IFREG | 0o666, 0, False, "writable by others (mode 0666)"),
        # /tmp: world-writable but sticky, so nobody else can replace root's entry in it.
        (DIR | stat.S_ISVTX | 0o777, 0, True, None),
        # The cache directory itself must not be sticky-writable: anyone could add a copy.
        (DIR | stat.S_ISVTX | 0o777, 0, False, "writable by others (mode 1777)"),
        (DIR | 0o777, 0, True, "writable by others (mode 0777)"),
    ],
)
def test_unsafe_reason(mode: int, uid: int, ancestor: bool, unsafe: str | None) -> None:
    """Only root-owned, root-only-writable directories (or sticky ancestors) are trusted."""
    reason = unsafe_reason(mode, uid, ancestor=ancestor)
    if unsafe is None:
        assert reason is None
    else:
        assert reason is not None
        assert unsafe in reason
