"""Stage-1 threshold solver against brute force, optimality conditions and limits."""
from __future__ import annotations

import importlib.util
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit, logsumexp

from tfftmol.core.risk import cvar, var
from tfftmol.core.threshold import TfftWarning, ThresholdResult, objective, solve_threshold


# ---------------------------------------------------------------------------
# data sets, including adversarial ones
# ---------------------------------------------------------------------------

def _gmm6(m: int, seed: int = 0) -> np.ndarray:
    """Rewards of a 6-component Gaussian mixture: separated modes, unequal widths."""
    rng = np.random.default_rng(seed)
    means = np.array([-3.0, -1.5, 0.0, 1.0, 2.5, 4.0])
    stds = np.array([0.3, 0.5, 0.2, 0.4, 0.3, 0.1])
    k = rng.choice(6, size=m, p=[0.25, 0.25, 0.2, 0.15, 0.1, 0.05])
    return means[k] + stds[k] * rng.normal(size=m)


DATA = {
    "normal": lambda: np.random.default_rng(1).normal(size=300),
    "exponential": lambda: np.random.default_rng(2).exponential(size=200),
    "heavy_ties": lambda: np.random.default_rng(3).integers(0, 4, size=300).astype(float),
    "all_equal": lambda: np.full(40, 2.5),
    "around_1e6": lambda: 1e6 + np.random.default_rng(4).normal(size=300),
    "m2": lambda: np.array([0.3, 1.7]),
    "gmm6": lambda: _gmm6(400),
}
ALPHAS = [1e-4, 1e-2, 1.0, 1e6]
TAIL_BETA = [("right", 0.9), ("right", 0.5), ("left", 0.1), ("left", 0.6)]


# ---------------------------------------------------------------------------
# brute-force references (independent of the sorted solver)
# ---------------------------------------------------------------------------

def _right_derivative(r, eta, beta, alpha):
    """One-sided derivative F'(eta+) from its definition, O(M)."""
    c = 1.0 / (alpha * (1.0 - beta))
    above = r > eta
    n_below = int((~above).sum())
    if not above.any():
        return 1.0
    if n_below == 0:
        return 1.0 - 1.0 / (1.0 - beta)
    log_s = logsumexp(c * (r[above] - eta))  # log S
    return 1.0 - expit(log_s - math.log(n_below)) / (1.0 - beta)  # 1 - S / ((1-beta)(n + S))


def _reference_eta(r, beta, alpha, tail):
    if tail == "right":
        # the root of the non-decreasing one-sided derivative (a minimiser located by Brent's
        # search on F alone is accurate only to ~sqrt(machine eps) where F is flat)
        lo, hi = r.min() - 1.0, r.max() + 1.0
        return brentq(lambda e: _right_derivative(r, e, beta, alpha), lo, hi, xtol=1e-300, rtol=1e-15)
    # left: G evaluated directly (O(M^2)) at every sampled reward
    g = objective(r, r, beta, alpha, tail)
    return float(r[np.argmax(g)])


def _reference_value(r, beta, alpha, tail, n_grid=4001):
    """Optimal F (min) or G (max) from a dense grid refined by bounded Brent, on centred data."""
    ref = float(np.median(r))
    rr = r - ref  # F(eta; r) = ref + F(eta - ref; r - ref): keeps Brent's tolerance meaningful
    sign = 1.0 if tail == "right" else -1.0

    def f(e):
        return sign * objective(rr, e, beta, alpha, tail)

    pad = max(1.0, float(np.ptp(rr)))
    grid = np.linspace(rr.min() - pad, rr.max() + pad, n_grid)
    values = f(grid)
    i = int(np.argmin(values))
    h = grid[1] - grid[0]
    res = minimize_scalar(lambda d: f(grid[i] + d), bounds=(-h, h), method="bounded",
                          options={"xatol": 1e-15 * pad, "maxiter": 2000})
    # optimum, and the grid and the objective on it, on the original reward scale
    return ref + sign * min(values[i], float(res.fun)), grid + ref, ref + sign * values


def _scale(r):
    return max(1.0, float(np.ptp(r)))


def _solve(*args, **kw) -> ThresholdResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        return solve_threshold(*args, **kw)


CASES = [pytest.param(d, a, t, b, id=f"{d}-a{a:g}-{t}{b}") for d in DATA for a in ALPHAS for t, b in TAIL_BETA]


@pytest.mark.parametrize("data,alpha,tail,beta", CASES)
def test_eta_and_value_match_brute_force(data, alpha, tail, beta):
    r = DATA[data]()
    res = _solve(r, beta, alpha, tail)
    eta_ref = _reference_eta(r, beta, alpha, tail)
    value_ref, _, _ = _reference_value(r, beta, alpha, tail)
    scale = _scale(r)
    assert abs(res.eta - eta_ref) <= 1e-8 * scale
    assert abs(res.value - value_ref) <= 1e-8 * max(scale, abs(res.value - np.median(r)))
    # the reported value is the objective at the reported eta
    assert res.value == pytest.approx(objective(r, res.eta, beta, alpha, tail), abs=1e-12 * max(1.0, abs(res.value)))


@pytest.mark.parametrize("data,alpha,tail,beta", CASES)
def test_tilted_tail_mass_and_duality(data, alpha, tail, beta):
    """At eta*: tilted mass beyond eta* is the tail level (or straddles it at a kink),
    and F(eta*) = CVaR(p*) - alpha KL(p* || p_pre)."""
    r = DATA[data]()
    res = _solve(r, beta, alpha, tail)
    target = 1.0 - beta if tail == "right" else beta
    w = res.weights()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    side = r > res.eta if tail == "right" else r < res.eta
    assert res.tail_mass == pytest.approx(w[side].sum(), abs=1e-12)
    if np.any(r == res.eta):  # kink: subgradient condition
        assert res.tail_mass <= target + 1e-9
        assert res.tail_mass_incl >= target - 1e-9
    else:
        # conditioning: one ulp of eta moves the mass by c * ulp * target, c = 1/(alpha (1-beta))
        c = 1.0 / (alpha * (1.0 - beta))
        assert res.tail_mass == pytest.approx(target, abs=1e-9 + 10 * c * np.spacing(np.abs(r).max()))
    assert res.value == pytest.approx(res.predicted_cvar - alpha * res.predicted_kl,
                                      abs=1e-9 * max(1.0, abs(res.value)))
    assert res.predicted_cvar == pytest.approx(cvar(r, beta, tail, weights=w), abs=1e-9 * _scale(r) * max(1, abs(res.value)))
    # the pre-trained distribution is feasible with KL = 0, so the optimum is at least its CVaR
    assert res.value >= res.pre_cvar - 1e-9 * max(1.0, abs(res.value))


@pytest.mark.parametrize("data", ["normal", "gmm6", "heavy_ties", "exponential"])
@pytest.mark.parametrize("alpha", [1e-3, 0.05, 1.0, 100.0])
@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_left_maximum_sits_at_a_sampled_reward(data, alpha, beta):
    """G is convex between sorted rewards: no grid point or refined point beats the best kink."""
    r = DATA[data]()
    res = _solve(r, beta, alpha, "left")
    assert np.any(r == res.eta)
    value_ref, grid, values = _reference_value(r, beta, alpha, "left", n_grid=20001)
    tol = 1e-10 * max(1.0, abs(res.value))
    assert values.max() <= res.value + tol  # dense grid never beats the kink
    mids = 0.5 * (np.unique(r)[1:] + np.unique(r)[:-1])  # interval midpoints
    if mids.size:
        assert objective(r, mids, beta, alpha, "left").max() <= res.value + tol
    assert value_ref == pytest.approx(res.value, abs=1e-8 * max(1.0, abs(res.value)))


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("right", 0.3), ("left", 0.1), ("left", 0.7)])
def test_large_alpha_limit_is_var_and_cvar(tail, beta):
    """alpha -> inf: eta* -> VaR_beta of the samples and F(eta*) -> the empirical CVaR (O(1/alpha))."""
    r = np.random.default_rng(7).normal(size=1001)  # beta * M not an integer: unique quantile
    results = [_solve(r, beta, a, tail) for a in (1e2, 1e4, 1e6)]
    gaps = [abs(res.value - cvar(r, beta, tail)) for res in results]
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3
    assert results[-1].eta == pytest.approx(var(r, beta, tail), abs=1e-12)
    assert results[-1].predicted_kl < 1e-6


def test_small_alpha_right_tends_to_max():
    """alpha -> 0 (right): F(eta*) -> max r, squeezed between the point mass on the best
    sample (CVaR max r, KL log M) and max r itself."""
    r = np.random.default_rng(8).normal(size=500)
    alpha = 1e-6
    res = _solve(r, 0.9, alpha, "right")
    assert r.max() - alpha * math.log(r.size) - 1e-12 <= res.value <= r.max()
    assert res.active_fraction == pytest.approx(1 / r.size)  # only the best sample is active


def test_reward_order_and_types_do_not_matter():
    r = _gmm6(500, seed=3)
    perm = np.random.default_rng(0).permutation(r.size)
    a = _solve(r, 0.8, 0.3, "right")
    b = _solve(r[perm], 0.8, 0.3, "right")
    c = _solve(torch.tensor(r, dtype=torch.float64), 0.8, 0.3, "right")
    assert a.eta == b.eta == c.eta and a.value == pytest.approx(b.value, rel=1e-14)
    np.testing.assert_allclose(b.weights(), a.weights()[perm], rtol=1e-12, atol=1e-300)
    assert a.ess == pytest.approx(1.0 / np.sum(a.weights() ** 2), rel=1e-12)
    assert a.ess_fraction == pytest.approx(a.ess / r.size)


def test_objective_is_vectorised():
    r = np.random.default_rng(9).normal(size=50)
    etas = np.linspace(-2, 2, 12).reshape(3, 4)
    out = objective(r, etas, 0.7, 0.5, "right")
    assert out.shape == (3, 4)
    assert out[1, 2] == pytest.approx(objective(r, float(etas[1, 2]), 0.7, 0.5, "right"), rel=1e-14)
    assert isinstance(objective(r, 0.0, 0.7, 0.5, "left"), float)


# ---------------------------------------------------------------------------
# diagnostics, warnings, bootstrap
# ---------------------------------------------------------------------------

def test_starved_tail_warns_in_plain_words():
    r = _gmm6(10_000)
    with pytest.warns(TfftWarning) as rec:
        res = solve_threshold(r, beta=0.9, alpha=0.01, tail="right")
    assert res.active_fraction < 0.01
    assert len(res.warnings) == 2 and [str(w.message) for w in rec] == list(res.warnings)
    assert re.search(r"lie above eta\*=.*increase alpha .*lower beta", res.warnings[0])
    assert "10000 pre-trained samples" in res.warnings[0]
    assert "effective sample size" in res.warnings[1]
    assert "warnings:" in res.summary()


def test_healthy_threshold_does_not_warn():
    r = _gmm6(10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TfftWarning)
        res = solve_threshold(r, beta=0.9, alpha=5.0, tail="right")
    assert res.warnings == ()
    assert res.active_fraction >= 0.01 and res.ess_fraction >= 0.01


def test_bootstrap_is_seeded_and_wider_at_small_alpha():
    r = np.random.default_rng(11).normal(size=2000)
    a = _solve(r, 0.9, 0.05, "right", bootstrap=60, seed=5)
    b = _solve(r, 0.9, 0.05, "right", bootstrap=60, seed=5)
    wide = a.eta_interval[1] - a.eta_interval[0]
    assert a.eta_interval == b.eta_interval and a.eta_se == b.eta_se
    c = _solve(r, 0.9, 20.0, "right", bootstrap=60, seed=5)
    assert c.eta_interval[0] <= c.eta_interval[1]
    assert wide > 2 * (c.eta_interval[1] - c.eta_interval[0])
    assert _solve(r, 0.9, 1.0, "right").eta_interval is None


def test_summary_and_as_dict():
    res = _solve(np.random.default_rng(12).normal(size=1000), 0.9, 5.0, "right", bootstrap=10, seed=0)
    text = str(res)
    for key in ("eta*", "bootstrap", "predicted CVaR", "predicted KL", "active fraction", "ESS", "target 0.1"):
        assert key in text
    d = res.as_dict()
    assert d["eta"] == res.eta and d["eta_low"] == res.eta_interval[0] and "rewards" not in d
    assert res.rewards.flags.writeable is False


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------

R = np.array([0.0, 1.0, 2.0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(beta=0.0), r"beta=0\.0 .*\(0, 1\)"),
    (dict(beta=1.0), r"beta=1\.0 .*\(0, 1\)"),
    (dict(beta=-0.2), r"beta=-0\.2 .*\(0, 1\)"),
    (dict(beta=float("nan")), r"beta=nan .*\(0, 1\)"),
    (dict(alpha=0.0), r"alpha=0\.0 .*> 0"),
    (dict(alpha=-1.0), r"alpha=-1\.0 .*> 0"),
    (dict(alpha=float("inf")), r"alpha=inf .*finite"),
    (dict(alpha=1e-300), r"alpha=1e-300 .*alpha >= 1e-290"),
    (dict(tail="top"), r"tail='top' .*\('right', 'left'\)"),
    (dict(rewards=[0.0, float("nan"), 1.0]), r"rewards\[1\]=nan"),
    (dict(rewards=[0.0, float("inf")]), r"rewards\[1\]=inf"),
    (dict(rewards=[1.0]), r"1 entries; at least 2"),
    (dict(rewards=np.zeros((2, 2))), r"shape \(2, 2\)"),
    (dict(bootstrap=-1), r"bootstrap=-1 .*>= 0"),
    (dict(min_active_fraction=2.0), r"min_active_fraction=2\.0 .*\[0, 1\]"),
])
def test_invalid_input_raises_with_value_and_range(kwargs, match):
    args = dict(rewards=R, beta=0.9, alpha=1.0, tail="right") | kwargs
    with pytest.raises(ValueError, match=match):
        solve_threshold(**args)


# ---------------------------------------------------------------------------
# the speed benchmark's quick mode
# ---------------------------------------------------------------------------

def test_speed_benchmark_quick(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "threshold_speed.py"
    spec = importlib.util.spec_from_file_location("threshold_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "threshold_speed.csv").is_file()
    assert (tmp_path / "threshold_speed.md").is_file()
    rows = out["rows"]
    assert {row["tail"] for row in rows} == {"right", "left"}
    for row in rows:
        assert row["n"] == 10_000 and row["exact_s"] > 0 and row["scipy_s"] > 0
        # the exact optimum is never worse than the generic search (F minimised, G maximised)
        better = row["value_scipy"] - row["value_exact"] if row["tail"] == "right" else row["value_exact"] - row["value_scipy"]
        assert better >= -1e-9 * max(1.0, abs(row["value_exact"]))
