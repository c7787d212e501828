"""``python -m cdrsync`` is the ``cdrsync`` command."""

import signal
import sys

# A SIGTERM during the imports below would otherwise kill the process instead of stopping it
# cleanly: remember it, and hand it to the command once it can stop properly.
_early: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: _early.append(signum))

from cdrsync import cli  # noqa: E402 (after the signal guard, on purpose)

cli.EARLY_STOP.extend(_early)
sys.exit(cli.main())
