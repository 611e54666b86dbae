"""Both towers of CLIP, hooked: :func:`load_clip`, :func:`load_image_encoder` and :class:`HookedCLIP`.

One checkpoint (open_clip tag, local file, Hugging Face directory, or random init) is read once and
feeds both towers, with the same ``name, pretrained`` convention as
:func:`interp.models.loading.load_text_encoder`. Weights resolution and its errors are
:mod:`interp.models.loading`'s; this module only adds the image tower and the pairing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interp.data.images import PreprocessConfig
from interp.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError
from interp.models.convert import convert_hf_clip_text, convert_open_clip_text
from interp.models.convert_vision import SUPPORTED_TOWERS, UnsupportedTowerError, convert_hf_clip_vision, convert_open_clip_vision
from interp.models.image_config import ImageEncoderConfig
from interp.models.image_encoder import HookedImageEncoder
from interp.models.loading import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    EXTRA_ENCODERS,
    _build,
    _hf_model_type,
    _is_hf_directory,
    _is_random,
    create_open_clip_model,
    resolve_pretrained,
)
from interp.models.text_encoder import HookedTextEncoder


class HookedCLIP(nn.Module):
    """CLIP with both towers hooked.

    Attributes:
        text: the :class:`HookedTextEncoder` (its ``tokenizer`` is CLIP's).
        image: the :class:`HookedImageEncoder`.
        logit_scale: log of CLIP's temperature; logits are ``exp(logit_scale) * cos``.
        preprocess: the image preprocessing (:func:`interp.data.images.preprocess_image` config).
    """

    def __init__(self, text: HookedTextEncoder, image: HookedImageEncoder, logit_scale: float,
                 preprocess: PreprocessConfig):
        super().__init__()
        self.text = text
        self.image = image
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))
        self.preprocess = preprocess

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def encode_text(self, texts: Any) -> Float[Tensor, "n d_embed"]:
        return self.text(texts)

    def encode_image(self, images: Float[Tensor, "n 3 H W"]) -> Float[Tensor, "n d_embed"]:
        return self.image(images)

    def logits(self, images: Float[Tensor, "n_images 3 H W"], texts: Any) -> Float[Tensor, "n_images n_texts"]:
        """``exp(logit_scale) * cos(image, text)`` for every pair, as open_clip's ``model(image, text)``."""
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.encode_text(texts), dim=-1)
        return self.logit_scale.exp() * image @ text.T


def check_image_tower_name(name: Any) -> None:
    """Refuse, from the name alone and without building anything, a text-only encoder or an open_clip
    model whose image tower is not supported (a no-op for paths, objects and unknown names)."""
    if not isinstance(name, str):
        return
    _check_not_text_only(name)
    if not Path(name).exists():
        from interp.models.compat import import_open_clip

        if name in import_open_clip().list_models():
            _check_open_clip_config(name)


def _check_not_text_only(name: str) -> None:
    if name in EXTRA_ENCODERS:
        raise UnsupportedTowerError(
            f"{name} is a text-only encoder with no image tower: image analyses need a CLIP model "
            f"(an open_clip ViT name, 'tiny', or a Hugging Face CLIP directory); supported image towers: {SUPPORTED_TOWERS}"
        )


def _check_open_clip_config(name: str) -> None:
    """Refuse towers the hooked encoder cannot represent from the model config, before building
    (building a ResNet or timm tower only to refuse it would waste the user's time)."""
    from interp.models.compat import import_open_clip
    from interp.models.loading import TINY

    if name == TINY:
        return
    config = import_open_clip().get_model_config(name) or {}
    vision = config.get("vision_cfg", {})
    what = None
    if isinstance(vision.get("layers"), (list, tuple)):
        what = "a ModifiedResNet image tower (RN50-style)"
    elif vision.get("timm_model_name"):
        what = f"a timm image tower ({vision['timm_model_name']})"
    elif vision.get("hf_model_name"):
        what = f"a Hugging Face image tower inside open_clip ({vision['hf_model_name']})"
    elif vision.get("attentional_pool"):
        what = "an attentional-pooling image tower (CoCa-style attn_pool)"
    if what is not None:
        raise UnsupportedTowerError(f"{name}: {what} is not supported; supported image towers: {SUPPORTED_TOWERS}")


def _build_image(cfg: ImageEncoderConfig, sd: dict[str, Tensor], device: Any, dtype: torch.dtype) -> HookedImageEncoder:
    encoder = HookedImageEncoder(cfg, init=False)
    result = encoder.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"converted image weights do not fit the hooked image encoder: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (a converter bug: please report it with the model name)"
        )
    return encoder.to(device=device, dtype=dtype).eval()


def _hf_preprocess(cfg: ImageEncoderConfig) -> PreprocessConfig:
    return PreprocessConfig(size=cfg.image_size[0])


def _load_hf(path_or_model: Any, label: str) -> nn.Module:
    if isinstance(path_or_model, nn.Module):
        return path_or_model
    try:
        import transformers
    except ImportError as err:
        raise WeightsUnavailableError("loading a Hugging Face CLIP needs transformers: pip install 'clip-interp[hf]'") from err
    import json

    path = Path(path_or_model)
    arch = (json.loads((path / "config.json").read_text()).get("architectures") or ["CLIPModel"])[0]
    known = ("CLIPModel", "CLIPVisionModelWithProjection", "CLIPVisionModel")
    if arch not in known:
        raise UnknownModelError(f"{path} holds a {arch}, not a Hugging Face CLIP with an image tower ({', '.join(known)})")
    return getattr(transformers, arch).from_pretrained(str(path), local_files_only=True)


def _source(name: Any, pretrained: Any, seed: int) -> tuple[str, nn.Module, str | None]:
    """(kind, source model, tag): kind is "open_clip" or "hf"; one model feeds both towers."""
    if isinstance(name, nn.Module):
        kind = "hf" if hasattr(name, "vision_model") else "open_clip"
        return kind, name, type(name).__name__
    name = str(name)
    _check_not_text_only(name)
    if _is_hf_directory(Path(name)):
        if _hf_model_type(Path(name)) == "bert":
            raise UnsupportedTowerError(f"{name} holds a text-only BERT encoder with no image tower; supported image towers: {SUPPORTED_TOWERS}")
        return "hf", _load_hf(name, name), name
    if not _is_random(pretrained) and _is_hf_directory(Path(str(pretrained))):
        return "hf", _load_hf(str(pretrained), name), str(pretrained)
    pretrained = resolve_pretrained(name, pretrained)
    _check_open_clip_config(name)
    model = create_open_clip_model(name, pretrained, device="cpu", seed=seed)
    tag = None if _is_random(pretrained) else str(pretrained)
    return "open_clip", model, tag


def _image_from(kind: str, model: nn.Module, name: str, tag: str | None, seed: int, device, dtype) -> tuple[HookedImageEncoder, PreprocessConfig]:
    if kind == "hf":
        cfg, sd = convert_hf_clip_vision(model, name, tag)
        preprocess = _hf_preprocess(cfg)
    else:
        cfg, sd = convert_open_clip_vision(model, name, tag)
        preprocess = PreprocessConfig.from_model(model)
    if tag is None and kind == "open_clip":
        cfg.pretrained = f"random-init (seed {seed})"
    return _build_image(cfg, sd, device, dtype), preprocess


def load_image_encoder(
    name: Any = DEFAULT_MODEL,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
) -> HookedImageEncoder:
    """The hooked image tower of a CLIP from any source :func:`load_clip` accepts."""
    return load_clip(name, pretrained, device=device, dtype=dtype, seed=seed, text=False).image


def load_clip(
    name: Any = DEFAULT_MODEL,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    *,
    text: bool = True,
) -> HookedCLIP:
    """Both hooked towers of a CLIP, its logit scale, tokenizer and image preprocessing.

    Args:
        name: open_clip model name, ``"tiny"``, a Hugging Face CLIP directory, or a model object
            (open_clip CLIP or transformers CLIPModel).
        pretrained: open_clip tag, checkpoint file, Hugging Face directory, None/"none" (random
            init, seeded) or "default" (as :func:`interp.models.loading.load_text_encoder`).
        device, dtype: where and in what precision the towers run (dtype None: float32, or a
            model object's own dtype).
        text: also convert the text tower (``load_image_encoder`` passes False).

    Raises:
        UnsupportedTowerError: a tower the hooked encoders cannot represent (ResNet, timm,
            attentional pooling) or a text-only encoder such as all-MiniLM-L6-v2.
    """
    kind, model, tag = _source(name, pretrained, seed)
    if dtype is None:
        dtype = next(model.parameters()).dtype if isinstance(name, nn.Module) else torch.float32
    label = name if isinstance(name, str) else type(name).__name__
    image, preprocess = _image_from(kind, model, label, tag, seed, device, dtype)
    text_encoder = None
    log_scale = float(getattr(model, "logit_scale", torch.tensor(float("nan"))).detach())
    if text:
        cfg, sd, log_scale = (convert_hf_clip_text if kind == "hf" else convert_open_clip_text)(model, label, tag)
        if tag is None and kind == "open_clip":
            cfg.pretrained = image.cfg.pretrained
        text_encoder = _build(cfg, sd, log_scale, device, dtype)
    return HookedCLIP(text_encoder, image, log_scale, preprocess)  # type: ignore[arg-type]


__all__: Sequence[str] = ("HookedCLIP", "load_clip", "load_image_encoder")
