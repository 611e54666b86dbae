"""``python -m interp.sweep``: the command lives in :mod:`interp.cli.sweep`; this module only starts it."""

import sys

from interp.cli.sweep import cli

if __name__ == "__main__":
    sys.exit(cli())
