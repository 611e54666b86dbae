"""Load hooked text encoders (and full open_clip models) from every source a user may have.

``load_text_encoder(name, pretrained)`` accepts:
  (a) an open_clip model name + pretrained tag (``"ViT-B-32-quickgelu", "openai"``, the reference
      study's checkpoint); weights come through open_clip's own cache/download;
  (b) an open_clip model name + a local checkpoint file (state dict, ``.pt``/``.bin``/``.safetensors``);
  (c) a Hugging Face CLIP: a ``transformers`` CLIPModel/CLIPTextModel(WithProjection) object, or a
      local directory holding one (as name, or as ``pretrained`` with an open_clip-free name);
  (d) ``pretrained=None`` (or ``"none"``): random init, seeded;
  (e) ``"tiny"``: a built-in small CLIP (text width 64, 2 layers, 4 heads; tiny image tower) for tests;
  (f) registered extra encoders (see :data:`EXTRA_ENCODERS`, e.g. the offline MiniLM), and any
      local BERT / sentence-transformers directory (``config.json`` with ``model_type: bert``).
Nothing here guesses sizes from a name: they are read from the built model or checkpoint.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp.models.compat import import_open_clip
from interp.models.convert import convert_hf_clip_text, convert_open_clip_text, read_state_dict
from interp.models.text_encoder import HookedTextEncoder
from interp.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError
from interp.models.tokenization import CLIPTokenizer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32-quickgelu"
# "default" = the model's reference weights: "openai" for open_clip names that have it (the
# reference study's checkpoint), the packaged weights of a registered encoder, random for "tiny".
DEFAULT_PRETRAINED = "default"
REFERENCE_TAG = "openai"
TINY = "tiny"
_RANDOM_TAGS = (None, "none", "None", "random")  # every spelling of "random init"

# Other encoder families: name -> "module:function" taking (pretrained, device, dtype, seed);
# imported only when asked for, so CLIP users never import their dependencies.
EXTRA_ENCODERS: dict[str, str] = {
    "all-MiniLM-L6-v2": "interp.models.bert:load_minilm",
}


def _tiny_open_clip_model() -> nn.Module:
    """A real open_clip ``CLIP`` at toy size: same code paths as ViT-B-32, milliseconds to run."""
    open_clip = import_open_clip()
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=64, head_width=16, patch_size=32, image_size=224)
    text = open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=4, layers=2)
    return open_clip.model.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=False)


def _is_random(pretrained: Any) -> bool:
    return pretrained in _RANDOM_TAGS


def _check_open_clip_name(name: str) -> None:
    open_clip = import_open_clip()
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known + [TINY, *EXTRA_ENCODERS], n=5)
        raise UnknownModelError(
            f"unknown model {name!r}: not an open_clip model name, 'tiny', a registered encoder "
            f"({', '.join(EXTRA_ENCODERS) or 'none'}) or a local directory. "
            f"Closest names: {', '.join(close) or 'none'}; all open_clip names: open_clip.list_models()"
        )


def load_checkpoint_into(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a state-dict file into an open_clip model, naming every tensor that does not fit."""
    sd = read_state_dict(path)
    expected = model.state_dict()
    wrong_shape = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in sd.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    missing = [k for k in expected if k not in sd]
    if wrong_shape or missing:
        details = "; ".join(wrong_shape[:5] + [f"missing {k}" for k in missing[:5]])
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit open_clip model {model_name!r} "
            f"({len(wrong_shape)} tensors of the wrong shape, {len(missing)} missing): {details}. "
            "Pass the --model name the checkpoint was trained as."
        )
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        log.warning("checkpoint %s has %d tensors the model does not use (e.g. %s)", path, len(unexpected), unexpected[0])
    model.load_state_dict({k: v for k, v in sd.items() if k in expected})


def create_open_clip_model(
    name: str,
    pretrained: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> nn.Module:
    """The full open_clip model (text and image towers) in eval mode.

    ``pretrained`` is a tag, a checkpoint file, None/"none" (random init) or "default" (see
    :func:`resolve_pretrained`).

    Raises:
        UnknownModelError: unknown name or pretrained tag.
        WeightsUnavailableError: the tag's weights cannot be downloaded or found in the cache.
        CheckpointMismatchError: a local checkpoint does not fit the named architecture.
    """
    open_clip = import_open_clip()
    torch.manual_seed(seed)  # random init is seeded, so "none" runs are reproducible
    pretrained = resolve_pretrained(name, pretrained)
    path = Path(str(pretrained)) if not _is_random(pretrained) else None
    if name == TINY:
        if path is not None and not path.is_file():
            raise UnknownModelError(
                f"'tiny' is a test model with no published weights: pass pretrained=None or a checkpoint file, not {pretrained!r}"
            )
        model = _tiny_open_clip_model()
        if path is not None:
            load_checkpoint_into(model, path, name)
    else:
        _check_open_clip_name(name)
        if path is not None and path.is_file():
            model = open_clip.create_model(name, pretrained=None)
            load_checkpoint_into(model, path, name)
        elif path is not None:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if str(pretrained) not in tags:
                raise UnknownModelError(
                    f"pretrained {str(pretrained)!r} is neither a file nor a tag of {name!r} "
                    f"(tags: {', '.join(tags) or 'none'}); pass --pretrained PATH to a checkpoint, a tag, or none"
                )
            model = _create_pretrained(open_clip, name, str(pretrained))
        else:
            model = open_clip.create_model(name, pretrained=None)
    return model.to(device=device, dtype=dtype).eval()


def _create_pretrained(open_clip: Any, name: str, tag: str) -> nn.Module:
    # Offline, open_clip's hub client retries for about a minute before giving up: say why we wait.
    log.info("loading %s / %s through open_clip (cache or download; with no network set HF_HUB_OFFLINE=1 "
             "to fail at once, or pass --pretrained PATH)", name, tag)
    try:
        return open_clip.create_model(name, pretrained=tag, require_pretrained=True)
    except Exception as err:  # noqa: BLE001 - network/cache failures come in many types
        raise WeightsUnavailableError(
            f"weights for {name!r} / {tag!r} could not be downloaded or found in open_clip's cache "
            f"({type(err).__name__}: {str(err)[:200]}). With no network, pass a local checkpoint: "
            f"--model {name} --pretrained /path/to/open_clip_model.safetensors (or .pt), or a Hugging "
            "Face CLIP directory: --pretrained /path/to/clip-vit-base-patch32; or --pretrained none "
            "for random weights"
        ) from err


def _is_hf_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


_HF_CLIP_CLASSES = ("CLIPModel", "CLIPTextModelWithProjection", "CLIPTextModel")


def _hf_clip_class(transformers: Any, path: Path) -> Any:
    """The transformers class the directory was saved from (its config's ``architectures``)."""
    import json

    architectures = json.loads((path / "config.json").read_text()).get("architectures") or ["CLIPModel"]
    if architectures[0] not in _HF_CLIP_CLASSES:
        raise UnknownModelError(
            f"{path} holds a {architectures[0]}, not a Hugging Face CLIP ({', '.join(_HF_CLIP_CLASSES)})"
        )
    return getattr(transformers, architectures[0])


def _hf_model_type(path: Path) -> str | None:
    import json

    return json.loads((path / "config.json").read_text()).get("model_type")


def _load_hf_clip(source: Any, device: Any, dtype: torch.dtype, label: str) -> HookedTextEncoder:
    if isinstance(source, (str, Path)):
        try:
            import transformers
        except ImportError as err:
            raise WeightsUnavailableError("loading a Hugging Face CLIP needs transformers: pip install 'clip-interp[hf]'") from err
        path = Path(source)
        missing = [f for f in ("config.json",) if not (path / f).is_file()]
        if missing:
            raise WeightsUnavailableError(f"{path} is not a Hugging Face CLIP directory: {', '.join(missing)} missing")
        source = _hf_clip_class(transformers, path).from_pretrained(str(path), local_files_only=True)
    cfg, sd, log_scale = convert_hf_clip_text(source, model_name=label, pretrained=label)
    return _build(cfg, sd, log_scale, device, dtype)


def _build(cfg, sd, log_scale: float, device, dtype) -> HookedTextEncoder:
    encoder = HookedTextEncoder(cfg, CLIPTokenizer(cfg.n_ctx), init=False)
    _load_all(encoder, sd)
    encoder.logit_scale.fill_(log_scale)
    return encoder.to(device=device, dtype=dtype).eval()


def _load_all(encoder: HookedTextEncoder, sd: dict[str, torch.Tensor]) -> None:
    """Load converted weights; every parameter must be given (only buffers may be missing)."""
    result = encoder.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if k != "logit_scale"]
    if missing or result.unexpected_keys:
        raise CheckpointMismatchError(
            f"converted weights do not fit the hooked encoder: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]} (a converter bug: please report it with the model name)"
        )


def hooked_from_open_clip(model: nn.Module, model_name: str = "custom", pretrained: str | None = None) -> HookedTextEncoder:
    """Wrap an already-built open_clip model's text tower (weights copied; keeps its device/dtype)."""
    cfg, sd, log_scale = convert_open_clip_text(model, model_name, pretrained)
    param = next(model.parameters())
    return _build(cfg, sd, log_scale, param.device, param.dtype)


def load_text_encoder(
    name: Any = DEFAULT_MODEL,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> HookedTextEncoder:
    """A hooked text encoder from any supported source (see the module docstring).

    Args:
        name: open_clip model name, ``"tiny"``, a registered encoder name, a Hugging Face CLIP
            directory, or a model object (open_clip CLIP or transformers CLIP).
        pretrained: open_clip tag, checkpoint file, Hugging Face directory, None (or "none") for
            random init, or "default": the model's reference weights ("openai" for open_clip names
            that have it, a registered encoder's packaged weights, random init for "tiny").
        device, dtype: where and in what precision the hooked encoder runs.
        seed: seed of random init.
    """
    if isinstance(name, nn.Module):
        if hasattr(name, "text_model"):
            return _load_hf_clip(name, device, dtype, type(name).__name__)
        encoder = hooked_from_open_clip(name, type(name).__name__)
        return encoder.to(device=device, dtype=dtype)
    name = str(name)
    if name in EXTRA_ENCODERS:
        tag = None if _is_random(pretrained) else str(pretrained)
        module_name, _, function = EXTRA_ENCODERS[name].partition(":")
        loader = getattr(importlib.import_module(module_name), function)
        return loader(pretrained=tag, device=device, dtype=dtype, seed=seed)
    if _is_hf_directory(Path(name)):
        if _hf_model_type(Path(name)) == "bert":  # a BERT / sentence-transformers directory
            from interp.models.bert import load_bert_directory

            return load_bert_directory(name, device, dtype)
        return _load_hf_clip(name, device, dtype, name)
    if not _is_random(pretrained) and _is_hf_directory(Path(str(pretrained))):
        return _load_hf_clip(str(pretrained), device, dtype, f"{name} ({pretrained})")
    pretrained = resolve_pretrained(name, pretrained)
    model = create_open_clip_model(name, pretrained, device="cpu", seed=seed)
    tag = None if _is_random(pretrained) else str(pretrained)
    cfg, sd, log_scale = convert_open_clip_text(model, name, tag)
    if tag is None:
        cfg.pretrained = f"random-init (seed {seed})"
    return _build(cfg, sd, log_scale, device, dtype)


def resolve_pretrained(name: str, pretrained: Any) -> Any:
    """What ``pretrained`` means for open_clip model ``name``: None for random init ("none" too),
    "openai" for "default" where open_clip has it (the reference checkpoint), else as given."""
    if _is_random(pretrained):
        return None
    if pretrained != DEFAULT_PRETRAINED:
        return pretrained
    if name == TINY:
        return None
    _check_open_clip_name(name)
    tags = import_open_clip().list_pretrained_tags_by_model(name)
    if REFERENCE_TAG in tags:
        return REFERENCE_TAG
    raise UnknownModelError(
        f"{name!r} has no '{REFERENCE_TAG}' weights to use by default: pass --pretrained with one of "
        f"{', '.join(tags) or '(no tags)'}, a checkpoint path, or none"
    )


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (names, shapes, bytes): which weights produced a result."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
