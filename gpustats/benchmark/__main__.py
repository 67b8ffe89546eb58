"""``python -m gpustats.benchmark``: the benchmark command without the CLI."""

import sys

from .suites import main

sys.exit(main())
