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
