"""On-policy threshold tracking: the self-consistent eta*, its guards, the stage-1 trust diagnostic.

Ground truth: random Gaussian mixtures with a linear reward r = w·x, whose hinge-tilted
targets are exact (tfftmol.toy2d.gmm).  Case 4 of ``random_gmm`` with |w| = 0.25 is a
starved right tail: at alpha 0.5 the 10,000-sample SDE offline batch of the test puts stage-1
eta* at 0.828 against the population 1.054, and the exact target at that threshold would put
91% of its mass beyond the population eta* (target 10%).  Measured with tracking (300 steps):
eta 0.828 -> 0.970, mass beyond the population eta* 0.094, KL 0.93 (exact 1.13).
"""
import warnings

import numpy as np
import pytest
import torch

from tfftmol.core.config import ConfigError, from_dict
from tfftmol.core.risk import cvar
from tfftmol.core.samplers import sample_sde
from tfftmol.core.settings import AMConfig, TFFTConfig
from tfftmol.core.threshold import TfftWarning, solve_threshold
from tfftmol.core.tracking import ThresholdGuardError, ThresholdTracker, TrackingConfig, threshold_trust
from tfftmol.core.adjoint import estimate_kl
from tfftmol.core.tfft import run_tfft
from tfftmol.toy2d.gmm import circle_gmm, hinge_target_stats, population_threshold, random_gmm
from tfftmol.toy2d.flows import linear_reward


def _case(seed, norm=0.25):
    g = random_gmm(seed)
    u = np.random.default_rng(1000 + seed).normal(size=2)
    return g, norm * u / np.linalg.norm(u)


def _stage1(g, w, alpha, beta, tail, n=10000, seed=0):
    x = sample_sde(g, n, 30, generator=torch.Generator().manual_seed(seed)).double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        return solve_threshold(x @ w, beta, alpha, tail, min_active_fraction=0, min_ess_fraction=0)


@pytest.mark.parametrize("mode", ["mass", "quantile"])
@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_a_model_that_follows_its_target_drives_eta_to_the_population_value(tail, beta, mode):
    """The fixed point of (model = p_eta, mass beyond eta = 1 - beta) is eta*: simulate a model that is exactly p_eta.

    Measured (batch 2000, 300 steps, mean of the last 100): right 1.0547 (mass, gain 0.2; sd 0.0012) and
    1.0553 (quantile, gain 0.05; sd 0.0095) against 1.0539; left 0.0471 / 0.0475 against 0.0457.
    """
    g, w = _case(4)
    alpha = 0.5
    s1 = _stage1(g, w, alpha, beta, tail)
    eta_pop, _ = population_threshold(g, w, alpha, beta, tail)
    gain = 0.2 if mode == "mass" else 0.05
    tr = ThresholdTracker(s1, TrackingConfig(mode=mode, gain=gain, hold=0.0, warmup=1.0), total_steps=300,
                          log=lambda s: None)
    etas = []
    for step in range(300):
        x = g.sample_tilted_hinge(2000, w, tr.eta, alpha, beta, tail, seed=step).double()
        tr.grad(torch.as_tensor(x.numpy() @ w))
        tr.update(step)
        etas.append(tr.eta)
    eta = float(np.mean(etas[-100:]))
    assert eta == pytest.approx(eta_pop, abs=0.01)
    assert hinge_target_stats(g, w, eta, alpha, beta, tail)["mass_beyond"] == pytest.approx(1 - beta if tail == "right" else beta, abs=0.02)


def test_hold_only_lets_eta_rise_early_and_the_batch_floor_keeps_the_hinge_alive():
    g, w = _case(4)
    s1 = _stage1(g, w, 0.5, 0.9, "right")
    tr = ThresholdTracker(s1, TrackingConfig(gain=0.5, hold=0.5), total_steps=100, log=lambda s: None)
    r_pre = torch.as_tensor(g.sample_data(1000, generator=torch.Generator().manual_seed(0)).double().numpy() @ w)
    gp = tr.grad(r_pre)
    assert float((gp != 0).double().mean()) >= 0.075 - 1e-9  # a_min = 0.75 (1 - beta): dead hinge revived
    assert tr.last_eta < s1.eta
    tr.update(0)
    assert tr.eta == s1.eta  # the pre-trained quantile is below eta*: no move down during the hold
    tr.grad(r_pre)
    tr.update(60)
    assert tr.eta < s1.eta  # after the hold it moves freely


def test_catch_up_jumps_a_right_tail_eta_to_the_batch_quantile_when_the_batch_runs_past_it():
    """Half of the batch beyond eta (band high end: 2 x 0.1): with ``catch_up_batches=1`` eta jumps to the
    batch's 0.9-quantile at once; without catch-up it climbs by the bounded Robbins-Monro step only; a batch
    inside the band never jumps."""
    g, w = _case(4)
    s1 = _stage1(g, w, 0.5, 0.9, "right")
    r = s1.eta + torch.randn(256, generator=torch.Generator().manual_seed(0)).double()  # about 50% beyond eta
    q = float(torch.quantile(r, 0.9))
    for catch_up in (True, False):
        tr = ThresholdTracker(s1, TrackingConfig(catch_up=catch_up, catch_up_batches=1), total_steps=100,
                              log=lambda s: None)
        tr.grad(r)
        tr.update(0)
        if catch_up:
            assert tr.eta == pytest.approx(q, abs=1e-9) and tr.catch_ups == 1
        else:
            mass = float((r > s1.eta).double().mean())
            z = np.log(mass / (1 - mass)) - np.log(0.1 / 0.9)
            assert tr.eta == pytest.approx(s1.eta + 0.2 * 0.5 * 0.1 * z) and tr.eta < q and tr.catch_ups == 0
    inside = s1.eta + 0.5 + torch.rand(256, generator=torch.Generator().manual_seed(1)).double()
    inside[:230] = s1.eta - 1.0  # 26 of 256 beyond eta: 10%, inside the band
    tr = ThresholdTracker(s1, TrackingConfig(), total_steps=100, log=lambda s: None)
    tr.grad(inside)
    tr.update(0)
    assert tr.catch_ups == 0 and tr.eta < s1.eta + 0.01


def test_catch_up_waits_for_consecutive_batches_beyond_the_band():
    """Default ``catch_up_batches=2``: one batch past the band only takes the bounded step; a second one in a
    row jumps to its quantile; a batch inside the band in between starts the count again."""
    g, w = _case(4)
    s1 = _stage1(g, w, 0.5, 0.9, "right")

    def high(eta, seed):  # about half of the batch beyond the current eta
        return eta + torch.randn(256, generator=torch.Generator().manual_seed(seed)).double()

    def inside(eta):      # 26 of 256 beyond eta: inside the band
        r = torch.full((256,), eta - 1.0, dtype=torch.float64)
        r[:26] = eta + 0.5
        return r

    tr = ThresholdTracker(s1, TrackingConfig(), total_steps=100, log=lambda s: None)
    tr.grad(high(tr.eta, 0))
    tr.update(0)
    assert tr.catch_ups == 0 and tr.high_run == 1
    r2 = high(tr.eta, 1)
    tr.grad(r2)
    tr.update(1)
    assert tr.catch_ups == 1 and tr.eta == pytest.approx(float(torch.quantile(r2, 0.9)), abs=1e-9)

    tr = ThresholdTracker(s1, TrackingConfig(), total_steps=100, log=lambda s: None)
    for step, r in enumerate((high(tr.eta, 0), inside(tr.eta), high(tr.eta, 2))):
        tr.grad(r)
        tr.update(step)
    assert tr.catch_ups == 0 and tr.high_run == 1
    assert tr.state_dict()["high_run"] == 1
    with pytest.raises(ValueError, match="catch_up_batches=0"):
        TrackingConfig(catch_up_batches=0)


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_tail_balance_gives_the_regression_the_target_tail_mass_and_is_neutral_at_the_optimum(tail, beta):
    """Weights of mean 1 under which the batch's mass beyond eta is exactly kappa; all 1 when it already is."""
    g, w = _case(4)
    s1 = _stage1(g, w, 0.5, beta, tail)
    kappa = 1 - beta if tail == "right" else beta
    tr = ThresholdTracker(s1, TrackingConfig(), total_steps=100, log=lambda s: None)
    side = 1.0 if tail == "right" else -1.0
    r = s1.eta + side * (torch.arange(256, dtype=torch.float64) - 127.5) / 50  # half of the batch beyond eta
    wts = tr.regression_weights(r)
    beyond = (r > s1.eta) if tail == "right" else (r < s1.eta)
    assert float(beyond.double().mean()) == pytest.approx(0.5)
    assert float(wts.mean()) == pytest.approx(1.0)
    assert float((wts * beyond).sum() / wts.sum()) == pytest.approx(kappa)
    assert float(wts[beyond][0]) == pytest.approx(kappa / 0.5) and float(wts[~beyond][0]) == pytest.approx((1 - kappa) / 0.5)
    at = r.clone()
    at[beyond] = s1.eta - side * 5.0  # move all but round(kappa B) of the batch off the tail
    at[: int(round(kappa * 256))] = s1.eta + side * 1.0
    assert torch.allclose(tr.regression_weights(at), torch.ones(256, dtype=torch.float64), atol=0.02)
    off = ThresholdTracker(s1, TrackingConfig(balance=False), total_steps=100, log=lambda s: None)
    assert off.regression_weights(r) is None


def test_guard_stops_a_run_that_cannot_be_corrected_and_names_the_quantities():
    """A batch that stays in the tail whatever eta is: the guard corrects, then stops."""
    g, w = _case(4)
    s1 = _stage1(g, w, 0.5, 0.9, "right")
    logs = []
    tr = ThresholdTracker(s1, TrackingConfig(mode="off", warmup=0.1, patience=20), total_steps=200, log=logs.append)
    with pytest.raises(ThresholdGuardError) as e:
        for step in range(200):
            tr.grad(torch.full((256,), s1.eta + 1.0) + 0.01 * torch.randn(256, generator=torch.Generator().manual_seed(step)))
            tr.update(step, kl=50.0)
    msg = str(e.value)
    assert "stopped" in msg and "KL estimate" in msg and "limit" in msg and "alpha=0.5" in msg
    assert e.value.quantities["kl"] > e.value.quantities["kl_limit"]
    assert tr.corrections == 1 and "tracking on" in logs[0]
    assert "on-policy mass above" in logs[0] and "band" in logs[0]


def test_a_lagging_left_tail_keeps_its_threshold_and_says_so_but_an_over_tilted_one_is_corrected():
    """Left tail: a model still on its way from the pre-trained mass below eta (above beta) to beta sits above
    the band; snapping eta to its beta-quantile would lower eta and weaken the tilt, so the lag is reported
    once and eta kept.  Below the band (over-tilted) the guard corrects as before."""
    g, w = _case(4)
    s1 = _stage1(g, w, 1.0, 0.1, "left")
    gen = torch.Generator().manual_seed(0)

    def batch(mass_below):  # 256 rewards, a fraction `mass_below` of them below eta
        k = int(round(mass_below * 256))
        return torch.cat([s1.eta - 0.5 - torch.rand(k, generator=gen), s1.eta + 0.5 + torch.rand(256 - k, generator=gen)])

    logs = []
    lag = ThresholdTracker(s1, TrackingConfig(mode="off", warmup=0.1, patience=20), total_steps=200, log=logs.append)
    for step in range(200):
        lag.grad(batch(0.3))
        lag.update(step, kl=0.1)
    assert lag.eta == s1.eta and lag.corrections == 0 and not lag.tracking
    assert len(logs) == 1 and logs[0].startswith("lag:") and "is 0.30" in logs[0] and "beta = 0.1" in logs[0]
    assert lag.flags == logs

    over = ThresholdTracker(s1, TrackingConfig(mode="off", warmup=0.1, patience=500), total_steps=200,
                            log=lambda s: None)
    for step in range(40):
        over.grad(batch(0.01))
        over.update(step, kl=0.1)
    assert over.corrections == 1 and over.tracking and over.eta > s1.eta  # the 0.1-quantile lies above eta


def _right_run(case, alpha, steps, bootstrap=50, track="auto", **am):
    """TFFT right-CVaR_0.9 on exact-family case ``case`` at the test budget; returns (mixture, w, result, log)."""
    g, w = _case(case)
    cfg = TFFTConfig(tail="right", beta=0.9, alpha=alpha, offline_samples=10000, offline_steps=20, bootstrap=bootstrap,
                     seed=case, track_threshold=track,
                     am=AMConfig(steps=steps, batch_size=256, time_steps=20, loss_time_steps=10, lr=2e-3, grad_clip=0.0,
                                 ema=0.95, seed=case, **am))
    logs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, linear_reward([float(v) for v in w]), cfg, progress=False, log=logs.append)
    return g, w, res, logs


@pytest.fixture(scope="module")
def starved_run():
    g, w, res, logs = _right_run(4, 0.5, 300)
    return g, w, 0.5, 0.9, res, logs


def test_starved_right_tail_with_a_low_stage1_eta_ends_in_the_band(starved_run):
    g, w, alpha, beta, res, logs = starved_run
    eta_pop, _ = population_threshold(g, w, alpha, beta, "right")
    exact = hinge_target_stats(g, w, eta_pop, alpha, beta, "right")
    eta1 = res.tracking["eta_stage1"]
    assert eta1 < eta_pop - 0.1  # the construction: stage 1 is biased low ...
    assert hinge_target_stats(g, w, eta1, alpha, beta, "right")["mass_beyond"] > 0.5  # ... enough to run away
    x = sample_sde(res.model, 20000, 20, generator=torch.Generator().manual_seed(1)).double().numpy()
    mass = float((x @ w > eta_pop).mean())
    kl = estimate_kl(res.model, g, 2000, 20, seed=2)
    assert 0.07 <= mass <= 0.13, mass
    assert kl <= 1.5 * exact["kl"], (kl, exact["kl"])
    assert abs(res.tracking["eta"] - eta_pop) < abs(eta1 - eta_pop)  # tracking moved toward the population eta*
    assert any("offline batch sampler: sde" in s for s in logs)  # the log says which sampler made the batch
    assert any("threshold tracking" in s for s in logs)


def test_auto_tracks_a_right_tail_whose_trusted_stage1_is_biased_low():
    """Case 4 at alpha 1: the bootstrap calls stage 1 trustworthy, yet its eta* is low enough to over-tilt.

    Measured (400 steps, exponential adjoint): with the threshold kept (``"guard"``) the run ends with mass
    0.142 beyond the population eta* and 1.8x the exact KL; ``"auto"`` tracks and ends at 0.103 and 1.05x.
    """
    alpha, beta = 1.0, 0.9
    g, w, res, logs = _right_run(4, alpha, 400, adjoint_integrator="exponential")
    eta_pop, _ = population_threshold(g, w, alpha, beta, "right")
    exact = hinge_target_stats(g, w, eta_pop, alpha, beta, "right")
    eta1 = res.tracking["eta_stage1"]
    assert any("trustworthy" in s and "too wide" not in s for s in logs)  # the construction: stage 1 is trusted ...
    assert hinge_target_stats(g, w, eta1, alpha, beta, "right")["mass_beyond"] > 0.13  # ... and its target over-tilts
    assert any("on-policy (mass rule) (track_threshold='auto')" in s for s in logs)
    x = sample_sde(res.model, 20000, 20, generator=torch.Generator().manual_seed(1)).double().numpy()
    mass = float((x @ w > eta_pop).mean())
    assert 0.07 <= mass <= 0.13, mass
    assert estimate_kl(res.model, g, 2000, 20, seed=2) <= 1.5 * exact["kl"]


def test_guards_fire_on_a_run_built_to_run_away():
    """Tracking off ('guard'), stage 1 biased low at alpha 0.25: the model runs into the tail and a guard fires."""
    try:
        flags = _right_run(2, 0.25, 200, bootstrap=0, track="guard")[2].tracking["flags"]
    except ThresholdGuardError as err:
        flags = [str(err)]
        assert err.trainer is not None
    assert flags and any("guard" in f or "stopped" in f for f in flags)
    assert any(("on-policy mass above" in f) or ("KL estimate" in f) for f in flags)


def test_trust_diagnostic_names_the_alpha_where_stage1_becomes_trustworthy():
    g = circle_gmm()
    r = sample_sde(g, 20000, 30, generator=torch.Generator().manual_seed(0))[:, 0].double().numpy()
    with pytest.warns(TfftWarning, match=r"too wide at alpha=0.5.*trustworthy from alpha="):
        rep = threshold_trust(r, 0.9, 0.5, "right", bootstrap=30, seed=0)
    assert not rep.trusted and rep.alpha_trusted is not None and rep.alpha_trusted > 0.5
    ok = threshold_trust(r, 0.9, 4 * rep.alpha_trusted, "right", bootstrap=30, seed=0)
    assert ok.trusted


def test_config_defaults_and_validation():
    cfg = TFFTConfig()
    assert cfg.offline_sampler == "sde" and cfg.track_threshold == "auto"
    with pytest.raises(ConfigError, match="track_threshold"):
        from_dict(TFFTConfig, {"track_threshold": "sometimes"})
    with pytest.raises(ConfigError, match="guard_band_high"):
        from_dict(TFFTConfig, {"guard_band_high": 0.5})
    assert cfg.track_catch_up is True and from_dict(TFFTConfig, {"track_catch_up": False}).track_catch_up is False
    assert cfg.track_catch_up_batches == 2
    with pytest.raises(ConfigError, match="track_catch_up_batches=0 must be an integer >= 1"):
        from_dict(TFFTConfig, {"track_catch_up_batches": 0})
    with pytest.raises(ConfigError, match="track_catch_up"):
        from_dict(TFFTConfig, {"track_catch_up": "yes"})
    assert cfg.track_balance == "auto" and from_dict(TFFTConfig, {"track_balance": False}).track_balance is False
    with pytest.raises(ConfigError, match="track_balance='sometimes' must be 'auto', true or false"):
        from_dict(TFFTConfig, {"track_balance": "sometimes"})
    assert TrackingConfig().balance is True


@pytest.mark.slow
def test_tail_balance_ends_the_runaway_and_collapse_cycle_of_a_strong_right_tilt():
    """Exact family, case 3, right-CVaR_0.9 at alpha 0.25 (exact KL 4.5): stage 1's eta* is so low that its target
    would put nearly all mass beyond the population eta*.  Without the tail balance the tracked run cycles through
    runaway, catch-up and collapse; with it (the default) it ends at p*.

    Measured (1,600 steps, the exact-family benchmark's settings): balance on, gap error +7.0%, mass 0.100, KL 4.30.
    Without the balance the cycle is chaotic: the same seeds were stopped by the guards at step 954 (mass 0.007,
    KL 0.13) on one machine and completed at gap error -1.5% (mass 0.105) on another, so only the balanced run,
    which ends at p* on both, is asserted here.
    """
    alpha, beta, case = 0.25, 0.9, 3
    g, w = _case(case)
    eta_pop, _ = population_threshold(g, w, alpha, beta, "right")
    exact = hinge_target_stats(g, w, eta_pop, alpha, beta, "right")
    pre = cvar(g.sample_data(20000, generator=torch.Generator().manual_seed(1)).double().numpy() @ w, beta, "right")

    cfg = TFFTConfig(tail="right", beta=beta, alpha=alpha, offline_samples=10000, offline_steps=50, bootstrap=50,
                     seed=case, am=AMConfig(steps=1600, batch_size=256, time_steps=20, loss_time_steps=10, lr=2e-3,
                                            grad_clip=0.0, ema=0.95, seed=case, adjoint_integrator="exponential"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, linear_reward([float(v) for v in w]), cfg, progress=False, log=lambda s: None)
    assert res.tracking["balance"] is True and res.tracking["tracked"]
    eta1 = res.tracking["eta_stage1"]
    assert hinge_target_stats(g, w, eta1, alpha, beta, "right")["mass_beyond"] > 0.9  # the construction: a runaway target
    x = sample_sde(res.model, 20000, 20, generator=torch.Generator().manual_seed(10_000 + case)).double().numpy()
    r = x @ w
    mass = float((r > eta_pop).mean())
    kl = estimate_kl(res.model, g, 2000, 20, seed=30_000 + case)
    gap_error = (cvar(r, beta, "right") - exact["cvar"]) / abs(exact["cvar"] - pre)
    assert 0.07 <= mass <= 0.13, mass
    assert kl <= 1.5 * exact["kl"], (kl, exact["kl"])
    assert abs(gap_error) <= 0.15, gap_error
