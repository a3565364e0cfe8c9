"""Spectral risk and the CVaR-constrained form (docs/design.md §10): stage 1 against brute force,
the one-level reduction, and the exact Gaussian-mixture targets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from tfftmol.core.pseudo import PseudoReward
from tfftmol.core.risk import cvar
from tfftmol.core.spectral import (Level, SpectralPseudoReward, solve_constrained, solve_spectral,
                                   spectral_objective)
from tfftmol.core.threshold import TfftWarning, solve_threshold
from tfftmol.toy2d.gmm import circle_gmm, hinge_target_stats, population_threshold
from tfftmol.toy2d.spectral import (population_constrained, population_spectral, sample_spectral_target,
                                    spectral_target_stats)

W = np.array([1.0, 0.5])  # the linear reward r = w·x on the circle mixture


def _bimodal(m, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.random(m) < 0.3
    return np.where(k, rng.normal(2.0, 0.4, m), rng.normal(-0.5, 0.8, m))


@pytest.fixture(scope="module")
def gmm_rewards():
    g = circle_gmm(dtype=torch.float64)
    x = g.sample_data(100_000, generator=torch.Generator().manual_seed(0)).numpy()
    return g, x @ W


# ---------------------------------------------------------------------------
# stage 1 on samples
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1), ("right", 0.3), ("left", 0.7)])
@pytest.mark.parametrize("weight", [1.0, 2.5])
@pytest.mark.parametrize("alpha", [0.05, 1.0, 20.0])
def test_one_level_is_solve_threshold(tail, beta, weight, alpha):
    r = _bimodal(2000, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        a = solve_threshold(r, beta, alpha / weight, tail)
        b = solve_spectral(r, [(tail, beta, weight)], alpha)
    assert abs(a.eta - b.etas[0]) <= 1e-10
    assert abs(weight * a.value - b.value) <= 1e-10 * max(1.0, abs(b.value))
    assert abs(a.predicted_cvar - b.predicted_cvars[0]) <= 1e-10
    assert abs(a.predicted_kl - b.predicted_kl) <= 1e-10
    assert abs(a.ess - b.ess) <= 1e-8 * a.ess
    assert abs(a.tail_mass - b.tail_masses[0]) <= 1e-12
    assert b.exact and abs(b.duality_gap) <= 1e-10


def _brute(r, levels, alpha, mean_weight=0.0):
    """Brute force on the sample dual ``H``: every sampled reward for a left threshold; for a right
    threshold ``H`` (convex, smooth between sampled rewards) at every sampled reward, then bounded Brent
    (to 1e-14) inside the two intervals next to the best one.  At most two right levels (nested) and
    one left level."""
    levels = [Level(*lv) for lv in levels]
    right = [k for k, lv in enumerate(levels) if lv.tail == "right"]
    left = [k for k, lv in enumerate(levels) if lv.tail == "left"]
    kinks = np.unique(r)

    def H(et):
        return spectral_objective(r, levels, et, alpha, mean_weight)

    def set_(et, k, e):
        t = list(et)
        t[k] = float(e)
        return t

    def min_convex(f, fvals):
        """Exact minimum of a convex f, smooth between kinks: (value, argmin)."""
        j = int(np.argmin(fvals))
        best = (float(fvals[j]), float(kinks[j]))
        for a, b in ((j - 1, j), (j, j + 1)):
            if 0 <= a and b < kinks.size:
                s = minimize_scalar(f, bounds=(kinks[a], kinks[b]), method="bounded", options={"xatol": 1e-14})
                if s.fun < best[0]:
                    best = (float(s.fun), float(s.x))
        return best

    def min_right(et, ks):
        """``min over the right thresholds ks`` of H -> (value, etas)."""
        if not ks:
            return H(et), et
        k, rest = ks[0], ks[1:]
        inner = lambda e: min_right(set_(et, k, e), rest)  # noqa: E731
        v, e = min_convex(lambda e: inner(e)[0], np.array([inner(e)[0] for e in kinks]))
        return inner(e)[0], inner(e)[1] if rest else set_(et, k, e)

    if not left:
        return min_right([0.0] * len(levels), right)
    best = (-np.inf, None)
    for e in kinks:
        v = min_right(set_([0.0] * len(levels), left[0], e), right)
        if v[0] > best[0]:
            best = v
    return best


@pytest.mark.parametrize("levels,alpha,mean_weight", [
    ([("right", 0.9, 1.0), ("right", 0.5, 1.0)], 0.7, 0.0),
    ([("right", 0.8, 1.0), ("left", 0.2, 1.5)], 1.0, 0.0),
    ([("right", 0.95, 0.5), ("left", 0.1, 1.0)], 0.3, 0.0),
    ([("left", 0.1, 0.8)], 0.5, 1.0),
    ([("right", 0.9, 2.0)], 0.4, 1.0),
])
def test_matches_brute_force(levels, alpha, mean_weight):
    r = _bimodal(60, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = solve_spectral(r, levels, alpha, mean_weight)
    val, et = _brute(r, levels, alpha, mean_weight)
    assert abs(res.value - val) <= 1e-8, (res.value, val)
    # same left thresholds: the exact solve's minimum over the right thresholds is at least as low as
    # bounded Brent's (which stops near, not at, a kink); and it is certified by its own bounds
    if all(res.etas[k] == et[k] for k, lv in enumerate(levels) if lv[0] == "left"):
        assert res.value <= val + 1e-12
    assert abs(res.upper_bound - res.value) <= 1e-10 and abs(res.duality_gap) <= 1e-10
    for k, lv in enumerate(levels):
        if lv[0] == "left":
            assert res.etas[k] == et[k]
        else:
            assert abs(res.etas[k] - et[k]) <= 1e-5
    # optimality: each threshold is a quantile of the tilt (its tail mass brackets kappa)
    for lv, m0, m1 in zip(res.levels, res.tail_masses, res.tail_masses_incl):
        assert m0 - 1e-10 <= lv.kappa <= m1 + 1e-10


def test_predictions_and_pseudo_reward():
    r = _bimodal(3000, seed=5)
    res = solve_spectral(r, [("right", 0.9, 1.0), ("left", 0.1, 1.0)], 1.0, mean_weight=0.5, warn=False)
    w = res.weights()
    assert abs(res.predicted_cvars[0] - cvar(r, 0.9, "right", weights=w)) <= 1e-12
    assert abs(res.predicted_cvars[1] - cvar(r, 0.1, "left", weights=w)) <= 1e-12
    assert abs(res.value - (res.predicted_risk - res.alpha * res.predicted_kl)) <= 1e-10
    assert res.predicted_cvars[0] > res.pre_cvars[0] and res.predicted_cvars[1] > res.pre_cvars[1]
    g = res.pseudo_reward()
    x = np.linspace(-3, 4, 101)
    np.testing.assert_allclose(g.value(torch.as_tensor(x)).numpy(), g.value(x), atol=1e-12)
    num = (g.value(x + 1e-7) - g.value(x - 1e-7)) / 2e-7
    away = np.min(np.abs(x[:, None] - np.array(res.etas)[None]), axis=1) > 1e-3
    np.testing.assert_allclose(g.grad(x)[away], num[away], rtol=1e-6)
    one = SpectralPseudoReward([("left", 0.2, 1.0)], [0.3])
    ref = PseudoReward("left", 0.2, 0.3)
    np.testing.assert_allclose(one.value(x), ref.value(x), atol=0)
    np.testing.assert_allclose(one.grad(x), ref.grad(x), atol=0)


# ---------------------------------------------------------------------------
# the constrained form on samples
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tail,beta,c", [("left", 0.1, -0.2), ("left", 0.2, 0.3), ("right", 0.9, 3.2)])
def test_constrained_meets_c(tail, beta, c):
    r = _bimodal(4000, seed=2)
    res = solve_constrained(r, tail, beta, c, 1.0)
    assert res.feasible and res.active and res.multiplier > 0
    assert abs(res.constraint_value - c) <= 1e-8
    assert abs(res.dual_value - res.objective) <= 1e-8          # no duality gap: optimal
    # any other multiplier: either violates the constraint or has a lower mean - alpha KL
    for f in (0.5, 2.0):
        other = solve_spectral(r, [(tail, beta, res.multiplier * f)], 1.0, mean_weight=1.0, warn=False)
        if other.predicted_cvars[0] >= c:
            assert other.predicted_mean - other.alpha * other.predicted_kl <= res.objective + 1e-12


def test_constrained_inactive_and_infeasible():
    r = _bimodal(2000, seed=4)
    free = solve_constrained(r, "left", 0.1, -5.0, 1.0)
    assert free.multiplier == 0.0 and not free.active and free.constraint_value >= -5.0
    with pytest.warns(TfftWarning, match="cannot be met"):
        bad = solve_constrained(r, "left", 0.1, float(r.max()) + 1.0, 1.0)
    assert not bad.feasible and bad.best_reachable == float(r.max())
    assert "best reachable c" in bad.message and bad.dual_value == -np.inf


# ---------------------------------------------------------------------------
# the exact Gaussian-mixture targets
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("tail,beta,alpha", [("right", 0.9, 2.0), ("left", 0.1, 0.5)])
def test_one_level_target_is_hinge_target(tail, beta, alpha):
    g = circle_gmm(dtype=torch.float64)
    eta, val = population_threshold(g, W, alpha, beta, tail)
    e2, v2 = population_spectral(g, W, [(tail, beta)], alpha)
    assert abs(eta - e2[0]) <= 1e-7 and abs(val - v2) <= 1e-12
    a = hinge_target_stats(g, W, eta, alpha, beta, tail)
    b = spectral_target_stats(g, W, [(tail, beta)], [eta], alpha)
    for key, bk in (("kl", "kl"), ("mean", "mean"), ("log_z", "log_z")):
        assert abs(a[key] - b[bk]) <= 1e-10
    assert abs(a["cvar"] - b["cvars"][0]) <= 1e-10


CASES = [([("right", 0.9, 1.0), ("left", 0.1, 1.0)], 2.0, 0.0),
         ([("right", 0.5, 1.0), ("right", 0.9, 1.0)], 3.0, 0.0),
         ([("left", 0.1, 1.0)], 1.0, 1.0)]


@pytest.mark.parametrize("levels,alpha,mean_weight", CASES)
def test_population_target_and_sample_thresholds(gmm_rewards, levels, alpha, mean_weight):
    g, r = gmm_rewards
    etas, value = population_spectral(g, W, levels, alpha, mean_weight)
    st = spectral_target_stats(g, W, levels, etas, alpha, mean_weight)
    # exact optimality: each threshold is its level's quantile of p*, and value = risk - alpha KL
    for lv, m in zip(levels, st["masses"]):
        assert abs(m - Level(*lv).kappa) <= 1e-9
    assert abs(st["value"] - value) <= 1e-12
    assert abs(value - (st["risk"] - alpha * st["kl"])) <= 1e-9
    # exact draws of p* reproduce its mean and CVaRs
    x = sample_spectral_target(g, 200_000, W, levels, etas, alpha, mean_weight, seed=1)
    rx = x @ W
    assert abs(rx.mean() - st["mean"]) <= 0.01
    for lv, c in zip(levels, st["cvars"]):
        assert abs(cvar(rx, lv[1], lv[0]) - c) <= 0.02
    # stage 1 on 10^5 pre-trained samples approaches the population
    res = solve_spectral(r, levels, alpha, mean_weight, warn=False)
    assert np.max(np.abs(np.array(res.etas) - np.array(etas))) <= 0.03
    assert abs(res.value - value) <= 0.01
    assert abs(res.predicted_kl - st["kl"]) <= 0.02


def test_population_constrained(gmm_rewards):
    g, r = gmm_rewards
    alpha, beta, c = 1.0, 0.1, -0.2     # binding: the unconstrained optimum's left CVaR_0.1 is -0.385
    free = spectral_target_stats(g, W, [], [], alpha, 1.0, extra_levels=[("left", beta, 1.0)])
    assert free["extra_cvars"][0] < c
    exact = population_constrained(g, W, "left", beta, c, alpha)
    assert exact["active"] and not exact["gap"] and abs(exact["constraint_value"] - c) <= 1e-8
    assert exact["objective"] < free["mean"] - alpha * free["kl"]
    res = solve_constrained(r, "left", beta, c, alpha)
    assert abs(res.constraint_value - c) <= 1e-8
    assert abs(res.multiplier - exact["multiplier"]) <= 0.05 * exact["multiplier"]
    assert abs(res.predicted_mean - exact["mean"]) <= 0.01 and abs(res.objective - exact["objective"]) <= 0.01


def test_constrained_duality_gap_is_closed_exactly():
    """Circle mixture, c inside the jump of the Lagrangian's left threshold: the fixed-threshold
    branch-and-bound equals the best of all sampled thresholds (each a convex problem), to 1e-10."""
    from tfftmol.core.spectral import _fixed_eta_left
    g = circle_gmm(dtype=torch.float64)
    r = g.sample_data(3000, generator=torch.Generator().manual_seed(2)).numpy() @ W
    alpha, beta = 1.0, 0.1
    lams = np.linspace(0.0, 0.2, 81)
    cv = [solve_spectral(r, [("left", beta, lam)], alpha, 1.0, warn=False).predicted_cvars[0] for lam in lams]
    jump = int(np.argmax(np.diff(cv)))
    c = 0.5 * (cv[jump] + cv[jump + 1])
    res = solve_constrained(r, "left", beta, c, alpha)
    assert "duality gap" in res.message and "solved exactly" in res.message
    assert abs(res.constraint_value - c) <= 1e-8
    rs = np.sort(r)
    brute = max(out[0] for e in np.unique(rs) if e > c
                for out in [_fixed_eta_left(rs, float(e), beta, c, alpha, 1e-10, 1e8)] if out is not None)
    assert abs(res.objective - brute) <= 1e-9
    assert res.objective <= res.dual_value


def test_run_tfft_takes_the_spectral_transform():
    """Stage 2 toward a caller-solved transform: the one-tail stage 1 is skipped, a few steps run."""
    from tfftmol.core.adjoint import AMConfig
    from tfftmol.core.tfft import TFFTConfig, run_key, run_tfft
    from tfftmol.toy2d.flows import linear_reward

    base = circle_gmm()
    g = SpectralPseudoReward([("right", 0.9, 1.0), ("left", 0.1, 1.0)], [2.5, 1.6])
    cfg = TFFTConfig(method="tfft", alpha=2.0, offline_samples=64,
                     am=AMConfig(steps=3, batch_size=16, hidden=16, time_steps=10, loss_time_steps=5, seed=0))
    lines = []
    res = run_tfft(base, linear_reward((1.0, 0.5)), cfg, progress=False, log=lines.append, transform=g)
    assert res.threshold is None and res.stage1 is None and res.trainer.step_count == 3
    assert "offline" not in res.timings      # no one-tail stage 1, no offline batch
    assert res.trainer.extra["run_key"] != run_key(base, linear_reward((1.0, 0.5)), cfg)
    assert any("given transform" in s for s in lines)
    with pytest.raises(ValueError, match="transform"):
        run_tfft(base, linear_reward((1.0, 0.5)), TFFTConfig(method="expected", alpha=2.0), progress=False,
                 log=lines.append, transform=g)


# ---------------------------------------------------------------------------
# the objective in the config: TFFTConfig(levels=...) / TFFTConfig(constraint=...)
# ---------------------------------------------------------------------------

def _small_am(steps):
    from tfftmol.core.adjoint import AMConfig
    return AMConfig(steps=steps, batch_size=128, hidden=64, time_steps=20, loss_time_steps=10, lr=2e-3,
                    grad_clip=0.0, seed=0)


def _eval_rewards(model, n=20000, seed=7):
    from tfftmol.core.samplers import sample_sde
    x = sample_sde(model, n, 20, generator=torch.Generator().manual_seed(seed))
    return (x.double() @ torch.as_tensor(W)).numpy()


def test_config_levels_solve_stage1_on_the_offline_batch_and_lift_both_tails():
    """``levels`` in the config: stage 1 is ``solve_spectral`` on the run's own offline batch (same
    thresholds to 1e-12), and 300 steps lift both tails of a two-sided objective, as the exact target
    says they should (right 2.33 -> 2.81, left -2.33 -> 1.52 at alpha 2)."""
    from tfftmol.core.spectral import SpectralResult
    from tfftmol.core.tfft import TFFTConfig, run_tfft
    from tfftmol.toy2d.flows import linear_reward

    base = circle_gmm()
    levels = [{"tail": "right", "beta": 0.9, "weight": 1.0}, {"tail": "left", "beta": 0.1}]
    cfg = TFFTConfig(alpha=2.0, levels=levels, offline_samples=4000, offline_steps=20, seed=0, am=_small_am(300))
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)  # 1.3% of 4,000 samples above the right threshold
        res = run_tfft(base, linear_reward((1.0, 0.5)), cfg, progress=False, log=lines.append)
    assert isinstance(res.stage1, SpectralResult) and res.threshold is None and res.tracking is None
    direct = solve_spectral(res.offline_rewards, [("right", 0.9, 1.0), ("left", 0.1, 1.0)], 2.0, warn=False)
    assert np.allclose(res.stage1.etas, direct.etas, rtol=0, atol=1e-12)
    assert any("TFFT spectral threshold" in s for s in lines)
    r_pre, r_ft = _eval_rewards(base), _eval_rewards(res.model)
    # measured: right 2.32 -> 2.57, left -2.31 -> 0.97
    assert cvar(r_ft, 0.9, "right") > cvar(r_pre, 0.9, "right") + 0.1
    assert cvar(r_ft, 0.1, "left") > cvar(r_pre, 0.1, "left") + 1.0


def test_config_constraint_finds_the_multiplier_and_lifts_the_constrained_tail():
    """``constraint`` in the config: stage 1 is ``solve_constrained`` (an active multiplier here) and the
    fine-tune raises the constrained left tail from the pre-trained -2.33 toward the floor -0.2."""
    from tfftmol.core.spectral import ConstrainedResult
    from tfftmol.core.tfft import TFFTConfig, run_tfft
    from tfftmol.toy2d.flows import linear_reward

    base = circle_gmm()
    cfg = TFFTConfig(alpha=1.0, constraint={"tail": "left", "beta": 0.1, "floor": -0.2}, offline_samples=4000,
                     offline_steps=20, seed=0, am=_small_am(300))
    res = run_tfft(base, linear_reward((1.0, 0.5)), cfg, progress=False, log=lambda s: None)
    assert isinstance(res.stage1, ConstrainedResult) and res.stage1.active and res.stage1.multiplier > 0
    direct = solve_constrained(res.offline_rewards, "left", 0.1, -0.2, 1.0, warn=False)
    assert abs(res.stage1.multiplier - direct.multiplier) <= 1e-9 * max(1.0, direct.multiplier)
    r_pre, r_ft = _eval_rewards(base), _eval_rewards(res.model)
    # measured: left -2.31 -> -0.40 (floor -0.2), mean 0.01 -> 1.65 (exact optimum 1.78)
    assert cvar(r_ft, 0.1, "left") > cvar(r_pre, 0.1, "left") + 1.0
    assert r_ft.mean() > r_pre.mean() + 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"levels": []}, "levels=\\[\\] must be a non-empty list"),
    ({"levels": [{"tail": "up", "beta": 0.9}]}, "levels\\[0\\].tail='up'"),
    ({"levels": [{"tail": "right", "beta": 1.2}]}, "levels\\[0\\].beta=1.2 must be in \\(0, 1\\)"),
    ({"levels": [{"tail": "right", "beta": 0.9, "weight": -1}]}, "levels\\[0\\].weight=-1 must be >= 0"),
    ({"levels": [{"tail": "right", "beta": 0.9, "w": 1}]}, "levels\\[0\\]=.* must be a mapping with keys"),
    ({"mean_weight": 1.0}, "mean_weight=1.0 needs levels"),
    ({"constraint": {"tail": "left", "beta": 0.1}}, "exactly the keys tail, beta and floor"),
    ({"constraint": {"tail": "left", "beta": 0.1, "floor": float("nan")}}, "constraint.floor=nan"),
    ({"levels": [{"tail": "right", "beta": 0.9}], "constraint": {"tail": "left", "beta": 0.1, "floor": 0}},
     "cannot both be set"),
])
def test_config_objective_errors_name_the_bad_value(kwargs, match):
    from tfftmol.core.config import ConfigError, from_dict
    from tfftmol.core.tfft import TFFTConfig

    with pytest.raises(ConfigError, match=match):
        from_dict(TFFTConfig, kwargs)


def test_config_objective_round_trips_and_refuses_a_second_target():
    from tfftmol.core.config import from_dict, to_dict
    from tfftmol.core.tfft import TFFTConfig, run_tfft
    from tfftmol.toy2d.flows import linear_reward

    cfg = from_dict(TFFTConfig, {"levels": [{"tail": "right", "beta": 0.9}], "mean_weight": "0.5"})
    assert cfg.objective == "spectral" and cfg.levels == [{"tail": "right", "beta": 0.9, "weight": 1.0}]
    assert from_dict(TFFTConfig, to_dict(cfg)) == cfg
    assert TFFTConfig().objective == "tail"
    assert from_dict(TFFTConfig, {"constraint": {"tail": "left", "beta": 0.1, "floor": 0}}).objective == "constrained"
    g = SpectralPseudoReward([("right", 0.9, 1.0)], [2.5])
    with pytest.raises(ValueError, match="both set the target"):
        run_tfft(circle_gmm(), linear_reward((1.0, 0.5)), cfg, progress=False, log=lambda s: None, transform=g)
