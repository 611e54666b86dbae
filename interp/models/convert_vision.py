"""Convert CLIP image towers (open_clip ``VisionTransformer``, Hugging Face CLIP vision) into
hooked-image-encoder weights.

One function per source format; each reads every size and switch from the source's modules and
parameter shapes, splits the fused QKV projection per head with the named-axis patterns of
:mod:`interp.models.convert`, folds LayerScale into the output weights, and returns
(config, state dict). tests/test_image_parity.py proves each equal to its source.

Towers the hooked encoder cannot reproduce exactly are refused with :class:`UnsupportedTowerError`
(never a silently different network).
"""

from __future__ import annotations

from torch import Tensor, nn

from interp.models.config import ConfigError
from interp.models.convert import (
    StateDict,
    _activation_name,
    _bias_heads,
    _heads_in,
    _heads_out,
    _layer_scale,
    hf_config_value,
)
from interp.models.image_config import ImageEncoderConfig

SUPPORTED_TOWERS = (
    "open_clip VisionTransformer (the ViT-* models: class-token or mean pooling, nn.MultiheadAttention "
    "blocks, optional LayerScale), Hugging Face CLIPVisionModel(WithProjection) / CLIPModel"
)


class UnsupportedTowerError(ConfigError):
    """An image tower the hooked encoder cannot represent exactly (ResNet, timm, attentional pooling...)."""


def _refuse(name: str, what: str) -> UnsupportedTowerError:
    return UnsupportedTowerError(f"{name}: {what} is not supported; supported image towers: {SUPPORTED_TOWERS}")


def _visual(model: nn.Module, name: str) -> nn.Module:
    visual = getattr(model, "visual", model)
    cls = type(visual).__name__
    if cls != "VisionTransformer":
        raise _refuse(name, f"image tower {cls}" + (" (a ResNet)" if "ResNet" in cls else ""))
    return visual


def _check_open_clip_visual(visual: nn.Module, name: str) -> None:
    if getattr(visual, "attn_pool", None) is not None:
        raise _refuse(name, "an attentional-pooling image tower (CoCa-style attn_pool)")
    if visual.pool_type not in ("tok", "avg"):
        raise _refuse(name, f"image pool type {visual.pool_type!r}")
    if visual.conv1.bias is not None:
        raise _refuse(name, "a patch embedding with a bias")
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise _refuse(name, f"residual block {type(block).__name__} (custom attention: qk-norm, scaled-cosine)")
    for part in ("ln_attn", "ln_1_kv"):
        if not isinstance(getattr(block, part, nn.Identity()), nn.Identity):
            raise _refuse(name, f"residual blocks with {part} (an extra LayerNorm)")
    if not isinstance(getattr(block.mlp, "ln", nn.Identity()), nn.Identity):
        raise _refuse(name, "MLPs with an inner LayerNorm (scale_fc)")
    proj = getattr(visual, "proj", None)
    if proj is not None and not isinstance(proj, Tensor):
        raise _refuse(name, f"image projection {type(proj).__name__}")


def open_clip_vision_config(model: nn.Module, model_name: str = "custom", pretrained: str | None = None) -> ImageEncoderConfig:
    """Read the image tower's configuration from an open_clip model (or its ``.visual``)."""
    visual = _visual(model, model_name)
    _check_open_clip_visual(visual, model_name)
    blocks = visual.transformer.resblocks
    block = blocks[0]
    d_model = visual.conv1.out_channels
    proj = visual.proj
    return ImageEncoderConfig(
        n_layers=len(blocks),
        d_model=d_model,
        n_heads=block.attn.num_heads,
        d_mlp=block.mlp.c_fc.out_features,
        image_size=tuple(visual.image_size),
        patch_size=tuple(visual.conv1.kernel_size),
        d_embed=proj.shape[1] if proj is not None else d_model,
        n_channels=visual.conv1.in_channels,
        act_fn=_activation_name(block.mlp.gelu, model_name),
        eps=block.ln_1.eps,
        has_ln_pre=not isinstance(visual.ln_pre, nn.Identity),
        pool="cls" if visual.pool_type == "tok" else "mean",
        ln_post_after_pool=bool(visual.final_ln_after_pool),
        has_projection=proj is not None,
        model_name=model_name,
        pretrained=pretrained,
    )


def _block_weights(prefix: str, ln1: nn.Module, ln2: nn.Module, w_q: Tensor, w_k: Tensor, w_v: Tensor,
                   b_q: Tensor, b_k: Tensor, b_v: Tensor, out: nn.Linear, fc_in: nn.Linear, fc_out: nn.Linear,
                   n_heads: int, ls_attn: Tensor, ls_mlp: Tensor) -> StateDict:
    return {
        prefix + "ln1.w": ln1.weight, prefix + "ln1.b": ln1.bias,
        prefix + "ln2.w": ln2.weight, prefix + "ln2.b": ln2.bias,
        prefix + "attn.W_Q": _heads_in(w_q, n_heads), prefix + "attn.b_Q": _bias_heads(b_q, n_heads),
        prefix + "attn.W_K": _heads_in(w_k, n_heads), prefix + "attn.b_K": _bias_heads(b_k, n_heads),
        prefix + "attn.W_V": _heads_in(w_v, n_heads), prefix + "attn.b_V": _bias_heads(b_v, n_heads),
        # LayerScale multiplies the block's output: fold it into the output weights and bias.
        prefix + "attn.W_O": _heads_out(out.weight, n_heads) * ls_attn, prefix + "attn.b_O": out.bias * ls_attn,
        prefix + "mlp.W_in": fc_in.weight.T, prefix + "mlp.b_in": fc_in.bias,
        prefix + "mlp.W_out": fc_out.weight.T * ls_mlp, prefix + "mlp.b_out": fc_out.bias * ls_mlp,
    }


def convert_open_clip_vision(model: nn.Module, model_name: str = "custom", pretrained: str | None = None) -> tuple[ImageEncoderConfig, StateDict]:
    """open_clip CLIP (or its ``.visual``) -> (config, hooked state dict)."""
    cfg = open_clip_vision_config(model, model_name, pretrained)
    visual = _visual(model, model_name)
    sd: StateDict = {
        "embed.W_patch": visual.conv1.weight,
        "embed.class_embedding": visual.class_embedding,
        "embed.W_pos": visual.positional_embedding,
        "ln_post.w": visual.ln_post.weight,
        "ln_post.b": visual.ln_post.bias,
    }
    if cfg.has_ln_pre:
        sd |= {"ln_pre.w": visual.ln_pre.weight, "ln_pre.b": visual.ln_pre.bias}
    for layer, block in enumerate(visual.transformer.resblocks):
        w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3, dim=0)
        b_q, b_k, b_v = block.attn.in_proj_bias.chunk(3, dim=0)
        sd |= _block_weights(
            f"blocks.{layer}.", block.ln_1, block.ln_2, w_q, w_k, w_v, b_q, b_k, b_v, block.attn.out_proj,
            block.mlp.c_fc, block.mlp.c_proj, cfg.n_heads,
            _layer_scale(block.ls_1, cfg.d_model), _layer_scale(block.ls_2, cfg.d_model),
        )
    if visual.proj is not None:
        sd["W_proj"] = visual.proj
    return cfg, {k: v.detach() for k, v in sd.items()}


_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


def convert_hf_clip_vision(model: nn.Module, model_name: str = "hf-clip", pretrained: str | None = None) -> tuple[ImageEncoderConfig, StateDict]:
    """Hugging Face ``CLIPModel`` / ``CLIPVisionModel(WithProjection)`` -> (config, state dict).

    transformers pools the class token and applies ``post_layernorm`` to it (``ln_post`` after
    pooling, which for the class token is the same as before).
    """
    vision = getattr(model, "vision_model", None)
    if vision is None:
        raise _refuse(model_name, f"{type(model).__name__} (no .vision_model)")
    vc = vision.config
    act = hf_config_value(vc, "hidden_act")
    if act not in _HF_ACTS:
        raise ConfigError(f"{model_name}: hidden_act {act!r} is not supported ({sorted(_HF_ACTS)})")
    emb = vision.embeddings
    conv = emb.patch_embedding
    if conv.bias is not None:
        raise _refuse(model_name, "a patch embedding with a bias")
    proj = getattr(model, "visual_projection", None)
    d_model = hf_config_value(vc, "hidden_size")
    image = hf_config_value(vc, "image_size")
    cfg = ImageEncoderConfig(
        n_layers=hf_config_value(vc, "num_hidden_layers"),
        d_model=d_model,
        n_heads=hf_config_value(vc, "num_attention_heads"),
        d_mlp=hf_config_value(vc, "intermediate_size"),
        image_size=(image, image),
        patch_size=tuple(conv.kernel_size),
        d_embed=proj.out_features if proj is not None else d_model,
        n_channels=conv.in_channels,
        act_fn=_HF_ACTS[act],
        eps=hf_config_value(vc, "layer_norm_eps"),
        has_ln_pre=True,
        pool="cls",
        ln_post_after_pool=True,
        has_projection=proj is not None,
        model_name=model_name,
        pretrained=pretrained,
    )
    if proj is not None and proj.bias is not None:
        raise _refuse(model_name, "a visual projection with a bias")
    sd: StateDict = {
        "embed.W_patch": conv.weight,
        "embed.class_embedding": emb.class_embedding,
        "embed.W_pos": emb.position_embedding.weight,
        "ln_pre.w": vision.pre_layrnorm.weight, "ln_pre.b": vision.pre_layrnorm.bias,
        "ln_post.w": vision.post_layernorm.weight, "ln_post.b": vision.post_layernorm.bias,
    }
    ones = emb.class_embedding.new_ones(d_model)
    for layer, block in enumerate(vision.encoder.layers):
        attn = block.self_attn
        sd |= _block_weights(
            f"blocks.{layer}.", block.layer_norm1, block.layer_norm2,
            attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
            attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias, attn.out_proj,
            block.mlp.fc1, block.mlp.fc2, cfg.n_heads, ones, ones,
        )
    if proj is not None:
        sd["W_proj"] = proj.weight.T
    return cfg, {k: v.detach() for k, v in sd.items()}
