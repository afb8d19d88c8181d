"""``python -m shared.data fashion-mnist | <folder> [--labels FILE]``: see shared.data.cli."""

import sys

from shared.data.cli import main

if __name__ == "__main__":
    sys.exit(main())
