"""``python -m analyses.alignment``: the command lives in :mod:`analyses.cli.alignment`; this module only starts it."""

import sys

from analyses.cli.alignment import cli

if __name__ == "__main__":
    sys.exit(cli())
