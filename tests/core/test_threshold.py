"""Stage-1 threshold solver against brute force, optimality conditions and limits."""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, minimize_scalar
from scipy.special import expit, logsumexp

from tfftmol.core.risk import cvar, var
from tfftmol.core.threshold import TfftWarning, ThresholdResult, objective, solve_threshold
from helpers.bench import load_benchmark


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
    mod = load_benchmark("threshold_speed")
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


# ---------------------------------------------------------------------------
# importance weights (log_weights)
# ---------------------------------------------------------------------------

from scipy.stats import norm  # noqa: E402

from tfftmol.core.threshold import _solve_sorted  # noqa: E402


def _log_weights(data: str, seed: int = 0, spread: float = 2.0) -> np.ndarray:
    r = DATA[data]()
    return np.random.default_rng(100 + seed).normal(scale=spread, size=r.size)


def _weighted_right_derivative(r, lw, eta, beta, alpha):
    """One-sided derivative F'(eta+) of the weighted objective from its definition, in log space."""
    c = 1.0 / (alpha * (1.0 - beta))
    above = r > eta
    if not above.any():
        return 1.0
    if above.all():
        return 1.0 - 1.0 / (1.0 - beta)
    log_s = logsumexp(lw[above] + c * (r[above] - eta))  # log sum_above w exp(c (r - eta))
    log_wb = logsumexp(lw[~above])  # log W_below
    return 1.0 - expit(log_s - log_wb) / (1.0 - beta)


def _weighted_objective_naive(r, lw, etas, beta, alpha, tail):
    """F or G from scipy's log-sum-exp, O(K M), independent of tfftmol's objective()."""
    etas = np.atleast_1d(np.asarray(etas, dtype=float))
    if tail == "right":
        x = np.maximum(r[None, :] - etas[:, None], 0.0) / (alpha * (1.0 - beta))
    else:
        x = -np.maximum(etas[:, None] - r[None, :], 0.0) / (alpha * beta)
    return etas + alpha * (logsumexp(x + lw[None, :], axis=1) - logsumexp(lw))


def _weighted_reference_eta(r, lw, beta, alpha, tail):
    if tail == "right":
        lo, hi = r.min() - 1.0, r.max() + 1.0
        return brentq(lambda e: _weighted_right_derivative(r, lw, e, beta, alpha), lo, hi, xtol=1e-300, rtol=1e-15)
    # left: the weighted G at every kink (tfftmol's direct O(M^2) evaluation), best one
    g = objective(r, r, beta, alpha, tail, log_weights=lw)
    return float(r[np.argmax(g)])


def _weighted_reference_value(r, lw, beta, alpha, tail, n_grid=2001):
    """Optimal weighted F (min) / G (max): dense grid refined by bounded Brent, on centred data."""
    ref = float(np.median(r))
    rr = r - ref
    sign = 1.0 if tail == "right" else -1.0

    def f(e):
        return sign * objective(rr, e, beta, alpha, tail, log_weights=lw)

    pad = max(1.0, float(np.ptp(rr)))
    grid = np.linspace(rr.min() - pad, rr.max() + pad, n_grid)
    values = f(grid)
    i = int(np.argmin(values))
    h = grid[1] - grid[0]
    res = minimize_scalar(lambda d: f(grid[i] + d), bounds=(-h, h), method="bounded",
                          options={"xatol": 1e-15 * pad, "maxiter": 2000})
    return ref + sign * min(values[i], float(res.fun))


@pytest.mark.parametrize("tail,beta", TAIL_BETA)
@pytest.mark.parametrize("const", [0.0, 7.3, -500.0, 1e5])
@pytest.mark.parametrize("data", ["normal", "heavy_ties", "around_1e6", "m2"])
def test_constant_log_weights_are_exactly_unweighted(data, const, tail, beta):
    r = DATA[data]()
    for alpha in (1e-3, 1.0, 1e6):
        a = _solve(r, beta, alpha, tail, bootstrap=3, seed=1)
        b = _solve(r, beta, alpha, tail, bootstrap=3, seed=1, log_weights=np.full(r.size, const))
        assert a.is_ess is None and b.is_ess == r.size
        for key in ("eta", "value", "pre_var", "pre_cvar", "active_fraction", "active_count_fraction", "ess",
                    "predicted_cvar", "predicted_kl", "tail_mass", "tail_mass_incl", "eta_interval"):
            assert getattr(a, key) == getattr(b, key), key
        np.testing.assert_array_equal(a.weights(), b.weights())
        assert objective(r, a.eta, beta, alpha, tail) == pytest.approx(
            objective(r, a.eta, beta, alpha, tail, log_weights=np.full(r.size, const)), abs=1e-12 * _scale(r))


@pytest.mark.parametrize("tail,beta", TAIL_BETA)
@pytest.mark.parametrize("data", list(DATA))
def test_weighted_code_path_with_unit_weights_matches_unweighted(data, tail, beta):
    """The weighted sums (not the constant-weight shortcut) with w = 1 reproduce the unweighted solve."""
    rs = np.sort(DATA[data]())
    for alpha in ALPHAS:
        eta_u = _solve_sorted(rs, beta, alpha, tail)
        eta_w = _solve_sorted(rs, beta, alpha, tail, np.zeros(rs.size))
        assert abs(eta_w - eta_u) <= 1e-9 * _scale(rs)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("tail,beta", TAIL_BETA)
@pytest.mark.parametrize("data", list(DATA))
def test_integer_weights_equal_repeated_samples(data, tail, beta, alpha):
    r = DATA[data]()
    k = np.random.default_rng(21).integers(1, 5, size=r.size)
    a = _solve(r, beta, alpha, tail, log_weights=np.log(k))
    b = _solve(np.repeat(r, k), beta, alpha, tail)
    scale = _scale(r)
    assert abs(a.eta - b.eta) <= 1e-8 * scale
    assert abs(a.value - b.value) <= 1e-8 * max(scale, abs(a.value - np.median(r)))
    for key in ("pre_var", "pre_cvar", "active_fraction", "predicted_cvar", "tail_mass"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-8 * max(1.0, abs(getattr(b, key)))), key
    assert a.predicted_kl == pytest.approx(b.predicted_kl, abs=1e-8 * max(1.0, b.predicted_kl))
    assert a.active_count_fraction == pytest.approx(np.mean(r > a.eta if tail == "right" else r < a.eta))
    assert a.is_ess == pytest.approx(k.sum() ** 2 / np.sum(k.astype(float) ** 2), rel=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("tail,beta", TAIL_BETA)
@pytest.mark.parametrize("data", list(DATA))
def test_random_weights_match_weighted_brute_force(data, tail, beta, alpha):
    r, lw = DATA[data](), _log_weights(data)
    res = _solve(r, beta, alpha, tail, log_weights=lw)
    scale = _scale(r)
    assert abs(res.eta - _weighted_reference_eta(r, lw, beta, alpha, tail)) <= 1e-8 * scale
    value_ref = _weighted_reference_value(r, lw, beta, alpha, tail)
    assert abs(res.value - value_ref) <= 1e-8 * max(scale, abs(res.value - np.median(r)))
    assert res.value == pytest.approx(objective(r, res.eta, beta, alpha, tail, log_weights=lw),
                                      abs=1e-12 * max(1.0, abs(res.value)))
    # tilt diagnostics: combined weights v exp(pseudo / alpha), KL against the weighted distribution
    v = np.exp(lw - lw.max())
    v /= v.sum()
    w = res.weights()
    if tail == "right":
        x = np.maximum(r - res.eta, 0.0) / (alpha * (1.0 - beta))  # pseudo / alpha
    else:
        x = -np.maximum(res.eta - r, 0.0) / (alpha * beta)
    log_w = lw + x - logsumexp(lw + x)  # log of the combined tilt weights, from scratch
    log_v = lw - logsumexp(lw)
    np.testing.assert_allclose(w, np.exp(log_w), rtol=1e-10, atol=1e-300)
    assert res.ess == pytest.approx(1.0 / np.sum(w ** 2), rel=1e-10)
    assert res.is_ess == pytest.approx(1.0 / np.sum(v ** 2), rel=1e-10)
    side = r > res.eta if tail == "right" else r < res.eta
    assert res.active_fraction == pytest.approx(v[side].sum(), abs=1e-12)
    assert res.active_count_fraction == pytest.approx(side.mean(), abs=1e-15)
    assert res.tail_mass == pytest.approx(w[side].sum(), abs=1e-12)
    target = 1.0 - beta if tail == "right" else beta
    if np.any(r == res.eta):
        assert res.tail_mass <= target + 1e-9 <= res.tail_mass_incl + 2e-9
    else:
        c = 1.0 / (alpha * (1.0 - beta))
        assert res.tail_mass == pytest.approx(target, abs=1e-9 + 10 * c * np.spacing(np.abs(r).max()))
    assert res.predicted_kl == pytest.approx(float(np.sum(np.exp(log_w) * (log_w - log_v))),
                                             abs=1e-9 * max(1.0, res.predicted_kl))
    assert res.value == pytest.approx(res.predicted_cvar - alpha * res.predicted_kl, abs=1e-9 * max(1.0, abs(res.value)))
    assert res.predicted_cvar == pytest.approx(cvar(r, beta, tail, weights=w), abs=1e-9 * scale * max(1, abs(res.value)))
    assert res.pre_cvar == pytest.approx(cvar(r, beta, tail, weights=v), abs=1e-12 * max(scale, abs(res.pre_cvar)))
    assert res.pre_var == var(r, beta, tail, weights=v)
    assert res.value >= res.pre_cvar - 1e-9 * max(1.0, abs(res.value))


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
@pytest.mark.parametrize("alpha", [1e-3, 0.1, 10.0])
def test_objective_log_weights_match_naive_logsumexp(tail, beta, alpha):
    r, lw = _gmm6(300, seed=5), np.random.default_rng(6).normal(scale=50.0, size=300)
    etas = np.linspace(-4, 5, 37)
    np.testing.assert_allclose(objective(r, etas, beta, alpha, tail, log_weights=lw),
                               _weighted_objective_naive(r, lw, etas, beta, alpha, tail), rtol=0, atol=1e-12 * 5)


@pytest.mark.parametrize("tail,beta", TAIL_BETA)
@pytest.mark.parametrize("alpha", [1e-4, 0.05, 1.0, 1e6])
@pytest.mark.parametrize("offset", [500.0, -500.0])
def test_huge_log_weights_are_stable(offset, alpha, tail, beta):
    """Log-weights spanning 600 nats, shifted by +-500: no overflow, and the brute force agrees."""
    r = _gmm6(300, seed=9)
    rng = np.random.default_rng(10)
    lw = rng.uniform(-300.0, 300.0, size=r.size)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        base = _solve(r, beta, alpha, tail, log_weights=lw)
        res = _solve(r, beta, alpha, tail, log_weights=lw + offset, bootstrap=5, seed=0)
        # the extreme case: almost all weight on one sample, the rest 700 nats lighter
        lone = np.full(r.size, offset - 700.0)
        lone[int(np.argmin(np.abs(r)))] = offset
        one = _solve(r, beta, alpha, tail, log_weights=lone)
    scale = _scale(r)
    assert all(math.isfinite(getattr(res, key)) for key in
               ("eta", "value", "ess", "is_ess", "predicted_cvar", "predicted_kl", "pre_cvar", "pre_var"))
    assert abs(res.eta - base.eta) <= 1e-10 * scale and abs(res.value - base.value) <= 1e-10 * scale
    assert abs(res.eta - _weighted_reference_eta(r, lw + offset, beta, alpha, tail)) <= 1e-8 * scale
    # (the naive log-sum-exp reference loses ~alpha * 1e-16 * |log w| at large alpha: objective() instead)
    assert res.value == pytest.approx(objective(r, res.eta, beta, alpha, tail, log_weights=lw + offset), abs=1e-12 * scale)
    if alpha <= 1.0:
        assert res.value == pytest.approx(_weighted_objective_naive(r, lw + offset, res.eta, beta, alpha, tail)[0],
                                          abs=1e-8 * scale)
    assert 1.0 <= res.is_ess < 5.0  # 600 nats of spread: a handful of samples carry the weight
    assert abs(one.eta - _weighted_reference_eta(r, lone, beta, alpha, tail)) <= 1e-8 * scale
    assert one.value == pytest.approx(objective(r, one.eta, beta, alpha, tail, log_weights=lone), abs=1e-12 * scale)
    assert one.is_ess == pytest.approx(1.0) and math.isfinite(one.ess) and math.isfinite(one.predicted_kl)


@pytest.mark.parametrize("tail,beta,mu_q", [("right", 0.9, 1.5), ("left", 0.1, 0.5)])
def test_importance_sampling_recovers_the_pre_trained_threshold(tail, beta, mu_q):
    """Samples of q = N(mu_q, 1) weighted by N(0,1)/q give the threshold of N(0,1).

    alpha = 5 (c = 2): the tilt p* ∝ N(0,1) exp(c (r - eta)_+) is centred at r = c, well
    inside the samples, so eta* is a population quantity.  (At alpha = 0.3, c = 33 puts
    the tilt far beyond every sample: eta* then follows the sample maximum, and two
    samples of N(0,1) of this size disagree by ~0.5 -- no consistency to check.)
    """
    alpha = 5.0
    rng = np.random.default_rng(0)
    plain = _solve(rng.normal(size=2_000_000), beta, alpha, tail)
    rq = mu_q + rng.normal(size=200_000)
    lw = norm.logpdf(rq) - norm.logpdf(rq, loc=mu_q)
    weighted = _solve(rq, beta, alpha, tail, log_weights=lw)
    unweighted = _solve(rq, beta, alpha, tail)
    # the population optimum of N(0,1), from the closed-form E[exp(pseudo / alpha)]
    if tail == "right":
        c = 1.0 / (alpha * (1.0 - beta))
        f = lambda e: e + alpha * np.log(norm.cdf(e) + np.exp(c * c / 2 - c * e + norm.logcdf(c - e)))  # noqa: E731
    else:
        c = 1.0 / (alpha * beta)
        f = lambda e: -(e + alpha * np.log(norm.sf(e) + np.exp(c * c / 2 - c * e + norm.logcdf(e - c))))  # noqa: E731
    eta_pop = minimize_scalar(f, bounds=(-6.0, 6.0), method="bounded", options={"xatol": 1e-10}).x
    assert abs(plain.eta - eta_pop) < 0.01
    assert abs(weighted.eta - plain.eta) < 0.03
    assert abs(weighted.value - plain.value) < 0.03
    assert abs(weighted.active_fraction - plain.active_fraction) < 0.01
    assert abs(unweighted.eta - plain.eta) > 0.2  # the weights matter
    assert 0.02 < weighted.is_ess / rq.size < 0.9


def test_bootstrap_resamples_reward_weight_pairs():
    """Rewards > 0 carry 800 nats less weight: every resample's eta* stays <= 0 only if
    the pairs (r_i, log w_i) are resampled together."""
    r = np.random.default_rng(13).normal(size=2000)
    lw = np.where(r > 0, -800.0, 0.0)
    a = _solve(r, 0.9, 1.0, "right", log_weights=lw, bootstrap=40, seed=3)
    b = _solve(r, 0.9, 1.0, "right", log_weights=lw, bootstrap=40, seed=3)
    assert a.eta <= 0.0 and a.eta_interval[1] <= 0.0
    assert a.eta_interval == b.eta_interval and a.eta_se == b.eta_se
    half = _solve(r[r <= 0], 0.9, 1.0, "right")
    assert a.eta == pytest.approx(half.eta, abs=1e-12) and a.value == pytest.approx(half.value, abs=1e-12)
    assert a.active_count_fraction > 0.5 and a.active_fraction == pytest.approx(half.active_fraction, abs=1e-12)


def test_bootstrap_keeps_a_dominant_weight_with_its_reward():
    """All weight on the median sample r*: a resample that draws it (~63%) is a point mass
    there, so eta*_b = r* exactly; the others fall back to the uniform solve (eta ~ 1.2 > r*).
    Weights detached from their rewards would move the heavy weight to whichever reward sits
    at r*'s rank, and the lower quartile of the etas would no longer be r*."""
    r = np.random.default_rng(14).normal(size=1001)
    star = int(np.argsort(r)[500])
    lw = np.full(r.size, -800.0)
    lw[star] = 0.0
    res = _solve(r, 0.9, 1.0, "right", log_weights=lw, bootstrap=100, seed=4, ci_level=0.5)
    assert res.eta == r[star] and res.is_ess == pytest.approx(1.0)
    assert res.eta_interval[0] == r[star]
    assert res.eta_interval[1] > r[star] + 0.5


def test_weighted_summary_dict_and_torch_input():
    r = _gmm6(1000, seed=4)
    lw = np.random.default_rng(5).normal(size=r.size)
    res = _solve(r, 0.9, 1.0, "right", log_weights=torch.tensor(lw))
    assert res.eta == _solve(r, 0.9, 1.0, "right", log_weights=lw).eta
    assert "importance weighted" in str(res) and "ESS of importance weights" in str(res)
    d = res.as_dict()
    assert d["is_ess"] == res.is_ess and "log_weights" not in d and "active_count_fraction" in d
    assert res.log_weights.flags.writeable is False
    np.testing.assert_array_equal(res.log_weights, lw)
    # weights() on other rewards: uniform unless log-weights are passed
    np.testing.assert_allclose(res.weights(r, lw), res.weights(), rtol=1e-13)
    assert not np.allclose(res.weights(r), res.weights())


def test_weighted_starved_tail_warns_with_mass_and_count():
    r = _gmm6(10_000)
    lw = -0.5 * r  # pre-trained mass shifted away from the right tail
    with pytest.warns(TfftWarning) as rec:
        res = solve_threshold(r, beta=0.9, alpha=0.01, tail="right", log_weights=lw)
    assert res.active_fraction < 0.01 and len(rec) >= 1
    assert re.search(r"importance-weighted pre-trained mass \(10000 samples", res.warnings[0])


@pytest.mark.parametrize("log_weights,match", [
    (np.zeros(2), r"log_weights has shape \(2,\), but rewards has shape \(3,\)"),
    (np.zeros((3, 1)), r"log_weights has shape \(3, 1\)"),
    (np.array([0.0, np.nan, 1.0]), r"log_weights\[1\]=nan .*finite.*\(-inf, inf\)"),
    (np.array([0.0, 1.0, -np.inf]), r"log_weights\[2\]=-inf.*finite"),
    (np.array([np.inf, 1.0, 0.0]), r"log_weights\[0\]=inf"),
    ("abc", r"log_weights='abc'.*finite"),
])
def test_invalid_log_weights_raise_with_value_and_range(log_weights, match):
    with pytest.raises(ValueError, match=match):
        solve_threshold(R, beta=0.9, alpha=1.0, tail="right", log_weights=log_weights)
    with pytest.raises(ValueError, match=match):
        objective(R, 0.5, 0.9, 1.0, "right", log_weights=log_weights)


@pytest.mark.parametrize("tail,beta,alpha", [("right", 0.9, 1.0), ("left", 0.1, 1.0), ("right", 0.95, 0.05)])
def test_solve_eta_equals_the_full_solver(tail, beta, alpha):
    from tfftmol.core.threshold import solve_eta

    r = np.random.default_rng(4).normal(size=5000)
    lw = np.random.default_rng(5).normal(size=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for w in (None, lw):
            full = solve_threshold(r, beta, alpha, tail, log_weights=w)
            eta, value = solve_eta(r, beta, alpha, tail, log_weights=w)
            assert eta == full.eta and value == pytest.approx(full.value, rel=1e-12)


# -- left tail: a near-tie of two local maxima of G is said, not hidden -------------------------------------------
def _bimodal_left_rewards(n=10000):
    """Rewards of a seeded 2D mixture under a linear reward whose left-tail G has two nearly equal maxima at alpha 1."""
    import torch

    from tfftmol.toy2d.gmm import population_threshold, random_gmm

    g = random_gmm(11)
    u = np.random.default_rng(1011).normal(size=2)
    w = 0.25 * u / np.linalg.norm(u)
    x = g.sample_data(n, generator=torch.Generator().manual_seed(0)).double()
    eta_pop, _ = population_threshold(g, w, 1.0, 0.1, "left")
    return (x @ torch.as_tensor(w)).numpy(), float(eta_pop)


def test_a_left_tail_near_tie_is_a_warning_naming_both_thresholds():
    from tfftmol.core.threshold import objective

    r, eta_pop = _bimodal_left_rewards()
    with pytest.warns(TfftWarning, match="two thresholds nearly tie"):
        res = solve_threshold(r, 0.1, 1.0, "left")
    assert res.near_tie is not None and abs(res.near_tie - res.eta) > 0.5
    # the population optimum is one of the two (the sample cannot tell which)
    assert min(abs(eta_pop - res.eta), abs(eta_pop - res.near_tie)) < 0.05
    g_top, g_rival = objective(r, [res.eta, res.near_tie], 0.1, 1.0, "left")
    assert 0 <= g_top - g_rival < 0.05                       # nearly equal, the chosen one on top
    assert any("nearly tie" in w for w in res.warnings)


def test_no_near_tie_on_a_unimodal_reward_or_the_right_tail():
    import warnings

    r = np.random.default_rng(3).normal(size=20000)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for alpha in (0.05, 0.3, 1.0, 5.0):
            assert solve_threshold(r, 0.1, alpha, "left").near_tie is None
    assert not any("nearly tie" in str(w.message) for w in rec)
    assert solve_threshold(_bimodal_left_rewards()[0], 0.9, 1.0, "right").near_tie is None
