"""A Gaussian-mixture "pre-trained" flow with an exact velocity field, and its tilted targets.

The mixture ``p_1 = sum_k pi_k N(mu_k, s_k^2 I)`` (isotropic components, any
dimension) under the interpolant ``x_t = t x_1 + (1 - t) x_0`` has marginal
``p_t = sum_k pi_k N(t mu_k, c_k I)`` with ``c_k = t^2 s_k^2 + (1 - t)^2``, and
the marginal velocity is the posterior average of the per-component velocities

    v_k(x, t) = mu_k + (t s_k^2 - (1 - t)) / c_k * (x - t mu_k),

with posterior weights ``∝ pi_k c_k^{-d/2} exp(-||x - t mu_k||^2 / (2 c_k))``
(the ``-d/2 log c_k`` term matters when the ``s_k`` differ).  This form is finite
at ``t = 0`` and ``t = 1``.

Ground truth for fine-tuning (docs/design.md §7):

* linear reward ``r = w·x`` and ``p* ∝ p_1 exp(lam r)``: component ``k`` becomes
  ``N(mu_k + lam s_k^2 w, s_k^2 I)`` with weight ``∝ pi_k exp(lam w·mu_k + lam^2 s_k^2 |w|^2 / 2)``;
* a hinge pseudo-reward of a linear reward, ``p* ∝ p_1 exp(g(w·x)/alpha)``: along
  ``w`` each component splits at ``eta*`` into an untouched truncated normal and
  a shifted truncated normal, sampled exactly by :meth:`GaussianMixtureFlow.sample_tilted_hinge`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import special, stats

from ..core.flow import gaussian_prior
from ..core.sde import sigma_memoryless

__all__ = ["GaussianMixtureFlow", "circle_gmm", "population_threshold", "hinge_target_stats", "random_gmm"]


class GaussianMixtureFlow:
    """Exact flow model of an isotropic Gaussian mixture (implements ``FlowModel``).

    Args:
        means: ``(K, d)`` component means.
        stds: ``(K,)`` component standard deviations (isotropic).
        weights: ``(K,)`` mixture weights (normalised here).
    """

    def __init__(self, means, stds, weights=None, dtype=torch.float32):
        self.means = torch.as_tensor(means, dtype=dtype)
        K, d = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=dtype).reshape(K)
        w = torch.ones(K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        self.weights = w / w.sum()
        self.state_shape = (d,)
        self.dim = d

    # -- FlowModel -----------------------------------------------------------------
    def to(self, device):
        self.means, self.stds, self.weights = (a.to(device) for a in (self.means, self.stds, self.weights))
        return self

    def sample_prior(self, n, generator=None, device=None):
        return gaussian_prior(n, self.state_shape, generator=generator, device=device or self.means.device,
                              dtype=self.means.dtype)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """Exact marginal velocity, ``(B, d)``. ``x``: ``(B, d)``; ``t``: scalar, ``(B,)`` or ``(B, 1)`` in [0, 1]."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"GaussianMixtureFlow.velocity: x has shape {tuple(x.shape)}; expected (B, {self.dim})")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        elif t.shape in ((x.shape[0], 1), (1,)):                 # (B, 1) column or a one-element time
            t = t.reshape(-1).expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"GaussianMixtureFlow.velocity: t has shape {tuple(t.shape)} for x of shape "
                             f"{tuple(x.shape)}; expected a scalar, ({x.shape[0]},) or ({x.shape[0]}, 1)")
        t = t[:, None]                                            # (B, 1)
        logp, diff, c = self._posterior(x, t)
        s2 = (self.stds.to(x) ** 2)[None]
        post = torch.softmax(logp, dim=1)
        vk = self.means.to(x)[None] + ((t * s2 - (1 - t)) / c)[..., None] * diff  # (B, K, d)
        return (post[..., None] * vk).sum(1)

    def _posterior(self, x: torch.Tensor, t: torch.Tensor):
        """The components' log posterior weights given ``X_t = x`` (unnormalised), ``x - t mu_k`` and ``Var(X_t | k)``.

        ``X_t = t X_1 + (1 - t) X_0`` with ``X_0 ~ N(0, I)`` independent of ``X_1`` (the memoryless SDE has
        the same pairs ``(X_t, X_1)``): given component ``k``, ``X_t ~ N(t mu_k, (t^2 s_k^2 + (1 - t)^2) I)``.
        ``t`` is ``(B, 1)``; returns ``(B, K)``, ``(B, K, d)``, ``(B, K)``.
        """
        mu, s2 = self.means.to(x), (self.stds.to(x) ** 2)[None]   # (K, d), (1, K)
        c = t ** 2 * s2 + (1 - t) ** 2                            # (B, K)
        diff = x[:, None, :] - t[:, :, None] * mu[None]           # (B, K, d)
        logp = (torch.log(self.weights.to(x))[None] - 0.5 * self.dim * torch.log(c)
                - 0.5 * (diff ** 2).sum(-1) / c)                  # (B, K)
        return logp, diff, c

    def hinge_log_value(self, x: torch.Tensor, t: float, w, eta: float, alpha: float, beta: float,
                        tail: str) -> torch.Tensor:
        """``log h(x, t) = log E[exp(pseudo(w·X_1) / alpha) | X_t = x]`` under the base process, exactly, ``(B,)``.

        The value function of the hinge tilt (right ``pseudo = (r - eta)_+ / (1 - beta)``, left
        ``-(eta - r)_+ / beta``).  Given ``X_t = x`` and component ``k``, ``X_1`` is normal with mean
        ``mu_k + t s_k^2 (x - t mu_k) / c_k`` and variance ``s_k^2 (1 - t)^2 / c_k`` (``c_k = t^2 s_k^2 + (1 - t)^2``),
        so ``r`` is normal and each side of ``eta`` integrates in closed form.  ``0 <= t < 1``;
        differentiable in ``x`` (see :meth:`hinge_optimal_control`).
        """
        if not 0.0 <= float(t) < 1.0:
            raise ValueError(f"t={t!r} must be in [0, 1) (at t = 1 the value is the tilt itself)")
        if tail not in ("right", "left"):
            raise ValueError(f"tail={tail!r} must be 'right' or 'left'")
        x = x.double()
        tt = torch.full((x.shape[0], 1), float(t), dtype=x.dtype)
        logp, diff, c = self._posterior(x, tt)
        wv = torch.as_tensor(np.asarray(w, dtype=np.float64))
        s2 = (self.stds.double() ** 2)[None]
        mean_r = self.means.double() @ wv + ((tt * s2 / c)[..., None] * diff).matmul(wv)  # (B, K)
        sd_r = torch.sqrt(s2 * (1 - tt) ** 2 / c * float(wv @ wv))                               # (B, K)
        right = tail == "right"
        k = 1.0 / (alpha * (1.0 - beta)) if right else 1.0 / (alpha * beta)
        z = (float(eta) - mean_r) / sd_r
        tilt = k * (mean_r - eta) + 0.5 * (k * sd_r) ** 2
        if right:   # P(r < eta) + E[exp(k (r - eta)) 1(r > eta)]
            log_e = torch.logaddexp(torch.special.log_ndtr(z), tilt + torch.special.log_ndtr(k * sd_r - z))
        else:       # P(r > eta) + E[exp(k (r - eta)) 1(r < eta)]
            log_e = torch.logaddexp(torch.special.log_ndtr(-z), tilt + torch.special.log_ndtr(z - k * sd_r))
        return torch.logsumexp(torch.log_softmax(logp, 1) + log_e, 1)

    def hinge_optimal_control(self, x: torch.Tensor, t: float, w, eta: float, alpha: float, beta: float,
                              tail: str) -> torch.Tensor:
        """The exact optimal control of the hinge tilt, ``u*(x, t) = sigma(t) grad_x log h(x, t)``, ``(B, d)``.

        For the memoryless SDE (``sigma(t) = sqrt(2 (1 - t) / t)``) this is the control whose terminal law is
        ``p* ∝ p_1 exp(pseudo / alpha)`` (Doob's h-transform): what Adjoint Matching converges to.
        ``0 < t < 1``.
        """
        if not 0.0 < float(t) < 1.0:
            raise ValueError(f"t={t!r} must be in (0, 1)")
        xx = x.detach().double().requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(self.hinge_log_value(xx, t, w, eta, alpha, beta, tail).sum(), xx)
        return (float(sigma_memoryless(torch.tensor(float(t)))) * g).to(x.dtype)

    # -- data-side helpers ---------------------------------------------------------
    def sample_data(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Exact draws from ``p_1``, shape ``(n, d)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        return self.means[k] + self.stds[k, None] * z

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        m = self.mean()
        d = self.dim
        cov = torch.zeros(d, d, dtype=self.means.dtype)
        for k in range(len(self.weights)):
            dm = (self.means[k] - m)[:, None]
            cov += self.weights[k] * (self.stds[k] ** 2 * torch.eye(d, dtype=cov.dtype) + dm @ dm.T)
        return cov

    def tilted_linear(self, w: Sequence[float], lam: float) -> "GaussianMixtureFlow":
        """The closed-form ``p* ∝ p_1 exp(lam w·x)`` as another mixture."""
        w = torch.as_tensor(w, dtype=self.means.dtype)
        s2 = self.stds ** 2
        means = self.means + lam * s2[:, None] * w[None]
        logw = torch.log(self.weights) + lam * self.means @ w + 0.5 * lam ** 2 * s2 * (w @ w)
        return GaussianMixtureFlow(means, self.stds, torch.softmax(logw, 0), dtype=self.means.dtype)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior component at ``t = 1`` (most likely component), shape ``(B,)``."""
        s2 = self.stds ** 2
        diff = x[:, None, :] - self.means[None]
        logp = torch.log(self.weights)[None] - 0.5 * self.dim * torch.log(s2)[None] - 0.5 * (diff ** 2).sum(-1) / s2[None]
        return logp.argmax(1)

    # -- exact hinge-tilted target -------------------------------------------------
    def _hinge_pieces(self, w, eta, alpha, beta, tail):
        """Per component: log masses of the two pieces split at ``r = eta`` (r = w·x)."""
        w = np.asarray(w, dtype=np.float64)
        wn = np.linalg.norm(w)
        m = self.means.double().numpy() @ w                   # (K,) mean of r per component
        sd = self.stds.double().numpy() * wn                  # (K,) std of r
        logpi = np.log(self.weights.double().numpy())
        if tail == "right":
            c = 1.0 / (alpha * (1.0 - beta))                  # tilt slope above eta
            lo = logpi + stats.norm.logcdf((eta - m) / sd)    # untouched piece r < eta
            hi = logpi + c * (m - eta) + 0.5 * c ** 2 * sd ** 2 + stats.norm.logsf((eta - m - c * sd ** 2) / sd)
            return lo, hi, m, sd, c
        c = 1.0 / (alpha * beta)                              # below eta the density gets x exp(c (r - eta))
        hi = logpi + stats.norm.logsf((eta - m) / sd)         # untouched piece r > eta
        lo = logpi + c * (m - eta) + 0.5 * c ** 2 * sd ** 2 + stats.norm.logcdf((eta - m - c * sd ** 2) / sd)
        return lo, hi, m, sd, c

    def hinge_tail_mass(self, w, eta, alpha, beta, tail) -> float:
        """Mass of the exact tilted target beyond ``eta`` (above for right, below for left)."""
        lo, hi, *_ = self._hinge_pieces(w, eta, alpha, beta, tail)
        logz = special.logsumexp(np.concatenate([lo, hi]))
        return float(np.exp(special.logsumexp(hi if tail == "right" else lo) - logz))

    def _tilted_hinge_rewards(self, rng: np.random.Generator, n: int, w, eta: float, alpha: float, beta: float,
                              tail: str) -> tuple[np.ndarray, np.ndarray]:
        """Component index and exact reward ``r = w·x`` of ``n`` draws of the hinge-tilted target."""
        lo, hi, m, sd, c = self._hinge_pieces(w, eta, alpha, beta, tail)
        K = len(m)
        logits = np.concatenate([lo, hi])
        p = np.exp(logits - special.logsumexp(logits))
        piece = rng.choice(2 * K, size=n, p=p)
        k = piece % K
        upper = piece >= K                                    # r > eta side
        shift = np.zeros(n)
        if tail == "right":
            shift[upper] = c * sd[k[upper]] ** 2
        else:
            shift[~upper] = c * sd[k[~upper]] ** 2           # exp(c r) moves the lower piece up
        mean_r = m[k] + shift
        a = np.where(upper, (eta - mean_r) / sd[k], -np.inf)
        b = np.where(upper, np.inf, (eta - mean_r) / sd[k])
        return k, stats.truncnorm.rvs(a, b, loc=mean_r, scale=sd[k], random_state=rng)

    def sample_tilted_hinge_rewards(self, n: int, w, eta: float, alpha: float, beta: float, tail: str,
                                    seed: int = 0) -> np.ndarray:
        """The rewards ``w·x`` (float64, ``(n,)``) of exact draws of the hinge-tilted target: the same
        law as ``sample_tilted_hinge(...) @ w``, without drawing the part of ``x`` orthogonal to ``w``."""
        return self._tilted_hinge_rewards(np.random.default_rng(seed), n, np.asarray(w, dtype=np.float64), eta,
                                          alpha, beta, tail)[1]

    def sample_tilted_hinge(self, n: int, w, eta: float, alpha: float, beta: float, tail: str,
                            seed: int = 0) -> torch.Tensor:
        """Exact draws from ``p* ∝ p_1 exp(pseudo(w·x) / alpha)`` for the hinge pseudo-reward.

        right: ``pseudo = (r - eta)_+ / (1 - beta)``; left: ``pseudo = -(eta - r)_+ / beta``.
        Each component is split at ``r = eta``: the untouched side is a truncated normal
        of ``r``, the tilted side a truncated normal with mean shifted by ``+c sd^2``
        (``c = 1/(alpha (1-beta))`` above ``eta`` for right, ``1/(alpha beta)`` below for left).
        The part of ``x`` orthogonal to ``w`` is unchanged.
        """
        rng = np.random.default_rng(seed)
        w = np.asarray(w, dtype=np.float64)
        wn2 = float(w @ w)
        k, r = self._tilted_hinge_rewards(rng, n, w, eta, alpha, beta, tail)
        mu = self.means.double().numpy()[k]
        z = rng.standard_normal((n, self.dim)) * self.stds.double().numpy()[k, None]
        z -= np.outer(z @ w / wn2, w)                         # orthogonal part only
        x = mu - np.outer(mu @ w / wn2, w) + np.outer(r / wn2, w) + z
        return torch.as_tensor(x, dtype=self.means.dtype)


def circle_gmm(k: int = 6, radius: float = 2.0, std: float = 0.3, dtype=torch.float32) -> GaussianMixtureFlow:
    """``k`` equal-weight components with means on a circle of ``radius`` (the test bed of docs/design.md §7)."""
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixtureFlow(means.to(dtype), torch.full((k,), std, dtype=dtype), dtype=dtype)


def population_threshold(gmm: GaussianMixtureFlow, w, alpha: float, beta: float, tail: str) -> tuple[float, float]:
    """Exact ``(eta*, value)`` of stage 1 for the *population* mixture and ``r = w·x``.

    Uses the closed-form pieces of :meth:`GaussianMixtureFlow._hinge_pieces`:
    ``F(eta) = eta + alpha log Z(eta)`` (right, minimised) or ``G`` (left, maximised),
    located on a dense grid and refined by a bounded scalar search.
    """
    from scipy import optimize

    w = np.asarray(w, dtype=np.float64)
    m = gmm.means.double().numpy() @ w
    sd = gmm.stds.double().numpy() * np.linalg.norm(w)
    lo_b, hi_b = float((m - 8 * sd).min()), float((m + 8 * sd).max())
    sign = 1.0 if tail == "right" else -1.0

    def f(eta):
        lo, hi, *_ = gmm._hinge_pieces(w, eta, alpha, beta, tail)
        return sign * (eta + alpha * special.logsumexp(np.concatenate([lo, hi])))

    grid = np.linspace(lo_b, hi_b, 2001)
    vals = np.array([f(e) for e in grid])
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    res = optimize.minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-12})
    return float(res.x), float(sign * res.fun)


# ---------------------------------------------------------------------------
# exact statistics of the hinge-tilted target (for the exact-family benchmark)
# ---------------------------------------------------------------------------

def _hinge_target_pieces(gmm: GaussianMixtureFlow, w, eta: float, alpha: float, beta: float, tail: str):
    """The reward ``r = w·x`` under ``p* ∝ p_1 exp(pseudo(r) / alpha)`` as ``2K`` truncated normals.

    Returns ``(logmass, mu, sd, lo, hi, log_z)``: per piece its normalised log mass, the mean and
    std of the (untruncated) normal of ``r``, its support ``[lo, hi]`` in ``r``, and
    ``log Z = log E_pre[exp(pseudo / alpha)]``.
    """
    lo_k, hi_k, m, sd, c = gmm._hinge_pieces(w, eta, alpha, beta, tail)
    log_z = float(special.logsumexp(np.concatenate([lo_k, hi_k])))
    K = len(m)
    if tail == "right":   # lower piece untouched, upper piece shifted by + c sd^2
        mu = np.concatenate([m, m + c * sd ** 2])
    else:                 # lower piece shifted by + c sd^2, upper piece untouched
        mu = np.concatenate([m + c * sd ** 2, m])
    lo = np.concatenate([np.full(K, -np.inf), np.full(K, float(eta))])
    hi = np.concatenate([np.full(K, float(eta)), np.full(K, np.inf)])
    return np.concatenate([lo_k, hi_k]) - log_z, mu, np.concatenate([sd, sd]), lo, hi, log_z


def _piece_beyond(q: float, mu, sd, lo, hi, right: bool):
    """Per truncated-normal piece: conditional mass and conditional ``E[r 1(beyond q)]`` beyond ``q``.

    ``beyond`` is ``r > q`` (right) or ``r < q`` (left); both normalised by the piece's own mass.
    """
    a, b = (lo - mu) / sd, (hi - mu) / sd
    if right:
        a2, b2 = np.maximum(a, (q - mu) / sd), b
    else:
        a2, b2 = a, np.minimum(b, (q - mu) / sd)
    # masses via log-differences of the normal cdf/sf, stable in both tails
    def logdiff(u, v):  # log(Phi(v) - Phi(u)) for u <= v
        out = np.full(np.shape(u), -np.inf)
        ok = v > u
        uu, vv = u[ok], v[ok]
        upper = uu > 0  # use survival functions on the right half
        l1 = np.where(upper, stats.norm.logsf(uu), stats.norm.logcdf(vv))
        l2 = np.where(upper, stats.norm.logsf(vv), stats.norm.logcdf(uu))
        out[ok] = l1 + np.log1p(-np.exp(np.minimum(l2 - l1, 0.0)))
        return out
    log_piece = logdiff(a, b)
    log_part = logdiff(a2, b2)
    frac = np.exp(np.where(np.isfinite(log_piece), log_part - log_piece, -np.inf))
    frac = np.where(b2 > a2, frac, 0.0)
    # E[z 1(a2<z<b2)] / P(a<z<b) = (phi(a2) - phi(b2)) / P(a<z<b)
    dens = np.exp(np.where(np.isfinite(log_piece), stats.norm.logpdf(a2) - log_piece, -np.inf)) - \
        np.exp(np.where(np.isfinite(log_piece), stats.norm.logpdf(b2) - log_piece, -np.inf))
    dens = np.where(b2 > a2, dens, 0.0)
    return frac, mu * frac + sd * dens


def hinge_target_stats(gmm: GaussianMixtureFlow, w, eta: float, alpha: float, beta: float,
                       tail: str) -> dict:
    """Exact statistics of ``p* ∝ p_1 exp(pseudo(w·x) / alpha)`` (the TFFT target at threshold ``eta``).

    Returns a dict with

    * ``kl``: ``KL(p* || p_1) = E_{p*}[pseudo / alpha] - log E_{p_1}[exp(pseudo / alpha)]`` (nats);
    * ``cvar``: own-tail CVaR_beta of ``r`` under ``p*`` (right: mean of the top ``1 - beta``,
      left: mean of the bottom ``beta``), through its exact VaR (a root of the mixture cdf);
    * ``var``: that VaR;  ``mass_beyond``: ``P_{p*}(r > eta)`` (right) or ``P_{p*}(r < eta)``
      (left), equal to ``1 - beta`` (right) / ``beta`` (left) at the population ``eta*``;
    * ``mean``: ``E_{p*}[r]``; ``log_z``.

    Pseudo-rewards: right ``(r - eta)_+ / (1 - beta)``, left ``-(eta - r)_+ / beta``.
    """
    from scipy import optimize

    right = tail == "right"
    logmass, mu, sd, lo, hi, log_z = _hinge_target_pieces(gmm, w, eta, alpha, beta, tail)
    pm = np.exp(logmass)
    pm = pm / pm.sum()
    full_frac, full_mean = _piece_beyond(-np.inf if right else np.inf, mu, sd, lo, hi, right)
    mean = float(pm @ full_mean)
    # KL = E[pseudo/alpha] - log Z; pseudo/alpha = c (r - eta) on the tilted pieces, 0 elsewhere
    K = len(mu) // 2
    if right:
        c = 1.0 / (alpha * (1.0 - beta))
        tilt = np.arange(K, 2 * K)
        e_pseudo = c * float(pm[tilt] @ (full_mean[tilt] - eta))
    else:
        c = 1.0 / (alpha * beta)
        tilt = np.arange(K)
        e_pseudo = -c * float(pm[tilt] @ (eta - full_mean[tilt]))
    kl = max(e_pseudo - log_z, 0.0)
    level = 1.0 - beta if right else beta  # mass of the own tail

    def beyond_mass(q):
        f, _ = _piece_beyond(q, mu, sd, lo, hi, right)
        return float(pm @ f) - level

    span_lo = float(np.min(mu - 12 * sd))
    span_hi = float(np.max(mu + 12 * sd))
    var = optimize.brentq(beyond_mass, span_lo, span_hi, xtol=1e-12, rtol=1e-12, maxiter=500)
    f, part = _piece_beyond(var, mu, sd, lo, hi, right)
    cvar = float(pm @ part) / float(pm @ f)
    mb, _ = _piece_beyond(eta, mu, sd, lo, hi, right)
    return {"kl": kl, "cvar": cvar, "var": float(var), "mass_beyond": float(pm @ mb), "mean": mean,
            "log_z": log_z}


def random_gmm(seed: int, dim: int = 2, k_range: tuple[int, int] = (2, 6), std_range: tuple[float, float] = (0.2, 1.0),
               mean_box: float = 2.5, dtype=torch.float32) -> GaussianMixtureFlow:
    """A seeded random isotropic mixture: ``K`` uniform in ``k_range`` (inclusive), Dirichlet(1) weights,
    means uniform in ``[-mean_box, mean_box]^dim``, stds uniform in ``std_range``."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(k_range[0], k_range[1] + 1))
    weights = rng.dirichlet(np.ones(k))
    means = rng.uniform(-mean_box, mean_box, size=(k, dim))
    stds = rng.uniform(std_range[0], std_range[1], size=k)
    return GaussianMixtureFlow(torch.as_tensor(means, dtype=dtype), torch.as_tensor(stds, dtype=dtype),
                               torch.as_tensor(weights, dtype=dtype), dtype=dtype)
