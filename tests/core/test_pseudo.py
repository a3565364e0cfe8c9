"""Pseudo-rewards: values and derivatives against autograd, smoothing limit, link to stage 1."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfftmol.core.pseudo import ExpectedReward, PseudoReward, TerminalTransform
from tfftmol.core.threshold import solve_threshold

ETA = 0.3


def _formula(r: torch.Tensor, tail: str, beta: float, tau: float) -> torch.Tensor:
    """The pseudo-reward written out independently (docs/design.md §2.5)."""
    if tail == "right":
        z = r - ETA
        hinge = torch.relu(z) if tau == 0 else tau * F.softplus(z / tau, threshold=1e9)
        return hinge / (1 - beta)
    z = ETA - r
    hinge = torch.relu(z) if tau == 0 else tau * F.softplus(z / tau, threshold=1e9)
    return -hinge / beta


def _grid(dtype=torch.float64) -> torch.Tensor:
    r = torch.linspace(-3, 3, 601, dtype=dtype)
    return r[(r - ETA).abs() > 1e-6]  # the hinge is not differentiable at eta itself


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("right", 0.5), ("left", 0.1), ("left", 0.7)])
@pytest.mark.parametrize("tau", [0.0, 0.05, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_value_and_grad_match_autograd(tail, beta, tau, dtype):
    g = PseudoReward(tail, beta, ETA, smoothing=tau)
    r = _grid(dtype).requires_grad_(True)
    ref = _formula(r, tail, beta, tau)
    (dref,) = torch.autograd.grad(ref.sum(), r)
    val, grad = g.value(r.detach()), g.grad(r.detach())
    assert val.dtype == dtype and grad.dtype == dtype and val.shape == r.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(val, ref.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(grad, dref, rtol=tol, atol=tol)
    # value() is itself differentiable with the same gradient
    r2 = _grid(dtype).requires_grad_(True)
    (dval,) = torch.autograd.grad(g.value(r2).sum(), r2)
    torch.testing.assert_close(dval, dref, rtol=tol, atol=tol)


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.2)])
@pytest.mark.parametrize("tau", [0.0, 0.1])
def test_numpy_matches_torch(tail, beta, tau):
    g = PseudoReward(tail, beta, ETA, smoothing=tau)
    r = _grid()
    out = g.value(r.numpy())
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, g.value(r).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.grad(r.numpy()), g.grad(r).numpy(), rtol=1e-12, atol=1e-12)
    assert g.value(np.float64(ETA + 1.0)).shape == ()


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
@pytest.mark.parametrize("tau", [1.0, 0.1, 1e-2, 1e-4])
def test_softplus_tends_to_hinge(tail, beta, tau):
    """|tau softplus(z/tau) - (z)_+| <= tau log 2, so the smoothed value -> hinge as tau -> 0,
    and the derivatives agree away from eta."""
    r = torch.cat([_grid(), torch.tensor([ETA], dtype=torch.float64)])
    exact, smooth = PseudoReward(tail, beta, ETA), PseudoReward(tail, beta, ETA, smoothing=tau)
    scale = exact.scale
    gap = (smooth.value(r) - exact.value(r)).abs().max().item()
    assert gap <= scale * tau * math.log(2) + 1e-12
    assert gap >= 0.5 * scale * tau * math.log(2)  # the bound is attained at r = eta: a real gap
    far = (r - ETA).abs() > 40 * tau
    torch.testing.assert_close(smooth.grad(r)[far], exact.grad(r)[far], rtol=0, atol=scale * 1e-15 + scale * math.exp(-40))


@pytest.mark.parametrize("tail,beta,inside,outside", [("right", 0.8, 1.0, -1.0), ("left", 0.25, -1.0, 1.0)])
def test_gradient_side_and_slope(tail, beta, inside, outside):
    g = PseudoReward(tail, beta, 0.0)
    r = torch.tensor([inside, outside, 0.0])
    slope = 1 / (1 - beta) if tail == "right" else 1 / beta
    assert g.grad(r).tolist() == pytest.approx([slope, 0.0, 0.0])
    assert g.active(r).tolist() == [True, False, False]
    assert g.value(r)[1].item() == 0.0 and g.value(r)[2].item() == 0.0


def test_expected_reward_baseline():
    base = ExpectedReward()
    r = torch.randn(7, dtype=torch.float32)
    assert torch.equal(base.value(r), r) and torch.equal(base.grad(r), torch.ones_like(r))
    np.testing.assert_array_equal(base.grad(r.numpy()), np.ones(7))
    assert isinstance(base, TerminalTransform) and isinstance(PseudoReward("right", 0.9, 0.0), TerminalTransform)


@pytest.mark.parametrize("tail,beta", [("right", 0.9), ("left", 0.1)])
def test_from_threshold_gives_the_tilt(tail, beta):
    """The stage-1 tilt weights are softmax(pseudo(r) / alpha)."""
    r = np.random.default_rng(0).normal(size=2000)
    alpha = 2.0
    res = solve_threshold(r, beta, alpha, tail)
    g = PseudoReward.from_threshold(res, smoothing=0.0)
    assert (g.tail, g.beta, g.eta) == (tail, beta, res.eta)
    x = g.value(r) / alpha
    w = np.exp(x - x.max())
    np.testing.assert_allclose(res.weights(), w / w.sum(), rtol=1e-12)
    assert g.active(r).mean() == pytest.approx(res.active_fraction)


@pytest.mark.parametrize("kwargs,match", [
    (dict(tail="both"), r"tail='both'"),
    (dict(beta=1.0), r"beta=1\.0 .*\(0, 1\)"),
    (dict(eta=float("nan")), r"eta=nan .*finite"),
    (dict(smoothing=-0.1), r"smoothing=-0\.1 .*>= 0"),
])
def test_invalid_parameters(kwargs, match):
    args = dict(tail="right", beta=0.9, eta=0.0) | kwargs
    with pytest.raises(ValueError, match=match):
        PseudoReward(**args)
