"""``python -m gpustats ...`` (also ``torchrun -m gpustats stats ...``): the same as the ``gpustats`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
