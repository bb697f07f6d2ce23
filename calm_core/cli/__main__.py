"""python -m calm_core.cli: the `calm` command without the entry point."""

import sys

from .parser import main

sys.exit(main())
