"""Words for roles and layer axes that match the model family, for reports and figures.

Data files keep the canonical role ids of :data:`interp.data.negation.ROLES` ("SOT", "EOT") so tables
from every model join; what a reader sees says [CLS]/[SEP] for a WordPiece (BERT, MiniLM) encoder,
and describes the residual axis with the final LayerNorm only where the model has one.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

_WORDPIECE_SPECIALS = {"SOT": "[CLS]", "EOT": "[SEP]"}


def role_names(cfg: Any) -> dict[str, str]:
    """Canonical role id -> the label readers of this model family know (identity for CLIP)."""
    return dict(_WORDPIECE_SPECIALS) if getattr(cfg, "tokenizer", "clip-bpe") == "wordpiece" else {}


def relabel_roles(table: pd.DataFrame, cfg: Any) -> pd.DataFrame:
    """``table`` with its role index (or ``role`` column) in the model family's words."""
    names = role_names(cfg)
    if not names:
        return table
    if "role" in table.columns:
        return table.assign(role=table["role"].replace(names))
    return table.rename(index=names)


def special_tokens_text(cfg: Any) -> str:
    """"SOT/EOT" or "[CLS]/[SEP]", for prose."""
    names = role_names(cfg)
    return f"{names.get('SOT', 'SOT')}/{names.get('EOT', 'EOT')}"


def residual_axis_text(cfg: Any) -> str:
    """What layer index l of the residual axis means for this model."""
    after = "l = the residual after block l"
    if getattr(cfg, "norm", "pre") == "post":
        after += " (post-LN: after that block's last LayerNorm)"
    elif getattr(cfg, "has_final_ln", True):
        after += ", before ln_final"
    return f"residual states 0..L (0 = embedding output, {after})"
