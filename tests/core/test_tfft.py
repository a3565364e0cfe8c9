"""TFFT end to end on the exact GMM flow with r(x) = x_1, against the exact tilted targets.

For a reward linear in x the TFFT target ``p* ∝ p_pre exp(g(r)/alpha)`` splits each
component at ``eta*`` into truncated normals, so it is sampled exactly
(:meth:`GaussianMixtureFlow.sample_tilted_hinge`), at the population ``eta*``.

Fast-test budget: M = 20,000 offline samples, 300 steps, batch 256, 30 SDE steps, 10 loss
times, Adam 2e-3, EMA 0.95.  Measured at that budget (seed 0, "gap cut" = fraction of the
pre-trained model's gap to the target closed):

* right, beta=0.9, alpha=1 (threshold tracked, the default for right tails): right-CVaR_0.9
  2.20 -> 2.83 (target 2.96; gap cut 0.84), mass above eta* 0.009 -> 0.092 (target 0.10),
  left-CVaR_0.1 moved by 0.03;
* left, beta=0.1, alpha=1, 600 steps: left-CVaR_0.1 -2.18 -> 0.83 (target 0.88; gap cut 0.98-0.99
  over seeds 0-3), mass below eta* 0.099-0.106 (target 0.10);
* starved right, alpha=0.5: mass above eta* 0.0003 -> 0.078 (target 0.10), right-CVaR_0.9 2.20 -> 3.36
  (target 3.81; gap cut 0.72).

The assertions use those figures with head-room; tight absolute figures come from
``benchmarks/toy2d.py``.
"""
import os
import signal
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from tfftmol.core.adjoint import AMConfig
from tfftmol.core.config import ConfigError, from_dict, to_dict
from tfftmol.core.risk import cvar
from tfftmol.core.samplers import sample_sde
from tfftmol.core.threshold import TfftWarning
from tfftmol.core.tfft import AdaptiveHinge, TFFTConfig, run_tfft
from tfftmol.toy2d.gmm import circle_gmm, population_threshold
from tfftmol.toy2d.flows import linear_reward

W = [1.0, 0.0]
FAST_AM = dict(steps=300, batch_size=256, time_steps=30, loss_time_steps=10, hidden=64, lr=2e-3, grad_clip=0.0,
               ema=0.95)


def _run(tail, beta, alpha, logs=None, steps=None, **kw):
    g = circle_gmm()
    am = AMConfig(**dict(FAST_AM, **({"steps": steps} if steps else {})))
    cfg = TFFTConfig(tail=tail, beta=beta, alpha=alpha, offline_samples=20000, bootstrap=0, am=am, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, linear_reward(W), cfg, progress=False, log=(logs.append if logs is not None else lambda s: None))
    gen = lambda: torch.Generator().manual_seed(1)
    x = sample_sde(res.model, 10000, 50, generator=gen())[:, 0].double().numpy()
    x0 = sample_sde(g, 10000, 50, generator=gen())[:, 0].double().numpy()
    eta, _ = population_threshold(g, W, alpha, beta, tail)
    xt = g.sample_tilted_hinge(40000, W, eta, alpha, beta, tail, seed=2)[:, 0].double().numpy()
    return g, res, x0, x, xt, eta


def _mass(a, eta, tail):
    return float((a > eta).mean() if tail == "right" else (a < eta).mean())


def _gap_cut(pre, ft, tgt):
    return (ft - pre) / (tgt - pre)


@pytest.fixture(scope="module")
def right_run():
    return _run("right", 0.9, 1.0)


@pytest.fixture(scope="module")
def left_run():
    # 600 steps: at 300 the left tail is still in an overshoot transient (seeds 0-5: mass below eta*
    # 0.056-0.078, mean gap cut 1.01-1.05); at 600 seeds 0-3 give mass 0.099-0.106 and gap cut 0.98-0.99
    return _run("left", 0.1, 1.0, steps=600)


@pytest.mark.slow  # the 300-step right_run fixture: 75 s
def test_right_tail_moves_toward_the_exact_target(right_run):
    g, res, x0, x, xt, eta = right_run
    assert res.threshold.eta == pytest.approx(eta, abs=0.1)
    assert _gap_cut(cvar(x0, 0.9, "right"), cvar(x, 0.9, "right"), cvar(xt, 0.9, "right")) > 0.3
    assert _gap_cut(x0.mean(), x.mean(), xt.mean()) > 0.2
    assert _mass(x, eta, "right") > 3 * _mass(x0, eta, "right")
    assert _mass(x, eta, "right") < 0.15  # it does not overshoot the target's 0.10


@pytest.mark.slow  # the 300-step right_run fixture: 75 s
def test_right_tail_leaves_the_left_tail_alone(right_run):
    """The exact right-tail target barely changes the left tail; neither may the fine-tune."""
    g, res, x0, x, xt, eta = right_run
    d_right = cvar(x, 0.9, "right") - cvar(x0, 0.9, "right")
    d_left = cvar(x, 0.1, "left") - cvar(x0, 0.1, "left")
    assert abs(cvar(xt, 0.1, "left") - cvar(x0, 0.1, "left")) < 0.05
    assert abs(d_left) < 0.25 * d_right


@pytest.mark.slow  # the 600-step left_run fixture: 30 s
def test_left_tail_moves_to_the_exact_target(left_run):
    g, res, x0, x, xt, eta = left_run
    assert res.threshold.eta == pytest.approx(eta, abs=0.05)
    assert _gap_cut(cvar(x0, 0.1, "left"), cvar(x, 0.1, "left"), cvar(xt, 0.1, "left")) > 0.8
    assert _gap_cut(x0.mean(), x.mean(), xt.mean()) > 0.8
    assert 0.07 < _mass(x, eta, "left") < 0.13  # target 0.10


@pytest.mark.slow  # the 600-step left_run fixture: 30 s
def test_left_tail_does_not_inflate_the_right_tail(left_run):
    g, res, x0, x, xt, eta = left_run
    d_right = cvar(x, 0.9, "right") - cvar(x0, 0.9, "right")
    d_right_target = cvar(xt, 0.9, "right") - cvar(x0, 0.9, "right")
    d_left = cvar(x, 0.1, "left") - cvar(x0, 0.1, "left")
    assert d_right < d_right_target + 0.1
    assert d_right < 0.2 * d_left


@pytest.mark.slow  # 60 s
def test_starved_case_moves_with_the_default_config():
    """beta=0.9, alpha=0.5: ~3e-4 of the pre-trained mass above eta*; a plain hinge learns nothing."""
    logs = []
    g, res, x0, x, xt, eta = _run("right", 0.9, 0.5, logs=logs)
    m = g.means[:, 0].double().numpy()
    sd = g.stds.double().numpy()
    pre_mass = float((g.weights.double().numpy() * stats.norm.sf((eta - m) / sd)).sum())  # exact
    assert pre_mass < 1e-3
    assert _mass(x, eta, "right") >= 10 * pre_mass
    assert any("continuation" in s for s in logs)  # it says so
    assert any("eta_used" in h for h in res.history)


def test_starved_case_warns_in_plain_words():
    g = circle_gmm()
    from tfftmol.core.threshold import solve_threshold
    from tfftmol.core.samplers import sample_ode
    r = sample_ode(g, 20000, 50, method="heun", generator=torch.Generator().manual_seed(0))[:, 0]
    with pytest.warns(TfftWarning, match="alpha"):
        res = solve_threshold(r.double().numpy(), 0.9, 0.5, "right", bootstrap=50, seed=0)
    lo, hi = res.eta_interval
    assert lo < res.eta < hi and hi - lo > 0.05  # the bootstrap shows the uncertainty
    assert res.warnings


@pytest.mark.parametrize("tail,beta,a_min", [("right", 0.9, 0.05), ("left", 0.1, 0.05)])
def test_adaptive_hinge_is_exact_once_the_batch_reaches_eta(tail, beta, a_min):
    from tfftmol.core.pseudo import PseudoReward

    exact = PseudoReward(tail=tail, beta=beta, eta=1.0)
    ad = AdaptiveHinge(exact, a_min)
    far = torch.linspace(2, 3, 100) if tail == "right" else torch.linspace(-1, 0, 100)  # batch well past eta
    assert torch.equal(ad.grad(far), exact.grad(far)) and ad.last_eta == 1.0
    near = torch.linspace(-3, 0, 100) if tail == "right" else torch.linspace(2, 5, 100)  # batch short of eta
    g = ad.grad(near)
    assert float((g != 0).float().mean()) >= a_min  # at least a_min active
    assert (ad.last_eta < 1.0) if tail == "right" else (ad.last_eta > 1.0)


def test_expected_baseline_uses_the_same_trainer_and_skips_stage_one():
    g = circle_gmm()
    cfg = TFFTConfig(method="expected", alpha=1.0, am=AMConfig(steps=3, batch_size=8, time_steps=6, loss_time_steps=2))
    res = run_tfft(g, linear_reward(W), cfg, progress=False, log=lambda s: None)
    assert res.threshold is None and res.offline_rewards is None and res.trainer.step_count == 3


def test_offline_batch_is_cached_and_reused(tmp_path):
    g = circle_gmm()
    logs = []
    cfg = TFFTConfig(offline_samples=500, bootstrap=0, am=AMConfig(steps=2, batch_size=8, time_steps=6, loss_time_steps=2))
    r1 = run_tfft(g, linear_reward(W), cfg, cache_dir=tmp_path, progress=False, log=logs.append)
    r2 = run_tfft(g, linear_reward(W), cfg, cache_dir=tmp_path, progress=False, log=logs.append)
    offline = [s for s in logs if s.startswith("offline batch:")]
    assert "(sampled)" in offline[0] and "(cached)" in offline[1]
    assert np.array_equal(r1.offline_rewards, r2.offline_rewards)
    assert len(list(tmp_path.glob("offline-*.safetensors"))) == 1


def _interrupted_then_resumed(g, cfg, ck, at_step: int):
    """Run with a SIGINT after ``at_step`` steps (the checkpoint is saved), then resume to the end."""
    def interrupt(trainer, stats):
        if trainer.step_count == at_step:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        run_tfft(g, linear_reward(W), cfg, checkpoint_dir=ck, checkpoint_every=100, progress=False,
                 callbacks=[interrupt], log=lambda s: None)
    return run_tfft(g, linear_reward(W), cfg, checkpoint_dir=ck, progress=False, log=lambda s: None)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    """SIGINT mid-run saves a checkpoint; resuming ends exactly where an uninterrupted run ends."""
    g = circle_gmm()
    cfg = TFFTConfig(offline_samples=2000, bootstrap=0, seed=3,
                     am=AMConfig(steps=12, batch_size=16, time_steps=8, loss_time_steps=3, ema=0.9, seed=3))
    full = run_tfft(g, linear_reward(W), cfg, progress=False, log=lambda s: None)
    resumed = _interrupted_then_resumed(g, cfg, tmp_path / "ckpt", at_step=5)
    assert resumed.trainer.step_count == 12
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bad,field", [({"beta": 1.5}, "beta"), ({"alpha": 0}, "alpha"), ({"tail": "middle"}, "tail"),
                                       ({"am": {"steps": 0}}, "steps"), ({"continuation": "x"}, "continuation")])
def test_bad_config_values_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        from_dict(TFFTConfig, bad)


def test_unknown_keys_are_rejected_with_the_accepted_list():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['bta'\].*accepted keys"):
        from_dict(TFFTConfig, {"bta": 0.9})
    with pytest.raises(ConfigError, match=r"'am'"):
        from_dict(TFFTConfig, {"am": {"stepz": 3}})


def test_config_yaml_round_trip(tmp_path):
    from tfftmol.core.config import dump_yaml, load_yaml

    cfg = TFFTConfig(tail="left", beta=0.1, alpha=0.3, am=AMConfig(steps=77, lr=3e-4))
    dump_yaml(cfg, tmp_path / "c.yaml")
    back = from_dict(TFFTConfig, load_yaml(tmp_path / "c.yaml"))
    assert back == cfg and to_dict(back)["am"]["steps"] == 77


@pytest.mark.parametrize("mode", ["eta", "alpha", "beta"])
def test_continuation_plans_end_at_the_exact_target(mode):
    """Stages tile the step budget; only the knob of ``mode`` moves; the last stage is the requested problem."""
    from tfftmol.core.tfft import plan_stages

    r = np.random.default_rng(0).normal(size=20000)
    cfg = TFFTConfig(alpha=0.05, beta=0.9, continuation=mode, am=AMConfig(steps=100))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        st = plan_stages(r, cfg, log=lambda s: None)
    assert len(st) == 4 and st[0].start == 0 and st[-1].stop == 100
    assert all(a.stop == b.start for a, b in zip(st, st[1:]))
    assert (st[-1].alpha, st[-1].beta) == (0.05, 0.9) and st[-1].stop - st[-1].start == 50
    etas = [s.threshold.eta for s in st]
    assert etas == sorted(etas) and etas[0] < etas[-1]  # easier (lower) thresholds first
    assert all(s.alpha == 0.05 for s in st) == (mode != "alpha")
    assert all(s.beta == 0.9 for s in st) == (mode != "beta")


def test_offline_cache_key_follows_the_weights_of_a_shipped_flow():
    """A fine-tuned copy of a shipped flow must not reuse the base model's cached offline batch."""
    import copy

    from tfftmol.core.tfft import model_fingerprint
    from tfftmol.pretrained import load_pretrained

    base = load_pretrained("toy2d-moons")
    ft = copy.deepcopy(base)
    assert model_fingerprint(ft) == model_fingerprint(base)
    with torch.no_grad():
        next(ft.parameters()).add_(1e-3)
    assert model_fingerprint(ft) != model_fingerprint(base)
    assert model_fingerprint(load_pretrained("toy2d-moons")) == model_fingerprint(base)


def test_a_resume_after_the_refinement_restores_its_diagnostics_whole(tmp_path):
    """The refined threshold's diagnostics (not only its eta) survive an interruption after the refinement."""
    g = circle_gmm()
    cfg = TFFTConfig(offline_samples=2000, bootstrap=0, seed=3, continuation="eta", continuation_stages=2,
                     refine_threshold="always", refine_samples=2000, track_threshold="none",
                     am=AMConfig(steps=12, batch_size=16, time_steps=8, loss_time_steps=3, seed=3))
    full = run_tfft(g, linear_reward(W), cfg, progress=False, log=lambda s: None)
    assert full.refined is not None and full.refined.eta != full.stage1.eta         # the refinement was adopted
    assert full.refined.predicted_kl != full.stage1.predicted_kl
    resumed = _interrupted_then_resumed(g, cfg, tmp_path / "ckpt", at_step=10)
    a, b = full.refined, resumed.refined
    assert b is not None and b.eta == a.eta
    for f in ("predicted_cvar", "predicted_kl", "active_fraction", "ess", "tail_mass", "pre_cvar", "n", "is_ess"):
        assert getattr(b, f) == getattr(a, f), f
    assert np.array_equal(b.rewards, a.rewards) and np.array_equal(b.log_weights, a.log_weights)
    assert resumed.stage1.eta == full.stage1.eta and resumed.stage1.predicted_kl == full.stage1.predicted_kl
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
