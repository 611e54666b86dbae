"""``python -m analyses.extract``: the command lives in :mod:`analyses.cli.extract`; this module only starts it."""

import sys

from analyses.cli.extract import cli

if __name__ == "__main__":
    sys.exit(cli())
