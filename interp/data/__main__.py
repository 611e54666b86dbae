"""``python -m interp.data``: the command lives in :mod:`interp.cli.data`; this module only starts it."""

import sys

from interp.cli.data import cli

if __name__ == "__main__":
    sys.exit(cli())
