"""The Adjoint Matching step's speed levers keep its maths.

* The loss reads the base velocities at its points from the lean adjoint's own forward passes instead of a
  second forward pass of the base: the same loss and the same update as recomputing them (the reference
  is the same trainer with the buffer never filled), and the base network runs once per grid point.
* ``AMConfig.precision = "bf16"``: the networks run under bfloat16 autocast; states, adjoints, loss and
  weights stay float32, and the step's loss agrees with float32 to bfloat16's resolution.
"""
import copy

import pytest
import torch

from tfftmol.chem.model import GraphTransformerConfig
from tfftmol.chem.qm9_model import QM9GraphFlow
from tfftmol.core.adjoint import AdjointMatching, IdentityTransform
from tfftmol.core.config import ConfigError
from tfftmol.core.reward import DifferentiableReward
from tfftmol.core.flow import VelocityModule
from tfftmol.core.settings import AMConfig
from tfftmol.toy2d.gmm import GaussianMixtureFlow

TINY = GraphTransformerConfig(d_node=16, d_edge=8, n_layers=2, n_heads=2)
W = torch.linspace(-1.0, 1.0, 189)


def _tiny() -> QM9GraphFlow:
    torch.manual_seed(0)
    return QM9GraphFlow(TINY).eval()


def _reward():
    return DifferentiableReward(lambda x: x @ W)


class _Fresh(AdjointMatching):
    """The reference: the loss evaluates the base at its points itself (the buffer is never filled)."""

    def _velocity_buffer(self, xs):
        return torch.empty_like(xs), torch.zeros(xs.shape[:2], dtype=torch.bool)


def _counted(base):
    calls = []
    base.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


@pytest.mark.parametrize("terminal_time,terminal_state", [(1.0, "denoised"), (0.5, "denoised"), (0.5, "noisy")])
def test_the_loss_reuses_the_lean_adjoints_base_velocities(terminal_time, terminal_state):
    cfg = AMConfig(steps=3, batch_size=6, time_steps=8, loss_time_steps=4, lr=1e-3, terminal_time=terminal_time,
                   terminal_state=terminal_state, step_trust=0.0, seed=3)
    base_a, base_b = _tiny(), _tiny()
    fast = AdjointMatching(base_a, _reward(), IdentityTransform(), 2.0, cfg)
    ref = _Fresh(base_b, _reward(), IdentityTransform(), 2.0, cfg)
    calls = _counted(base_a)  # after the trainer copied the base: the copy's calls are not counted
    for _ in range(3):
        calls.clear()
        s_fast, s_ref = fast.step(), ref.step()
        assert s_fast.loss == pytest.approx(s_ref.loss, rel=1e-5)
        assert s_fast.kl == pytest.approx(s_ref.kl, rel=1e-5, abs=1e-9)
        # the base runs once per grid point the adjoint visits (grid 1/8 .. 1): 7 VJPs at t_c = 1; at
        # t_c = 0.5 (grid index 3) 3 lean-adjoint VJPs before t_c and the denoiser at t_c.  With the noisy
        # terminal state nothing runs the base at t_c, so the loss evaluates it there, on those 6 rows only
        if terminal_time == 1.0:
            assert calls == [6] * 7
        elif terminal_state == "denoised":
            assert calls == [6] * 4
        else:
            assert calls == [6] * 3 + [6]
    # Adam divides each gradient element by its own running scale, so a float32 rounding difference in a
    # near-zero gradient element can move that one parameter by a small fraction of lr (a clean-clone run
    # measured 4.8e-6 on 1 of 1,024 elements); a wrong base velocity would move them by about lr = 1e-3
    for p, q in zip(fast.params, ref.params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


class _Full(AdjointMatching):
    """The reference: the lean adjoint runs on every sample, those with g'(r) = 0 included."""

    def _active_rows(self, gp):
        return slice(None)


@pytest.mark.parametrize("tail", ["right", "left"])
@pytest.mark.parametrize("terminal_time", [1.0, 0.5])
def test_samples_outside_the_tail_skip_the_adjoint_and_the_step_is_unchanged(terminal_time, tail):
    """A hinge pseudo-reward gives g'(r) = 0 outside the tail: those samples' adjoints are zero at every time, so
    the lean adjoint runs on the tail's samples only; loss, control cost and update equal the full computation."""
    from tfftmol.core.pseudo import PseudoReward
    cfg = AMConfig(steps=3, batch_size=12, time_steps=8, loss_time_steps=3, lr=1e-3, terminal_time=terminal_time,
                   step_trust=0.0, seed=5)
    base_a, base_b = _tiny(), _tiny()
    x = base_a.sample_prior(400, generator=torch.Generator().manual_seed(9))
    eta = float((x @ W).median())  # about half of the samples in the tail
    transform = PseudoReward(tail, 0.5, eta)
    fast = AdjointMatching(base_a, _reward(), transform, 2.0, cfg)
    ref = _Full(base_b, _reward(), transform, 2.0, cfg)
    calls = _counted(base_a)
    seen = set()
    for _ in range(3):
        calls.clear()
        s_fast, s_ref = fast.step(), ref.step()
        assert s_fast.active_fraction == s_ref.active_fraction
        assert s_fast.loss == pytest.approx(s_ref.loss, rel=1e-5)
        assert s_fast.kl == pytest.approx(s_ref.kl, rel=1e-5, abs=1e-9)
        active = round(s_fast.active_fraction * 12)
        seen.add(active)
        if 0 < active < 12:
            n_adjoint = 7 if terminal_time == 1.0 else 4  # VJPs (+ the denoiser at t_c), as above
            # the adjoint's passes on the tail's samples, then one loss pass on the others' 3 loss times
            assert calls == [active] * n_adjoint + [3 * (12 - active)]
    assert seen - {0, 12}, seen  # some step had samples on both sides
    # Adam's steps are ~lr = 1e-3 whatever the gradient's size: float-rounding differences of a near-zero
    # gradient can move a weight by ~1e-6; 1e-5 is 1% of one step
    for p, q in zip(fast.params, ref.params):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_no_sample_in_the_tail_gives_a_zero_target_without_any_adjoint_pass():
    from tfftmol.core.pseudo import PseudoReward
    cfg = AMConfig(steps=1, batch_size=6, time_steps=6, loss_time_steps=2, terminal_time=0.5, step_trust=0.0)
    base = _tiny()
    am = AdjointMatching(base, _reward(), PseudoReward("right", 0.9, 1e9), 1.0, cfg)
    calls = _counted(base)
    s = am.step()
    assert s.active_fraction == 0.0
    assert calls == [6 * 2]  # the loss's base pass only
    assert s.loss == pytest.approx(0.0, abs=1e-12)  # the copy starts at the base: u = 0 = the target


def test_value_path_and_path_weights_still_evaluate_the_base_in_the_loss():
    """Paths whose adjoint does not run the base (the learned value) compute the loss's base velocities."""
    cfg = AMConfig(steps=2, batch_size=6, time_steps=6, loss_time_steps=3, stage2="value", step_trust=0.0)
    base = _tiny()
    am = AdjointMatching(base, _reward(), IdentityTransform(), 1.0, cfg)
    calls = _counted(base)
    am.step()
    assert 6 * 3 in calls  # one batched base pass over the 3 loss times of 6 rows


def test_bf16_precision_keeps_float32_state_and_the_loss_within_bfloat16_resolution():
    cfg32 = AMConfig(steps=2, batch_size=16, time_steps=8, loss_time_steps=4, terminal_time=0.5, seed=1)
    cfg16 = AMConfig(**{**cfg32.__dict__, "precision": "bf16"})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a CPU without native bfloat16 only warns
        a = AdjointMatching(_tiny(), _reward(), IdentityTransform(), 2.0, cfg32)
        b = AdjointMatching(_tiny(), _reward(), IdentityTransform(), 2.0, cfg16)
    sa, sb = a.step(), b.step()
    assert all(p.dtype == torch.float32 for p in b.params)
    traj = b.sample_trajectories(4)
    assert traj.xs.dtype == torch.float32
    # same seed, same trajectories' noise: the losses differ only by the networks' bfloat16 rounding
    assert sb.loss == pytest.approx(sa.loss, rel=0.05)
    assert sb.loss != sa.loss  # and the autocast did run


def test_precision_is_checked():
    with pytest.raises(ConfigError, match="precision='fp16'.*'fp32', 'bf16'"):
        AMConfig(precision="fp16")
    gmm64 = GaussianMixtureFlow([[-1.0], [1.0]], [0.3, 0.3], [0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="precision='bf16' needs a float32 flow; this one is torch.float64"):
        AdjointMatching(gmm64, DifferentiableReward(lambda x: x[:, 0]), IdentityTransform(), 1.0,
                        AMConfig(precision="bf16"))


class _MLPFlow(VelocityModule):
    """A plain MLP velocity: under bfloat16 autocast its output is bfloat16 (unlike the graph flow's softmax)."""

    def __init__(self):
        super().__init__()
        self.state_shape = (4,)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))

    def forward(self, x, t, cond=None):
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], 1))


@pytest.mark.parametrize("stage2", ["gradient", "value"])
def test_bf16_runs_a_flow_whose_network_returns_bfloat16(stage2):
    """The sampler checks that a velocity comes back in the state's dtype: the bf16 path hands it float32."""
    import warnings
    def trainer(precision):
        cfg = AMConfig(steps=2, batch_size=8, time_steps=6, loss_time_steps=3, precision=precision, stage2=stage2,
                       seed=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return AdjointMatching(_MLPFlow(), DifferentiableReward(lambda x: x[:, 0]), IdentityTransform(), 1.0, cfg)

    am, ref = trainer("bf16"), trainer("fp32")
    # the same seed: the first step's loss differs from float32's by the networks' bfloat16 rounding only
    # (measured 0.03% on the gradient path, 0.6% on the value path)
    assert am.step().loss == pytest.approx(ref.step().loss, rel=0.02)
    s = am.step()
    assert torch.isfinite(torch.tensor(s.loss)) and s.loss > 0
    assert am.sample_trajectories(3).xs.dtype == torch.float32
