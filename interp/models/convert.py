"""Convert CLIP text towers (open_clip, Hugging Face transformers) into hooked-encoder weights.

One function per source format. Each reads every size and switch from the source model itself
(modules, parameter shapes, its config), splits fused projections into per-head weights with
named-axis einops patterns, and returns (config, state dict). tests/test_parity.py proves the
result equal to the source's own ``encode_text`` / ``CLIPTextModelWithProjection``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor, nn

from interp.errors import CheckpointMismatchError
from interp.models.config import ConfigError, TextEncoderConfig
from interp.models.towers import check_open_clip_tower

StateDict = dict[str, Tensor]


def _heads_in(weight: Tensor, n_heads: int) -> Tensor:
    """[n_heads * d_head, d_model] (a Linear's out x in) -> [head, d_model, d_head]."""
    return einops.rearrange(weight, "(head d_head) d_model -> head d_model d_head", head=n_heads)


def _heads_out(weight: Tensor, n_heads: int) -> Tensor:
    """[d_model, n_heads * d_head] (out_proj's out x in) -> [head, d_head, d_model]."""
    return einops.rearrange(weight, "d_model (head d_head) -> head d_head d_model", head=n_heads)


def _bias_heads(bias: Tensor, n_heads: int) -> Tensor:
    return einops.rearrange(bias, "(head d_head) -> head d_head", head=n_heads)


def _activation_name(module: nn.Module, where: str) -> str:
    """Name of an MLP activation module, read from its class (never from the model name)."""
    cls = type(module).__name__
    if cls == "QuickGELU":
        return "quick_gelu"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    if isinstance(module, nn.ReLU):
        return "relu"
    raise ConfigError(f"{where}: MLP activation {cls} is not supported (gelu, gelu_tanh, quick_gelu, relu)")


def _text_tower(model: nn.Module) -> nn.Module:
    """open_clip keeps the text tower on the CLIP object itself, or in ``.text`` (CustomTextCLIP)."""
    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):
        return model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "token_embedding") and hasattr(text, "transformer"):
        return text
    raise ConfigError(
        f"{type(model).__name__} has no open_clip transformer text tower (token_embedding + "
        "transformer); Hugging Face text towers inside open_clip are not supported"
    )


def _refuse_unsupported_open_clip_parts(tower: nn.Module, name: str) -> None:
    """Refuse text-tower variants the hooked blocks would not reproduce exactly."""
    if getattr(tower, "cls_emb", None) is not None:
        raise ConfigError(f"{name}: text towers with a learned CLS embedding (embed_cls) are not supported")
    block = tower.transformer.resblocks[0]
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise ConfigError(
            f"{name}: residual block {type(block).__name__} uses custom attention (qk-norm, scaled-cosine "
            "or separate q/k/v); only nn.MultiheadAttention blocks are supported"
        )
    for part in ("ln_attn", "ln_1_kv"):
        if not isinstance(getattr(block, part, nn.Identity()), nn.Identity):
            raise ConfigError(f"{name}: residual blocks with {part} (an extra LayerNorm) are not supported")
    if not isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity):
        raise ConfigError(f"{name}: MLPs with an inner LayerNorm (scale_fc) are not supported")


def _layer_scale(module: nn.Module, d_model: int) -> Tensor:
    gamma = getattr(module, "gamma", None)
    return gamma.detach() if gamma is not None else torch.ones(d_model)


def open_clip_text_config(model: nn.Module, model_name: str = "custom", pretrained: str | None = None) -> TextEncoderConfig:
    """Read the text tower's configuration from an open_clip model's modules and parameters."""
    tower = _text_tower(model)
    check_open_clip_tower(tower, model_name)
    _refuse_unsupported_open_clip_parts(tower, model_name)
    blocks = tower.transformer.resblocks
    block = blocks[0]
    d_model = tower.token_embedding.embedding_dim
    proj = getattr(tower, "text_projection", None)
    if proj is None:
        d_embed, has_proj, proj_bias = d_model, False, False
    elif isinstance(proj, nn.Linear):
        d_embed, has_proj, proj_bias = proj.out_features, True, proj.bias is not None
    elif isinstance(proj, Tensor):
        d_embed, has_proj, proj_bias = proj.shape[1], True, False
    else:
        raise ConfigError(f"{model_name}: text projection {type(proj).__name__} (e.g. an MLP) is not supported")
    pool = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
    if pool not in ("argmax", "eos", "first", "last"):
        raise ConfigError(f"{model_name}: text pool type {pool!r} is not supported (argmax, eos, first, last)")
    eos_id = getattr(tower, "text_eos_id", None) or getattr(tower, "eos_id", None)
    return TextEncoderConfig(
        n_layers=len(blocks),
        d_model=d_model,
        n_heads=block.attn.num_heads,
        d_mlp=block.mlp.c_fc.out_features,
        n_ctx=tower.positional_embedding.shape[0],
        d_vocab=tower.token_embedding.num_embeddings,
        d_embed=d_embed,
        act_fn=_activation_name(block.mlp.gelu, model_name),
        eps=block.ln_1.eps,
        causal=getattr(tower, "attn_mask", None) is not None,
        norm="pre",
        pool=pool,
        has_final_ln=True,
        has_projection=has_proj,
        projection_bias=proj_bias,
        eos_token_id=eos_id if pool == "eos" else None,
        tokenizer="clip-bpe",
        model_name=model_name,
        pretrained=pretrained,
    )


def convert_open_clip_text(model: nn.Module, model_name: str = "custom", pretrained: str | None = None) -> tuple[TextEncoderConfig, StateDict, float]:
    """open_clip CLIP -> (config, hooked state dict, log logit_scale).

    LayerScale (``ls_1``/``ls_2``), when present, is folded into the output weights and biases.
    """
    cfg = open_clip_text_config(model, model_name, pretrained)
    tower = _text_tower(model)
    h = cfg.n_heads
    sd: StateDict = {
        "embed.W_E": tower.token_embedding.weight,
        "embed.W_pos": tower.positional_embedding,
        "ln_final.w": tower.ln_final.weight,
        "ln_final.b": tower.ln_final.bias,
    }
    for layer, block in enumerate(tower.transformer.resblocks):
        p = f"blocks.{layer}."
        w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3, dim=0)
        b_q, b_k, b_v = block.attn.in_proj_bias.chunk(3, dim=0)
        ls_attn = _layer_scale(block.ls_1, cfg.d_model)
        ls_mlp = _layer_scale(block.ls_2, cfg.d_model)
        sd |= {
            p + "ln1.w": block.ln_1.weight, p + "ln1.b": block.ln_1.bias,
            p + "ln2.w": block.ln_2.weight, p + "ln2.b": block.ln_2.bias,
            p + "attn.W_Q": _heads_in(w_q, h), p + "attn.W_K": _heads_in(w_k, h), p + "attn.W_V": _heads_in(w_v, h),
            p + "attn.b_Q": _bias_heads(b_q, h), p + "attn.b_K": _bias_heads(b_k, h), p + "attn.b_V": _bias_heads(b_v, h),
            p + "attn.W_O": _heads_out(block.attn.out_proj.weight, h) * ls_attn,
            p + "attn.b_O": block.attn.out_proj.bias * ls_attn,
            p + "mlp.W_in": block.mlp.c_fc.weight.T, p + "mlp.b_in": block.mlp.c_fc.bias,
            p + "mlp.W_out": block.mlp.c_proj.weight.T * ls_mlp, p + "mlp.b_out": block.mlp.c_proj.bias * ls_mlp,
        }
    proj = getattr(tower, "text_projection", None)
    if isinstance(proj, nn.Linear):
        sd["W_proj"] = proj.weight.T
        if proj.bias is not None:
            sd["b_proj"] = proj.bias
    elif isinstance(proj, Tensor):
        sd["W_proj"] = proj
    logit_scale = getattr(model, "logit_scale", None)
    log_scale = float(logit_scale.detach()) if logit_scale is not None else float("nan")
    return cfg, {k: v.detach() for k, v in sd.items()}, log_scale


def hf_config_value(config: Any, name: str) -> Any:
    """``config.<name>`` of a Hugging Face CLIP text or vision config; a clear error if it is missing."""
    value = getattr(config, name, None)
    if value is None:
        raise ConfigError(f"Hugging Face CLIP {type(config).__name__} has no {name!r}: the checkpoint's "
                          "config.json is incomplete; re-save the model with transformers' save_pretrained")
    return value


def convert_hf_clip_text(model: nn.Module, model_name: str = "hf-clip", pretrained: str | None = None) -> tuple[TextEncoderConfig, StateDict, float]:
    """Hugging Face ``CLIPModel`` / ``CLIPTextModel`` / ``CLIPTextModelWithProjection`` -> (config, state dict, log scale).

    Pooling follows transformers: argmax of ids when ``eos_token_id == 2`` (the original OpenAI
    configs), else the first ``eos_token_id``.
    """
    text_model = getattr(model, "text_model", None)
    if text_model is None:
        raise ConfigError(f"{type(model).__name__} has no .text_model: pass a CLIPModel, CLIPTextModel or CLIPTextModelWithProjection")
    tc = text_model.config
    act = hf_config_value(tc, "hidden_act")
    act_map = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
    if act not in act_map:
        raise ConfigError(f"{model_name}: hidden_act {act!r} is not supported ({sorted(act_map)})")
    eos = getattr(tc, "eos_token_id", 2)
    proj = getattr(model, "text_projection", None)
    d_model = hf_config_value(tc, "hidden_size")
    cfg = TextEncoderConfig(
        n_layers=hf_config_value(tc, "num_hidden_layers"),
        d_model=d_model,
        n_heads=hf_config_value(tc, "num_attention_heads"),
        d_mlp=hf_config_value(tc, "intermediate_size"),
        n_ctx=hf_config_value(tc, "max_position_embeddings"),
        d_vocab=hf_config_value(tc, "vocab_size"),
        d_embed=proj.out_features if proj is not None else d_model,
        act_fn=act_map[act],
        eps=hf_config_value(tc, "layer_norm_eps"),
        causal=True,
        norm="pre",
        pool="argmax" if eos == 2 else "eos",
        eos_token_id=None if eos == 2 else eos,
        has_projection=proj is not None,
        projection_bias=proj is not None and proj.bias is not None,
        model_name=model_name,
        pretrained=pretrained,
    )
    h = cfg.n_heads
    emb = text_model.embeddings
    sd: StateDict = {
        "embed.W_E": emb.token_embedding.weight,
        "embed.W_pos": emb.position_embedding.weight,
        "ln_final.w": text_model.final_layer_norm.weight,
        "ln_final.b": text_model.final_layer_norm.bias,
    }
    for layer, block in enumerate(text_model.encoder.layers):
        p = f"blocks.{layer}."
        attn = block.self_attn
        sd |= {
            p + "ln1.w": block.layer_norm1.weight, p + "ln1.b": block.layer_norm1.bias,
            p + "ln2.w": block.layer_norm2.weight, p + "ln2.b": block.layer_norm2.bias,
            p + "attn.W_Q": _heads_in(attn.q_proj.weight, h), p + "attn.b_Q": _bias_heads(attn.q_proj.bias, h),
            p + "attn.W_K": _heads_in(attn.k_proj.weight, h), p + "attn.b_K": _bias_heads(attn.k_proj.bias, h),
            p + "attn.W_V": _heads_in(attn.v_proj.weight, h), p + "attn.b_V": _bias_heads(attn.v_proj.bias, h),
            p + "attn.W_O": _heads_out(attn.out_proj.weight, h), p + "attn.b_O": attn.out_proj.bias,
            p + "mlp.W_in": block.mlp.fc1.weight.T, p + "mlp.b_in": block.mlp.fc1.bias,
            p + "mlp.W_out": block.mlp.fc2.weight.T, p + "mlp.b_out": block.mlp.fc2.bias,
        }
    if proj is not None:
        sd["W_proj"] = proj.weight.T
        if proj.bias is not None:
            sd["b_proj"] = proj.bias
    logit_scale = getattr(model, "logit_scale", None)
    log_scale = float(logit_scale.detach()) if logit_scale is not None else float("nan")
    return cfg, {k: v.detach() for k, v in sd.items()}, log_scale


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (``.safetensors``, or a torch ``.pt``/``.bin`` state dict read with
    ``weights_only``), unwrapped from a ``{"state_dict": ...}`` container and without DataParallel's
    ``module.`` prefix: the one checkpoint reader of every converter."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from interp.models.checks import read_safetensors  # a truncated or non-safetensors file: a clear error

        sd = read_safetensors(path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is the same user error
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointMismatchError(f"cannot read checkpoint {path} ({first[:160]}): pass an open_clip state dict "
                                          "saved with torch.save or safetensors") from err
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise CheckpointMismatchError(f"checkpoint {path} holds a {type(sd).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}
