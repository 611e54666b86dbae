"""Dataset features of the negation pairs and how they relate to d (docs/data.md, "Dataset-feature table").

One row per item: caption-foil text similarity (cosine of the two text embeddings, the rephrased
texts actually scored), token count, negation side, d. Then Pearson r of similarity and of length
with d, per negation side, with and without the items whose negated sentence reads exactly
"There are no people." (44 of the 250 caption-negation items; the reference study finds r = 0.03
with them and -0.20 without them for caption negation, -0.22 for foil negation, real CLIP weights).

Tables first: :func:`write_feature_tables` writes CSVs and a JSON of the run's config beside them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from interp.data.negation import NEGATION_SIDES, NegationPair
from interp.runs.rundir import package_versions, write_csv, write_json
from interp.data.scoring import normalize

log = logging.getLogger(__name__)

NO_PEOPLE_SENTENCE = "There are no people."
FEATURES = ("text_similarity", "n_tokens")
SUBSETS = ("all", "without_no_people")
TABLE_COLUMNS = ["item_id", "image_file", "negation_side", "caption", "foil", "text_similarity",
                 "n_tokens", "no_people", "d"]


def feature_table(
    pairs: Sequence[NegationPair],
    e_caption: Float[Tensor, "n d"],
    e_foil: Float[Tensor, "n d"],
    n_tokens: Sequence[int],
    d: Float[Tensor, " n"] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Per-item features (``d`` may be None, e.g. with the text target: the column is then NaN)."""
    n = len(pairs)
    if e_caption.shape != e_foil.shape or e_caption.shape[0] != n or len(n_tokens) != n:
        raise ValueError(
            f"need one caption/foil embedding and one token count per pair: {n} pairs, embeddings "
            f"{tuple(e_caption.shape)} / {tuple(e_foil.shape)}, {len(n_tokens)} token counts"
        )
    similarity = (normalize(e_caption.double()) * normalize(e_foil.double())).sum(-1).cpu().numpy()
    if d is None:
        d_values = np.full(n, np.nan)
    else:
        d_values = (d.detach().cpu().double().numpy() if isinstance(d, Tensor) else np.asarray(d, dtype=float))
        if d_values.shape != (n,):
            raise ValueError(f"d has shape {d_values.shape}, expected ({n},)")
    return pd.DataFrame({
        "item_id": [p.item_id for p in pairs],
        "image_file": [p.image_file for p in pairs],
        "negation_side": [p.negation_side for p in pairs],
        "caption": [p.caption for p in pairs],
        "foil": [p.foil for p in pairs],
        "text_similarity": similarity,
        "n_tokens": np.asarray(n_tokens, dtype=int),
        "no_people": [p.negated == NO_PEOPLE_SENTENCE for p in pairs],
        "d": d_values,
    }, columns=TABLE_COLUMNS)


def compute_feature_table(
    model: Any,
    pairs: Sequence[NegationPair],
    d: Float[Tensor, " n"] | np.ndarray | None = None,
    batch_size: int = 128,
) -> pd.DataFrame:
    """:func:`feature_table` with the text embeddings computed by a hooked text encoder (batched)."""
    texts_c, texts_f = [p.caption for p in pairs], [p.foil for p in pairs]

    def embed(texts: list[str]) -> Tensor:
        with torch.no_grad():
            return torch.cat([model(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])

    n_tokens = [len(model.tokenizer.encode(t)) for t in texts_c]
    return feature_table(pairs, embed(texts_c), embed(texts_f), n_tokens, d)


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")  # undefined: too few items or a constant column
    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)


def feature_correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Pearson r (and p) of each feature with d, per negation side (and both), with and without
    the "There are no people." items. NaN r means undefined (fewer than 3 items or a constant column).

    Raises:
        ValueError: d is missing (text target: there is no d to correlate with).
    """
    missing = [c for c in ("negation_side", "no_people", "d", *FEATURES) if c not in table.columns]
    if missing:
        raise ValueError(f"feature table lacks columns {missing}: build it with feature_table()")
    if table["d"].isna().any():
        raise ValueError(
            "d is missing for some items: correlations with d need the image target (with the text "
            "target there is no caption-versus-foil d)"
        )
    rows = []
    for side in (*NEGATION_SIDES, "all"):
        side_rows = table if side == "all" else table[table["negation_side"] == side]
        for subset in SUBSETS:
            sub = side_rows if subset == "all" else side_rows[~side_rows["no_people"]]
            for feature in FEATURES:
                r, p = _pearson(sub[feature].to_numpy(float), sub["d"].to_numpy(float))
                rows.append({"negation_side": side, "subset": subset, "feature": feature,
                             "n": len(sub), "pearson_r": r, "p_value": p})
    return pd.DataFrame(rows, columns=["negation_side", "subset", "feature", "n", "pearson_r", "p_value"])


def write_feature_tables(
    out_dir: str | os.PathLike, table: pd.DataFrame, correlations: pd.DataFrame | None, config: dict[str, Any]
) -> list[Path]:
    """Write ``features.csv``, ``feature_correlations.csv`` (if given) and ``features_config.json``.

    ``config`` should name the model, weights and target; library versions are added. Each file
    is written to a temporary name and renamed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    write_csv(table, out / "features.csv")
    written.append(out / "features.csv")
    if correlations is not None:
        write_csv(correlations, out / "feature_correlations.csv")
        written.append(out / "feature_correlations.csv")
    meta = {
        **config,
        "n_items": int(len(table)),
        "versions": package_versions(),
    }
    write_json(meta, out / "features_config.json")
    written.append(out / "features_config.json")
    log.info("feature tables written to %s", out)
    return written
