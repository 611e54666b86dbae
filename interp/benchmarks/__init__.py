"""Benchmarks, apart from the library: each times a fast engine beside its plain reference in one
process and prints ratios (``python -m interp.bench trace|ablate``)."""
