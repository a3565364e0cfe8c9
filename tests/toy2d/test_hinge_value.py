"""The exact value function and optimal control of the hinge tilt on a Gaussian mixture.

Known answers: ``h(X_t, t) = E[exp(pseudo / alpha) | X_t]`` is a martingale, so its mean over exact
draws of ``X_t = t X_1 + (1 - t) X_0`` is ``Z = E_pre[exp(pseudo / alpha)]`` (the closed form of
``hinge_target_stats``) at every ``t``; at ``t = 0`` it is that constant exactly; far below the tail's
reach (right tail, ``eta`` very low) the hinge is linear and the value is the Gaussian-mixture tilt.
"""
import math

import numpy as np
import pytest
import torch

from tfftmol.toy2d.gmm import hinge_target_stats, random_gmm


def _case():
    g = random_gmm(0)
    u = np.random.default_rng(1000).normal(size=2)
    return g, 0.25 * u / np.linalg.norm(u)


@pytest.mark.parametrize("tail,beta,eta", [("right", 0.9, 0.374), ("left", 0.1, -0.27)])
def test_value_is_a_martingale_with_the_closed_form_normaliser(tail, beta, eta):
    g, w = _case()
    log_z = hinge_target_stats(g, w, eta, 1.0, beta, tail)["log_z"]
    gen = torch.Generator().manual_seed(0)
    x1 = g.sample_data(200_000, generator=gen).double()
    x0 = torch.randn(200_000, 2, generator=gen, dtype=torch.float64)
    for t in (0.0, 0.3, 0.7, 0.95):
        lh = g.hinge_log_value(t * x1 + (1 - t) * x0, t, w, eta, 1.0, beta, tail)
        mc = float(torch.logsumexp(lh, 0) - math.log(len(lh)))
        assert mc == pytest.approx(log_z, abs=3e-3), (t, mc, log_z)
    # t = 0: no information about X_1 yet, every state has the value Z
    lh0 = g.hinge_log_value(torch.randn(7, 2, dtype=torch.float64), 0.0, w, eta, 1.0, beta, tail)
    assert torch.allclose(lh0, torch.full_like(lh0, log_z), atol=1e-9)


def test_linear_limit_is_the_mixture_tilt():
    g, w = _case()
    alpha, beta, eta = 0.5, 0.9, -40.0              # every sample is beyond eta: pseudo = (r - eta) / (1 - beta)
    lam = 1.0 / (alpha * (1 - beta))
    x = torch.randn(11, 2, dtype=torch.float64)
    t = 0.6
    lh = g.hinge_log_value(x, t, w, eta, alpha, beta, "right")
    # E[exp(lam (w·X_1 - eta)) | X_t = x] over the posterior mixture, term by term
    wv = torch.as_tensor(w)
    mu, s2 = g.means.double(), g.stds.double() ** 2
    c = t * t * s2 + (1 - t) ** 2
    d = x[:, None, :] - t * mu[None]
    logp = torch.log(g.weights.double())[None] - torch.log(c)[None] - 0.5 * (d ** 2).sum(-1) / c[None]
    m = mu[None] + (t * s2 / c)[None, :, None] * d
    v = s2 * (1 - t) ** 2 / c * float(wv @ wv)
    ref = torch.logsumexp(torch.log_softmax(logp, 1) + lam * (m @ wv - eta) + 0.5 * lam ** 2 * v[None], 1)
    assert torch.allclose(lh, ref, rtol=1e-10, atol=1e-8)


def test_optimal_control_is_sigma_times_the_gradient_and_points_to_the_tail():
    g, w = _case()
    x = g.sample_data(64, generator=torch.Generator().manual_seed(1)).double() * 0.5
    t, eta = 0.5, 0.374
    u = g.hinge_optimal_control(x, t, w, eta, 1.0, 0.9, "right")
    eps = 1e-6
    fd = torch.stack([(g.hinge_log_value(x + eps * e, t, w, eta, 1.0, 0.9, "right")
                       - g.hinge_log_value(x - eps * e, t, w, eta, 1.0, 0.9, "right")) / (2 * eps)
                      for e in torch.eye(2, dtype=torch.float64)], 1)
    assert torch.allclose(u, math.sqrt(2 * (1 - t) / t) * fd, atol=1e-6)
    # grad_x log h . w = t / (1 - t)^2 Cov(f(r), r | x) / h >= 0 for the increasing tilt f of either hinge
    assert float((u @ torch.as_tensor(w)).min()) >= 0          # the right tail pulls along +w
    ul = g.hinge_optimal_control(x, t, w, -0.27, 1.0, 0.1, "left")
    assert float((ul @ torch.as_tensor(w)).min()) >= 0         # so does the left one (it lifts the worst samples)
    with pytest.raises(ValueError, match="t=1"):
        g.hinge_log_value(x, 1.0, w, eta, 1.0, 0.9, "right")
