"""Ideal-word decomposition and controlled linear probes for hooked text encoders."""
