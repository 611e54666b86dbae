"""Aggregation into the 8 role rows and the invariant check, against values computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from interp.tracing.aggregate import invariants, layer_table, role_matrix, role_table


def _cells():
    # item a: roles SOT, negator, further, further, EOT (length 5); item b: SOT, negator, EOT.
    rows = []
    a_roles = ["SOT", "negator", "further", "further", "EOT"]
    a_vals = {0: [0.0, 1.0, 0.0, 0.0, 0.0], 1: [0.0, 0.2, 0.4, 0.8, 1.0]}
    b_roles = ["SOT", "negator", "EOT"]
    b_vals = {0: [0.0, 1.0, 0.0], 1: [0.0, 0.6, 1.0]}
    for item, roles, vals, side in (("a", a_roles, a_vals, "caption"), ("b", b_roles, b_vals, "foil")):
        for layer, values in vals.items():
            for pos, (role, v) in enumerate(zip(roles, values)):
                rows.append({"item_id": item, "negation_side": side, "layer": layer, "position": pos,
                             "role": role, "effect": v})
    return pd.DataFrame(rows)


def test_role_table_weights_further_tokens_by_count():
    table = role_table(_cells())
    get = lambda role, layer, col="mean": float(table[(table.role == role) & (table.layer == layer)][col].iloc[0])
    assert get("negator", 1) == pytest.approx((0.2 + 0.6) / 2)
    assert get("further", 1) == pytest.approx((0.4 + 0.8) / 2)  # only item a has further tokens
    assert get("further", 1, "n_items") == 1 and get("further", 1, "n_tokens") == 2
    assert get("negator", 1, "n_items") == 2
    # std of the per-item negator values 0.2 and 0.6 (population, equal weights)
    assert get("negator", 1, "std") == pytest.approx(0.2)
    assert list(table.role.unique()) == ["SOT", "negator", "further", "EOT"]  # ROLES order


def test_role_matrix_and_groups():
    table = role_table(_cells(), by=["negation_side"])
    foil = role_matrix(table[table.negation_side == "foil"])
    assert list(foil.index) == ["SOT", "negator", "EOT"] and list(foil.columns) == [0, 1]
    assert foil.loc["negator", 1] == pytest.approx(0.6)


def test_layer_table():
    table = layer_table(_cells())
    assert table.loc[table.layer == 1, "n_cells"].item() == 8
    assert table.loc[table.layer == 1, "max"].item() == 1.0


def test_invariants_report_measured_deviation():
    cells = _cells()
    cells.loc[(cells.item_id == "b") & (cells.layer == 1) & (cells.role == "negator"), "effect"] = 0.0
    inv = invariants(cells, n_axis=2, causal=True, positional_pool=True).set_index("invariant")
    assert inv.loc["(negator, layer 0) = 1", "holds_exactly"]
    assert inv.loc["(EOT, layer 1) = 1", "max_abs_deviation"] == 0.0
    other = inv.loc["every other position at layer 1 = 0"]
    assert other["max_abs_deviation"] == pytest.approx(0.8) and not other["holds_exactly"]
    assert inv.loc["SOT/there/is-are rows = 0 at every layer", "n_cells"] == 4
    bidirectional = invariants(cells, n_axis=2, causal=False, positional_pool=False)
    assert list(bidirectional.invariant) == ["(negator, layer 0) = 1"]
    assert math.isnan(invariants(cells.iloc[:0], 2, True, True).max_abs_deviation.iloc[0])
