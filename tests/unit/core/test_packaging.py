"""What `pip install .` and the pinned dev/CI venv get: every third-party import of the daemon is
a declared dependency, constraints.txt pins every declared one inside its range, and the version
comes from one place."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "daemon" / "cdrsync"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def top_level_imports(folder: Path) -> set[str]:
    """The first name of every module imported anywhere under ``folder`` (lazy imports too)."""
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def declared(requirements: list[str]) -> dict[str, Requirement]:
    """Requirements by canonical distribution name."""
    parsed = [Requirement(text) for text in requirements]
    return {canonicalize_name(r.name): r for r in parsed}


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: exact version}."""
    found: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {raw!r} is not an exact pin (name==version)"
            found[canonicalize_name(name)] = version
    return found


def test_every_third_party_import_of_the_daemon_is_a_declared_dependency() -> None:
    """`pip install .` brings everything the daemon imports (multidict was once only transitive)."""
    runtime = declared(PROJECT["dependencies"])
    owners = importlib.metadata.packages_distributions()
    stdlib = sys.stdlib_module_names | {"cdrsync", "__future__"}
    undeclared = {
        module: owners.get(module, ["?"])
        for module in sorted(top_level_imports(PACKAGE) - stdlib)
        if not any(canonicalize_name(dist) in runtime for dist in owners.get(module, []))
    }
    assert undeclared == {}, f"imported but not in [project.dependencies]: {undeclared}"


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    """constraints.txt names an exact version for each dependency and dev extra, one that
    pyproject's range allows (a stale pin after a raised floor fails here, not in pip)."""
    wanted = declared(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["dev"])
    pinned = pins()
    missing = sorted(set(wanted) - set(pinned))
    assert missing == [], f"not in constraints.txt (run `make constraints`): {missing}"
    outside = {
        name: (pinned[name], str(req.specifier))
        for name, req in wanted.items()
        if not req.specifier.contains(pinned[name], prereleases=True)
    }
    assert outside == {}, f"pinned outside pyproject's range (run `make constraints`): {outside}"


def test_version_has_one_source() -> None:
    """`cdrsync --version` prints the installed distribution's version, which setuptools reads
    from cdrsync.__version__ (pyproject.toml declares it dynamic)."""
    import cdrsync

    assert PROJECT.get("version") is None and "version" in PROJECT["dynamic"]
    result = subprocess.run(
        [sys.executable, "-m", "cdrsync", "--version"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == f"cdrsync {importlib.metadata.version('cdrsync')}"
    assert importlib.metadata.version("cdrsync") == cdrsync.__version__
