"""Aggregate per-item x cell effects into the reference study's 8 role rows, and check invariants.

Input: the long per-cell table (one row per item x layer x position) with at least ``item_id``,
``layer``, ``position``, ``role``, ``effect`` and any grouping columns (``negation_side``,
``segment``). A role's value at a layer is the mean of the effect over every (item, position) of
that role: single-position roles average over items, and "further" tokens are weighted by each
item's count of them (items with none contribute nothing), as docs/tracing.md describes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from interp.data.negation import ROLES
from interp.errors import NonFiniteError

CAUSAL_ZERO_ROLES = ("SOT", "there", "is/are")


def _check_finite_effects(cells: pd.DataFrame) -> None:
    """pandas sums skip NaN: a NaN effect would show as 0.00 in a role table. Refuse it instead."""
    bad = cells[~np.isfinite(cells["effect"].to_numpy(dtype=float))]
    if len(bad):
        row = bad.iloc[0]
        raise NonFiniteError(f"{len(bad)} effects are NaN or infinite, e.g. item {row['item_id']}, layer {row['layer']}, "
                             f"role {row['role']}: the scores they come from are undefined; check the weights and targets")


def role_values(cells: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per item, role and layer: the mean effect over that role's positions and their count."""
    keys = [*by, "item_id", "role", "layer"]
    grouped = cells.groupby(keys, sort=False, observed=True)["effect"]
    out = grouped.agg(value="mean", n_tokens="size").reset_index()
    return out


def role_table(cells: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Role x layer statistics, per group of ``by``.

    Columns: ``*by, role, layer, mean`` (token-weighted mean of the effect), ``std`` (weighted std
    of the per-item role values, weights = token counts), ``n_items``, ``n_tokens``.
    """
    _check_finite_effects(cells)
    per_item = role_values(cells, by)
    per_item["weighted"] = per_item["value"] * per_item["n_tokens"]
    keys = [*by, "role", "layer"]
    sums = per_item.groupby(keys, sort=False, observed=True).agg(
        total=("weighted", "sum"), n_tokens=("n_tokens", "sum"), n_items=("item_id", "nunique")
    ).reset_index()
    sums["mean"] = sums["total"] / sums["n_tokens"]
    merged = per_item.merge(sums[[*keys, "mean"]], on=keys)
    merged["sq"] = merged["n_tokens"] * (merged["value"] - merged["mean"]) ** 2
    var = merged.groupby(keys, sort=False, observed=True)["sq"].sum().reset_index()
    sums = sums.merge(var, on=keys)
    sums["std"] = np.sqrt(sums["sq"] / sums["n_tokens"])
    sums["role"] = pd.Categorical(sums["role"], categories=list(ROLES), ordered=True)
    sums = sums.sort_values([*by, "role", "layer"]).reset_index(drop=True)
    sums["role"] = sums["role"].astype(str)
    return sums[[*by, "role", "layer", "mean", "std", "n_items", "n_tokens"]]


def role_matrix(table: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """Roles (rows, in :data:`ROLES` order, absent roles dropped) x layers (columns) of one group."""
    wide = table.pivot(index="role", columns="layer", values=value)
    return wide.reindex([r for r in ROLES if r in wide.index])


def layer_table(cells: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per layer (and group): mean, std, min and max of the effect over all item x position cells."""
    keys = [*by, "layer"]
    out = cells.groupby(keys, sort=True, observed=True)["effect"].agg(["mean", "std", "min", "max", "size"])
    return out.rename(columns={"size": "n_cells"}).reset_index()


def invariants(cells: pd.DataFrame, n_axis: int, causal: bool, positional_pool: bool) -> pd.DataFrame:
    """The reference study's invariants with their measured values (max deviation over items).

    Checked: (negator, layer 0) = 1; for causal encoders, SOT/there/is-are = 0 at every layer; for
    encoders pooled at one position, (EOT, last layer) = 1 and every other position at the last
    layer = 0. Columns: ``invariant, expected, max_abs_deviation, n_cells, holds_exactly``.
    """
    last = n_axis - 1
    checks = [("(negator, layer 0) = 1", (cells["role"] == "negator") & (cells["layer"] == 0), 1.0)]
    if causal:
        checks.append(("SOT/there/is-are rows = 0 at every layer", cells["role"].isin(CAUSAL_ZERO_ROLES), 0.0))
    if positional_pool:
        checks.append((f"(EOT, layer {last}) = 1", (cells["role"] == "EOT") & (cells["layer"] == last), 1.0))
        checks.append((f"every other position at layer {last} = 0",
                       (cells["role"] != "EOT") & (cells["layer"] == last), 0.0))
    rows = []
    for name, mask, expected in checks:
        values = cells.loc[mask, "effect"].to_numpy(dtype=np.float64)
        deviation = float(np.abs(values - expected).max()) if values.size else float("nan")
        rows.append({"invariant": name, "expected": expected, "max_abs_deviation": deviation,
                     "n_cells": int(values.size), "holds_exactly": bool(values.size and deviation == 0.0)})
    return pd.DataFrame(rows)
