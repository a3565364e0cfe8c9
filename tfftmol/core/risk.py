"""Empirical tail risk measures: VaR and CVaR of (weighted) reward samples.

Rewards are "higher is better".  With ``beta`` in ``(0, 1)`` (docs/design.md §2.1):

* right-CVaR_beta = mean of the top ``1 - beta`` fraction (discovery),
  ``= min_eta  eta + E[(r - eta)_+] / (1 - beta)``  (Rockafellar–Uryasev);
* left-CVaR_beta  = mean of the bottom ``beta`` fraction (reliability),
  ``= max_eta  eta - E[(eta - r)_+] / beta``.

Samples are atoms of an empirical distribution (uniform weights ``1/M``, or
normalised user weights).  CVaR integrates the quantile function exactly,

    right-CVaR_beta = 1/(1 - beta) * int_beta^1 q(u) du,
    left-CVaR_beta  = 1/beta       * int_0^beta q(u) du,

so when the tail boundary falls inside an atom, that atom counts
fractionally.  This is the Rockafellar–Uryasev value of the empirical
distribution: plain CVaR equals weighted CVaR with uniform weights, and equals
"sort and average the top/bottom ``k``" whenever ``k = (1 - beta) M`` (or
``beta M``) is an integer.

Everything is computed in float64 on CPU; inputs may be numpy arrays, torch
tensors or sequences, and the outputs are Python floats.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["var", "cvar", "as_float64", "check_beta", "check_tail", "reward_stats"]

TAILS = ("right", "left")

# Cumulative weights are compared to beta with this slack, so that an integer
# ``beta * M`` is recognised despite rounding in the cumulative sum.
_CUM_TOL = 1e-12


def as_float64(x: Any, name: str = "rewards", min_size: int = 1) -> np.ndarray:
    """Convert ``x`` (numpy array, torch tensor or sequence) to a finite 1-D float64 array.

    Args:
        x: values, shape ``(M,)``.
        name: name used in error messages.
        min_size: smallest accepted ``M``.

    Raises:
        ValueError: if ``x`` is not 1-D, has fewer than ``min_size`` entries, or
            holds NaN or infinite values.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of shape (M,), got shape {a.shape}")
    if a.size < min_size:
        raise ValueError(f"{name} has {a.size} entries; at least {min_size} are needed")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite, but {int(bad.sum())} of {a.size} entries are NaN or "
            f"infinite (first: {name}[{i}]={a[i]}); drop or penalise invalid samples first"
        )
    return a


def check_beta(beta: Any) -> float:
    """Return ``beta`` as a float, or raise ``ValueError`` if it is not in the open interval (0, 1)."""
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta={beta!r} must be a number in the open interval (0, 1)") from None
    if not (0.0 < b < 1.0):  # also rejects NaN
        raise ValueError(f"beta={beta!r} must lie in the open interval (0, 1)")
    return b


def check_tail(tail: Any) -> str:
    """Return ``tail`` or raise ``ValueError`` if it is not ``"right"`` or ``"left"``."""
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r} must be one of {TAILS}")
    return tail


def _weights(weights: Any, m: int) -> np.ndarray:
    """Normalised float64 weights of shape ``(m,)``, validated."""
    w = as_float64(weights, name="weights")
    if w.shape != (m,):
        raise ValueError(f"weights has shape {w.shape}, but rewards has shape ({m},); they must match")
    if (w < 0).any():
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"weights must be >= 0, but weights[{i}]={w[i]}")
    total = w.sum()
    if not total > 0:
        raise ValueError(f"weights sum to {total}; the sum must be > 0")
    return w / total


def _sorted_atoms(rewards: Any, weights: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Rewards sorted ascending and, if given, their normalised weights in the same order."""
    r = as_float64(rewards)
    if weights is None:
        return np.sort(r), None
    w = _weights(weights, r.size)
    order = np.argsort(r, kind="stable")
    return r[order], w[order]


def _lower_tail_mean(r: np.ndarray, w: Optional[np.ndarray], level: float) -> float:
    """``(1/level) * int_0^level q(u) du`` for atoms ``r`` (ascending) with weights ``w``.

    Atom ``i`` covers the probability interval ``[W_{i-1}, W_i]`` of the
    quantile function, ``W`` the cumulative weights; it contributes
    ``r_i * |[W_{i-1}, W_i] ∩ [0, level]|``.  ``w=None`` means uniform weights.
    """
    m = r.size
    if w is None:
        mass = level * m  # tail size in samples; atom k = floor(mass) counts fractionally
        k = min(int(math.floor(mass + _CUM_TOL * m)), m)
        frac = mass - k if k < m else 0.0
        total = math.fsum((float(np.sum(r[:k])), frac * float(r[k]) if frac > 0 else 0.0))
        return total / (k + max(frac, 0.0))
    cum = np.minimum(np.cumsum(w) / np.sum(w), level)  # min(W_i, level), non-decreasing
    overlap = np.diff(cum, prepend=0.0)  # fraction of atom i inside the tail
    return float(np.dot(overlap, r) / cum[-1])


def _quantile_sorted(r: np.ndarray, w: Optional[np.ndarray], beta: float, tail: str) -> float:
    """The ``beta``-quantile of atoms ``r`` (ascending) with weights ``w`` (``None`` = uniform)."""
    m = r.size
    if w is None:
        if tail == "right":  # first i with (i + 1) / m >= beta
            i = math.ceil((beta - _CUM_TOL) * m) - 1
        else:  # first i with (i + 1) / m > beta
            i = math.floor((beta + _CUM_TOL) * m)
        return float(r[min(max(i, 0), m - 1)])
    cum = np.cumsum(w) / np.sum(w)
    if tail == "right":
        i = int(np.searchsorted(cum, beta - _CUM_TOL, side="left"))  # first W_i >= beta
    else:
        i = int(np.searchsorted(cum, beta + _CUM_TOL, side="right"))  # first W_i > beta
    return float(r[min(i, m - 1)])


def var(rewards: Any, beta: float, tail: str = "right", weights: Any = None) -> float:
    """Value at risk: the ``beta``-quantile of the (weighted) empirical reward distribution.

    ``VaR_beta = q(beta)``, the boundary of both tails (docs/design.md §2.1).  On an
    atom boundary the quantile is an interval; ``tail="right"`` returns its
    lower end ``inf{x : P(r <= x) >= beta}`` and ``tail="left"`` its upper end
    ``sup{x : P(r < x) <= beta}``, so that ``var(r, beta, "right") ==
    -var(-r, 1 - beta, "left")``.  Both ends minimise the Rockafellar–Uryasev
    objective; they coincide when ``beta * M`` is not an integer.

    Args:
        rewards: shape ``(M,)``, finite, ``M >= 1``.
        beta: tail level in ``(0, 1)``.
        tail: ``"right"`` or ``"left"``.
        weights: optional non-negative weights, shape ``(M,)`` (normalised internally).

    Returns:
        The quantile as a Python float.

    Example:
        >>> var([1.0, 2.0, 3.0, 4.0], 0.6)
        3.0
    """
    beta = check_beta(beta)
    tail = check_tail(tail)
    r, w = _sorted_atoms(rewards, weights)
    return _quantile_sorted(r, w, beta, tail)


def cvar(rewards: Any, beta: float, tail: str = "right", weights: Any = None) -> float:
    """Conditional value at risk of the (weighted) empirical reward distribution.

    * ``tail="right"``: mean of the top ``1 - beta`` probability mass,
      ``1/(1 - beta) * int_beta^1 q(u) du``;
    * ``tail="left"``: mean of the bottom ``beta`` probability mass,
      ``1/beta * int_0^beta q(u) du``.

    The atom straddling the boundary counts fractionally (Rockafellar–Uryasev).

    Args:
        rewards: shape ``(M,)``, finite, ``M >= 1``; higher is better.
        beta: tail level in ``(0, 1)``; ``beta=0.9, tail="right"`` is the mean of
            the best 10 %, ``beta=0.1, tail="left"`` the mean of the worst 10 %.
        tail: ``"right"`` or ``"left"``.
        weights: optional non-negative weights, shape ``(M,)`` (normalised internally).

    Returns:
        The CVaR as a Python float.

    Example:
        >>> cvar([1.0, 2.0, 3.0, 4.0], 0.5, "right")
        3.5
        >>> cvar([1.0, 2.0, 3.0, 4.0], 0.5, "left")
        1.5
    """
    beta = check_beta(beta)
    tail = check_tail(tail)
    r, w = _sorted_atoms(rewards, weights)
    if tail == "left":
        return _lower_tail_mean(r, w, beta)
    # right tail of r = minus the left (1 - beta) tail of -r, summed from the top
    return -_lower_tail_mean(-r[::-1], None if w is None else w[::-1], 1.0 - beta)


def reward_stats(values: Any, valid: Any = None, prefix: str = "reward",
                 quantiles: Sequence[float] = (0.1, 0.5, 0.9),
                 cvar_levels: Sequence[Any] = (0.1, 0.9)) -> dict[str, float]:
    """Mean, quantiles and CVaRs of a batch of rewards (invalid samples keep their penalty).

    ``cvar_levels`` items are a level ``beta`` (both tails reported) or a pair
    ``("right" | "left", beta)``.  Keys: ``{prefix}_mean``, ``{prefix}_mean_valid``
    (with ``valid``), ``{prefix}_q{q}``, ``{prefix}_cvar_{tail}_{beta}``.

    >>> reward_stats([0.0, 1.0, 2.0, 3.0], cvar_levels=[("right", 0.5)])["reward_cvar_right_0.5"]
    2.5
    """
    v = np.asarray(values, dtype=np.float64)
    out: dict[str, float] = {f"{prefix}_mean": float(v.mean()) if v.size else float("nan")}
    if valid is not None:
        ok = np.asarray(valid, dtype=bool)
        out[f"{prefix}_mean_valid"] = float(v[ok].mean()) if ok.any() else float("nan")
    for q in quantiles:
        out[f"{prefix}_q{q:g}"] = float(np.quantile(v, q)) if v.size else float("nan")
    for level in cvar_levels:
        pairs = [level] if isinstance(level, (tuple, list)) else [("right", level), ("left", level)]
        for tail, beta in pairs:
            out[f"{prefix}_cvar_{tail}_{float(beta):g}"] = cvar(v, float(beta), tail) if v.size else float("nan")
    return out
