"""``AMConfig.terminal_time``: the denoised terminal adjoint for flows on (near-)discrete data.

Data: two narrow components at -1 and +1 (std 0.02, weights 1/2), the exact GMM flow, and the
linear reward ``r(x) = x`` with ``lam = 1``.  The tilt ``p* ∝ p exp(x)`` puts
``e / (e + e^-1) = 0.881`` on the +1 component.  The base flow snaps every trajectory onto a
component well before ``t = 1``, so ``dX_1 / dX_t`` is ~0 and the exact lean adjoint carries
almost no signal back to the times where the component is chosen; starting the adjoint at
``t_c = 0.5`` from the reward gradient at the denoised state ``x + (1 - t) v`` does.

Measured at this budget (150 steps, batch 128, seed 0): mass on +1 of 0.50 with the exact adjoint and
0.75 with ``terminal_time = 0.5`` (0.77 with 0.7).
"""
import pytest
import torch

from tfftmol.core.adjoint import AMConfig, AdjointMatching, IdentityTransform, lean_adjoint, terminal_grad
from tfftmol.core.reward import DifferentiableReward
from tfftmol.core.samplers import sample_sde
from tfftmol.toy2d.gmm import GaussianMixtureFlow

TARGET = float(torch.e / (torch.e + 1 / torch.e))  # 0.881


def _two_points():
    return GaussianMixtureFlow([[-1.0], [1.0]], [0.02, 0.02], [0.5, 0.5])


def _mass_plus(terminal_time: float) -> float:
    base = _two_points()
    am = AdjointMatching(base, DifferentiableReward(lambda x: x[:, 0]), IdentityTransform(), 1.0,
                         AMConfig(steps=150, batch_size=128, time_steps=30, loss_time_steps=10, hidden=64, lr=2e-3,
                                  grad_clip=0.0, terminal_time=terminal_time, seed=0))
    for _ in range(150):
        am.step()
    x = sample_sde(am.final_model(), 4000, 30, generator=torch.Generator().manual_seed(1))
    return float((x[:, 0] > 0).float().mean())


@pytest.mark.slow  # 29 s: two 150-step fine-tunes
def test_denoised_adjoint_moves_mass_between_discrete_states_where_the_exact_one_cannot():
    exact, denoised = _mass_plus(1.0), _mass_plus(0.5)
    assert abs(exact - 0.5) < 0.1, exact          # the exact lean adjoint is starved
    assert denoised > 0.7, denoised               # toward the tilt's 0.881
    assert denoised < TARGET + 0.08, denoised     # and not past it


def test_terminal_time_one_is_the_exact_adjoint_and_bad_values_are_rejected():
    base = _two_points()
    reward = DifferentiableReward(lambda x: x[:, 0])
    am = AdjointMatching(base, reward, IdentityTransform(), 1.0, AMConfig(steps=1, batch_size=8, time_steps=6))
    traj = am.sample_trajectories(8)
    gp = torch.ones(8)
    adj, pool = am._denoised_adjoint(traj, gp, (-1, 1))
    # t_c = the last grid time before 1: a(t_c) also fills the slot after it (the control at t_c is regressed
    # on the adjoint one step later, docs/design.md §4.3); there is no later slot
    assert pool == 5 and adj.shape[0] == 6 and torch.equal(adj[5], adj[4])
    # at t_c the adjoint is -lam (d xhat/dx)^T grad r; the earlier ones follow the lean adjoint from there
    ref = lean_adjoint(base, type(traj)(traj.xs[:5], traj.ts[:5]), adj[4])
    torch.testing.assert_close(adj[:5], ref)
    assert torch.equal(terminal_grad(reward, traj.final), torch.ones(8, 1))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="terminal_time"):
            AMConfig(terminal_time=bad)


def test_noisy_terminal_state_takes_the_reward_gradient_at_the_state_itself():
    """``terminal_state="noisy"``: ``a(t_c) = -lam g' grad r(X_{t_c})``, no denoiser Jacobian.  With
    ``r(x) = x^2`` (gradient ``2x``), ``lam = 2`` and the identity tail weight, ``a(t_c) = -4 X_{t_c}``;
    the denoised state gives ``-4 xhat (d xhat / dx)`` instead, which differs on snapped components."""
    base = _two_points()
    reward = DifferentiableReward(lambda x: x[:, 0] ** 2)
    cfg = dict(steps=1, batch_size=16, time_steps=10, terminal_time=0.6, seed=3)
    noisy = AdjointMatching(base, reward, IdentityTransform(), 2.0, AMConfig(**cfg, terminal_state="noisy"))
    traj = noisy.sample_trajectories(16)
    adj, pool = noisy._denoised_adjoint(traj, torch.ones(16), (-1, 1))
    kc = pool - 1
    assert abs(float(traj.ts[kc]) - 0.6) < 1e-6
    torch.testing.assert_close(adj[kc], -4.0 * traj.xs[kc])
    torch.testing.assert_close(adj[:kc + 1], lean_adjoint(base, type(traj)(traj.xs[:kc + 1], traj.ts[:kc + 1]), adj[kc]))
    den = AdjointMatching(base, reward, IdentityTransform(), 2.0, AMConfig(**cfg))
    adj_d, _ = den._denoised_adjoint(traj, torch.ones(16), (-1, 1))
    assert not torch.allclose(adj_d[kc], adj[kc], atol=1e-3)
    with pytest.raises(ValueError, match="terminal_state"):
        AMConfig(terminal_state="clean")


def _late_run(late: int):
    """60 steps on the two points with t_c = 0.5; returns (mass on +1, per-step control cost of 2,000 SDE
    trajectories of the final model against the base, the mean of the last 10 batch KL estimates)."""
    from tfftmol.core.sampling import sample

    base = _two_points()
    am = AdjointMatching(base, DifferentiableReward(lambda x: x[:, 0]), IdentityTransform(), 1.0,
                         AMConfig(steps=60, batch_size=64, time_steps=30, loss_time_steps=10, hidden=64, lr=2e-3,
                                  grad_clip=0.0, terminal_time=0.5, late_loss_steps=late, seed=0))
    kls = [am.step().kl for _ in range(60)]
    out = sample(am.final_model(), 2000, method="sde", steps=30, generator=torch.Generator().manual_seed(1),
                 base=base, prior=base, record_steps=True)
    return float((out.x[:, 0] > 0).float().mean()), out.step_costs.mean(1), sum(kls[-10:]) / 10


def test_late_loss_steps_hold_the_control_at_the_base_after_terminal_time():
    """Without a loss after t_c the control there drifts with the weights it shares with earlier times:
    measured, 0.54 of the 0.75 nats of KL lie after t = 0.5 and the batch estimate (early times only) reads
    0.20.  With 10 late loss times at zero target the late cost is ~0 (0.005), the tilt is kept (mass on +1
    0.71 against 0.74; the exact tilt's 0.881 costs 0.33 nats) and the batch estimate matches the sampled KL."""
    mass0, cost0, batch0 = _late_run(0)
    mass, cost, batch = _late_run(10)
    late0, late = float(cost0[15:].sum()), float(cost[15:].sum())  # grid times t_k = k / 30 >= 0.5
    assert late0 > 0.3 and late < 0.05 * late0, (late0, late)
    assert batch0 < 0.5 * float(cost0.sum())                      # the old estimate misses the late cost
    assert batch == pytest.approx(float(cost.sum()), rel=0.25)    # the new one sees the whole path
    assert mass > 0.65 and mass > mass0 - 0.08, (mass, mass0)     # the tilt itself is kept
    assert float(cost.sum()) < 0.5 * float(cost0.sum())


def test_late_loss_steps_must_be_a_non_negative_integer():
    from tfftmol.core.config import ConfigError

    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="late_loss_steps"):
            AMConfig(late_loss_steps=bad)


def test_late_loss_times_carry_their_class_condition():
    """A class-conditional flow: every loss point, the late ones included, is evaluated with its
    trajectory's own condition (the velocity below reads it row by row, so a condition tiled for the
    early times only cannot broadcast against the stacked early and late points)."""
    g = _two_points()
    seen = []

    class Conditional:
        state_shape = (1,)

        def velocity(self, x, t, cond=None):
            seen.append((x.shape[0], None if cond is None else cond.shape[0]))
            return g.velocity(x, t) + 0.0 * cond.to(x.dtype)[:, None]

        def sample_prior(self, n, generator=None, device=None):
            return g.sample_prior(n, generator=generator, device=device)

    cs = lambda n, gen: torch.randint(0, 3, (n,), generator=gen)
    am = AdjointMatching(Conditional(), DifferentiableReward(lambda x: x[:, 0]), IdentityTransform(), 1.0,
                         AMConfig(steps=2, batch_size=8, time_steps=10, loss_time_steps=3, terminal_time=0.5,
                                  late_loss_steps=2, seed=0), cond_sampler=cs)
    seen.clear()
    st = am.step()
    assert st.kl == st.kl
    assert all(n == c for n, c in seen), seen
    assert (5 * 8, 5 * 8) in seen  # the loss's forward pass: 3 early + 2 late times of 8 trajectories
