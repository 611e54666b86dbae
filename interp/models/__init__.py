"""Hooked encoders and how they are built: config, components, the text encoder, converters from
open_clip / Hugging Face / BERT checkpoints, loading by name, tokenizers, and the torchvision fix."""
