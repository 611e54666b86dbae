"""``python -m interp.trace``: the command lives in :mod:`interp.cli.trace`; this module only starts it."""

import sys

from interp.cli.trace import cli

if __name__ == "__main__":
    sys.exit(cli())
