"""``python -m probes.ideal_words``: the command lives in :mod:`probes.cli.ideal_words`; this module only starts it."""

import sys

from probes.cli.ideal_words import cli

if __name__ == "__main__":
    sys.exit(cli())
