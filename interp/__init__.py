"""clip-interp: mechanistic interpretability for CLIP-style encoders.

Start with :func:`load_text_encoder`, which returns a :class:`HookedTextEncoder` whose every
activation is a TransformerLens hook point, or :func:`load_clip` for both towers (the image tower is a
:class:`HookedImageEncoder`). Names load on first use, so ``import interp`` (and every
command's ``--help``) does not import torch or transformer_lens.

Subpackages: :mod:`interp.models` (hooked encoders and loaders), :mod:`interp.data` (VALSE, pairs,
images, scores), :mod:`interp.tracing` (causal tracing), :mod:`interp.heads` (attention, ablation,
direct effects), :mod:`interp.vision` (image-side analyses), :mod:`interp.runs` (run directories,
reports, figures), :mod:`interp.cli` (the commands), :mod:`interp.testing` (planted encoders with known answers), :mod:`interp.benchmarks`.
"""

from interp._lazy import lazy_exports

_EXPORTS = {
    "TextEncoderConfig": "interp.models.config",
    "HookedCLIPTextEncoder": "interp.models.text_encoder",
    "HookedTextEncoder": "interp.models.text_encoder",
    "ClipInterpError": "interp.errors",
    "UnknownModelError": "interp.errors",
    "WeightsUnavailableError": "interp.errors",
    "create_open_clip_model": "interp.models.loading",
    "load_text_encoder": "interp.models.loading",
    "weights_fingerprint": "interp.models.loading",
    "TokenBatch": "interp.models.tokenization",
    "ImageEncoderConfig": "interp.models.image_config",
    "HookedImageEncoder": "interp.models.image_encoder",
    "HookedCLIP": "interp.models.clip",
    "load_clip": "interp.models.clip",
    "load_image_encoder": "interp.models.clip",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
