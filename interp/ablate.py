"""``python -m interp.ablate``: the command lives in :mod:`interp.cli.ablate`; this module only starts it."""

import sys

from interp.cli.ablate import cli

if __name__ == "__main__":
    sys.exit(cli())
