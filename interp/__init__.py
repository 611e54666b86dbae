"""clip-interp: mechanistic interpretability for CLIP-style encoders.

Start with :func:`load_text_encoder`, which returns a :class:`HookedTextEncoder` whose every
activation is a TransformerLens hook point.
"""

from interp.config import TextEncoderConfig
from interp.encoder import HookedCLIPTextEncoder, HookedTextEncoder
from interp.errors import ClipInterpError, UnknownModelError, WeightsUnavailableError
from interp.loading import create_open_clip_model, load_text_encoder, weights_fingerprint
from interp.tokenization import TokenBatch

__all__ = [
    "ClipInterpError",
    "HookedCLIPTextEncoder",
    "HookedTextEncoder",
    "TextEncoderConfig",
    "TokenBatch",
    "UnknownModelError",
    "WeightsUnavailableError",
    "create_open_clip_model",
    "load_text_encoder",
    "weights_fingerprint",
]
