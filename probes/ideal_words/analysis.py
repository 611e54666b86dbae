"""Ideal-word analyses of a concept set on a hooked encoder: tables of metrics and residuals per layer.

Every embedding (final or pooled residual) is L2-normalised once, as in Trager et al., and never
re-normalised after (ideal words, approximations and means are left as they come out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probes.concepts import ConceptSet, IdiomTest
from probes.embeddings import encode_texts, unit
from probes.ideal_words.decomposition import AlphaSpec, compositionality_metrics, decompose, residual_norms

log = logging.getLogger(__name__)

FINAL = "final"


@dataclass
class ConceptEmbeddings:
    """Normalised embeddings of a concept set.

    Attributes:
        final: ``[n_1, ..., n_k, d_embed]`` final sentence embeddings, unit norm.
        layers: ``[n_layers + 1, n_1, ..., n_k, d_model]`` pooled residuals, unit norm per layer
            (``None`` when not collected).
        single_words: one ``[n_i, d_embed]`` unit-norm tensor per factor, or ``None`` when the set has
            no single-word templates.
    """

    concept_set: ConceptSet
    final: Float[Tensor, "*grid d_embed"]
    layers: Float[Tensor, "layer *grid d_model"] | None
    single_words: list[Tensor] | None


def is_random_init(model: Any) -> bool:
    """Whether the encoder's weights are random (``cfg.pretrained`` is None or says "random")."""
    tag = getattr(model.cfg, "pretrained", None)
    return tag is None or str(tag).lower().startswith(("random", "none"))


def model_label(model: Any) -> str:
    """``"<model_name> (<pretrained or random init>)"`` for tables and reports."""
    return f"{model.cfg.model_name} ({model.cfg.pretrained or 'random init'})"


def embed_concept_set(model: Any, cs: ConceptSet, *, layers: bool = True,
                      batch_size: int = 64) -> ConceptEmbeddings:
    """Embed every combination prompt (and single-word prompts when the set has them) in float64."""
    prompts = cs.prompts()
    singles: list[str] = []
    if cs.has_single_words:
        for f in cs.factors:
            singles += cs.single_word_prompts(f.name)
    feats = encode_texts(model, prompts + singles, layers=layers, batch_size=batch_size)
    n = len(prompts)
    final = unit(feats.final.to(torch.float64))
    grid_final = final[:n].reshape(*cs.shape, -1)
    grid_layers = None
    if feats.layers is not None:
        grid_layers = unit(feats.layers[:, :n].to(torch.float64)).reshape(feats.layers.shape[0], *cs.shape, -1)
    single_words = None
    if singles:
        single_words, start = [], n
        for f in cs.factors:
            single_words.append(final[start:start + f.size])
            start += f.size
    return ConceptEmbeddings(cs, grid_final, grid_layers, single_words)


def metric_rows(emb: ConceptEmbeddings, alphas: AlphaSpec = None, **tags: Any) -> list[dict[str, Any]]:
    """One row per layer (``"final"`` plus 0..n_layers when collected) of IW/RW/Avg/rank/r2."""
    cs = emb.concept_set
    rows = []
    items: list[tuple[str | int, Tensor, Any]] = [(FINAL, emb.final, emb.single_words)]
    if emb.layers is not None:
        items += [(layer, emb.layers[layer], None) for layer in range(emb.layers.shape[0])]
    for layer, grid, singles in items:
        m = compositionality_metrics(grid, alphas, single_words=singles)
        rows.append({**tags, "concept_set": cs.name, "layer": str(layer), "n_combinations": cs.n_combinations,
                     "shape": "x".join(map(str, cs.shape)), **m})
    return rows


def residual_rows(emb: ConceptEmbeddings, alphas: AlphaSpec = None, **tags: Any) -> list[dict[str, Any]]:
    """One row per (layer, combination): the residual distance ``||u_z - u~_z||`` (data behind IW)."""
    cs = emb.concept_set
    combos = [" | ".join(c) for c in cs.combinations()]
    prompts = cs.prompts()
    grids: list[tuple[str, Tensor]] = [(FINAL, emb.final)]
    if emb.layers is not None:
        grids += [(str(layer), emb.layers[layer]) for layer in range(emb.layers.shape[0])]
    rows = []
    for layer, grid in grids:
        res = residual_norms(grid, decompose(grid, alphas)).reshape(-1).tolist()
        rows += [{**tags, "concept_set": cs.name, "layer": layer, "combination": c, "prompt": p, "residual": r}
                 for c, p, r in zip(combos, prompts, res)]
    return rows


def ideal_word_rows(emb: ConceptEmbeddings, alphas: AlphaSpec = None, **tags: Any) -> list[dict[str, Any]]:
    """The final-layer ideal words: one row per (factor, value) with its norm and its cosine to the
    value's single-word embedding minus the single-word mean (NaN without single words)."""
    cs = emb.concept_set
    dec = decompose(emb.final, alphas)
    rows = []
    for i, f in enumerate(cs.factors):
        words = dec.ideal_words[i]
        cos = [float("nan")] * f.size
        if emb.single_words is not None:
            real = emb.single_words[i] - emb.single_words[i].mean(0)
            cos = torch.nn.functional.cosine_similarity(words, real, dim=-1).tolist()
        for v, w, c in zip(f.values, words, cos):
            rows.append({**tags, "concept_set": cs.name, "factor": f.name, "value": v,
                         "alpha": float(dec.alphas[i][f.values.index(v)]),
                         "norm": float(w.norm()), "cos_to_real_word": c})
    return rows


def idiom_rows(encoder: Any, tests: Sequence[IdiomTest], **tags: Any) -> list[dict[str, Any]]:
    """Idiom residual test: IW of each idiom set and of its literal control on the final embedding,
    plus the residual of the idiom combinations themselves."""
    rows = []
    for t in tests:
        out: dict[str, Any] = {**tags, "test": t.name, "idiom_set": t.idiom.name, "control_set": t.control.name}
        for role, cs in (("idiom", t.idiom), ("control", t.control)):
            emb = embed_concept_set(encoder, cs, layers=False)
            res = residual_norms(emb.final, decompose(emb.final))
            out[f"{role}_IW"] = float(res.mean())
        out["difference"] = out["idiom_IW"] - out["control_IW"]
        out["idiom_breaks_more"] = bool(out["difference"] > 0)
        out["note"] = t.note
        rows.append(out)
    return rows


def layer_curve(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    """IW per numeric layer from :func:`metric_rows` output (helper for tests and plots)."""
    return np.array([r["IW"] for r in rows if r["layer"] != FINAL])
