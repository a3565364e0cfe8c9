"""The gradient-free stage 2 (core/value.py): a learned value model drives Adjoint Matching.

Ground truth: the exact GMM flow with r(x) = x_1 given to the trainer as values only
(``ValuesOnly``: ``has_grad = False``, no gradient ever computed), TFFT right-CVaR_0.9 at
alpha = 1, whose target p* is sampled exactly.  Budget: the fast budget of test_tfft.py
(M = 20,000, 300 steps, batch 256, 30 SDE steps, 10 loss times, Adam 2e-3, EMA 0.95).

Measured at that budget (|own-tail CVaR - exact target's|, exact target 2.955, pre-trained
2.199), seeds 0 / 1 / 2 / 3:

* gradient path (lean adjoint of grad r): 0.172 / 0.195 / 0.158 / 0.162;
* values only, default value model (scalar, all grid times, warm-started from the offline
  batch): 0.184 / 0.169 / 0.141 / 0.126 (KL 0.26 / 0.28 / 0.30 / 0.33 against 0.27 / 0.25 /
  0.28 / 0.28).

The assertion is the value path's acceptance criterion on seed 0, error <= 1.5x the gradient path's, with
the gradient path's seed-0 error taken from the measurement above (running both would double
the test time).  About 45 s on one thread.
"""
import copy
import warnings

import numpy as np
import pytest
import torch

from exact_target import W, exact_right_tail_run

from tfftmol.core.adjoint import AdjointMatching
from tfftmol.core.checkpoint import load_checkpoint, save_checkpoint
from tfftmol.core.pseudo import PseudoReward
from tfftmol.core.risk import cvar
from tfftmol.core.samplers import sample_sde
from tfftmol.core.settings import AMConfig, TFFTConfig
from tfftmol.core.threshold import TfftWarning
from tfftmol.core.tfft import run_tfft
from tfftmol.core.reward import reward_hook
from tfftmol.core.value import (ValueConfig, ValuesOnly, ValueTrainer, noised_pairs, reward_has_grad,
                                sample_controlled)
from tfftmol.toy2d.gmm import circle_gmm
from tfftmol.toy2d.flows import linear_reward

FAST_AM = dict(steps=300, batch_size=256, time_steps=30, loss_time_steps=10, hidden=64, lr=2e-3, grad_clip=0.0,
               ema=0.95)
GRAD_ERR = 0.172  # measured gradient-path CVaR error at this budget, seed 0 (module docstring)


@pytest.fixture(scope="module")
def values_only_run():
    return exact_right_tail_run(FAST_AM)


@pytest.mark.slow  # about 17 s: a 2D values-only fine-tune (fixture shared with the next test)
def test_values_only_reaches_the_exact_target_as_closely_as_the_gradient_path(values_only_run):
    res, logs, x0, x, xt = values_only_run
    err = abs(cvar(x, 0.9, "right") - cvar(xt, 0.9, "right"))
    assert cvar(x, 0.9, "right") > cvar(x0, 0.9, "right") + 0.3       # it moved (target gap 0.76)
    assert err <= 1.5 * GRAD_ERR, err
    assert abs(cvar(x, 0.1, "left") - cvar(x0, 0.1, "left")) < 0.25  # the left tail stays put


@pytest.mark.slow  # shares the 17 s values-only run above
def test_the_run_says_which_stage2_path_ran(values_only_run):
    res, logs, *_ = values_only_run
    assert res.trainer.stage2 == "value"
    assert any("stage 2: values only" in s for s in logs)
    assert {h["stage2"] for h in res.history} == {"value"}
    assert all(h["value_loss"] is not None and h["value_loss"] == h["value_loss"] for h in res.history)


def test_auto_picks_the_path_from_the_reward():
    g = circle_gmm()
    tr = PseudoReward("right", 0.9, 1.9)
    assert not reward_has_grad(ValuesOnly(linear_reward(W))) and reward_has_grad(linear_reward(W))
    assert AdjointMatching(g, linear_reward(W), tr, 1.0, AMConfig(steps=1)).stage2 == "gradient"
    assert AdjointMatching(g, ValuesOnly(linear_reward(W)), tr, 1.0, AMConfig(steps=1)).stage2 == "value"
    assert AdjointMatching(g, linear_reward(W), tr, 1.0, AMConfig(steps=1, stage2="value")).stage2 == "value"
    with pytest.raises(ValueError, match="has_grad=False"):
        AdjointMatching(g, ValuesOnly(linear_reward(W)), tr, 1.0, AMConfig(steps=1, stage2="gradient"))


def test_values_only_forwards_the_cache_and_warm_start_hooks_but_never_a_gradient_hook():
    class Full:
        name, cache_key = "full", "full-v2"

        def value_pairs(self, n, generator):
            return "pairs"

        def grad(self, x):
            return x

        def fit_offline(self, x, rb):
            return None

    w = ValuesOnly(Full())
    assert w.cache_key == "full-v2" and w.value_pairs(3, None) == "pairs" and w.name == "full"
    assert reward_hook(w, "grad") is None and reward_hook(w, "fit_offline") is None and not reward_has_grad(w)
    bare = ValuesOnly(linear_reward(W))
    assert reward_hook(bare, "value_pairs") is None and bare.cache_key == linear_reward(W).cache_key


@pytest.mark.parametrize("kind", ["scalar", "distribution"])
def test_one_value_update_changes_the_parameters_and_the_loss_is_finite(kind):
    g = circle_gmm()
    vt = ValueTrainer((2,), ValueConfig(kind=kind, hidden=32, layers=2), seed=0)
    before = copy.deepcopy(vt.model.state_dict())
    gen = torch.Generator().manual_seed(0)
    ct = sample_controlled(g, g, 64, 10, generator=gen)
    r = ct.traj.final[:, 0]
    loss = vt.update(ct, r, PseudoReward("right", 0.9, 1.5), 1.0)
    assert torch.isfinite(torch.tensor(loss))
    after = vt.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("net."))
    a = vt.adjoint(ct.traj.xs[3], ct.traj.ts[3].expand(64), vt.g_bins(PseudoReward("right", 0.9, 1.5), 1.0, r))
    assert a.shape == (64, 2) and torch.isfinite(a).all()


def test_control_costs_of_the_base_are_zero_and_the_sampler_matches_sample_sde():
    g = circle_gmm()
    ct = sample_controlled(g, g, 16, 10, generator=torch.Generator().manual_seed(3))
    ref = sample_sde(g, 16, 10, generator=torch.Generator().manual_seed(3), return_trajectory=True)
    assert torch.allclose(ct.traj.xs, ref.xs, atol=1e-5)
    assert float(ct.cost.abs().max()) == 0 and float(ct.cost_to_go(True).abs().max()) == 0


def test_warm_start_learns_the_posterior_mean_reward_of_noised_data():
    """On the GMM, E[r | x_t] = w . (x + (1 - t) v(x, t)) exactly (the denoiser); the distribution head learns it."""
    torch.manual_seed(0)
    g = circle_gmm()
    x1 = g.sample_data(8000, torch.Generator().manual_seed(0))
    xt, t, r = noised_pairs(x1, x1[:, 0], 4, 30, torch.Generator().manual_seed(1))
    vt = ValueTrainer((2,), ValueConfig(kind="distribution", hidden=64, lr=3e-3), seed=0)
    vt.fit_pairs(xt, t, r, steps=400)
    xq = g.sample_data(2000, torch.Generator().manual_seed(2)) * 0.6 + 0.4 * torch.randn(2000, 2)
    tq = torch.full((2000,), 0.6)
    exact = (xq + 0.4 * g.velocity(xq, tq))[:, 0]
    with torch.no_grad():
        pred = vt.model.reward_distribution(xq, tq) @ vt.model.rbar.float()
    assert float(torch.corrcoef(torch.stack([pred, exact]))[0, 1]) > 0.95
    assert float((pred - exact).abs().mean()) < 0.25


def test_value_state_survives_a_checkpoint_round_trip(tmp_path):
    g = circle_gmm()
    cfg = AMConfig(steps=10, batch_size=32, time_steps=8, loss_time_steps=3, hidden=16, layers=2,
                   value=ValueConfig(hidden=16, layers=2))
    tr = PseudoReward("right", 0.9, 1.5)
    a = AdjointMatching(g, ValuesOnly(linear_reward(W)), tr, 1.0, cfg)
    for _ in range(3):
        a.step()
    save_checkpoint(tmp_path, a.state_dict())
    b = AdjointMatching(g, ValuesOnly(linear_reward(W)), tr, 1.0, cfg)
    b.load_state_dict(load_checkpoint(tmp_path))
    for k, v in a.value.model.state_dict().items():
        assert torch.equal(v, b.value.model.state_dict()[k]), k
    sa, sb = a.step(), b.step()  # the resumed trainer continues exactly as the original
    assert sa.loss == pytest.approx(sb.loss, rel=1e-6) and sa.value_loss == pytest.approx(sb.value_loss, rel=1e-6)


def test_a_domain_supplies_warm_start_pairs_through_the_reward():
    """A reward declaring value_pairs(n, generator) warm-starts the value model instead of the offline batch."""
    from tfftmol.core.value import start_value_stage

    g = circle_gmm()
    calls = []

    class Labelled(ValuesOnly):
        def value_pairs(self, n, generator):
            calls.append(n)
            x1 = g.sample_data(n // 4, generator)
            return noised_pairs(x1, x1[:, 0], 4, 30, generator)

    tr = PseudoReward("right", 0.9, 1.5)
    cfg = AMConfig(steps=5, batch_size=32, time_steps=30, loss_time_steps=3, value=ValueConfig(warm_start_steps=20))
    am = AdjointMatching(g, Labelled(linear_reward(W)), tr, 1.0, cfg)
    before = copy.deepcopy(am.value.model.state_dict())
    logs = []
    start_value_stage(am, None, None, logs.append)
    assert calls == [256 * 20]
    assert any("value_pairs" in s for s in logs) and any("values only" in s for s in logs)
    assert any(not torch.equal(before[k], v) for k, v in am.value.model.state_dict().items() if k.startswith("net."))
    am.step()  # and the values-only step runs on top of it


def test_class_conditional_flows_need_cond_classes_and_then_step():
    g = circle_gmm()

    class Conditional:  # the GMM flow, with an (ignored) integer class condition
        state_shape = (2,)

        def velocity(self, x, t, cond=None):
            return g.velocity(x, t)

        def sample_prior(self, n, generator=None, device=None):
            return g.sample_prior(n, generator=generator, device=device)

    cs = lambda n, gen: torch.randint(0, 3, (n,), generator=gen)
    tr = PseudoReward("right", 0.9, 1.5)
    small = dict(steps=3, batch_size=16, time_steps=8, loss_time_steps=3)
    am = AdjointMatching(Conditional(), ValuesOnly(linear_reward(W)), tr, 1.0, AMConfig(**small), cond_sampler=cs)
    with pytest.raises(ValueError, match="cond_classes"):
        am.step()
    am = AdjointMatching(Conditional(), ValuesOnly(linear_reward(W)), tr, 1.0,
                         AMConfig(**small, value=ValueConfig(cond_classes=3)), cond_sampler=cs)
    st = am.step()
    assert st.stage2 == "value" and st.value_loss == st.value_loss


@pytest.mark.slow  # about 16 s: a values-only fine-tune
def test_a_reward_with_no_useful_gradient_moves_its_tail_on_the_value_path():
    """r = floor(4 x_1) / 4: its gradient is zero almost everywhere, so the gradient path cannot move.

    Measured at the fast budget (seed 0): eta* 2.336; right-CVaR_0.9 2.072 before, 2.072 after the
    gradient path (KL 0.000), 2.736 after the value path (KL 0.36); the exact target, by importance
    weights on 400k draws of p_pre, 2.946: the value path realises 76% of the gain.

    The threshold's catch-up is off here: this test is about the value path.  With it on (the
    default) the same run reaches 2.39: on this stair reward the batch's mass beyond eta crosses
    twice the target on noise (21-23% of 256 while its average sits at 12-14%), eta jumps onto a
    stair level and tracking then swings (docs/design.md §5.5, a known limit of the catch-up).
    """
    from tfftmol.core.reward import DifferentiableReward

    fn = lambda x: torch.floor(4 * x[:, 0]) / 4
    g = circle_gmm()
    rw = ValuesOnly(DifferentiableReward(fn, "stair"))
    cfg = TFFTConfig(tail="right", beta=0.9, alpha=1.0, offline_samples=20000, bootstrap=0, am=AMConfig(**FAST_AM),
                     track_catch_up=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, rw, cfg, progress=False, log=lambda s: None)
    x = sample_sde(res.model, 10000, 50, generator=torch.Generator().manual_seed(1))
    x0 = sample_sde(g, 10000, 50, generator=torch.Generator().manual_seed(1))
    xd = g.sample_data(400000, torch.Generator().manual_seed(2))
    rd = fn(xd).double().numpy()
    lw = PseudoReward("right", 0.9, res.threshold.eta).value(rd)
    target = cvar(rd, 0.9, "right", weights=np.exp(lw - lw.max()))
    pre, ft = cvar(fn(x0).numpy(), 0.9, "right"), cvar(fn(x).numpy(), 0.9, "right")
    assert (ft - pre) / (target - pre) > 0.5


def test_replay_keeps_the_warm_start_through_misleading_on_policy_updates():
    """On-policy batches whose rewards carry no information erase a warm start; replaying its pairs keeps it.

    Known answer: the GMM posterior mean E[r | x_t] = w . (x + (1 - t) v(x, t)) (the test above).
    """
    g = circle_gmm()
    x1 = g.sample_data(8000, torch.Generator().manual_seed(0))
    xt, t, r = noised_pairs(x1, x1[:, 0], 4, 30, torch.Generator().manual_seed(1))
    xq = g.sample_data(2000, torch.Generator().manual_seed(2)) * 0.6 + 0.4 * torch.randn(
        2000, 2, generator=torch.Generator().manual_seed(3))
    tq = torch.full((2000,), 0.6)
    exact = (xq + 0.4 * g.velocity(xq, tq))[:, 0]
    corr = {}
    for replay in (0.0, 0.5):
        vt = ValueTrainer((2,), ValueConfig(kind="distribution", hidden=64, lr=3e-3, replay=replay), seed=0)
        vt.fit_pairs(xt, t, r, steps=400)
        assert (vt.replay_pairs is not None) == (replay > 0)
        gen = torch.Generator().manual_seed(4)
        for _ in range(40):                                  # rewards unrelated to the states
            ct = sample_controlled(g, g, 64, 10, generator=gen)
            vt.update(ct, torch.randn(64, generator=gen))
        with torch.no_grad():
            pred = vt.model.reward_distribution(xq, tq) @ vt.model.rbar.float()
        corr[replay] = float(torch.corrcoef(torch.stack([pred, exact]))[0, 1])
    assert corr[0.5] > 0.9 and corr[0.5] > corr[0.0] + 0.1, corr
