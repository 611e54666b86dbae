"""Ideal-word decomposition maths on synthetic embeddings, against plain loops over the formula."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from probes.ideal_words.decomposition import (
    DecompositionError,
    alphas_from_mapping,
    compositionality_metrics,
    decompose,
    mean_pairwise_sq_distance,
    numerical_rank,
    parse_alpha_args,
    real_word_distance,
    residual_norms,
)


def planted_grid(shape, d=40, seed=0, noise=0.0):
    """u_z = c + sum_i f_i[z_i] (+ noise): exactly decomposable when noise == 0."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    factors = [torch.randn(n, d, generator=g, dtype=torch.float64) for n in shape]
    grid = c.expand(*shape, d).clone()
    for i, f in enumerate(factors):
        view = [1] * len(shape) + [d]
        view[i] = shape[i]
        grid = grid + f.reshape(view)
    grid = grid + noise * torch.randn(*shape, d, generator=g, dtype=torch.float64)
    return grid, c, factors


def reference_decomposition(grid, alphas):
    """Proposition 4 written as plain loops over combinations, with the 1/alpha division."""
    shape = grid.shape[:-1]
    combos = list(itertools.product(*(range(n) for n in shape)))

    def beta(z):
        return float(np.prod([alphas[i][zi] for i, zi in enumerate(z)]))

    u0 = sum(beta(z) * grid[z] for z in combos)
    words = []
    for i, n in enumerate(shape):
        rows = []
        for v in range(n):
            acc = sum(beta(z) * grid[z] for z in combos if z[i] == v)
            rows.append(acc / alphas[i][v] - u0)
        words.append(torch.stack(rows))
    approx = torch.stack([u0 + sum(words[i][zi] for i, zi in enumerate(z)) for z in combos])
    return u0, words, approx.reshape(grid.shape)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5), (4, 2, 2, 3)])
def test_exactly_decomposable_grid_is_recovered(shape):
    grid, c, factors = planted_grid(shape)
    dec = decompose(grid)
    # with uniform weights the ideal words are the planted factors minus their means
    for f, w in zip(factors, dec.ideal_words):
        torch.testing.assert_close(w, f - f.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(dec.u0, c + sum(f.mean(0) for f in factors), atol=1e-6, rtol=0)
    torch.testing.assert_close(dec.approx, grid, atol=1e-6, rtol=0)
    m = compositionality_metrics(grid)
    assert m["IW"] < 1e-6
    assert m["r2"] == pytest.approx(1.0, abs=1e-12)
    assert m["rank_eps"] <= m["rank_bound"] == 1 + sum(n - 1 for n in shape)
    assert m["rank_eps"] == m["rank_bound"]  # generic random factors fill the bound
    assert m["effective_rank"] <= m["rank_bound"]


def test_iw_grows_with_noise():
    ivs = [compositionality_metrics(planted_grid((4, 5), noise=s, seed=3)[0])["IW"]
           for s in (0.0, 0.01, 0.05, 0.2, 1.0)]
    assert ivs[0] < 1e-6
    assert all(b > a for a, b in zip(ivs, ivs[1:])), ivs
    # the machine-epsilon rank leaves the bound as soon as there is noise; the effective rank does not
    noisy = compositionality_metrics(planted_grid((4, 5), noise=0.01)[0])
    assert noisy["rank_eps"] == 20 and noisy["effective_rank"] <= noisy["rank_bound"] == 8


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_loop_with_random_weights(seed):
    shape = (3, 2, 4)
    grid, _, _ = planted_grid(shape, d=7, seed=seed, noise=0.5)
    g = torch.Generator().manual_seed(10 + seed)
    alphas = [torch.rand(n, generator=g, dtype=torch.float64) + 0.1 for n in shape]
    alphas = [a / a.sum() for a in alphas]
    dec = decompose(grid, alphas)
    u0, words, approx = reference_decomposition(grid, [a.tolist() for a in alphas])
    torch.testing.assert_close(dec.u0, u0, atol=1e-12, rtol=0)
    for w, r in zip(dec.ideal_words, words):
        torch.testing.assert_close(w, r, atol=1e-12, rtol=0)
    torch.testing.assert_close(dec.approx, approx, atol=1e-12, rtol=0)


def test_weighted_decomposition_minimises_weighted_error():
    """Proposition 4: no other decomposable vector set has a lower beta-weighted squared error."""
    shape = (3, 4)
    grid, _, _ = planted_grid(shape, d=6, noise=0.7, seed=5)
    alphas = [torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
              torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)]
    beta = alphas[0][:, None] * alphas[1][None, :]
    dec = decompose(grid, alphas)
    best = float((beta * (grid - dec.approx).pow(2).sum(-1)).sum())
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = dec.ideal_words[0] + 0.05 * torch.randn(3, 6, generator=g, dtype=torch.float64)
        b = dec.ideal_words[1] + 0.05 * torch.randn(4, 6, generator=g, dtype=torch.float64)
        other = dec.u0 + a[:, None] + b[None, :]
        assert float((beta * (grid - other).pow(2).sum(-1)).sum()) > best


def test_knob_alpha_house_equals_one_worked_example():
    """alpha_house = 1: u_green = u_{green house} - u_0 with u_0 = sum_c alpha_c u_{c house};
    u_house = 0 and the house row is reproduced exactly (green means green-as-in-greenhouse)."""
    colours, objects = ["red", "green", "blue"], ["car", "house", "cup"]
    grid, _, _ = planted_grid((3, 3), d=9, noise=0.8, seed=7)
    colour_alpha = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    alphas = alphas_from_mapping([colours, objects], ["colour", "object"], {"object": {"house": 1.0}})
    assert alphas[0] is None and alphas[1].tolist() == [0.0, 1.0, 0.0]
    dec = decompose(grid, [colour_alpha, alphas[1]])
    house = objects.index("house")
    u0 = sum(colour_alpha[c] * grid[c, house] for c in range(3))
    torch.testing.assert_close(dec.u0, u0, atol=1e-12, rtol=0)
    g = colours.index("green")
    torch.testing.assert_close(dec.ideal_words[0][g], grid[g, house] - u0, atol=1e-12, rtol=0)
    torch.testing.assert_close(dec.ideal_words[1][house], torch.zeros(9, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    # the car word is the colour-weighted car mean minus the colour-weighted house mean
    car = objects.index("car")
    expect_car = sum(colour_alpha[c] * grid[c, car] for c in range(3)) - u0
    torch.testing.assert_close(dec.ideal_words[1][car], expect_car, atol=1e-12, rtol=0)
    torch.testing.assert_close(dec.approx[:, house], grid[:, house], atol=1e-12, rtol=0)


def test_uniform_default_is_plain_means():
    grid, _, _ = planted_grid((3, 5), d=4, noise=1.0, seed=2)
    dec = decompose(grid)
    torch.testing.assert_close(dec.u0, grid.reshape(-1, 4).mean(0))
    torch.testing.assert_close(dec.ideal_words[0], grid.mean(1) - grid.reshape(-1, 4).mean(0))
    torch.testing.assert_close(dec.ideal_words[1], grid.mean(0) - grid.reshape(-1, 4).mean(0))


def test_metrics_against_plain_loops():
    grid, _, _ = planted_grid((3, 4), d=5, noise=0.3, seed=11)
    flat = grid.reshape(-1, 5)
    pairs = [(i, j) for i in range(12) for j in range(i + 1, 12)]
    avg = sum(float((flat[i] - flat[j]).pow(2).sum()) for i, j in pairs) / len(pairs)
    assert mean_pairwise_sq_distance(flat) == pytest.approx(avg, rel=1e-10)
    singles = [torch.randn(3, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)]
    rw = real_word_distance(grid, singles)
    for a in range(3):
        for o in range(4):
            expect = float((grid[a, o] - (singles[0][a] + singles[1][o]) / 2).norm())
            assert float(rw[a, o]) == pytest.approx(expect, rel=1e-12)
    m = compositionality_metrics(grid, single_words=singles)
    assert m["RW"] == pytest.approx(float(rw.mean()), rel=1e-12)
    dec = decompose(grid)
    assert m["IW"] == pytest.approx(float(residual_norms(grid, dec).mean()), rel=1e-12)


def test_numerical_rank():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(10, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    assert numerical_rank(low) == 3
    assert numerical_rank(torch.zeros(4, 4)) == 0


def test_bad_inputs_have_clear_errors():
    with pytest.raises(DecompositionError, match="at least two values"):
        decompose(torch.zeros(1, 3, 4))
    with pytest.raises(DecompositionError, match="one axis per factor"):
        decompose(torch.zeros(5))
    with pytest.raises(DecompositionError, match=">= 0"):
        decompose(torch.zeros(2, 2, 3), [[1.0, -1.0], None])
    with pytest.raises(DecompositionError, match="3 entries"):
        decompose(torch.zeros(2, 2, 3), [[1.0, 1.0, 1.0], None])
    with pytest.raises(DecompositionError, match="NaN"):
        decompose(torch.full((2, 2, 3), float("nan")))
    with pytest.raises(DecompositionError, match="FACTOR:VALUE=WEIGHT"):
        parse_alpha_args(["house=1"])
    assert parse_alpha_args(["object:house=1", "colour:red=0.5,blue=0.5"]) == {
        "object": {"house": 1.0}, "colour": {"red": 0.5, "blue": 0.5}}
    with pytest.raises(DecompositionError, match="unknown value"):
        alphas_from_mapping([["a", "b"]], ["x"], {"x": {"c": 1.0}})


def flat_decomposable_grid(shape, d=40):
    """u_z = c + sum_i f_i[z_i] with every ideal word of one norm and all of them orthogonal: the spread
    around u_0 is flat over sum(n_i - 1) directions, each holding the same share."""
    basis = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(7), dtype=torch.float64))[0]
    grid, start = 3.0 * basis[:, -1].expand(*shape, d).clone(), 0
    for i, n in enumerate(shape):
        # n values whose deviations from their mean span n - 1 orthogonal equal-norm directions (a simplex)
        simplex = torch.eye(n, dtype=torch.float64) - 1.0 / n
        q = torch.linalg.qr(simplex)[0][:, : n - 1]  # [n, n-1] orthonormal basis of the centred space
        # [n, n-1] regular simplex, unit spread per axis; x sqrt(n) because the grid repeats it N / n times
        coords = simplex @ q * n ** 0.5
        f = coords @ basis[:, start:start + n - 1].T
        start += n - 1
        view = [1] * len(shape) + [d]
        view[i] = n
        grid = grid + f.reshape(view)
    return grid


@pytest.mark.parametrize("shape", [(4, 5), (3, 2, 4), (6, 6)])
def test_effective_rank_of_an_exactly_decomposable_set_equals_the_bound(shape):
    m = compositionality_metrics(flat_decomposable_grid(shape))
    assert m["IW"] < 1e-9
    assert m["effective_rank"] == m["rank_bound"] == 1 + sum(n - 1 for n in shape)
    # by hand: the centred spread is flat, so every direction holds 1 / sum(n_i - 1) of it
    flat = flat_decomposable_grid(shape).reshape(-1, 40)
    energy = torch.linalg.svdvals(flat - flat.mean(0)).pow(2)
    k = sum(n - 1 for n in shape)
    torch.testing.assert_close(energy[:k] / energy.sum(), torch.full((k,), 1.0 / k, dtype=torch.float64))
    # a random (non-decomposable) set needs more directions than the bound
    noise = torch.randn(*shape, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert compositionality_metrics(noise)["effective_rank"] > m["rank_bound"]
