"""``python -m interp.bench``: the command lives in :mod:`interp.benchmarks.main`; this module only starts it."""

import sys

from interp.benchmarks.main import cli

if __name__ == "__main__":
    sys.exit(cli())
