"""What a fine-tune that sees the reward only through a predictor can reach: the information ceiling.

Stage 1 (:mod:`~tfftmol.core.threshold`) predicts the optimum ``p*`` as a tilt of the pre-trained
samples by their own rewards, ``w_i ∝ exp(pseudo(r_i) / alpha)``.  A fine-tuned flow can make that
tilt only if the reward is a function of the state that the flow can learn.  When it is not (a
latent whose decoded molecule changes under moves much smaller than the samples' spacing, a
one-hot graph state whose reward a surrogate ranks poorly), the gradient or value that drives
stage 2 comes from a smooth predictor ``s(x)`` of the reward, and the best such a fine-tune can do
is the best tilt that depends on ``x`` only through ``s(x)``.

This module solves that restricted problem exactly on samples.  The samples are grouped by
their predictor score (quantile bins, or groups given by the caller); a tilt may weight groups,
not samples within a group.  With group shares ``p_b`` and, for a threshold ``eta``,

    m_b(eta) = mean over group b of (r_i - eta)_+          (right tail)
    m_b(eta) = mean over group b of (eta - r_i)_+          (left tail)

the restricted objective is (docs/design.md §8.1; the same minimax as stage 1, with conditional
means of the pseudo-reward in place of the pseudo-reward)

    right:  min_eta  eta + alpha log sum_b p_b exp( m_b(eta) / (alpha (1 - beta)))
    left:   max_eta  eta + alpha log sum_b p_b exp(-m_b(eta) / (alpha beta))

and the optimal tilt puts ``q_b ∝ p_b exp(±m_b(eta*) / (alpha (1 - beta) or alpha beta))`` on
group ``b``, spread evenly over its samples.  With one sample per group it is stage 1 itself;
with one group it is the pre-trained model (KL 0).  The right tail's objective is convex (a
non-decreasing log-sum-exp of the convex ``m_b``), so its minimum is found between the best kink's
neighbours; between two consecutive rewards either objective is a log-sum-exp of affine functions
of ``eta``, hence convex there, so the left tail's maximum lies at a kink (a sampled reward), as in
stage 1.

Read the ceiling as an estimate: group means are in-sample (few samples per group make it
optimistic) and bins coarsen the predictor (few groups make it pessimistic).  Use predictions on
samples the predictor was not trained on, and groups of a few hundred samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .risk import as_float64, check_beta, check_tail, cvar
from .threshold import _check_alpha, solve_threshold

__all__ = ["CeilingResult", "score_groups", "information_ceiling", "information_frontier"]


@dataclass(frozen=True)
class CeilingResult:
    """The best tilt that depends on the state only through a predictor's groups.

    Attributes:
        tail, beta, alpha: the problem.
        n: number of samples ``M``.
        groups: number of non-empty groups.
        eta: the restricted optimum's threshold.
        value: its objective, ``CVaR - alpha KL`` of the restricted optimum.
        pre_cvar: CVaR of the samples (untilted).
        cvar: CVaR of the restricted optimum (same tail).
        kl: ``KL(q || p)`` of the restricted optimum (nats), ``>= 0``.
        weights: per-sample weights of the restricted optimum, shape ``(M,)``, summing to 1.
    """

    tail: str
    beta: float
    alpha: float
    n: int
    groups: int
    eta: float
    value: float
    pre_cvar: float
    cvar: float
    kl: float
    weights: np.ndarray

    def summary(self) -> str:
        return (f"information ceiling ({self.tail} tail, beta={self.beta:g}, alpha={self.alpha:g}, "
                f"{self.groups} groups of {self.n} samples): CVaR {self.pre_cvar:.6g} -> {self.cvar:.6g} "
                f"at KL {self.kl:.4g} nats")


def score_groups(scores: Any, bins: int) -> np.ndarray:
    """Group labels ``0..G-1`` (``G <= bins``) of equal-count quantile bins of ``scores``; equal scores share a group.

    Raises:
        ValueError: ``bins < 1`` or non-finite scores.
    """
    s = as_float64(scores, "scores")
    if int(bins) < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    edges = np.quantile(s, np.linspace(0.0, 1.0, int(bins) + 1)[1:-1])
    g = np.searchsorted(edges, s, side="right")
    return np.unique(g, return_inverse=True)[1].reshape(-1)


def _default_bins(m: int) -> int:
    """About 200 samples per group, between 2 and 50 groups."""
    return int(min(50, max(2, m // 200)))


def _group_means(r: np.ndarray, g: np.ndarray, n_groups: int, etas: np.ndarray, tail: str) -> np.ndarray:
    """``m_b(eta)`` for every ``eta`` in ``etas`` and group ``b`` -> shape ``(len(etas), n_groups)``."""
    out = np.empty((etas.size, n_groups))
    for b in range(n_groups):
        rb = np.sort(r[g == b])
        nb = rb.size
        if tail == "right":  # sum_{r > eta} (r - eta)
            suffix = np.concatenate([np.cumsum(rb[::-1])[::-1], [0.0]])
            k = np.searchsorted(rb, etas, side="right")
            out[:, b] = (suffix[k] - etas * (nb - k)) / nb
        else:  # sum_{r < eta} (eta - r)
            prefix = np.concatenate([[0.0], np.cumsum(rb)])
            k = np.searchsorted(rb, etas, side="left")
            out[:, b] = (etas * k - prefix[k]) / nb
    return np.maximum(out, 0.0)


def _objective(r, g, n_groups, log_p, etas, beta, alpha, tail) -> np.ndarray:
    """The restricted objective at every ``eta`` in ``etas`` (chunked to bound memory)."""
    scale = alpha * (1.0 - beta) if tail == "right" else -alpha * beta
    out = np.empty(etas.size)
    chunk = max(1, 4_000_000 // max(n_groups, 1))
    for s in range(0, etas.size, chunk):
        e = etas[s:s + chunk]
        z = log_p[None, :] + _group_means(r, g, n_groups, e, tail) / scale
        zmax = z.max(axis=1, keepdims=True)
        out[s:s + chunk] = e + alpha * (zmax[:, 0] + np.log(np.exp(z - zmax).sum(axis=1)))
    return out


def information_ceiling(rewards: Any, scores: Any = None, *, beta: float, alpha: float, tail: str = "right",
                        groups: Any = None, bins: Optional[int] = None) -> CeilingResult:
    """Solve the restricted stage-1 problem of the module docstring.

    Args:
        rewards: true rewards of samples of the pre-trained model, shape ``(M,)``, finite.
        scores: a predictor's scores of the same samples, shape ``(M,)`` (grouped by
            :func:`score_groups` into ``bins`` quantile bins); or give ``groups``.
        beta: tail level in ``(0, 1)``.
        alpha: KL weight ``> 0``.
        tail: ``"right"`` or ``"left"``.
        groups: integer group labels, shape ``(M,)``, instead of ``scores``.
        bins: number of quantile bins of ``scores`` (default: about 200 samples per bin, 2 to 50).

    Returns:
        :class:`CeilingResult`.

    Raises:
        ValueError: neither or both of ``scores`` and ``groups``; shapes that differ; bad ``beta``,
            ``alpha``, ``tail`` or ``bins``; fewer than 2 samples.
    """
    r = as_float64(rewards, "rewards", min_size=2)
    beta, alpha, tail = check_beta(beta), _check_alpha(alpha), check_tail(tail)
    if (scores is None) == (groups is None):
        raise ValueError("give exactly one of scores (a predictor's scores) and groups (integer labels)")
    if groups is None:
        s = as_float64(scores, "scores")
        if s.size != r.size:
            raise ValueError(f"scores has {s.size} entries but rewards has {r.size}")
        g = score_groups(s, _default_bins(r.size) if bins is None else bins)
    else:
        g0 = np.asarray(groups).reshape(-1)
        if g0.size != r.size:
            raise ValueError(f"groups has {g0.size} entries but rewards has {r.size}")
        g = np.unique(g0, return_inverse=True)[1].reshape(-1)
    n_groups = int(g.max()) + 1
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    log_p = np.log(counts / r.size)
    kinks = np.unique(r)
    j = _objective(r, g, n_groups, log_p, kinks, beta, alpha, tail)
    if tail == "left":  # a maximum at a kink (convex between kinks)
        k = int(np.argmax(j))
        eta = float(kinks[k])
    else:  # convex: the minimum lies between the best kink's neighbours
        from scipy.optimize import minimize_scalar

        k = int(np.argmin(j))
        lo, hi = kinks[max(k - 1, 0)], kinks[min(k + 1, kinks.size - 1)]
        eta = float(kinks[k])
        if hi > lo:
            f = lambda e: float(_objective(r, g, n_groups, log_p, np.array([e]), beta, alpha, tail)[0])  # noqa: E731
            res = minimize_scalar(f, bounds=(float(lo), float(hi)), method="bounded",
                                  options={"xatol": 1e-12 * max(1.0, abs(hi), abs(lo))})
            if res.fun < j[k]:
                eta = float(res.x)
    value = float(_objective(r, g, n_groups, log_p, np.array([eta]), beta, alpha, tail)[0])
    scale = alpha * (1.0 - beta) if tail == "right" else -alpha * beta
    z = log_p + _group_means(r, g, n_groups, np.array([eta]), tail)[0] / scale
    q = np.exp(z - z.max())
    q /= q.sum()
    kl = float(np.sum(np.where(q > 0, q * (np.log(np.maximum(q, 1e-300)) - log_p), 0.0)))
    w = q[g] / counts[g]
    return CeilingResult(tail=tail, beta=beta, alpha=alpha, n=int(r.size), groups=n_groups, eta=eta,
                         value=value, pre_cvar=cvar(r, beta, tail), cvar=cvar(r, beta, tail, weights=w),
                         kl=max(kl, 0.0), weights=w)


def information_frontier(rewards: Any, scores: Any, *, beta: float, alphas: Sequence[float], tail: str = "right",
                         bins: Optional[int] = None):
    """Stage 1's prediction and the information ceiling at each ``alpha``, as a DataFrame.

    Columns: ``alpha, pre_cvar, cvar_full, kl_full, cvar_ceiling, kl_ceiling, eta_full, eta_ceiling,
    groups`` (``*_full``: :func:`~tfftmol.core.threshold.solve_threshold` on the same rewards).
    """
    import warnings

    import pandas as pd

    from .threshold import TfftWarning

    rows = []
    for a in alphas:
        with warnings.catch_warnings():  # small alphas warn about few active samples; the table says it
            warnings.simplefilter("ignore", TfftWarning)
            full = solve_threshold(rewards, beta, a, tail)
        c = information_ceiling(rewards, scores, beta=beta, alpha=a, tail=tail, bins=bins)
        rows.append({"alpha": float(a), "pre_cvar": c.pre_cvar, "cvar_full": full.predicted_cvar,
                     "kl_full": full.predicted_kl, "cvar_ceiling": c.cvar, "kl_ceiling": c.kl,
                     "eta_full": full.eta, "eta_ceiling": c.eta, "groups": c.groups})
    return pd.DataFrame(rows)
