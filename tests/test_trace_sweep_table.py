"""The sweep writes each item's table as CSV text directly (``item_csv``): the bytes must be the
ones pandas writes for the same rows (``item_rows(...).to_csv(index=False)``), so tables, resumed
runs and readers are unchanged. Checked on every minimal pair, with values that stress the float
formatting (NaN, -0.0, exponents, fp32-rounded values) and strings that need quoting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from interp.data.negation import align_pairs, load_existence_pairs
from interp.models.tokenization import CLIPTokenizer
from interp.runs.rundir import ItemTable, read_csv
from interp.tracing.sweep import item_csv, item_rows

SPECIAL = [np.nan, -0.0, 0.0, 1e-05, 1e16, 1 / 3, 5e-324, -2.5e-7, 123456789.123, 1.0]


@pytest.fixture(scope="module")
def aligned():
    return align_pairs(load_existence_pairs().pairs, CLIPTokenizer())[0]


def _values(rng, shape):
    values = rng.standard_normal(shape).astype(np.float32).astype(np.float64)  # fp32 scores, as the engine's
    flat = values.reshape(-1)
    flat[: len(SPECIAL)] = SPECIAL[: flat.size]
    return values


def test_item_csv_is_pandas_to_csv_on_every_pair(aligned):
    rng = np.random.default_rng(0)
    segments = [None, "correct", "a, \"quoted\" segment", ""]
    d_values = [None, 0.25, np.nan, -1e-9]
    for k, item in enumerate(aligned):
        n_pos = item.length + k % 3  # padded like a chunk's arrays: cut to the item's length
        effect, patched = _values(rng, (13, n_pos)), _values(rng, (13, n_pos))
        args = (item, effect, patched, float(rng.standard_normal()), 1 / 7, segments[k % 4], d_values[k % 4])
        assert item_csv(*args) == item_rows(*args).to_csv(index=False), item.pair.item_id


def test_item_csv_quotes_tokens_like_pandas(aligned):
    item = aligned[0]
    odd = ['a,b', 'q"t', '', ' x', 'line\nbreak'] * item.length
    item = dataclasses.replace(item, str_tokens_negated=tuple(odd[: item.length]))
    effect = np.zeros((3, item.length))
    args = (item, effect, effect, 0.0, 1.0, None, None)
    text = item_csv(*args)
    assert '"a,b"' in text and '"q""t"' in text
    assert text == item_rows(*args).to_csv(index=False)


def test_written_text_reads_back_as_the_table(aligned, tmp_path):
    item = aligned[5]
    effect = _values(np.random.default_rng(1), (13, item.length))
    args = (item, effect, effect, 0.5, -0.5, "correct", 0.1)
    table = ItemTable(tmp_path)
    path = table.write(item.pair.item_id, item_csv(*args))
    assert table.done() == {str(item.pair.item_id)}
    frame = read_csv(path)
    expected = item_rows(*args)
    assert list(frame.columns) == list(expected.columns)
    np.testing.assert_array_equal(frame["effect"].to_numpy(), expected["effect"].to_numpy())  # exact round trip
