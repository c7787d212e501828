"""``python -m cdrsync`` is the ``cdrsync`` command."""

import sys

from cdrsync.cli import main

sys.exit(main())
