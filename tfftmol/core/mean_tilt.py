"""The exact optimum of expected-reward fine-tuning on samples, at a given KL: what a tail fine-tune must beat.

Expected-reward fine-tuning with KL weight ``tau`` targets ``p_tau ∝ p_pre exp(r / tau)`` (the same tilt
whichever tail is scored).  On the offline batch of stage 1, that tilt is the weights
``w_i ∝ v_i exp(r_i / tau)`` (``v`` the importance weights, if any), exactly as stage 1's own optimum is
``w_i ∝ v_i exp(pseudo_i / alpha)``.  :func:`mean_tilt_at_kl` finds the ``tau`` whose tilt has a given
KL from the batch and returns that tilt's CVaR in the scored tail.  At stage 1's predicted KL the
difference ``predicted_cvar - mean_tilt_at_kl(...).cvar`` is the **tail margin**: how much more of the
tail the exact TFFT optimum holds than the exact expected-reward optimum at the same KL.  It is ``>= 0``
(stage 1's tilt maximises ``CVaR - alpha KL``, so no reweighting with its KL has a larger CVaR), and it is
the largest difference a fine-tuning benchmark can show between the two methods at matched KL: runs that
realise a share ``s`` of both optima show about ``s`` times it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy.special import logsumexp

from .risk import as_float64, check_beta, check_tail, cvar

__all__ = ["MeanTilt", "mean_tilt", "mean_tilt_at_kl", "tail_margin"]


@dataclass(frozen=True)
class MeanTilt:
    """An exponential tilt ``w ∝ v exp(r / tau)`` of a batch of rewards.

    Attributes:
        tau: the KL weight of expected-reward fine-tuning (``inf``: no tilt; ``0``: all the mass on the
            largest reward).
        kl: ``KL(w || v)`` in nats.
        cvar: CVaR of the tilted batch in the requested tail.
        mean: mean reward of the tilted batch.
    """

    tau: float
    kl: float
    cvar: float
    mean: float


def _base(rewards: Any, log_weights: Any) -> tuple[np.ndarray, np.ndarray]:
    r = as_float64(rewards, min_size=2)
    if log_weights is None:
        lv = np.full(r.size, -math.log(r.size))
    else:
        lw = as_float64(log_weights, name="log_weights")
        if lw.shape != r.shape:
            raise ValueError(f"log_weights has shape {lw.shape}; it must match the rewards' {r.shape}")
        lv = lw - logsumexp(lw)
    return r, lv


def _tilt(r: np.ndarray, lv: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    """Normalised weights of ``v exp(r / tau)`` and their KL from ``v``."""
    z = lv + r / tau
    z = z - z.max()
    lw = z - math.log(np.exp(z).sum())
    w = np.exp(lw)
    return w, float(np.sum(w * (lw - lv)))


def mean_tilt(rewards: Any, tau: float, beta: float, tail: str = "right", log_weights: Any = None) -> MeanTilt:
    """The tilt ``w ∝ v exp(r / tau)`` of the batch: its KL, CVaR (``tail``, ``beta``) and mean.

    Args:
        rewards: shape ``(M,)``, finite, ``M >= 2``.
        tau: expected-reward fine-tuning's KL weight, ``> 0``.
        beta, tail: the scored CVaR.
        log_weights: optional unnormalised log importance weights ``log v_i`` of the batch.
    """
    beta, tail = check_beta(beta), check_tail(tail)
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau={tau!r} must be a finite number > 0")
    r, lv = _base(rewards, log_weights)
    w, kl = _tilt(r, lv, float(tau))
    return MeanTilt(float(tau), max(kl, 0.0), cvar(r, beta, tail, weights=w), float(np.sum(w * r)))


def mean_tilt_at_kl(rewards: Any, kl: float, beta: float, tail: str = "right", log_weights: Any = None,
                    rtol: float = 1e-6) -> MeanTilt:
    """The exact expected-reward optimum on the batch whose KL from it is ``kl`` (nats).

    The KL of ``v exp(r / tau)`` falls monotonically from its limit at ``tau -> 0`` (all the mass on the
    largest reward: ``-log v(argmax)``) to 0 at ``tau -> inf``; ``tau`` is found by bisection in ``log tau``
    to relative accuracy ``rtol`` in KL.  A ``kl`` at or beyond the limit returns the limit (``tau = 0``);
    ``kl = 0`` returns the batch itself (``tau = inf``).

    Args:
        rewards: shape ``(M,)``, finite, ``M >= 2``.
        kl: the KL to match, ``>= 0`` (e.g. stage 1's ``predicted_kl``).
        beta, tail: the scored CVaR.
        log_weights: optional unnormalised log importance weights of the batch.

    Example:
        >>> t = mean_tilt_at_kl([0.0, 1.0], math.log(2.0), 0.5, "right")   # all mass on the larger reward
        >>> (t.tau, round(t.cvar, 6))
        (0.0, 1.0)
    """
    beta, tail = check_beta(beta), check_tail(tail)
    if not (isinstance(kl, (int, float)) and math.isfinite(kl) and kl >= 0):
        raise ValueError(f"kl={kl!r} must be a finite number >= 0 (nats)")
    r, lv = _base(rewards, log_weights)
    top = r == r.max()
    v_top = np.exp(lv[top]).sum()
    w_lim = np.where(top, np.exp(lv) / v_top, 0.0)
    kl_max = float(-math.log(v_top))
    if kl == 0 or r.max() == r.min():
        v = np.exp(lv)
        return MeanTilt(math.inf, 0.0, cvar(r, beta, tail, weights=v), float(np.sum(v * r)))
    if kl >= kl_max * (1 - rtol):
        return MeanTilt(0.0, kl_max, cvar(r, beta, tail, weights=w_lim), float(r.max()))
    spread = float(r.max() - r.min())
    lo, hi = math.log(spread) - 60.0, math.log(spread) + 60.0  # KL(lo) ~ kl_max, KL(hi) ~ 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        _, k = _tilt(r, lv, math.exp(mid))
        if abs(k - kl) <= rtol * kl:
            break
        if k > kl:
            lo = mid
        else:
            hi = mid
    tau = math.exp(mid)
    w, k = _tilt(r, lv, tau)
    return MeanTilt(tau, max(k, 0.0), cvar(r, beta, tail, weights=w), float(np.sum(w * r)))


def tail_margin(rewards: Any, stage1: Any, log_weights: Any = None) -> tuple[float, float]:
    """``(CVaR of the exact expected-reward optimum at stage 1's predicted KL, stage 1's lead over it)`` on the
    batch stage 1 solved on; ``stage1`` a :class:`~tfftmol.core.threshold.ThresholdResult` (its ``tail``,
    ``beta``, ``predicted_kl`` and ``predicted_cvar``)."""
    m = mean_tilt_at_kl(rewards, float(stage1.predicted_kl), stage1.beta, stage1.tail, log_weights)
    return m.cvar, float(stage1.predicted_cvar) - m.cvar
