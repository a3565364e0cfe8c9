"""Stage 1 of TFFT: the exact one-dimensional threshold ``eta*`` and its diagnostics.

Given rewards ``r_1..r_M`` of samples of the *pre-trained* model, KL weight
``alpha > 0`` and tail level ``beta`` in ``(0, 1)`` (docs/design.md §2.3-§2.4):

* right tail: ``eta* = argmin_eta F(eta)``,
  ``F(eta) = eta + alpha * log mean_i exp((r_i - eta)_+ / (alpha (1 - beta)))``;
  ``F`` is convex.
* left tail: ``eta* = argmax_eta G(eta)``,
  ``G(eta) = eta + alpha * log mean_i exp(-(eta - r_i)_+ / (alpha beta))``;
  ``G`` is convex between consecutive sorted rewards, so its maximum sits at a
  sampled reward.

The optimal value ``F(eta*)`` (``G(eta*)``) equals
``max_p CVaR_beta(p) - alpha KL(p || p_pre)`` over reweightings ``p`` of the
samples, reached by the tilt ``w_i ∝ exp(pseudo_i / alpha)`` with the
pseudo-reward ``g = (r - eta*)_+ / (1 - beta)`` (right) or
``h = -(eta* - r)_+ / beta`` (left).

Both solves are exact in ``O(M log M)``: sort once, keep suffix sums (right) or
prefix log-sum-exps (left) of ``exp(c r_i)`` in float64, then

* right: on the interval between consecutive sorted rewards the set above
  ``eta`` is fixed and ``F'(eta) = 1 - S / ((1 - beta)(n_below + S))`` with
  ``S = sum_above exp(c (r_i - eta))``, ``c = 1 / (alpha (1 - beta))``;
  ``F' = 0`` gives ``eta = (1/c) (log sum_above exp(c r_i) - log((1 - beta)/beta * n_below))``.
  The first interval whose right end has ``F' > 0`` holds ``eta*`` (at its
  closed-form root, or at its left kink);
* left: evaluate ``G`` at every sorted reward (a kink) and take the best.

When ``c * (max r - min r) <= 1`` (large ``alpha``) the sums are carried as
``count + sum expm1(.)`` so that the tiny deviations from ``count`` are not
lost; otherwise as log-sum-exps shifted by the extreme reward.  This keeps the
solve accurate for any reward scale (e.g. rewards near ``1e6``) and any
``alpha`` (``1e-6 .. 1e6``).

**Importance weights.**  With unnormalised log importance weights ``l_i``
(``w_i = exp(l_i)``, e.g. ``log p_pre(x_i) - log q(x_i)`` for samples of a
fine-tuned model ``q``), every empirical mean becomes the self-normalised
weighted mean ``sum_i w_i (.) / sum_i w_i``.  The solves stay exact and
``O(M log M)``: the weights are shifted by ``max l`` and carried through the
same prefix/suffix sums, as ``log w_i`` inside log-sum-exps when the reward
spread is large, or as ``w_i`` and ``w_i expm1(.)`` sums when it is small.

* right: ``F' = 0`` on an interval gives ``S_above = (1 - beta)/beta * W_below``
  (``S_above = sum_above w_i exp(c (r_i - eta))``, ``W_below`` the weight mass
  below ``eta``), i.e.
  ``eta = (1/c) (log sum_above w_i exp(c r_i) - log((1 - beta)/beta * W_below))``;
* left: ``G(rs[j]) = rs[j] + alpha log((W_{>=j} + sum_{i<j} w_i exp(c (rs[i] - rs[j]))) / W)``.

Constant log-weights are detected and give exactly the unweighted result.
"""
from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from .risk import _lower_tail_mean, _quantile_sorted, as_float64, check_beta, check_tail

__all__ = ["solve_eta", "ThresholdResult", "TfftWarning", "solve_threshold", "objective", "TailDegeneracy",
           "tail_degeneracy", "DegenerateTailError"]


class TfftWarning(UserWarning):
    """A TFFT estimate that cannot be trusted as it stands (the message says which knob to turn)."""


class DegenerateTailError(RuntimeError):
    """Stage 1 found nothing to gain in the targeted tail (:func:`tail_degeneracy`); stage 2 did not run.

    Attributes:
        degeneracy: the :class:`TailDegeneracy` (kind, tied fraction, the beta that can move).
    """

    def __init__(self, message: str, degeneracy=None):
        super().__init__(message)
        self.degeneracy = degeneracy


# ---------------------------------------------------------------------------
# small numerics
# ---------------------------------------------------------------------------

def _log_mean_exp_rows(x: np.ndarray, lw: Optional[np.ndarray] = None) -> np.ndarray:
    """``log mean_j exp(x[k, j])`` for each row ``k`` of ``x`` (shape ``(K, M)``) -> ``(K,)``.

    With log-weights ``lw`` (shape ``(M,)``, finite, ``max lw == 0``) the mean is the
    self-normalised weighted mean ``sum_j w_j exp(x[k, j]) / sum_j w_j``, ``w = exp(lw)``.

    Rows whose entries are all in ``[-1, 1]`` use ``log1p(mean(expm1(x)))``,
    which keeps full relative precision when the result is tiny (large alpha);
    other rows use the max-shifted form (with ``lw`` added to ``x``).
    """
    out = np.empty(x.shape[0])
    small = np.abs(x).max(axis=1) <= 1.0
    if lw is None:
        if small.any():
            out[small] = np.log1p(np.expm1(x[small]).mean(axis=1))
        if (~small).any():
            xb = x[~small]
            m = xb.max(axis=1, keepdims=True)
            out[~small] = m[:, 0] + np.log(np.exp(xb - m).mean(axis=1))
        return out
    w = np.exp(lw)  # max 1, so the total is >= 1; underflowed weights are negligible
    total = w.sum()
    if small.any():
        out[small] = np.log1p(np.expm1(x[small]) @ (w / total))
    if (~small).any():
        a = x[~small] + lw
        m = a.max(axis=1, keepdims=True)
        out[~small] = m[:, 0] + np.log(np.exp(a - m).sum(axis=1)) - math.log(total)
    return out


def _exponent(r: np.ndarray, eta, beta: float, alpha: float, tail: str) -> np.ndarray:
    """Tilt exponent ``pseudo(r) / alpha``: ``c (r - eta)_+`` (right) or ``-c (eta - r)_+`` (left)."""
    if tail == "right":
        return np.maximum(r - eta, 0.0) / (alpha * (1.0 - beta))
    return -np.maximum(eta - r, 0.0) / (alpha * beta)


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0") from None
    if not (math.isfinite(a) and a > 0.0):
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0 (the KL weight)")
    if not math.isfinite(1.0 / (a * 1e-16)):  # 1/(alpha (1-beta)) must stay finite
        raise ValueError(f"alpha={alpha!r} is too small to represent; use alpha >= 1e-290")
    return a


def _check_log_weights(log_weights: Any, m: int) -> Optional[np.ndarray]:
    """Validate log importance weights for ``m`` rewards.

    Returns ``None`` for ``None``, else a float64 copy shifted so that its maximum is 0
    (the self-normalised weights do not depend on a common shift).
    """
    if log_weights is None:
        return None
    if hasattr(log_weights, "detach") and hasattr(log_weights, "cpu"):  # torch tensor
        log_weights = log_weights.detach().cpu().double().numpy()
    try:
        lw = np.asarray(log_weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"log_weights={log_weights!r} must be an array of shape ({m},) of finite "
                         f"log importance weights (real numbers in (-inf, inf))") from None
    if lw.shape != (m,):
        raise ValueError(f"log_weights has shape {lw.shape}, but rewards has shape ({m},); "
                         f"they must match (one log importance weight per reward)")
    bad = ~np.isfinite(lw)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"log_weights[{i}]={lw[i]} is not allowed: log importance weights must be finite real numbers "
            f"in (-inf, inf) ({int(bad.sum())} of {m} are not); drop samples with zero or undefined weight"
        )
    return lw - lw.max()


def _check_fraction(x: Any, name: str) -> float:
    v = float(x)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name}={x!r} must lie in [0, 1]")
    return v


def objective(rewards: Any, eta: Any, beta: float, alpha: float, tail: str = "right",
              log_weights: Any = None):
    """The stage-1 objective ``F(eta)`` (right) or ``G(eta)`` (left), vectorised over ``eta``.

    ``F(eta) = eta + alpha * log mean_i exp((r_i - eta)_+ / (alpha (1 - beta)))``  (minimised),
    ``G(eta) = eta + alpha * log mean_i exp(-(eta - r_i)_+ / (alpha beta))``      (maximised),
    where with ``log_weights`` the mean is ``sum_i w_i (.) / sum_i w_i``, ``w_i = exp(log_weights[i])``.

    A direct ``O(K M)`` evaluation, used as a reference for :func:`solve_threshold`.

    Args:
        rewards: shape ``(M,)``, finite.
        eta: a scalar or an array of thresholds of any shape.
        beta: tail level in ``(0, 1)``.
        alpha: KL weight, ``> 0``.
        tail: ``"right"`` or ``"left"``.
        log_weights: optional unnormalised log importance weights, shape ``(M,)``, finite;
            ``None`` means uniform.

    Returns:
        A float for scalar ``eta``, else an array of ``eta``'s shape.
    """
    r = as_float64(rewards)
    beta, alpha, tail = check_beta(beta), _check_alpha(alpha), check_tail(tail)
    lw = _check_log_weights(log_weights, r.size)
    e = np.asarray(eta, dtype=np.float64)
    flat = e.reshape(-1)
    out = np.empty(flat.size)
    chunk = max(1, 4_000_000 // r.size)  # keep the (chunk, M) work array near 32 MB
    for s in range(0, flat.size, chunk):
        et = flat[s:s + chunk, None]
        out[s:s + chunk] = et[:, 0] + alpha * _log_mean_exp_rows(_exponent(r[None, :], et, beta, alpha, tail), lw)
    return float(out[0]) if e.ndim == 0 else out.reshape(e.shape)


# ---------------------------------------------------------------------------
# exact solves on sorted rewards
# ---------------------------------------------------------------------------

def _solve_right_sorted(rs: np.ndarray, beta: float, alpha: float, lw: Optional[np.ndarray] = None) -> float:
    """``argmin F`` for ascending rewards ``rs`` (shape ``(M,)``, ``M >= 2``).

    ``lw``: log-weights in the same order (``max lw == 0``), or ``None`` for uniform.
    """
    m = rs.size
    c = 1.0 / (alpha * (1.0 - beta))
    top = rs[-1]
    cs = c * (rs - top)  # <= 0
    ratio_q = (1.0 - beta) / beta
    if lw is None:
        k = np.arange(1, m, dtype=np.float64)  # n_below on interval (rs[k-1], rs[k])
        qk = ratio_q * k  # target value of S on that interval
        if c * (top - rs[0]) <= 1.0:
            # sum_{i>=k} exp(cs_i) = (M - k) + E_k, E_k = suffix sum of expm1(cs_i)
            e = np.cumsum(np.expm1(cs)[::-1])[::-1][1:]
            eta_k = top + np.log1p(((m - k) - qk + e) / qk) / c
        else:
            # sum_{i>=k} exp(cs_i) >= exp(cs_top) = 1, so terms that underflow are negligible
            lse = np.log(np.cumsum(np.exp(cs)[::-1])[::-1][1:])  # log sum_{i>=k} exp(cs_i)
            eta_k = top + (lse - np.log(qk)) / c
    elif c * (top - rs[0]) <= 1.0:
        # S_k = sum_{i>=k} w_i exp(cs_i) = A_k + E_k (A_k = weight above, E_k = sum w_i expm1(cs_i));
        # target q W_below.  w = exp(lw) <= 1 with total >= 1: underflowed weights are negligible
        # (at the root both A_k and W_below are O(q / (1 + q)) of the total).
        w = np.exp(lw)
        above = np.cumsum(w[::-1])[::-1][1:]
        e = np.cumsum((w * np.expm1(cs))[::-1])[::-1][1:]
        qk = ratio_q * np.cumsum(w)[:-1]
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = ((above - qk) + e) / qk  # S_k / (q W_below) - 1
            far = np.log(above + e) - np.log(qk)  # same, as a log ratio, where rel is not small
            eta_k = top + np.where(np.abs(rel) < 0.5, np.log1p(rel), far) / c
    else:
        # log S_k = logsumexp_{i>=k}(lw_i + cs_i), log W_below = logsumexp_{i<k}(lw_i): no underflow
        lse = np.logaddexp.accumulate((lw + cs)[::-1])[::-1][1:]
        lwb = np.logaddexp.accumulate(lw)[:-1]
        eta_k = top + (lse - (math.log(ratio_q) + lwb)) / c
    lower, upper = rs[:-1], rs[1:]
    # F' > 0 at the right end of a non-empty interval  <=>  its root lies left of that end
    ok = (upper > lower) & (eta_k < upper)
    if not ok.any():  # F' <= 0 up to the top sample; F' = 1 above it
        return float(top)
    j = int(np.argmax(ok))
    return float(max(eta_k[j], lower[j]))


def _left_kink_values(rs: np.ndarray, beta: float, alpha: float, lw: Optional[np.ndarray] = None) -> np.ndarray:
    """``G(rs[j])`` for every ascending reward ``rs[j]`` -> shape ``(M,)``, in ``O(M)``.

    ``G(rs[j]) = rs[j] + alpha * log((M - j + T_j) / M)``,
    ``T_j = sum_{i<j} exp(c (rs[i] - rs[j]))``, ``c = 1 / (alpha beta)``
    (tied rewards contribute ``exp(0) = 1`` to either count, so ties are harmless).
    With log-weights ``lw`` (same order, ``max lw == 0``; ``w = exp(lw)``):
    ``G(rs[j]) = rs[j] + alpha * log((W_{>=j} + sum_{i<j} w_i exp(c (rs[i] - rs[j]))) / W)``.
    """
    m = rs.size
    c = 1.0 / (alpha * beta)
    cs = c * (rs - rs[0])  # >= 0
    if lw is None:
        j = np.arange(m, dtype=np.float64)
        if cs[-1] <= 1.0:
            # T_j - j = j expm1(-cs_j) + exp(-cs_j) Q_j,  Q_j = sum_{i<j} expm1(cs_i)
            q = np.concatenate(([0.0], np.cumsum(np.expm1(cs))[:-1]))
            log_ratio = np.log1p((j * np.expm1(-cs) + np.exp(-cs) * q) / m)
        else:
            p = np.concatenate(([-np.inf], np.logaddexp.accumulate(cs)[:-1]))  # log sum_{i<j} exp(cs_i)
            with np.errstate(divide="ignore"):
                log_ratio = np.logaddexp(np.log(m - j), p - cs) - math.log(m)
        return rs + alpha * log_ratio
    if cs[-1] <= 1.0:
        # ratio - 1 = sum_{i<j} w_i expm1(cs_i - cs_j) / W = (W_{<j} expm1(-cs_j) + exp(-cs_j) Q_j) / W,
        # Q_j = sum_{i<j} w_i expm1(cs_i)
        w = np.exp(lw)
        total = w.sum()
        wb = np.concatenate(([0.0], np.cumsum(w)[:-1]))
        q = np.concatenate(([0.0], np.cumsum(w * np.expm1(cs))[:-1]))
        log_ratio = np.log1p((wb * np.expm1(-cs) + np.exp(-cs) * q) / total)
    else:
        log_above = np.logaddexp.accumulate(lw[::-1])[::-1]  # log W_{>=j}
        p = np.concatenate(([-np.inf], np.logaddexp.accumulate(lw + cs)[:-1]))  # log sum_{i<j} w_i exp(cs_i)
        log_ratio = np.logaddexp(log_above, p - cs) - np.logaddexp.reduce(lw)
    return rs + alpha * log_ratio


def _solve_left_sorted(rs: np.ndarray, beta: float, alpha: float, lw: Optional[np.ndarray] = None) -> float:
    """``argmax G`` for ascending rewards ``rs`` (shape ``(M,)``); always a sampled reward."""
    return float(rs[int(np.argmax(_left_kink_values(rs, beta, alpha, lw)))])


#: A left-tail optimum that another local maximum of G trails by less than this many standard errors
#: (of the difference, on the same samples) is a near-tie: the samples cannot say which is the population's.
NEAR_TIE_Z = 2.0
#: Two maxima with fewer than this fraction of the samples between them are one optimum, not a tie.
NEAR_TIE_SEPARATION = 0.05


def _left_near_tie(rs: np.ndarray, beta: float, alpha: float, lw: Optional[np.ndarray] = None):
    """The closest rival of the left-tail optimum, if it ties within sampling error; else ``None``.

    ``G`` is not concave for the left tail (a log-mean-exp of concave functions), so it can have
    several local maxima; on a bimodal reward two of them can be nearly equal, and which one the
    sampled ``argmax`` picks is then chance.  For each other local maximum ``b`` separated from the
    optimum ``a`` by at least :data:`NEAR_TIE_SEPARATION` of the samples, the gap ``G(a) - G(b)`` is
    compared with its delta-method standard error on the same samples,
    ``se = alpha sd(e_a / mean e_a - e_b / mean e_b) / sqrt(M)`` with ``e = exp(pseudo / alpha)``
    (importance-weighted when ``lw`` is given).

    Returns:
        ``(eta_rival, gap, se)`` for the rival with the smallest ``gap / se`` below :data:`NEAR_TIE_Z`,
        or ``None``.
    """
    m = rs.size
    g = _left_kink_values(rs, beta, alpha, lw)
    top = int(np.argmax(g))
    prev = np.concatenate(([-np.inf], g[:-1]))
    nxt = np.concatenate((g[1:], [-np.inf]))
    peaks = np.flatnonzero((g >= prev) & (g > nxt))
    p = None if lw is None else np.exp(lw - lw.max()) / np.exp(lw - lw.max()).sum()
    c = 1.0 / (alpha * beta)

    def scaled(eta: float) -> np.ndarray:
        x = -c * np.maximum(eta - rs, 0.0)
        e = np.exp(x - x.max())
        return e / (e.mean() if p is None else float(np.dot(p, e)))

    rivals = peaks[np.abs(peaks - top) >= NEAR_TIE_SEPARATION * m]
    if rivals.size == 0:
        return None
    best = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # extreme weights: no finite se, no tie
        base = scaled(float(rs[top]))
        for j in rivals[np.argsort(-g[rivals])][:5]:      # the five highest rivals: O(M) each
            d = alpha * (base - scaled(float(rs[j])))
            if p is None:
                se = float(d.std(ddof=1)) / math.sqrt(m)
            else:
                se = math.sqrt(float(np.dot(p * p, (d - np.dot(p, d)) ** 2)))
            gap = float(g[top] - g[j])
            if math.isfinite(se) and se > 0 and gap < NEAR_TIE_Z * se and \
                    (best is None or gap / se < best[1] / best[2]):
                best = (float(rs[j]), gap, se)
    return best


def _solve_sorted(rs: np.ndarray, beta: float, alpha: float, tail: str, lw: Optional[np.ndarray] = None) -> float:
    """``eta*`` for ascending rewards ``rs`` with log-weights ``lw`` (same order, ``max == 0``) or ``None``."""
    if lw is not None and lw.size and lw.max() != 0.0:
        lw = lw - lw.max()
    if tail == "right":
        return _solve_right_sorted(rs, beta, alpha, lw)
    return _solve_left_sorted(rs, beta, alpha, lw)


# ---------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ThresholdResult:
    """The stage-1 threshold and what it predicts about the fine-tuned optimum.

    Attributes:
        tail: ``"right"`` or ``"left"``.
        beta: tail level in ``(0, 1)``.
        alpha: KL weight ``> 0``.
        n: number ``M`` of rewards.
        eta: the threshold ``eta*`` (for the left tail, one of the sampled rewards).
        value: the optimal regularised objective ``F(eta*)`` (right) or ``G(eta*)``
            (left) = ``max_p CVaR_beta(p) - alpha KL(p || p_pre)``.
        pre_cvar: empirical CVaR_beta of the pre-trained rewards (same tail; importance
            weighted when ``log_weights`` were given).
        pre_var: empirical VaR_beta (the beta-quantile) of the pre-trained rewards (weighted likewise).
        active_fraction: mass of the (importance-weighted) pre-trained distribution on the
            gradient side of ``eta*`` (``r > eta*`` right, ``r < eta*`` left), in ``[0, 1]``.
        ess: effective sample size ``1 / sum w_i^2`` of the normalised tilt weights
            ``w_i ∝ v_i exp(pseudo_i / alpha)`` (``v`` the importance weights, if any), in ``[1, M]``.
        ess_fraction: ``ess / M``.
        predicted_cvar: CVaR_beta of the tilted optimum ``w`` (same tail).
        predicted_kl: ``KL(w || v) = sum_i w_i log(w_i / v_i)`` (nats), ``v`` the normalised
            importance weights (uniform ``1/M`` without them).
        tail_mass: tilted mass strictly beyond ``eta*`` (``r > eta*`` right, ``r < eta*``
            left); equals ``1 - beta`` (right) or ``beta`` (left) when ``eta*`` lies
            between sampled rewards.
        tail_mass_incl: tilted mass beyond or at ``eta*``.  At a kink (``eta*`` equal to
            a sampled reward, always so for the left tail) the optimality condition is
            ``tail_mass <= target <= tail_mass_incl``.
        eta_interval: ``(low, high)`` bootstrap percentile interval for ``eta*``, or ``None``.
        eta_se: bootstrap standard error of ``eta*``, or ``None``.
        ci_level: coverage of ``eta_interval``.
        bootstrap: number of bootstrap resamples (0 = none).
        warnings: plain-English warnings (also emitted as :class:`TfftWarning`).
        rewards: the rewards, shape ``(M,)``, read-only, in input order.
        active_count_fraction: plain fraction of samples on the gradient side of ``eta*``
            (equals ``active_fraction`` without importance weights).
        is_ess: effective sample size ``(sum v_i)^2 / sum v_i^2`` of the importance weights,
            in ``[1, M]``, or ``None`` without them.
        log_weights: the log importance weights as given, shape ``(M,)``, read-only, in
            input order, or ``None``.
        near_tie: left tail only: the threshold of another local maximum of ``G`` that ties with
            ``eta*`` within sampling error (the samples cannot say which optimum the population
            has, and stage 2 follows the one chosen), else ``None``.  Also a warning.
    """

    tail: str
    beta: float
    alpha: float
    n: int
    eta: float
    value: float
    pre_cvar: float
    pre_var: float
    active_fraction: float
    ess: float
    ess_fraction: float
    predicted_cvar: float
    predicted_kl: float
    tail_mass: float
    tail_mass_incl: float
    eta_interval: Optional[tuple[float, float]] = None
    eta_se: Optional[float] = None
    ci_level: float = 0.95
    bootstrap: int = 0
    warnings: tuple[str, ...] = ()
    rewards: np.ndarray = field(default=None, repr=False, compare=False)
    active_count_fraction: Optional[float] = None
    is_ess: Optional[float] = None
    log_weights: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    near_tie: Optional[float] = None

    def weights(self, rewards: Any = None, log_weights: Any = None) -> np.ndarray:
        """Normalised tilt weights ``w_i ∝ v_i exp(pseudo(r_i) / alpha)``, shape ``(M,)``, float64.

        ``v_i = exp(log_weights[i])`` are the importance weights (uniform if none).

        Args:
            rewards: rewards to weight, shape ``(M,)``; defaults to the rewards the
                threshold was solved on (weights then follow their order), together with
                their ``log_weights``.
            log_weights: log importance weights for ``rewards``, shape ``(M,)``; defaults to
                the stored ones when ``rewards`` is ``None``, else to uniform.
        """
        if rewards is None:
            r = self.rewards
            lw = self.log_weights if log_weights is None else log_weights
        else:
            r, lw = as_float64(rewards), log_weights
        x = _exponent(r, self.eta, self.beta, self.alpha, self.tail)
        lw = _check_log_weights(lw, r.size)
        if lw is not None:
            x = x + lw
        w = np.exp(x - x.max())
        return w / w.sum()

    @property
    def target_tail_mass(self) -> float:
        """``1 - beta`` (right) or ``beta`` (left): the tilted mass beyond ``eta*`` at an interior optimum."""
        return 1.0 - self.beta if self.tail == "right" else self.beta

    def as_dict(self) -> dict:
        """Scalar fields as a flat dict (for a DataFrame row); ``eta_interval`` is split in two."""
        d = {k: v for k, v in asdict(self).items() if k not in ("rewards", "log_weights", "eta_interval", "warnings")}
        lo, hi = self.eta_interval if self.eta_interval is not None else (None, None)
        d.update(eta_low=lo, eta_high=hi, n_warnings=len(self.warnings))
        return d

    def summary(self) -> str:
        """A readable table of the threshold and its diagnostics."""
        side = "above" if self.tail == "right" else "below"
        fname = "F(eta*)" if self.tail == "right" else "G(eta*)"
        eta = f"{self.eta:.6g}"
        if self.eta_interval is not None:
            lo, hi = self.eta_interval
            eta += f"   [{100 * self.ci_level:g}% bootstrap ({self.bootstrap}x): {lo:.6g}, {hi:.6g}]"
        rows = [
            ("eta*", eta),
            (f"optimal value {fname}", f"{self.value:.6g}   (= CVaR - alpha KL of the optimum)"),
            ("pre-trained VaR / CVaR", f"{self.pre_var:.6g} / {self.pre_cvar:.6g}"),
            ("predicted CVaR", f"{self.predicted_cvar:.6g}"),
            ("predicted KL (nats)", f"{self.predicted_kl:.4g}"),
            (f"active fraction ({side} eta*)", f"{100 * self.active_fraction:.3g}%"),
            ("ESS of tilt weights", f"{self.ess:.4g} of {self.n} ({100 * self.ess_fraction:.3g}%)"),
        ]
        if self.is_ess is not None:
            rows.append(("ESS of importance weights", f"{self.is_ess:.4g} of {self.n} ({100 * self.is_ess / self.n:.3g}%)"))
        rows += [
            (f"tilted mass {side} eta*", f"{self.tail_mass:.6g}   (incl. eta*: {self.tail_mass_incl:.6g}; "
                                          f"target {self.target_tail_mass:g})"),
        ]
        width = max(len(k) for k, _ in rows)
        head = f"TFFT threshold: {self.tail} tail, beta={self.beta:g}, alpha={self.alpha:g}, M={self.n}"
        if self.is_ess is not None:
            head += " (importance weighted)"
        lines = [head] + [f"  {k:<{width}}  {v}" for k, v in rows]
        if self.warnings:
            lines.append("  warnings:")
            lines += [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------
# public solver
# ---------------------------------------------------------------------------

def _sort_and_solve(r: np.ndarray, lw: Optional[np.ndarray], beta: float, alpha: float, tail: str):
    """Sort the rewards (with their log-weights) once and solve: ``(sorted r, sorted log w or None, eta*)``.

    Constant log-weights are exactly the unweighted problem and take its path.
    """
    if lw is not None and not lw.any():
        lw = None
    if lw is None:
        rs, ls = np.sort(r), None
    else:
        order = np.argsort(r, kind="stable")
        rs, ls = r[order], lw[order]
    return rs, ls, _solve_sorted(rs, beta, alpha, tail, ls)


def solve_eta(rewards: Any, beta: float, alpha: float, tail: str = "right", log_weights: Any = None) -> tuple[float, float]:
    """``(eta*, value)`` only: the sort and the exact per-interval solve, without diagnostics.

    Same maths, validation and result as :func:`solve_threshold` (``eta`` and ``value``
    agree bit for bit); use it inside loops (bootstraps, sweeps) where the diagnostics
    are not needed.
    """
    tail = check_tail(tail)
    beta = check_beta(beta)
    alpha = _check_alpha(alpha)
    r = as_float64(rewards, min_size=2)
    rs, ls, eta = _sort_and_solve(r, _check_log_weights(log_weights, r.size), beta, alpha, tail)
    x = _exponent(rs, eta, beta, alpha, tail)
    return eta, eta + alpha * float(_log_mean_exp_rows(x[None, :], ls)[0])


def solve_threshold(
    rewards: Any,
    beta: float,
    alpha: float,
    tail: str = "right",
    bootstrap: int = 0,
    seed: Optional[int] = None,
    min_active_fraction: float = 0.01,
    min_ess_fraction: float = 0.01,
    ci_level: float = 0.95,
    log_weights: Any = None,
) -> ThresholdResult:
    """Solve stage 1 exactly: ``eta* = argmin F`` (right) or ``argmax G`` (left).

    See the module docstring for ``F``, ``G`` and the algorithm (``O(M log M)``,
    dominated by one sort).

    Args:
        rewards: rewards of pre-trained samples, shape ``(M,)``, ``M >= 2``,
            finite (numpy array, torch tensor or sequence).
        beta: tail level in ``(0, 1)``; ``beta=0.9, tail="right"`` targets the
            best 10 %, ``beta=0.1, tail="left"`` the worst 10 %.
        alpha: KL weight ``> 0`` (Adjoint Matching's ``lambda = 1 / alpha``).
        tail: ``"right"`` or ``"left"``.
        bootstrap: number of resamples (with replacement) for a percentile
            interval on ``eta*``; 0 skips it.  Small ``alpha`` makes ``eta*`` noisy.
        seed: seed of the bootstrap generator.
        min_active_fraction: warn when fewer than this fraction of samples lie
            on the gradient side of ``eta*``.
        min_ess_fraction: warn when the tilt weights' ESS is below this fraction of ``M``.
        ci_level: coverage of the bootstrap interval, in ``(0, 1)``.
        log_weights: optional unnormalised log importance weights, shape ``(M,)``, finite
            (e.g. ``log p_pre(x_i) - log q(x_i)`` for samples ``x_i`` of a fine-tuned model
            ``q``, to refine ``eta*`` where pre-trained samples are scarce in the tail).
            Every empirical mean then becomes the self-normalised weighted mean; the
            bootstrap resamples (reward, log-weight) pairs.  ``None`` (or a constant) = uniform.

    Returns:
        A :class:`ThresholdResult`.

    Raises:
        ValueError: on ``beta`` outside ``(0, 1)``, non-finite or non-positive
            ``alpha``, NaN/inf rewards, fewer than 2 rewards, an unknown ``tail``, or
            ``log_weights`` of the wrong shape or with NaN/inf entries.

    Example:
        >>> import numpy as np
        >>> res = solve_threshold(np.random.default_rng(0).normal(size=1000), beta=0.9, alpha=5.0)
        >>> round(res.tail_mass, 6)
        0.1
    """
    tail = check_tail(tail)
    beta = check_beta(beta)
    alpha = _check_alpha(alpha)
    r = as_float64(rewards, min_size=2).copy()
    r.flags.writeable = False
    min_active_fraction = _check_fraction(min_active_fraction, "min_active_fraction")
    min_ess_fraction = _check_fraction(min_ess_fraction, "min_ess_fraction")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise ValueError(f"bootstrap={bootstrap!r} must be an integer >= 0")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level={ci_level!r} must lie in the open interval (0, 1)")
    lw_in = _check_log_weights(log_weights, r.size)  # shifted to max 0
    weighted = lw_in is not None
    lw_keep = None
    if weighted:  # stored as given (not shifted), read-only
        lw_keep = np.array(log_weights.detach().cpu().double().numpy() if hasattr(log_weights, "detach")
                           else log_weights, dtype=np.float64)
        lw_keep.flags.writeable = False

    m = r.size
    rs, ls, eta = _sort_and_solve(r, lw_in, beta, alpha, tail)

    # diagnostics of the tilt w ∝ v exp(x), x = pseudo / alpha, v the importance weights, on sorted rewards
    x = _exponent(rs, eta, beta, alpha, tail)
    lme = float(_log_mean_exp_rows(x[None, :], ls)[0])  # log E_v[exp(x)]
    value = eta + alpha * lme
    a = x if ls is None else x + ls
    w = np.exp(a - a.max())
    w /= w.sum()
    ess = 1.0 / float(np.dot(w, w))
    kl = max(float(np.dot(w, x)) - lme, 0.0)  # sum w log(w / v) = E_w[x] - log E_v[exp(x)]
    if tail == "right":
        beyond, at_or_beyond = rs > eta, rs >= eta
        predicted_cvar = -_lower_tail_mean(-rs[::-1], w[::-1], 1.0 - beta)
    else:
        beyond, at_or_beyond = rs < eta, rs <= eta
        predicted_cvar = _lower_tail_mean(rs, w, beta)
    active_count = float(beyond.mean())
    tail_mass = float(w[beyond].sum())
    tail_mass_incl = float(w[at_or_beyond].sum())
    is_ess = None
    if ls is None:
        if tail == "right":
            pre_cvar = -_lower_tail_mean(-rs[::-1], None, 1.0 - beta)
        else:
            pre_cvar = _lower_tail_mean(rs, None, beta)
        pre_var = _quantile_sorted(rs, None, beta, tail)
        active = active_count
        if weighted:
            is_ess = float(m)
    else:
        v = np.exp(ls)  # max 1
        v /= v.sum()
        is_ess = 1.0 / float(np.dot(v, v))
        active = min(float(v[beyond].sum()), 1.0)
        # risk.cvar / risk.var with weights v, on the already sorted atoms
        if tail == "right":
            pre_cvar = -_lower_tail_mean(-rs[::-1], v[::-1], 1.0 - beta)
        else:
            pre_cvar = _lower_tail_mean(rs, v, beta)
        pre_var = _quantile_sorted(rs, v, beta, tail)

    interval = se = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        etas = np.empty(int(bootstrap))
        for b in range(int(bootstrap)):
            idx = np.sort(rng.integers(0, m, size=m))  # indices into the sorted arrays: stays sorted
            etas[b] = _solve_sorted(rs[idx], beta, alpha, tail, None if ls is None else ls[idx])
        lo, hi = np.quantile(etas, [(1 - ci_level) / 2, (1 + ci_level) / 2])
        interval = (float(lo), float(hi))
        se = float(etas.std(ddof=1)) if bootstrap > 1 else 0.0

    msgs = []
    side = "above" if tail == "right" else "below"
    if active < min_active_fraction:
        knob = "lower beta" if tail == "right" else "raise beta"
        amount = "none" if active == 0 else f"only {100 * active:.3g}%"
        what = (f"the {m} pre-trained samples" if ls is None else
                f"the importance-weighted pre-trained mass ({m} samples, {100 * active_count:.3g}% of them)")
        msgs.append(
            f"{amount} of {what} {'lie' if ls is None else 'lies'} {side} eta*={eta:.6g} "
            f"(minimum {100 * min_active_fraction:g}%): the hinge gradient of the pseudo-reward "
            f"is zero almost everywhere, so fine-tuning gets almost no signal; "
            f"increase alpha (now {alpha:g}), {knob} (now {beta:g}), or draw more offline samples"
        )
    if ess / m < min_ess_fraction:
        msgs.append(
            f"the tilt weights {'' if ls is None else 'v * '}exp(pseudo-reward/alpha) have an effective sample size of "
            f"{ess:.3g} out of {m} ({100 * ess / m:.3g}%, minimum {100 * min_ess_fraction:g}%): "
            f"the predicted CVaR and KL rest on few samples and eta* is noisy; "
            f"increase alpha (now {alpha:g}) or draw more offline samples"
        )
    near_tie = None
    if tail == "left":
        tie = _left_near_tie(rs, beta, alpha, ls)
        if tie is not None:
            near_tie, gap, tie_se = tie
            msgs.append(
                f"two thresholds nearly tie: eta*={eta:.6g} and eta={near_tie:.6g} give objective values "
                f"{gap:.3g} apart, within {NEAR_TIE_Z:g} standard errors ({tie_se:.3g}) of each other on these "
                f"{m} samples, so which one the population optimum is cannot be told, and stage 2 follows "
                f"the one chosen (a bimodal reward); draw more offline samples, or change alpha (now {alpha:g})"
            )
    for msg in msgs:
        _warnings.warn(msg, TfftWarning, stacklevel=2)

    return ThresholdResult(
        tail=tail, beta=beta, alpha=alpha, n=m, eta=eta, value=value,
        pre_cvar=pre_cvar, pre_var=pre_var, active_fraction=active,
        ess=ess, ess_fraction=ess / m, predicted_cvar=predicted_cvar, predicted_kl=kl,
        tail_mass=tail_mass, tail_mass_incl=tail_mass_incl, eta_interval=interval, eta_se=se, ci_level=ci_level,
        bootstrap=int(bootstrap), warnings=tuple(msgs), rewards=r,
        active_count_fraction=active_count, is_ess=is_ess, log_weights=lw_keep, near_tie=near_tie,
    )


# ---------------------------------------------------------------------------
# degenerate tails: what stage 1 can say before stage 2 is paid for
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TailDegeneracy:
    """A tail that TFFT cannot move, or moves only as expected-reward fine-tuning would.

    Attributes:
        kind: ``"saturated"`` (the tail's CVaR is already the largest reward any offline
            sample reached: nothing to gain; ties at the top leave the hinge without a
            gradient for every alpha) or ``"expected"`` (``eta*`` at the reward extreme
            opposite the tail: every sample is on the hinge's linear side, so TFFT is
            expected-reward fine-tuning with the reward scaled by ``1/(1-beta)`` or ``1/beta``).
        stop: ``True`` when stage 2 cannot gain anything (``"saturated"``).
        message: the plain-English diagnosis with advice that can help.
        tied_fraction: fraction of the offline samples tied at the relevant extreme.
        extreme: the extreme reward of the offline batch (the maximum, or the minimum for
            a right tail whose ``eta*`` sits at the bottom).
        at_bound: the extreme equals the reward's declared bound.
        alpha_ok: the nearest alpha at which the degeneracy is gone (``None`` if none found).
        beta_ok: the nearest beta (at the same alpha) at which it is gone (``None`` if none found).
    """

    kind: str
    stop: bool
    message: str
    tied_fraction: float
    extreme: float
    at_bound: bool = False
    alpha_ok: Optional[float] = None
    beta_ok: Optional[float] = None


def _tie_tol(x: float) -> float:
    return 1e-12 * max(1.0, abs(x))


def _is_expected(rs: np.ndarray, eta: float, tail: str) -> bool:
    """``eta*`` at the reward extreme opposite the tail (every sample on the hinge's linear side)."""
    return bool(eta <= rs[0] + _tie_tol(rs[0])) if tail == "right" else bool(eta >= rs[-1] - _tie_tol(rs[-1]))


def _alpha_boundary(rs: np.ndarray, beta: float, alpha: float, tail: str, bad) -> Optional[float]:
    """The alpha nearest to ``alpha`` (log scale, within 1e-6..1e6 of it) at which ``bad(eta)`` is False."""
    grid = alpha * np.logspace(0.0, 6.0, 61)[1:]
    for direction in (grid, alpha * alpha / grid):  # up first (a flatter tilt), then down
        prev = alpha
        for a in direction:
            if not bad(_solve_sorted(rs, beta, float(a), tail)):
                lo, hi = (prev, float(a))  # bad at lo, fine at hi: bisect on log alpha
                for _ in range(30):
                    mid = math.sqrt(lo * hi)
                    if bad(_solve_sorted(rs, beta, mid, tail)):
                        lo = mid
                    else:
                        hi = mid
                return float(hi)
            prev = float(a)
    return None


def tail_degeneracy(res: ThresholdResult, bounds: Optional[tuple[float, float]] = None) -> Optional[TailDegeneracy]:
    """Diagnose a degenerate tail from a stage-1 result, before stage 2 runs.

    * **saturated** (``stop=True``): the tail's CVaR already equals the largest reward of
      the offline batch (right tail: at least ``1 - beta`` of the samples are tied at the
      maximum; left tail: every sample is).  The hinge ``(r - eta*)_+`` is zero on every
      sample for every alpha, the adaptive continuation's batch tail is tied too, and a
      reward at its declared upper bound cannot rise: nothing to gain.  The advice names
      the largest ``beta`` whose tail can move at this alpha.
    * **expected** (``stop=False``): ``eta*`` sits at the reward extreme opposite the tail
      (left: at the maximum; right: at the minimum), so the pseudo-reward is linear in
      ``r`` on every sample: TFFT reduces to expected-reward fine-tuning with the reward
      scaled by ``1/beta`` (left) or ``1/(1-beta)`` (right).  The advice names the alpha
      (and the beta) at which ``eta*`` moves inside the rewards.

    Args:
        res: a :class:`ThresholdResult` (unweighted or importance-weighted; ties are counted
            on the samples).
        bounds: the reward's declared ``(low, high)`` range, if any (only for the wording:
            "the reward's upper bound").

    Returns:
        A :class:`TailDegeneracy`, or ``None`` when the tail is not degenerate.
    """
    r = np.asarray(res.rewards, dtype=np.float64)
    if r is None or r.size < 2:
        return None
    rs = np.sort(r)
    m = rs.size
    rmax, rmin = float(rs[-1]), float(rs[0])
    hi_bound = lo_bound = None
    if bounds is not None:
        lo_bound, hi_bound = (float(bounds[0]), float(bounds[1]))
    tied_top = float(np.mean(rs >= rmax - _tie_tol(rmax)))
    tail_mass = res.target_tail_mass
    beta, alpha, tail = res.beta, res.alpha, res.tail
    if rmax > rmin and ((tail == "right" and tied_top >= tail_mass) or (tail == "left" and tied_top >= 1.0)):
        at_bound = hi_bound is not None and rmax >= hi_bound - 1e-9 * max(1.0, abs(hi_bound))
        where = "the reward's upper bound" if at_bound else "the largest reward in the offline batch"
        beta_ok = None
        if tail == "right":
            for b in np.round(np.arange(min(1.0 - tied_top, 0.99), 0.0, -0.01), 2):
                if b <= 0 or b >= 1:
                    continue
                e = _solve_sorted(rs, float(b), alpha, "right")
                if float(np.mean(rs > e)) >= 0.02:
                    beta_ok = float(b)
                    break
        msg = (f"nothing to gain: {100 * tied_top:.3g}% of the {m} pre-trained samples already score {rmax:.6g}, "
               f"{where}, which covers the whole {tail} tail of beta={beta:g} ({100 * tail_mass:.3g}% of the samples); "
               f"the tail's CVaR is already {res.pre_cvar:.6g} and stage 1 predicts {res.predicted_cvar:.6g} at KL "
               f"{res.predicted_kl:.3g}.  The hinge has no gradient on tied samples, so no alpha (now {alpha:g}), "
               f"no continuation and no number of offline samples changes this")
        if tail == "right":
            msg += (f"; a tail that can move: beta <= {beta_ok:g} (its top {100 * (1 - beta_ok):.3g}% is not all "
                    f"tied), or a reward that separates the molecules at {rmax:.6g}" if beta_ok is not None else
                    f"; use a reward that separates the samples tied at {rmax:.6g}")
        return TailDegeneracy("saturated", True, msg + ".", tied_top, rmax, at_bound, None, beta_ok)
    if rmax > rmin and _is_expected(rs, res.eta, tail):
        ext = rmax if tail == "left" else rmin
        bound = hi_bound if tail == "left" else lo_bound
        at_bound = bound is not None and abs(ext - bound) <= 1e-9 * max(1.0, abs(bound))
        scale = 1.0 / beta if tail == "left" else 1.0 / (1.0 - beta)
        word = "maximum" if tail == "left" else "minimum"
        bad = lambda e: _is_expected(rs, e, tail)  # noqa: E731
        alpha_ok = _alpha_boundary(rs, beta, alpha, tail, bad)
        beta_ok = None
        grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
        for b in sorted(grid, key=lambda b: abs(b - beta)):
            if not bad(_solve_sorted(rs, float(b), alpha, tail)):
                beta_ok = float(b)
                break
        if tail == "left":
            tied = float(np.mean(rs >= rmax - _tie_tol(rmax)))
            pseudo, side = "-(eta* - r)_+/beta = (r - eta*)/beta", "upper"
        else:
            tied = float(np.mean(rs <= rmin + _tie_tol(rmin)))
            pseudo, side = "(r - eta*)_+/(1-beta) = (r - eta*)/(1-beta)", "lower"
        bound_note = f" (the reward's {side} bound)" if at_bound else ""
        shared = f", shared by {100 * tied:.3g}% of them" if tied > 1.0 / m else ""
        msg = (f"eta*={res.eta:.6g} is the {word} reward of the {m} offline samples{bound_note}{shared}: every "
               f"sample lies on the hinge's linear side, so the pseudo-reward {pseudo} is linear in r and "
               f"TFFT-{tail} is expected-reward fine-tuning with the reward scaled by {scale:.4g} (the same as "
               f"method: expected at alpha={alpha / scale:.4g}); it does not target the {tail} tail")
        where = []
        if alpha_ok is not None:
            where.append(f"alpha {'>=' if alpha_ok > alpha else '<='} {alpha_ok:.3g} (at beta={beta:g})")
        if beta_ok is not None:
            where.append(f"beta={beta_ok:g} (at alpha={alpha:g})")
        msg += ("; eta* moves inside the rewards at " + " or ".join(where) if where else
                "; no alpha in 1e-6..1e6 times the present one nor any beta moves eta* inside the rewards")
        return TailDegeneracy("expected", False, msg + ".", tied, ext, at_bound, alpha_ok, beta_ok)
    return None
