"""`python -m campaigns.cli ...`: the `campaigns` command (the runners `start` spawns are started this way)."""

import sys

from campaigns.cli import main

if __name__ == "__main__":
    sys.exit(main())
