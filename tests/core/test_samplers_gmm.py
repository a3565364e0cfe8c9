"""The exact GMM flow and the ODE / memoryless-SDE samplers against closed forms."""
import numpy as np
import pytest
import torch

from tfftmol.core.samplers import memoryless_drift, sample_ode, sample_sde, sigma_memoryless, time_grid
from tfftmol.toy2d.gmm import GaussianMixtureFlow, circle_gmm, population_threshold
from tfftmol.toy2d.metrics import mmd_rbf


def unequal_gmm():
    return GaussianMixtureFlow([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], [0.2, 0.6, 0.35], [0.5, 0.3, 0.2])


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_velocity_is_finite_at_the_ends_and_matches_closed_form(t):
    g = unequal_gmm()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    v = g.velocity(x, torch.full((64,), t))
    assert torch.isfinite(v).all()
    if t == 0.0:  # posterior = prior weights, v = E[x1] - x
        assert torch.allclose(v, g.mean()[None] - x, atol=1e-6)
    if t == 1.0:  # v_k = mu_k + s_k^2 (x - mu_k)/s_k^2 = x ... weighted: E[x1 - x0 | x1 = x] = x (x0 term vanishes)
        assert torch.allclose(v, x, atol=1e-5)


@pytest.mark.parametrize("t", [0.2, 0.6, 0.9])
def test_velocity_matches_posterior_expectation(t):
    """v(x, t) = (E[x1 | x_t = x] - x) / (1 - t), with E[x1 | x_t] by self-normalised importance
    sampling of exact data draws weighted by the likelihood N(x; t x1, (1-t)^2 I)."""
    g = unequal_gmm()
    x1 = g.sample_data(400000, torch.Generator().manual_seed(1)).double()
    q = torch.tensor([[0.5, 0.3], [-1.0, 0.0], [1.2, 0.4]], dtype=torch.float64)
    logw = -((q[:, None] - t * x1[None]) ** 2).sum(-1) / (2 * (1 - t) ** 2)
    w = torch.softmax(logw, 1)
    e_x1 = w @ x1
    ref = (e_x1 - q) / (1 - t)
    exact = g.velocity(q.float(), torch.full((3,), t)).double()
    assert torch.allclose(ref, exact, atol=0.03 / (1 - t)), (ref, exact)


@pytest.mark.slow  # 20-24 s each (3000 samples, 100 SDE / 50 Heun steps)
@pytest.mark.parametrize("make", [circle_gmm, unequal_gmm], ids=["circle", "unequal"])
@pytest.mark.parametrize("sampler", ["sde", "heun"])
def test_samplers_reproduce_the_gmm(make, sampler):
    """Means within 4 standard errors, covariances within 0.15 (max abs entry), and MMD^2 < 3e-3 on 3000 samples.

    Two independent exact 3000-sample sets give |MMD^2| up to ~1.5e-3; the test's power is checked
    below: a mixture with 30% wider components gives MMD^2 > 3e-3.
    """
    g = make()
    gen = torch.Generator().manual_seed(0)
    if sampler == "sde":
        x = sample_sde(g, 3000, 100, generator=gen)
    else:
        x = sample_ode(g, 3000, 50, method="heun", generator=gen)
    ref = g.sample_data(3000, torch.Generator().manual_seed(5))
    se = (g.covariance().diagonal() / len(x)).sqrt()
    assert ((x.mean(0) - g.mean()).abs() < 4 * se).all()  # within 4 standard errors
    assert (torch.cov(x.T) - g.covariance()).abs().max() < 0.15
    assert mmd_rbf(x, ref) < 3e-3
    wider = GaussianMixtureFlow(g.means, g.stds * 1.3, g.weights).sample_data(3000, torch.Generator().manual_seed(9))
    assert mmd_rbf(wider, ref) > 3e-3


def test_sde_first_step_cancels_the_state_exactly():
    """Starting at t_1 = h, X + h (2 v - X / h) = 2 h v: the initial state enters only through v."""
    h = torch.tensor(0.02)
    x = torch.randn(10, 2) * 100
    v = torch.zeros_like(x)
    assert torch.allclose(x + h * memoryless_drift(v, x, h), torch.zeros_like(x), atol=1e-4)
    v = torch.randn_like(x)
    assert torch.allclose(x + h * memoryless_drift(v, x, h), 2 * h * v, atol=1e-4)


def test_sde_grid_never_touches_zero():
    class Probe:
        state_shape = (2,)
        seen = []

        def velocity(self, x, t, cond=None):
            self.seen.append(float(t.min()))
            return torch.zeros_like(x)

        def sample_prior(self, n, generator=None, device=None):
            return torch.randn(n, 2, generator=generator)

    p = Probe()
    traj = sample_sde(p, 4, 10, return_trajectory=True)
    assert min(p.seen) == pytest.approx(0.1)
    assert traj.xs.shape == (10, 4, 2) and float(traj.ts[0]) == pytest.approx(0.1) and float(traj.ts[-1]) == 1.0
    assert torch.isinf(sigma_memoryless(torch.tensor(0.0))) and float(sigma_memoryless(torch.tensor(1.0))) == 0.0
    assert torch.equal(time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_exact_hinge_target_sampler_matches_closed_form(tail, beta):
    """The truncated-normal sampler reproduces the closed-form mean of r and the optimum's tail mass."""
    from scipy import special, stats

    g = circle_gmm()
    alpha = 1.0
    w = np.array([1.0, 0.0])
    eta, _ = population_threshold(g, w, alpha, beta, tail)
    lo, hi, m, sd, c = g._hinge_pieces(w, eta, alpha, beta, tail)
    logits = np.concatenate([lo, hi])
    p = np.exp(logits - special.logsumexp(logits))
    K = len(m)
    mean = 0.0
    for k in range(K):  # lower piece (r < eta), then upper piece (r > eta)
        ml = m[k] + (c * sd[k] ** 2 if tail == "left" else 0.0)
        mu_ = m[k] + (c * sd[k] ** 2 if tail == "right" else 0.0)
        mean += p[k] * stats.truncnorm.mean(-np.inf, (eta - ml) / sd[k], loc=ml, scale=sd[k])
        mean += p[K + k] * stats.truncnorm.mean((eta - mu_) / sd[k], np.inf, loc=mu_, scale=sd[k])
    xs = g.sample_tilted_hinge(100000, w, eta, alpha, beta, tail, seed=0)[:, 0].double()
    assert float(xs.mean()) == pytest.approx(mean, abs=0.015)
    mass = float((xs > eta).double().mean()) if tail == "right" else float((xs < eta).double().mean())
    assert mass == pytest.approx(1 - beta if tail == "right" else beta, abs=0.005)  # the optimum's tail mass
    # and the density is p_pre exp(pseudo/alpha): compare with importance weights of exact data
    xd = g.sample_data(400000, torch.Generator().manual_seed(3))[:, 0].double()
    pseudo = (xd - eta).clamp(min=0) / (1 - beta) if tail == "right" else -(eta - xd).clamp(min=0) / beta
    iw = torch.softmax(pseudo / alpha, 0)
    assert float((iw * xd).sum()) == pytest.approx(mean, abs=0.06)


def test_tilted_linear_closed_form_matches_importance_weights():
    g = unequal_gmm()
    w, lam = torch.tensor([0.7, -0.4]), 1.3
    t = g.tilted_linear(w, lam)
    xd = g.sample_data(300000, torch.Generator().manual_seed(0)).double()
    iw = torch.softmax(lam * xd @ w.double(), 0)
    assert torch.allclose((iw[:, None] * xd).sum(0), t.mean().double(), atol=0.02)
