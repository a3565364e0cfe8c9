"""Empirical VaR and CVaR: closed forms, weighting identities, symmetry, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tfftmol.core.risk import cvar, var


def _rewards(m: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=m)


# (M, beta) with beta * M an integer, so the tails hold whole samples
INTEGER_CASES = [(10, 0.1), (10, 0.5), (10, 0.9), (100, 0.25), (1000, 0.9), (1000, 0.01), (40, 0.75)]


@pytest.mark.parametrize("m,beta", INTEGER_CASES)
@pytest.mark.parametrize("tail", ["right", "left"])
def test_cvar_is_sort_and_mean_when_beta_m_is_integer(m, beta, tail):
    r = _rewards(m, seed=m)
    s = np.sort(r)
    k = round(beta * m)
    expected = s[k:].mean() if tail == "right" else s[:k].mean()
    assert cvar(r, beta, tail) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("tail,expected", [("right", (3.0 + 0.5 * 2.0) / 1.5), ("left", (1.0 + 0.5 * 2.0) / 1.5)])
def test_boundary_atom_counts_fractionally(tail, expected):
    """M = 3, tail mass 0.5 = 1.5 samples: the middle sample counts with weight 0.5."""
    assert cvar([2.0, 3.0, 1.0], 0.5, tail) == pytest.approx(expected, rel=1e-14)


def _ru_objective(r, w, beta, tail):
    """Rockafellar-Uryasev form, optimised over eta at the sampled rewards (where the
    piecewise-linear optimum sits): an independent reference for the weighted CVaR."""
    eta = r[:, None]
    if tail == "right":
        return float(np.min(eta[:, 0] + (w * np.maximum(r - eta, 0.0)).sum(1) / (1 - beta)))
    return float(np.max(eta[:, 0] - (w * np.maximum(eta - r, 0.0)).sum(1) / beta))


@pytest.mark.parametrize("m", [1, 2, 7, 37, 200])
@pytest.mark.parametrize("beta", [0.05, 0.33, 0.5, 0.9])
@pytest.mark.parametrize("tail", ["right", "left"])
def test_cvar_matches_rockafellar_uryasev(m, beta, tail):
    rng = np.random.default_rng(m)
    r = rng.normal(size=m)
    w = rng.exponential(size=m)
    w /= w.sum()
    assert cvar(r, beta, tail) == pytest.approx(_ru_objective(r, np.full(m, 1 / m), beta, tail), rel=1e-12, abs=1e-12)
    assert cvar(r, beta, tail, weights=w) == pytest.approx(_ru_objective(r, w, beta, tail), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("m", [5, 37, 101])
@pytest.mark.parametrize("beta", [0.1, 0.37, 0.9])
@pytest.mark.parametrize("tail", ["right", "left"])
def test_uniform_weights_equal_plain(m, beta, tail):
    r = _rewards(m, seed=m + 1)
    assert cvar(r, beta, tail, weights=np.full(m, 3.0)) == pytest.approx(cvar(r, beta, tail), rel=1e-12, abs=1e-12)
    assert var(r, beta, tail, weights=np.ones(m)) == var(r, beta, tail)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.85])
@pytest.mark.parametrize("tail", ["right", "left"])
def test_integer_weights_equal_repeated_samples(seed, beta, tail):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=30)
    counts = rng.integers(0, 4, size=30)  # zeros drop samples
    counts[0] = max(counts[0], 1)
    rep = np.repeat(r, counts)
    assert cvar(r, beta, tail, weights=counts) == pytest.approx(cvar(rep, beta, tail), rel=1e-12, abs=1e-12)
    assert var(r, beta, tail, weights=counts) == var(rep, beta, tail)


@pytest.mark.parametrize("m,beta", [(10, 0.3), (11, 0.3), (100, 0.9), (7, 0.5)])
def test_tail_symmetry(m, beta):
    """right-CVaR_beta(r) = -left-CVaR_{1-beta}(-r), and likewise for VaR."""
    r = _rewards(m, seed=3)
    assert cvar(r, beta, "right") == pytest.approx(-cvar(-r, 1 - beta, "left"), rel=1e-12)
    assert var(r, beta, "right") == -var(-r, 1 - beta, "left")


@pytest.mark.parametrize("beta,tail,expected", [
    (0.25, "right", 1.0), (0.25, "left", 2.0),  # beta M = 1: the quantile is any point in [1, 2]
    (0.3, "right", 2.0), (0.3, "left", 2.0),    # beta M = 1.2: unique quantile
    (0.75, "right", 3.0), (0.75, "left", 4.0),
])
def test_var_quantile_convention(beta, tail, expected):
    assert var([4.0, 1.0, 3.0, 2.0], beta, tail) == expected


@pytest.mark.parametrize("tail", ["right", "left"])
def test_cvar_bounds_var(tail):
    r = _rewards(500, seed=9)
    if tail == "right":
        assert var(r, 0.9, tail) <= cvar(r, 0.9, tail) <= r.max()
    else:
        assert r.min() <= cvar(r, 0.1, tail) <= var(r, 0.1, tail)


def test_torch_and_list_inputs():
    r = _rewards(50)
    expected = cvar(r, 0.8, "right")
    assert cvar(torch.tensor(r, dtype=torch.float32), 0.8, "right") == pytest.approx(expected, rel=1e-6)
    assert cvar(torch.tensor(r), 0.8, "right") == expected
    assert cvar(list(r), 0.8, "right") == expected
    assert isinstance(cvar(r, 0.8), float) and isinstance(var(r, 0.8), float)


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta=0.0), r"beta=0\.0 .*\(0, 1\)"),
    (dict(beta=1.0), r"beta=1\.0 .*\(0, 1\)"),
    (dict(beta=float("nan")), r"beta=nan .*\(0, 1\)"),
    (dict(beta="high"), r"beta='high' .*\(0, 1\)"),
    (dict(tail="upper"), r"tail='upper' .*\('right', 'left'\)"),
    (dict(rewards=[]), r"0 entries; at least 1"),
    (dict(rewards=[1.0, float("nan")]), r"rewards\[1\]=nan"),
    (dict(rewards=[float("-inf"), 1.0]), r"rewards\[0\]=-inf"),
    (dict(weights=[1.0, -1.0, 1.0]), r"weights\[1\]=-1\.0"),
    (dict(weights=[0.0, 0.0, 0.0]), r"sum to 0\.0.*> 0"),
    (dict(weights=[1.0, 1.0]), r"shape \(2,\).*\(3,\)"),
    (dict(weights=[1.0, float("inf"), 1.0]), r"weights\[1\]=inf"),
])
@pytest.mark.parametrize("fn", [cvar, var])
def test_invalid_input_raises_with_value_and_range(fn, kwargs, match):
    args = dict(rewards=[0.0, 1.0, 2.0], beta=0.5, tail="right") | kwargs
    with pytest.raises(ValueError, match=match):
        fn(**args)
