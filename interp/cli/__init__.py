"""The commands: each module parses flags and calls the library (``python -m interp.trace`` runs
:mod:`interp.cli.trace`); :mod:`.common` holds the model flags and the one-line error handling."""
