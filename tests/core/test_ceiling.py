"""The information ceiling (``tfftmol.core.ceiling``) against stage 1 and a closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tfftmol.core.ceiling import information_ceiling, information_frontier, score_groups
from tfftmol.core.risk import cvar
from tfftmol.core.threshold import TfftWarning, solve_threshold

pytestmark = pytest.mark.filterwarnings(f"ignore::{TfftWarning.__module__}.TfftWarning")  # few active samples: expected here


def _mixture(m=2000, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.0, 1.0, m * 3 // 4), rng.normal(2.5, 0.5, m - m * 3 // 4)])


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1), ("right", 0.7)])
@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0, 3.0])
def test_one_sample_per_group_is_stage_one(tail, beta, alpha):
    r = _mixture()
    c = information_ceiling(r, groups=np.arange(r.size), beta=beta, alpha=alpha, tail=tail)
    s = solve_threshold(r, beta, alpha, tail)
    assert c.value == pytest.approx(s.value, rel=1e-10, abs=1e-12)
    assert c.eta == pytest.approx(s.eta, rel=1e-6, abs=1e-6)
    assert c.cvar == pytest.approx(s.predicted_cvar, rel=1e-6)
    assert c.kl == pytest.approx(s.predicted_kl, rel=1e-4, abs=1e-8)
    assert c.weights.sum() == pytest.approx(1.0) and c.groups == r.size


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_one_group_is_the_pretrained_model(tail, beta):
    r = _mixture(seed=1)
    for kw in ({"groups": np.zeros(r.size, int)}, {"scores": np.full(r.size, 0.3)}):
        c = information_ceiling(r, beta=beta, alpha=0.2, tail=tail, **kw)
        assert c.groups == 1 and c.kl == pytest.approx(0.0, abs=1e-12)
        assert c.cvar == pytest.approx(cvar(r, beta, tail)) == pytest.approx(c.pre_cvar)
        assert c.value == pytest.approx(c.pre_cvar)  # CVaR - alpha * 0
        np.testing.assert_allclose(c.weights, 1.0 / r.size)


def test_two_groups_of_binary_rewards_match_the_closed_form():
    # r in {0, 1}; group A (30%) holds 15% ones, group B (70%) 2% ones.  While the tilted mass of ones
    # stays below 1 - beta, right-CVaR = P_q(r = 1) / (1 - beta) is linear in the group weights, so the
    # optimum tilts each group by exp(mean_b(r) / (alpha (1 - beta))).
    r = np.concatenate([np.r_[np.ones(45), np.zeros(255)], np.r_[np.ones(14), np.zeros(686)]])
    g = np.r_[np.zeros(300, int), np.ones(700, int)]
    beta, alpha = 0.8, 1.0
    p = np.array([0.3, 0.7])
    e = np.array([0.15, 0.02]) / (alpha * (1 - beta))
    q = p * np.exp(e) / np.sum(p * np.exp(e))
    pi = q @ np.array([0.15, 0.02])
    assert pi < 1 - beta
    c = information_ceiling(r, groups=g, beta=beta, alpha=alpha, tail="right")
    assert c.cvar == pytest.approx(pi / (1 - beta), rel=1e-9)
    assert c.kl == pytest.approx(float(np.sum(q * np.log(q / p))), rel=1e-9)
    assert c.value == pytest.approx(pi / (1 - beta) - alpha * float(np.sum(q * np.log(q / p))), rel=1e-9)
    np.testing.assert_allclose(c.weights[:300], q[0] / 300)


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_a_finer_grouping_never_reaches_less_and_never_more_than_stage_one(tail, beta):
    r = _mixture(m=2000, seed=2)
    rng = np.random.default_rng(3)
    score = r + rng.normal(0, 1.0, r.size)  # a noisy predictor
    rank = np.argsort(np.argsort(score, kind="stable"), kind="stable")
    g40 = rank * 40 // r.size
    values = [information_ceiling(r, groups=g, beta=beta, alpha=0.3, tail=tail).value
              for g in (np.zeros(r.size, int), g40 // 4, g40 // 2, g40, np.arange(r.size))]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:])), values
    assert values[-1] == pytest.approx(solve_threshold(r, beta, 0.3, tail).value, rel=1e-10)
    assert values[0] == pytest.approx(cvar(r, beta, tail))
    # an informative predictor reaches more than an uninformative one
    noise = information_ceiling(r, rng.normal(size=r.size), beta=beta, alpha=0.3, tail=tail, bins=10)
    good = information_ceiling(r, score, beta=beta, alpha=0.3, tail=tail, bins=10)
    assert good.value > noise.value + 0.05


def test_frontier_columns_and_the_ceiling_never_beats_stage_one():
    r = _mixture(m=3000, seed=4)
    s = r + np.random.default_rng(5).normal(0, 0.7, r.size)
    fr = information_frontier(r, s, beta=0.9, alphas=[0.1, 0.3, 1.0], tail="right", bins=15)
    assert list(fr["alpha"]) == [0.1, 0.3, 1.0] and (fr["groups"] == 15).all()
    full = fr["cvar_full"] - fr["alpha"] * fr["kl_full"]
    ceil = fr["cvar_ceiling"] - fr["alpha"] * fr["kl_ceiling"]
    assert (ceil <= full + 1e-12).all()
    assert (fr["cvar_ceiling"] > fr["pre_cvar"]).all() and (fr["kl_ceiling"] > 0).all()
    assert fr["kl_ceiling"].is_monotonic_decreasing  # a larger alpha moves less


def test_score_groups_keep_ties_together_and_balance_counts():
    g = score_groups(np.r_[np.zeros(500), np.arange(500.0)], bins=4)
    assert len(set(g[:500])) == 1  # the 500 equal scores share one group
    g2 = score_groups(np.arange(1000.0), bins=4)
    assert np.bincount(g2).tolist() == [250, 250, 250, 250]


def test_bad_arguments_name_the_value():
    r = _mixture(m=100)
    with pytest.raises(ValueError, match="exactly one of scores"):
        information_ceiling(r, beta=0.9, alpha=1.0)
    with pytest.raises(ValueError, match="scores has 3 entries but rewards has 100"):
        information_ceiling(r, [1.0, 2.0, 3.0], beta=0.9, alpha=1.0)
    with pytest.raises(ValueError, match="bins=0"):
        information_ceiling(r, r, beta=0.9, alpha=1.0, bins=0)
    with pytest.raises(ValueError, match="alpha"):
        information_ceiling(r, r, beta=0.9, alpha=-1.0)
    with pytest.raises(ValueError):
        information_ceiling(r, np.r_[r[:-1], math.nan], beta=0.9, alpha=1.0)
