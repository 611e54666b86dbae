"""The model names and precisions the commands offer, free of torch so ``--help`` answers at once."""

DEFAULT_MODEL = "ViT-B-32-quickgelu"
# "default" = the model's reference weights: "openai" for open_clip names that have it (the
# reference study's checkpoint), the packaged weights of a registered encoder, random for "tiny".
DEFAULT_PRETRAINED = "default"
# torch dtype names ``--dtype`` accepts (resolved to torch dtypes only when a model is built)
DTYPE_NAMES = ("bfloat16", "float16", "float32", "float64")
