"""Choices of head/MLP ablation, free of torch so ``python -m interp.ablate --help`` answers at once."""

METHODS = ("zero", "mean", "resample")
KINDS = ("head", "attn", "mlp")
SITES = ("z", "result")
MEAN_OVER = ("items", "positions")
