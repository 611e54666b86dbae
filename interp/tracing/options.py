"""Choices and defaults of causal tracing, free of torch so the commands' ``--help`` answers at once.

The modules that act on them (:mod:`.inputs`, :mod:`.noise`, :mod:`.engine`, :mod:`.sweep`)
import them from here.
"""

MODES = ("patch", "noise")  # activation patching between N and A, or ROME's Gaussian corruption
DIRECTIONS = ("denoise", "noise")
DEFAULT_NOISE_SCALE = 3.0  # ROME's choice: 3 x the embedding std
DEFAULT_SAMPLES = 10
DEFAULT_NOISE_ROLES = ("negator",)
# Which token embeddings calibrate the noise std: ROME's rule (the corrupted tokens) or every token.
NOISE_CALIBRATIONS = ("corrupted", "all_tokens")
DEFAULT_NOISE_CALIBRATION = "corrupted"
DEFAULT_BUDGET_MB = 768  # memory of one batch of cells
DEFAULT_CHUNK_ITEMS = 32  # items traced (and saved) together; among the fastest measured (interp.tracing.sweep)
