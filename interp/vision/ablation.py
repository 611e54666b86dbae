"""Total effects of image heads and MLPs on the score gap d: ablate one component, rerun, compare.

A head's z (``blocks.{l}.attn.hook_z`` [batch, pos, head, d_head], every position) is replaced by
zero, by its mean over reference images (per position), or by a donor image's z ("resample"); an
MLP's ``mlp.hook_post`` likewise. The effect is ``d_ablated - d_clean``.

Speed: the state entering layer l is computed once; all heads of layer l (and its MLP) are ablated
in one batched run that starts at layer l (rows = components x images). :func:`ablation_effects_reference`
is the plain loop (one full forward per component) that tests hold the engine to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import ClipInterpError
from interp.models.image_encoder import HookedImageEncoder
from interp.vision.scores import score_gap

METHODS = ("zero", "mean", "resample")
WHERE = ("all", "cls")  # ablate every position, or the class token only


class ImageAblationError(ClipInterpError, ValueError):
    """An ablation asked for in a way that cannot be done (unknown method, missing reference images)."""


@dataclass
class AblationEffects:
    """``heads`` [b, layer, head] and ``mlps`` [b, layer]: d_ablated - d_clean; ``d_clean`` [b]."""

    heads: Float[Tensor, "b layer head"]
    mlps: Float[Tensor, "b layer"]
    d_clean: Float[Tensor, " b"]


def _replacements(model, method: str, images: Tensor, reference: Tensor | None, donors: Tensor | None) -> dict[str, Tensor] | None:
    """Per layer, the values that replace z and mlp post: [b or 1, pos, ...]; None for zero."""
    if method not in METHODS:
        raise ImageAblationError(f"ablation method {method!r} is not one of {', '.join(METHODS)}")
    if method == "zero":
        return None
    source = reference if method == "mean" else donors
    if source is None:
        source = images if method == "mean" else images.roll(1, dims=0)
        if method == "resample" and images.shape[0] < 2:
            raise ImageAblationError("resample ablation needs donor images (pass donors=, or at least 2 images)")
    if method == "resample" and source.shape[0] != images.shape[0]:
        raise ImageAblationError(f"{source.shape[0]} donor images for {images.shape[0]} images: pass one donor per image")
    names = {f"blocks.{l}.{site}" for l in range(model.cfg.n_layers) for site in ("attn.hook_z", "mlp.hook_post")}
    _, cache = model.run_with_cache(source, names_filter=lambda name: name in names)
    values = {name: cache[name] for name in names}
    if method == "mean":
        values = {name: value.mean(0, keepdim=True) for name, value in values.items()}
    return values


def _check_where(where: str) -> slice:
    if where not in WHERE:
        raise ImageAblationError(f"ablation positions {where!r} are not one of {', '.join(WHERE)}")
    return slice(None) if where == "all" else slice(0, 1)


def _value(replacements, name: str, like: Tensor) -> Tensor:
    if replacements is None:
        return torch.zeros_like(like)
    return replacements[name].to(like.dtype).expand_as(like) if replacements[name].shape[0] == 1 else replacements[name]


@torch.no_grad()
def ablation_effects(
    model: HookedImageEncoder,
    images: Float[Tensor, "b 3 H W"],
    directions: Float[Tensor, "b d_embed"],
    logit_scale: float | Tensor,
    method: str = "zero",
    *,
    reference: Float[Tensor, "r 3 H W"] | None = None,
    donors: Float[Tensor, "b 3 H W"] | None = None,
    layers: Sequence[int] | None = None,
    where: str = "all",
) -> AblationEffects:
    """The change in d when each head (and each MLP) of ``layers`` is ablated, for each image.

    Args:
        directions: ``u = normalize(t_C) - normalize(t_F)`` per image (:func:`interp.vision.scores.caption_minus_foil`).
        method: "zero", "mean" (over ``reference`` images, default the images themselves) or
            "resample" (``donors``, one per image; default the images shifted by one).
        where: ablate at every position ("all") or at the class token only ("cls").
    """
    positions = _check_where(where)
    cfg = model.cfg
    images = images.to(device=model.device, dtype=model.dtype)
    replacements = _replacements(model, method, images, reference, donors)
    states = {f"blocks.{l}.hook_resid_pre" for l in range(cfg.n_layers)}
    clean, cache = model.run_with_cache(images, names_filter=lambda name: name in states)
    d_clean = score_gap(clean, directions, logit_scale)
    b, n_heads = images.shape[0], cfg.n_heads
    heads = torch.zeros(b, cfg.n_layers, n_heads, dtype=d_clean.dtype, device=d_clean.device)
    mlps = torch.zeros(b, cfg.n_layers, dtype=d_clean.dtype, device=d_clean.device)
    n_rows = n_heads + 1  # one group of b rows per head, then one for the MLP
    for layer in range(cfg.n_layers) if layers is None else layers:
        z_name, post_name = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.mlp.hook_post"

        def ablate_heads(z: Tensor, hook) -> Tensor:
            z = z.clone().view(n_rows, b, *z.shape[1:])
            for head in range(n_heads):
                z[head, :, positions, head] = _value(replacements, z_name, z[head])[:, positions, head]
            return z.view(n_rows * b, *z.shape[2:])

        def ablate_mlp(post: Tensor, hook) -> Tensor:
            post = post.clone().view(n_rows, b, *post.shape[1:])
            post[n_heads, :, positions] = _value(replacements, post_name, post[n_heads])[:, positions]
            return post.view(n_rows * b, *post.shape[2:])

        resid = cache[f"blocks.{layer}.hook_resid_pre"].repeat(n_rows, 1, 1)
        out = model.run_with_hooks(start_at_layer=layer, residual=resid,
                                   fwd_hooks=[(z_name, ablate_heads), (post_name, ablate_mlp)])
        d = score_gap(out, directions.repeat(n_rows, 1), logit_scale).view(n_rows, b)
        heads[:, layer] = (d[:n_heads] - d_clean).T
        mlps[:, layer] = d[n_heads] - d_clean
    return AblationEffects(heads, mlps, d_clean)


@torch.no_grad()
def ablation_effects_reference(
    model: HookedImageEncoder,
    images: Float[Tensor, "b 3 H W"],
    directions: Float[Tensor, "b d_embed"],
    logit_scale: float | Tensor,
    method: str = "zero",
    *,
    reference: Tensor | None = None,
    donors: Tensor | None = None,
    where: str = "all",
) -> AblationEffects:
    """The plain loop: one full forward of each image per component. Slow; the tests' oracle."""
    positions = _check_where(where)
    cfg = model.cfg
    images = images.to(device=model.device, dtype=model.dtype)
    replacements = _replacements(model, method, images, reference, donors)
    d_clean = score_gap(model(images), directions, logit_scale)
    b = images.shape[0]
    heads = torch.zeros(b, cfg.n_layers, cfg.n_heads, dtype=d_clean.dtype)
    mlps = torch.zeros(b, cfg.n_layers, dtype=d_clean.dtype)
    for i in range(b):
        for layer in range(cfg.n_layers):
            for head in [*range(cfg.n_heads), None]:
                name = f"blocks.{layer}.attn.hook_z" if head is not None else f"blocks.{layer}.mlp.hook_post"

                def hook(act: Tensor, hook, head=head, name=name) -> Tensor:
                    value = _value(replacements, name, torch.empty(b, *act.shape[1:], dtype=act.dtype))[i:i + 1]
                    act = act.clone()
                    if head is None:
                        act[:, positions] = value[:, positions]
                    else:
                        act[:, positions, head] = value[:, positions, head]
                    return act

                out = model.run_with_hooks(images[i:i + 1], fwd_hooks=[(name, hook)])
                effect = score_gap(out, directions[i:i + 1], logit_scale)[0] - d_clean[i]
                if head is None:
                    mlps[i, layer] = effect
                else:
                    heads[i, layer, head] = effect
    return AblationEffects(heads, mlps, d_clean)
