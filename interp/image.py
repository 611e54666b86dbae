"""``python -m interp.image``: the command lives in :mod:`interp.cli.image`; this module only starts it."""

import sys

from interp.cli.image import cli

if __name__ == "__main__":
    sys.exit(cli())
