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

import copy
import difflib
import hashlib
import importlib
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from interp.models.compat import import_open_clip, import_transformers
from interp.models.checks import check_device, check_finite_tensors, read_config_json
from interp.models.convert import convert_hf_clip_text, convert_open_clip_text, read_state_dict
from interp.models.text_encoder import HookedTextEncoder
from interp.models.towers import check_open_clip_text_config
from interp.errors import CheckpointMismatchError, UnknownModelError, WeightsUnavailableError
from interp.models.tokenization import CLIPTokenizer

log = logging.getLogger(__name__)

# "default" pretrained = the model's reference weights (see interp.models.names)
from interp.models.names import DEFAULT_MODEL, DEFAULT_PRETRAINED  # noqa: E402,F401 - re-exported
REFERENCE_TAG = "openai"
TINY = "tiny"
_RANDOM_TAGS = (None, "none", "None", "random")  # every spelling of "random init"

# Other encoder families: name -> "module:function" taking (pretrained, device, dtype, seed);
# imported only when asked for, so CLIP users never import their dependencies.
EXTRA_ENCODERS: dict[str, str] = {
    "all-MiniLM-L6-v2": "interp.models.bert:load_minilm",
}


# The built-in toy CLIP in open_clip's model-config format: same code paths as ViT-B-32, milliseconds to run.
_TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 16, "patch_size": 32, "image_size": 224},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    "quick_gelu": False,
}


def _tiny_open_clip_model() -> nn.Module:
    """A real open_clip ``CLIP`` at toy size (:data:`_TINY_CONFIG`)."""
    open_clip = import_open_clip()
    return open_clip.model.CLIP(**copy.deepcopy(_TINY_CONFIG))


def _open_clip_config(name: str) -> dict[str, Any]:
    """open_clip's model config of ``name`` (sizes, activation switch), or the tiny one."""
    if name == TINY:
        return copy.deepcopy(_TINY_CONFIG)
    _check_open_clip_name(name)
    return copy.deepcopy(import_open_clip().get_model_config(name))


def text_tower_only(config: dict[str, Any]) -> bool:
    """Whether open_clip builds this config's text tower on its own (CLIP / CustomTextCLIP with a
    transformer text tower); CoCa and Hugging Face text towers go through the full model."""
    return "multimodal_cfg" not in config and "hf_model_name" not in config.get("text_cfg", {})


def _open_clip_text_tower(config: dict[str, Any]) -> tuple[nn.Module, float]:
    """open_clip's own text tower for ``config`` (its own random init: seed before calling) and the
    model's initial log logit scale. No image tower is built: for ViT-B-32 that is 88M of 151M
    parameters and most of the load time."""
    open_clip = import_open_clip()
    tower = open_clip.model._build_text_tower(config["embed_dim"], config["text_cfg"], config.get("quick_gelu", False))
    default_scale = inspect.signature(open_clip.model.CLIP.__init__).parameters["init_logit_scale"].default
    return tower, float(config.get("init_logit_scale", default_scale))


def _text_prefix(config: dict[str, Any]) -> str:
    """Where the full model keeps its text tower's tensors: on itself (CLIP) or under ``text.`` (CustomTextCLIP)."""
    return "text." if config.get("custom_text") else ""


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


def _check_fits(sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Raise :class:`CheckpointMismatchError` naming the tensors of ``sd`` that do not fit ``expected``."""
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


def load_checkpoint_into(model: nn.Module, path: Path, model_name: str) -> None:
    """Load a state-dict file into an open_clip model, naming every tensor that does not fit."""
    sd = read_state_dict(path)
    expected = model.state_dict()
    _check_fits(sd, expected, path, model_name)
    check_finite_tensors(((k, v) for k, v in sd.items() if k in expected), f"checkpoint {path}")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        log.warning("checkpoint %s has %d tensors the model does not use (e.g. %s)", path, len(unexpected), unexpected[0])
    model.load_state_dict({k: v for k, v in sd.items() if k in expected})


def load_text_checkpoint_into(tower: nn.Module, path: Path, model_name: str, prefix: str) -> float:
    """Load a full open_clip checkpoint's text-tower tensors (under ``prefix``) into a text tower built
    alone; the image tower's tensors are never materialised in a model. Returns the checkpoint's log
    logit scale (NaN when it has none)."""
    checkpoint = read_state_dict(path)
    expected = tower.state_dict()
    sd = {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix) and k[len(prefix):] in expected}
    _check_fits(sd, expected, path, model_name)
    # named as the checkpoint names them (text.* prefix included), so the message points into the file
    check_finite_tensors(((prefix + k, v) for k, v in sd.items()), f"checkpoint {path}")
    tower.load_state_dict(sd)
    scale = checkpoint.get("logit_scale")
    return float(scale) if scale is not None else float("nan")


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
    if path is None:
        _seed_text_part(model, name, seed)
    return model.to(device=device, dtype=dtype).eval()


def _seed_text_part(model: nn.Module, name: str, seed: int) -> None:
    """Give a random full model the text tower :func:`load_text_encoder` builds alone with the same
    seed, so a random run's image and text towers are one model whichever was built."""
    config = _open_clip_config(name)
    if not text_tower_only(config):
        return
    torch.manual_seed(seed)
    tower, _ = _open_clip_text_tower(config)
    prefix = _text_prefix(config)
    result = model.load_state_dict({prefix + k: v for k, v in tower.state_dict().items()}, strict=False)
    if result.unexpected_keys:  # an open_clip layout this loader does not know: fail loudly, not silently
        raise CheckpointMismatchError(f"{name}: text tower tensors {result.unexpected_keys[:3]} not found in the full model")


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
    architectures = read_config_json(path / "config.json").get("architectures") or ["CLIPModel"]
    if not isinstance(architectures, list) or architectures[0] not in _HF_CLIP_CLASSES:
        raise UnknownModelError(
            f"{path} holds a {architectures[0]}, not a Hugging Face CLIP ({', '.join(_HF_CLIP_CLASSES)})"
        )
    return getattr(transformers, architectures[0])


def _hf_model_type(path: Path) -> str | None:
    return read_config_json(path / "config.json").get("model_type")


def _load_hf_clip(source: Any, device: Any, dtype: torch.dtype, label: str) -> HookedTextEncoder:
    if isinstance(source, (str, Path)):
        try:
            transformers = import_transformers()  # torchvision fix first: a fresh process needs it
        except ImportError as err:
            raise WeightsUnavailableError("loading a Hugging Face CLIP needs transformers: pip install 'clip-interp[hf]'") from err
        path = Path(source)
        missing = [f for f in ("config.json",) if not (path / f).is_file()]
        if missing:
            raise WeightsUnavailableError(f"{path} is not a Hugging Face CLIP directory: {', '.join(missing)} missing")
        cls = _hf_clip_class(transformers, path)
        try:
            source = cls.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WeightsUnavailableError(
                f"{path} does not load as a Hugging Face {cls.__name__} ({type(err).__name__}: {str(err)[:160]}): "
                "it needs config.json and model.safetensors (or pytorch_model.bin) as save_pretrained writes them"
            ) from err
    cfg, sd, log_scale = convert_hf_clip_text(source, model_name=label, pretrained=label)
    return _build(cfg, sd, log_scale, device, dtype)


def _build(cfg, sd, log_scale: float, device, dtype, source_dropped: bool = False) -> HookedTextEncoder:
    """The hooked encoder holding ``sd``. With ``source_dropped`` (the caller built the source model
    itself and drops it), the encoder takes over ``sd``'s tensors instead of copying them: it is
    built on the meta device (no memory) and each parameter that is a view of a larger source tensor
    (per-head slices of a fused QKV, transposes) becomes its own contiguous copy, one at a time, so a
    load peaks near one copy of the weights instead of two."""
    check_finite_tensors(sd.items(), f"weights of {cfg.model_name} ({cfg.pretrained or 'random init'})")
    if not source_dropped:
        encoder = HookedTextEncoder(cfg, CLIPTokenizer(cfg.n_ctx), init=False)
        _load_all(encoder, sd)
        encoder.logit_scale.fill_(log_scale)
        return encoder.to(device=device, dtype=dtype).eval()
    with torch.device("meta"):
        encoder = HookedTextEncoder(cfg, CLIPTokenizer(cfg.n_ctx), init=False)
    _load_all(encoder, {**sd, "logit_scale": torch.tensor(log_scale)}, assign=True)
    sd.clear()  # the caller's dict must not keep the source's storages alive
    with torch.no_grad():
        for param in encoder.parameters():
            if not param.is_contiguous() or param.untyped_storage().nbytes() != param.nbytes:
                param.data = param.data.clone(memory_format=torch.contiguous_format)
    return encoder.to(device=device, dtype=dtype).eval()


def _load_all(encoder: HookedTextEncoder, sd: dict[str, torch.Tensor], assign: bool = False) -> None:
    """Load converted weights; every parameter must be given (only buffers may be missing)."""
    result = encoder.load_state_dict(sd, strict=False, assign=assign)
    missing = [k for k in result.missing_keys if k != "logit_scale" or assign]
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
    check_device(device)
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
    if name != TINY:  # refuse towers the hooked encoder cannot reproduce before any weights load
        _check_open_clip_name(name)
        check_open_clip_text_config(name, import_open_clip().get_model_config(name).get("text_cfg", {}))
    pretrained = resolve_pretrained(name, pretrained)
    tag = None if _is_random(pretrained) else str(pretrained)
    source, log_scale = _open_clip_text_source(name, pretrained, seed)
    cfg, sd, model_log_scale = convert_open_clip_text(source, name, tag)
    del source  # only ``sd`` holds its tensors now: _build takes them over
    if tag is None:
        cfg.pretrained = f"random-init (seed {seed})"
    return _build(cfg, sd, model_log_scale if log_scale is None else log_scale, device, dtype, source_dropped=True)


def _open_clip_text_source(name: str, pretrained: Any, seed: int) -> tuple[nn.Module, float | None]:
    """The open_clip module to convert and its log logit scale (None: read it from the module).

    Random init and checkpoint files build the text tower alone (seeded; open_clip's own init and
    code); a pretrained tag, and towers open_clip only builds inside the full model, go through
    :func:`create_open_clip_model` (the full model is dropped after conversion)."""
    config = _open_clip_config(name)
    path = None if _is_random(pretrained) else Path(str(pretrained))
    if text_tower_only(config) and (path is None or path.is_file()):
        torch.manual_seed(seed)
        tower, log_scale = _open_clip_text_tower(config)
        if path is not None:
            log_scale = load_text_checkpoint_into(tower, path, name, _text_prefix(config))
        return tower, log_scale
    return create_open_clip_model(name, pretrained, device="cpu", seed=seed), None


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
