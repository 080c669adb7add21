"""`python -m pdserve.cli`: the same as the `pdserve` command."""

import sys

from pdserve.cli import main

if __name__ == "__main__":
    sys.exit(main())
