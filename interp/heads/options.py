"""Choices of head/MLP ablation, free of torch so ``python -m interp.ablate --help`` answers at once."""

METHODS = ("zero", "mean", "resample")
KINDS = ("head", "attn", "mlp")
SITES = ("z", "result")
MEAN_OVER = ("items", "positions")
FURTHER_POOLS = ("max", "mean")  # how a role's several positions in one item are pooled (max: the authors' choice)
