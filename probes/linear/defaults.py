"""Defaults of the linear probes, free of torch and scikit-learn so ``--help`` answers at once."""

DEFAULT_FOLDS = 5
DEFAULT_C = 1.0  # inverse L2 strength of the logistic-regression probe
