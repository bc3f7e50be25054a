"""``python -m loky_check``: the ``loky-check`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
