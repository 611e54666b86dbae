"""``python -m probes.linear``: the command lives in :mod:`probes.cli.linear`; this module only starts it."""

import sys

from probes.cli.linear import cli

if __name__ == "__main__":
    sys.exit(cli())
