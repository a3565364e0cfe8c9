"""Spectral risk and the CVaR-constrained form: stage 1 beyond one tail (docs/design.md §10).

**Spectral risk.**  For levels ``k = 1..K``, each a tail (``right``/``left``), a level ``beta_k``
in ``(0, 1)`` and a weight ``w_k >= 0``, and an optional weight ``w_0 >= 0`` on the mean,

    rho(p) = w_0 E_p[r] + sum_k w_k CVaR^{tail_k}_{beta_k}(p),

stage 1 solves ``max_p rho(p) - alpha KL(p || p_pre)`` on ``M`` rewards of the pre-trained model.
Each right level enters as in ``F`` and each left level as in ``G`` (docs/design.md §2.3): with the
threshold vector ``eta = (eta_R, eta_L)`` and the piecewise-linear pseudo-reward

    phi_eta(r) = w_0 r + sum_{k right} w_k (r - eta_k)_+ / (1 - beta_k)
                       - sum_{k left}  w_k (eta_k - r)_+ / beta_k,

    H(eta) = sum_k w_k eta_k + alpha log E_pre exp(phi_eta(r) / alpha),

    max_p rho(p) - alpha KL  =  max_{eta_L} min_{eta_R} H(eta_R, eta_L),

reached by the tilt ``p* ∝ p_pre exp(phi_{eta*}(r) / alpha)``.

The exact solve (module functions below):

* ``H`` is convex in ``eta_R`` and its directional derivative is a sum of one term per
  coordinate (every kink ``eta_k = r_i`` is axis-aligned), so a point that no single coordinate
  can improve is a global minimum.  Each coordinate's exact minimum is the weighted one-tail solve
  of :mod:`tfftmol.core.threshold` (``F`` with ``alpha / w_k`` and log importance weights
  ``(phi - own hinge) / alpha``), unique; cycling through the coordinates converges
  (Tseng 2001, Thm 4.1 / 5.1) and is stopped by a duality-gap certificate.
* For a fixed pattern of intervals between sorted rewards, ``H`` is jointly convex in
  ``(eta_R, eta_L)``, so ``Phi(eta_L) = min_{eta_R} H`` is convex on each box: its maximum sits
  at sampled rewards (as in the one-tail left case).  The left thresholds are found by
  branch-and-bound over the sampled rewards: for any visited ``eta_R^j``,
  ``Phi(eta_L) <= H(eta_R^j, eta_L)``, which one weighted left pass gives for every candidate at
  once; the best candidate is evaluated exactly, its ``eta_R`` tightens the bound, and the search
  stops when no candidate's bound beats the best value.  With one left level this is the exact
  global optimum; with several it is exact in each left threshold given the others (reported).

**The constrained form** (``solve_constrained``): ``max E[r] - alpha KL`` subject to
``CVaR^{tail}_beta >= c``.  Its Lagrangian is the spectral problem with ``w_0 = 1`` and one level of
weight ``lambda >= 0``, minus ``lambda c``; ``lambda`` is found by bisection (Brent) on the exact
predicted CVaR of the tilt, which is non-decreasing in ``lambda`` (the derivative of the convex
dual).  When ``c`` is out of reach the result says so and gives the best reachable ``c``.
"""
from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .pseudo import TerminalTransform, _as_array, _hinge, _step
from .risk import _lower_tail_mean, as_float64, check_beta, check_tail
from .threshold import (TfftWarning, _check_alpha, _check_fraction, _left_kink_values, _log_mean_exp_rows,
                        _solve_sorted)

__all__ = ["Level", "SpectralPseudoReward", "SpectralResult", "solve_spectral", "spectral_objective",
           "ConstrainedResult", "solve_constrained"]


# ---------------------------------------------------------------------------
# levels and the pseudo-reward
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Level:
    """One CVaR level of a spectral risk: ``weight * CVaR^{tail}_{beta}``."""

    tail: str
    beta: float
    weight: float = 1.0

    def __post_init__(self):
        check_tail(self.tail)
        object.__setattr__(self, "beta", check_beta(self.beta))
        w = float(self.weight)
        if not (math.isfinite(w) and w >= 0.0):
            raise ValueError(f"weight={self.weight!r} must be a finite number >= 0")
        object.__setattr__(self, "weight", w)

    @property
    def kappa(self) -> float:
        """Tail mass: ``1 - beta`` (right) or ``beta`` (left)."""
        return 1.0 - self.beta if self.tail == "right" else self.beta

    def label(self) -> str:
        return f"{self.weight:g}*CVaR_{self.tail}({self.beta:g})"


def _as_levels(levels: Any) -> tuple[Level, ...]:
    """Levels from ``Level``s, ``(tail, beta[, weight])`` tuples or dicts."""
    out = []
    for lv in levels:
        if isinstance(lv, Level):
            out.append(lv)
        elif isinstance(lv, dict):
            out.append(Level(**lv))
        else:
            out.append(Level(*lv))
    return tuple(out)


def _pseudo_np(r: np.ndarray, levels: Sequence[Level], etas: Sequence[float], mean_weight: float,
               skip: Optional[int] = None) -> np.ndarray:
    """``phi_eta(r)`` (float64), leaving out level ``skip`` if given."""
    out = mean_weight * r if mean_weight else np.zeros_like(r)
    for k, (lv, e) in enumerate(zip(levels, etas)):
        if k == skip or lv.weight == 0.0:
            continue
        if lv.tail == "right":
            out = out + (lv.weight / (1.0 - lv.beta)) * np.maximum(r - e, 0.0)
        else:
            out = out - (lv.weight / lv.beta) * np.maximum(e - r, 0.0)
    return out


@dataclass(frozen=True)
class SpectralPseudoReward(TerminalTransform):
    """The stage-2 pseudo-reward of a spectral risk: a sum of per-level hinges (and ``w_0 r``).

    ``phi(r) = w_0 r + sum_right w_k (r - eta_k)_+ / (1 - beta_k) - sum_left w_k (eta_k - r)_+ / beta_k``,
    ``phi'(r) = w_0 + sum_right w_k 1[r > eta_k] / (1 - beta_k) + sum_left w_k 1[r < eta_k] / beta_k >= 0``.
    ``smoothing = tau > 0`` replaces each hinge by ``tau softplus(z / tau)`` as in :class:`PseudoReward`.
    """

    levels: tuple
    etas: tuple
    mean_weight: float = 0.0
    smoothing: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "levels", _as_levels(self.levels))
        etas = tuple(float(e) for e in self.etas)
        if len(etas) != len(self.levels) or not all(math.isfinite(e) for e in etas):
            raise ValueError(f"etas={self.etas!r} must be {len(self.levels)} finite numbers, one per level")
        object.__setattr__(self, "etas", etas)
        object.__setattr__(self, "mean_weight", float(self.mean_weight))
        object.__setattr__(self, "smoothing", float(self.smoothing))

    @classmethod
    def from_result(cls, result: "SpectralResult", smoothing: float = 0.0) -> "SpectralPseudoReward":
        return cls(result.levels, result.etas, result.mean_weight, smoothing)

    def value(self, r):
        r = _as_array(r)
        out = self.mean_weight * r
        for lv, e in zip(self.levels, self.etas):
            if lv.tail == "right":
                out = out + (lv.weight / (1.0 - lv.beta)) * _hinge(r - e, self.smoothing)
            else:
                out = out - (lv.weight / lv.beta) * _hinge(e - r, self.smoothing)
        return out

    def grad(self, r):
        r = _as_array(r)
        out = (torch.full_like(r, self.mean_weight) if isinstance(r, torch.Tensor)
               else np.full_like(r, self.mean_weight))
        for lv, e in zip(self.levels, self.etas):
            z = r - e if lv.tail == "right" else e - r
            out = out + (lv.weight / lv.kappa) * _step(z, self.smoothing)
        return out


# ---------------------------------------------------------------------------
# the dual on sorted rewards
# ---------------------------------------------------------------------------

def _H(rs: np.ndarray, levels, etas, alpha: float, mean_weight: float) -> float:
    x = _pseudo_np(rs, levels, etas, mean_weight) / alpha
    lin = sum(lv.weight * e for lv, e in zip(levels, etas))
    return lin + alpha * float(_log_mean_exp_rows(x[None, :])[0])


def _rest_lw(rs, levels, etas, alpha, mean_weight, k):
    """Log importance weights ``(phi - hinge_k) / alpha`` (max 0), or ``None`` when constant."""
    lw = _pseudo_np(rs, levels, etas, mean_weight, skip=k) / alpha
    lw = lw - lw.max()
    return lw if lw.any() else None


def _coord(rs, levels, etas, alpha, mean_weight, k) -> float:
    """Exact 1-D solve of coordinate ``k`` given the others (the weighted one-tail solve)."""
    lv = levels[k]
    return _solve_sorted(rs, lv.beta, alpha / lv.weight, lv.tail, _rest_lw(rs, levels, etas, alpha, mean_weight, k))


def _left_bound(rs, levels, etas, alpha, mean_weight, k) -> np.ndarray:
    """``H(etas with eta_k = rs[i])`` for every ``i`` (one weighted left pass), shape ``(M,)``."""
    lv = levels[k]
    x = _pseudo_np(rs, levels, etas, mean_weight, skip=k) / alpha
    const = sum(l.weight * e for j, (l, e) in enumerate(zip(levels, etas)) if j != k)
    const += alpha * float(_log_mean_exp_rows(x[None, :])[0])
    lw = x - x.max()
    return const + lv.weight * _left_kink_values(rs, lv.beta, alpha / lv.weight, lw if lw.any() else None)


def _min_right(rs, levels, etas, alpha, mean_weight, right, tol, max_sweeps):
    """Cyclic exact coordinate minimisation of ``H`` over the right thresholds; returns ``(etas, sweeps)``."""
    etas = list(etas)
    if not right:
        return etas, 0
    scale = tol * max(1.0, float(rs[-1] - rs[0]), float(np.abs(rs).max()) * 1e-3)
    for sweep in range(1, max_sweeps + 1):
        delta = 0.0
        for k in right:
            new = _coord(rs, levels, etas, alpha, mean_weight, k)
            delta = max(delta, abs(new - etas[k]))
            etas[k] = new
        if len(right) == 1 or delta <= scale:
            return etas, sweep
    return etas, -max_sweeps  # not converged


def _solve_sorted_spectral(rs, levels, alpha, mean_weight, tol=1e-13, max_sweeps=20000):
    """``(etas, value, info)`` for ascending rewards ``rs``.

    ``info``: ``sweeps`` (coordinate sweeps of the last inner solve, negative if the cap was hit),
    ``evaluations`` (inner solves in the left search), ``upper`` (certified upper bound on the
    value from the left search), ``exact`` (global optimum certified).
    """
    active = [k for k, lv in enumerate(levels) if lv.weight > 0]
    right = [k for k in active if levels[k].tail == "right"]
    left = [k for k in active if levels[k].tail == "left"]
    # start: each level alone (its own one-tail solve), zero-weight levels at the median
    etas = [float(np.median(rs))] * len(levels)
    for k in active:
        etas[k] = _solve_sorted(rs, levels[k].beta, alpha / levels[k].weight, levels[k].tail, None)
    info = {"sweeps": 0, "evaluations": 0, "exact": True}
    total = 0

    def inner(et):
        nonlocal total
        et, sw = _min_right(rs, levels, et, alpha, mean_weight, right, tol, max_sweeps)
        info["sweeps"] = sw
        total += abs(sw)
        return et, _H(rs, levels, et, alpha, mean_weight)

    if not left:
        etas, val = inner(etas)
        info["upper"] = val
        info["total_sweeps"] = total
        return etas, val, info

    # alternate: eta_R = argmin H(., eta_L); each eta_L = global argmax of H(eta_R, .) in that coordinate
    etas, best = inner(etas)
    for _ in range(50):
        changed = False
        for k in left:
            new = _coord(rs, levels, etas, alpha, mean_weight, k)
            if new != etas[k]:
                trial = list(etas)
                trial[k] = new
                trial, val = inner(trial)
                if val > best:
                    etas, best, changed = trial, val, True
        if not changed:
            break
    # branch-and-bound over the sampled rewards, one left coordinate at a time, to a certified optimum
    upper = best
    vtol = 1e-13 * max(1.0, abs(best))
    for _ in range(100):
        changed = False
        for k in left:
            bound = _left_bound(rs, levels, etas, alpha, mean_weight, k)
            done = np.zeros(rs.size, bool)
            done[rs == etas[k]] = True
            while True:
                masked = np.where(done, -np.inf, bound)
                i = int(np.argmax(masked))
                if not masked[i] > best + vtol:
                    break
                done[rs == rs[i]] = True
                trial = list(etas)
                trial[k] = float(rs[i])
                trial, val = inner(trial)
                info["evaluations"] += 1
                if val > best + vtol:
                    etas, best, changed = trial, val, True
                bound = np.minimum(bound, _left_bound(rs, levels, trial, alpha, mean_weight, k))
            upper = max(upper, best)
        if not changed:
            break
    etas, best = inner(etas)  # final polish of eta_R at the chosen eta_L
    info["upper"] = max(upper, best)
    info["exact"] = len(left) == 1
    info["total_sweeps"] = total
    return etas, best, info


def spectral_objective(rewards: Any, levels: Any, etas: Any, alpha: float, mean_weight: float = 0.0) -> float:
    """The dual ``H(eta) = sum_k w_k eta_k + alpha log mean_i exp(phi_eta(r_i) / alpha)`` (direct ``O(KM)``)."""
    r = as_float64(rewards)
    return _H(r, _as_levels(levels), [float(e) for e in etas], _check_alpha(alpha), float(mean_weight))


# ---------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------

def _cvar_sorted(rs, w, lv: Level) -> float:
    if lv.tail == "right":
        return -_lower_tail_mean(-rs[::-1], None if w is None else w[::-1], 1.0 - lv.beta)
    return _lower_tail_mean(rs, w, lv.beta)


@dataclass(frozen=True)
class SpectralResult:
    """Stage 1 of a spectral risk ``rho = w_0 E[r] + sum_k w_k CVaR_k``: thresholds and predictions.

    Attributes:
        levels: the levels (tail, beta, weight); ``etas``: their thresholds, same order.
        mean_weight: ``w_0``.  alpha, n: KL weight and number of rewards.
        value: ``max_p rho(p) - alpha KL(p || p_pre)`` on the samples (``H`` at the thresholds).
        upper_bound: certified upper bound on ``value`` from the left-threshold search (= value
            up to rounding when ``exact``).
        duality_gap: ``value - (predicted_risk - alpha predicted_kl)``, ``>= 0`` and 0 at the optimum.
        pre_risk / predicted_risk: ``rho`` of the pre-trained samples / of the tilt.
        pre_cvars / predicted_cvars: each level's CVaR (same order as ``levels``).
        pre_mean / predicted_mean: ``E[r]``.
        predicted_kl: ``KL(tilt || uniform)`` (nats).  ess, ess_fraction: of the tilt weights.
        active_fractions: per level, fraction of samples on its gradient side.
        tail_masses / tail_masses_incl: per level, tilted mass strictly beyond / beyond or at
            ``eta_k`` (bracket the level's ``kappa`` at the optimum).
        exact: the optimum is certified global (always, except with two or more left levels,
            where each left threshold is the exact best given the others).
        sweeps: coordinate sweeps of the final right-threshold solve (negative: cap reached).
        evaluations: inner solves spent by the left search.
        warnings: plain-English warnings (also emitted as :class:`TfftWarning`).
    """

    levels: tuple
    etas: tuple
    mean_weight: float
    alpha: float
    n: int
    value: float
    upper_bound: float
    duality_gap: float
    pre_risk: float
    predicted_risk: float
    pre_cvars: tuple
    predicted_cvars: tuple
    pre_mean: float
    predicted_mean: float
    predicted_kl: float
    ess: float
    ess_fraction: float
    active_fractions: tuple
    tail_masses: tuple
    tail_masses_incl: tuple
    exact: bool
    sweeps: int
    evaluations: int
    warnings: tuple = ()
    rewards: np.ndarray = field(default=None, repr=False, compare=False)

    def pseudo_reward(self, smoothing: float = 0.0) -> SpectralPseudoReward:
        """The stage-2 transform ``phi`` at the solved thresholds."""
        return SpectralPseudoReward.from_result(self, smoothing)

    def weights(self, rewards: Any = None) -> np.ndarray:
        """Normalised tilt weights ``∝ exp(phi(r_i) / alpha)`` (input order of ``rewards``)."""
        r = self.rewards if rewards is None else as_float64(rewards)
        x = _pseudo_np(r, self.levels, self.etas, self.mean_weight) / self.alpha
        w = np.exp(x - x.max())
        return w / w.sum()

    def summary(self) -> str:
        rows = [("optimal value", f"{self.value:.8g}   (= risk - alpha KL of the optimum; gap {self.duality_gap:.2g})"),
                ("risk pre-trained -> predicted", f"{self.pre_risk:.6g} -> {self.predicted_risk:.6g}"),
                ("mean pre-trained -> predicted", f"{self.pre_mean:.6g} -> {self.predicted_mean:.6g}"),
                ("predicted KL (nats)", f"{self.predicted_kl:.4g}"),
                ("ESS of tilt weights", f"{self.ess:.4g} of {self.n} ({100 * self.ess_fraction:.3g}%)")]
        for k, lv in enumerate(self.levels):
            rows.append((f"  {lv.label()}", f"eta={self.etas[k]:.6g}  CVaR {self.pre_cvars[k]:.6g} -> "
                         f"{self.predicted_cvars[k]:.6g}  active {100 * self.active_fractions[k]:.3g}%  tilted mass "
                         f"{self.tail_masses[k]:.4g} (target {lv.kappa:g})"))
        width = max(len(k) for k, _ in rows)
        head = (f"TFFT spectral threshold: {self.mean_weight:g}*mean + "
                + " + ".join(lv.label() for lv in self.levels) + f", alpha={self.alpha:g}, M={self.n}")
        lines = [head] + [f"  {k:<{width}}  {v}" for k, v in rows]
        if self.warnings:
            lines += ["  warnings:"] + [f"  - {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _diagnose(rs, levels, etas, alpha, mean_weight):
    """Tilt diagnostics on sorted rewards: ``(w, lme, kl, ess, cvars, mean, risk)``."""
    x = _pseudo_np(rs, levels, etas, mean_weight) / alpha
    lme = float(_log_mean_exp_rows(x[None, :])[0])
    w = np.exp(x - x.max())
    w /= w.sum()
    kl = max(float(np.dot(w, x)) - lme, 0.0)
    cvars = tuple(_cvar_sorted(rs, w, lv) for lv in levels)
    mean = float(np.dot(w, rs))
    risk = mean_weight * mean + sum(lv.weight * c for lv, c in zip(levels, cvars))
    return w, lme, kl, 1.0 / float(np.dot(w, w)), cvars, mean, risk


def solve_spectral(rewards: Any, levels: Any, alpha: float, mean_weight: float = 0.0, *,
                   min_active_fraction: float = 0.01, min_ess_fraction: float = 0.01,
                   tol: float = 1e-13, max_sweeps: int = 20000, warn: bool = True,
                   etas: Optional[Sequence[float]] = None) -> SpectralResult:
    """Solve stage 1 of ``max_p w_0 E_p[r] + sum_k w_k CVaR_k(p) - alpha KL(p || p_pre)`` exactly.

    Args:
        rewards: rewards of pre-trained samples, shape ``(M,)``, ``M >= 2``, finite.
        levels: the CVaR levels, each a :class:`Level` or ``(tail, beta[, weight])`` or a dict;
            any mix of right and left, weights ``>= 0``.
        alpha: KL weight ``> 0``.
        mean_weight: weight ``w_0 >= 0`` on ``E[r]`` (the expected-reward term).
        min_active_fraction, min_ess_fraction: warning thresholds, as in ``solve_threshold``.
        tol: convergence tolerance of the right-threshold coordinate solve (relative to the reward
            spread).
        warn: emit the warnings as :class:`TfftWarning` (they are in the result either way).
        etas: evaluate at these thresholds instead of solving (the diagnostics of a given ``phi``;
            ``value`` is then ``H(etas)``, an upper bound for right levels, a lower one for left ones).

    With a single level of weight ``w`` (and ``w_0 = 0``) the threshold is exactly that of
    ``solve_threshold(rewards, beta, alpha / w, tail)`` and the value ``w`` times its value.
    """
    levels = _as_levels(levels)
    if not levels and not mean_weight:
        raise ValueError("levels is empty and mean_weight is 0: there is no objective")
    alpha = _check_alpha(alpha)
    mean_weight = float(mean_weight)
    if not (math.isfinite(mean_weight) and mean_weight >= 0):
        raise ValueError(f"mean_weight={mean_weight!r} must be a finite number >= 0")
    min_active_fraction = _check_fraction(min_active_fraction, "min_active_fraction")
    min_ess_fraction = _check_fraction(min_ess_fraction, "min_ess_fraction")
    r = as_float64(rewards, min_size=2).copy()
    r.flags.writeable = False
    rs = np.sort(r)
    m = rs.size
    if etas is None:
        etas, value, info = _solve_sorted_spectral(rs, levels, alpha, mean_weight, tol, max_sweeps)
    else:
        etas = [float(e) for e in etas]
        value = _H(rs, levels, etas, alpha, mean_weight)
        info = {"upper": value, "exact": False, "sweeps": 0, "evaluations": 0, "given": True}
    w, lme, kl, ess, cvars, mean, risk = _diagnose(rs, levels, etas, alpha, mean_weight)
    pre_cvars = tuple(_cvar_sorted(rs, None, lv) for lv in levels)
    pre_mean = float(rs.mean())
    pre_risk = mean_weight * pre_mean + sum(lv.weight * c for lv, c in zip(levels, pre_cvars))
    act, mass, mass_incl = [], [], []
    for lv, e in zip(levels, etas):
        beyond, incl = (rs > e, rs >= e) if lv.tail == "right" else (rs < e, rs <= e)
        act.append(float(beyond.mean()))
        mass.append(float(w[beyond].sum()))
        mass_incl.append(float(w[incl].sum()))
    gap = value - (risk - alpha * kl)

    msgs = []
    for k, lv in enumerate(levels):
        if lv.weight > 0 and act[k] < min_active_fraction:
            side = "above" if lv.tail == "right" else "below"
            msgs.append(f"level {lv.label()}: only {100 * act[k]:.3g}% of the {m} samples lie {side} its threshold "
                        f"{etas[k]:.6g} (minimum {100 * min_active_fraction:g}%): that hinge gives fine-tuning almost "
                        f"no signal; increase alpha (now {alpha:g}) or draw more offline samples")
    if ess / m < min_ess_fraction:
        msgs.append(f"the tilt weights exp(pseudo-reward/alpha) have an effective sample size of {ess:.3g} out of {m} "
                    f"({100 * ess / m:.3g}%, minimum {100 * min_ess_fraction:g}%): the predictions rest on few "
                    f"samples; increase alpha (now {alpha:g}) or draw more offline samples")
    if info["sweeps"] < 0:
        msgs.append(f"the right thresholds did not settle within {max_sweeps} coordinate sweeps (duality gap "
                    f"{gap:.3g}); the levels are strongly coupled: raise max_sweeps or alpha")
    if not info["exact"] and not info.get("given"):
        msgs.append(f"{sum(lv.tail == 'left' and lv.weight > 0 for lv in levels)} left levels: each left threshold is "
                    f"the exact best given the others, but the joint optimum over several left thresholds is not "
                    f"certified (the left objective is not concave); merge left levels or check with other starts")
    if warn:
        for msg in msgs:
            _warnings.warn(msg, TfftWarning, stacklevel=2)
    return SpectralResult(
        levels=levels, etas=tuple(float(e) for e in etas), mean_weight=mean_weight, alpha=alpha, n=m, value=value,
        upper_bound=float(info["upper"]), duality_gap=gap, pre_risk=pre_risk, predicted_risk=risk,
        pre_cvars=pre_cvars, predicted_cvars=cvars, pre_mean=pre_mean, predicted_mean=mean, predicted_kl=kl,
        ess=ess, ess_fraction=ess / m, active_fractions=tuple(act), tail_masses=tuple(mass),
        tail_masses_incl=tuple(mass_incl), exact=bool(info["exact"]), sweeps=int(info["sweeps"]),
        evaluations=int(info["evaluations"]), warnings=tuple(msgs), rewards=r)


# ---------------------------------------------------------------------------
# the constrained form
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ConstrainedResult:
    """Stage 1 of ``max E[r] - alpha KL`` subject to ``CVaR^{tail}_beta >= c``.

    Attributes:
        tail, beta, target: the constraint ``CVaR^{tail}_beta >= target``.
        multiplier: the Lagrange multiplier ``lambda >= 0`` (0: the constraint is inactive).
        feasible: the constraint can be met on these samples at this alpha.
        active: the constraint binds (``lambda > 0``).
        constraint_value: predicted ``CVaR^{tail}_beta`` of the tilt at ``lambda`` (``= target``
            when active and met, up to ``tol``).
        best_reachable: the largest ``c`` the tilts reach (the supremum over reweightings of the
            samples: their largest reward; ``constraint_value`` at ``max_multiplier`` is also given as
            ``reachable_at_max_multiplier``).
        predicted_mean, predicted_kl: of the tilt; ``objective = predicted_mean - alpha predicted_kl``.
        dual_value: ``min_lambda`` of the Lagrangian dual (``>= objective``; equal when there is no
            duality gap).
        spectral: the :class:`SpectralResult` at ``lambda`` (its ``pseudo_reward()`` is the stage-2
            transform ``r + lambda * hinge``).
        message: plain-English account (also a warning when the constraint cannot be met).
    """

    tail: str
    beta: float
    target: float
    alpha: float
    multiplier: float
    feasible: bool
    active: bool
    constraint_value: float
    best_reachable: float
    reachable_at_max_multiplier: float
    predicted_mean: float
    predicted_kl: float
    objective: float
    dual_value: float
    spectral: SpectralResult = field(repr=False)
    message: str = ""

    def pseudo_reward(self, smoothing: float = 0.0) -> SpectralPseudoReward:
        return self.spectral.pseudo_reward(smoothing)

    def summary(self) -> str:
        head = (f"TFFT constrained threshold: max E[r] - alpha KL s.t. CVaR_{self.tail}({self.beta:g}) >= "
                f"{self.target:g}, alpha={self.alpha:g}")
        rows = [f"  multiplier                    {self.multiplier:.6g}   ({'active' if self.active else 'inactive'}, "
                f"{'feasible' if self.feasible else 'infeasible'})",
                f"  predicted constraint value    {self.constraint_value:.6g}   (best reachable {self.best_reachable:.6g})",
                f"  predicted mean / KL (nats)    {self.predicted_mean:.6g} / {self.predicted_kl:.4g}"]
        return "\n".join([head, *rows, *([f"  {self.message}"] if self.message else []), self.spectral.summary()])

    def __str__(self) -> str:
        return self.summary()


def _fixed_eta_left(rs, eta, beta, c, alpha, tol, max_multiplier):
    """``max_p E[r] - alpha KL`` s.t. ``eta + E_p[h_eta] >= c``, ``h_eta = -(eta - r)_+ / beta``, for a fixed ``eta``.

    The constraint is linear in ``p`` (the left CVaR's Rockafellar-Uryasev form at ``eta``), so the problem is
    convex with no duality gap: ``p_lam ∝ exp((r + lam h_eta) / alpha)`` with ``E_{p_lam}[h_eta]`` increasing
    in ``lam``; bisection with secant steps on ``lam``.  Returns ``(psi, lam)`` with
    ``psi = alpha log E exp((r + lam h) / alpha) + lam (eta - c)`` (= the optimum), or ``None`` if no
    multiplier up to ``max_multiplier`` meets it.
    """
    h = -np.maximum(eta - rs, 0.0) / beta

    def g(lam):
        x = (rs + lam * h) / alpha
        w = np.exp(x - x.max())
        return eta + float(np.dot(w, h)) / float(w.sum()) - c

    def psi(lam):
        return alpha * float(_log_mean_exp_rows(((rs + lam * h) / alpha)[None, :])[0]) + lam * (eta - c)

    if g(0.0) >= 0:
        return psi(0.0), 0.0
    lo, hi = 0.0, 1.0
    while g(hi) < 0:
        lo, hi = hi, hi * 4.0
        if hi > max_multiplier:
            return None
    _, hi, *_ = bracketed_root(lambda lam: (g(lam), None), lo, hi, g(lo), g(hi), tol=tol)
    return psi(hi), hi


def bracketed_root(f, lo: float, hi: float, f_lo: float, f_hi: float, lo_val: Any = None, hi_val: Any = None,
                   tol: float = 0.0, iters: int = 300):
    """Root of an increasing ``f`` bracketed by ``f(lo) < 0 <= f(hi)``.

    Secant steps inside the bracket alternate with bisection steps, so the bracket at least halves every
    two steps.  ``f(x)`` returns ``(value, payload)``; the payloads of the ends are carried along.
    Stops when ``f(hi) <= tol`` or the bracket is below ``1e-15 max(1, hi)``.

    Returns:
        ``(lo, hi, f_lo, f_hi, lo_val, hi_val)``: the final bracket, its values and payloads.
    """
    for it in range(iters):
        mid = 0.5 * (lo + hi)
        if it % 2 == 0 and f_hi > f_lo:
            sec = hi - f_hi * (hi - lo) / (f_hi - f_lo)
            if lo < sec < hi:
                mid = sec
        fm, val = f(mid)
        if fm >= 0:
            hi, f_hi, hi_val = mid, fm, val
        else:
            lo, f_lo, lo_val = mid, fm, val
        if f_hi <= tol or hi - lo <= 1e-15 * max(1.0, hi):
            break
    return lo, hi, f_lo, f_hi, lo_val, hi_val


def _left_gap_search(rs, beta, c, alpha, lams, seeds, tol, max_multiplier):
    """The exact left-constrained optimum over thresholds at sampled rewards, by branch-and-bound.

    ``Psi(eta)`` (:func:`_fixed_eta_left`) is bounded above, for every ``eta`` at once, by
    ``B(lam, eta) = alpha log E exp(r / alpha) + lam G_lam(eta) - lam c`` for any ``lam`` (weak duality;
    ``G_lam`` the weighted left kink values).  Candidates are evaluated in the order of their bound until
    no bound beats the best value.  Returns ``(psi, eta, lam, evaluations)`` or ``None``.
    """
    lme0 = float(_log_mean_exp_rows((rs / alpha)[None, :])[0])
    lw = rs / alpha
    lw = lw - lw.max()
    cand = np.unique(rs)
    ok = cand > c
    U = np.where(ok, np.inf, -np.inf)

    def bound(lam):
        return alpha * lme0 + lam * _kinks_at(cand, rs, beta, alpha / lam, lw) - lam * c

    for lam in lams:
        if lam > 0:
            U = np.minimum(U, bound(lam))
    best = None
    done = ~ok
    evals = 0
    order_seed = [int(np.searchsorted(cand, e)) for e in seeds if e in set(cand[ok])]
    while True:
        if order_seed:
            i = order_seed.pop()
            if done[i]:
                continue
        else:
            masked = np.where(done, -np.inf, U)
            i = int(np.argmax(masked))
            if best is not None and not masked[i] > best[0] + 1e-13 * max(1.0, abs(best[0])):
                break
            if not np.isfinite(masked[i]) and masked[i] < 0:
                break
        done[i] = True
        evals += 1
        out = _fixed_eta_left(rs, float(cand[i]), beta, c, alpha, tol, max_multiplier)
        if out is None:
            continue
        psi, lam = out
        if best is None or psi > best[0]:
            best = (psi, float(cand[i]), lam)
        if lam > 0:
            U = np.minimum(U, bound(lam))
    return None if best is None else (*best, evals)


def _kinks_at(cand, rs, beta, alpha_k, lw):
    """``G(eta) = eta + alpha_k log E_v exp(-(eta - r)_+ / (alpha_k beta))`` at the distinct sorted rewards
    ``cand`` (``v ∝ exp(lw)`` on the sorted rewards ``rs``, ties included)."""
    g = _left_kink_values(rs, beta, alpha_k, lw if lw.any() else None)
    # at tied rewards every copy gives the same value; keep the first of each
    first = np.searchsorted(rs, cand, side="left")
    return g[first]


def solve_constrained(rewards: Any, tail: str, beta: float, c: float, alpha: float, *, tol: float = 1e-10,
                      max_multiplier: float = 1e8, warn: bool = True) -> ConstrainedResult:
    """Stage 1 of ``max_p E_p[r] - alpha KL(p || p_pre)`` subject to ``CVaR^{tail}_beta(p) >= c``.

    The Lagrangian dual ``D(lambda) = max_p E_p[r] + lambda CVaR(p) - alpha KL - lambda c`` is a
    spectral problem (``w_0 = 1``, one level of weight ``lambda``) minus ``lambda c``; ``D`` is convex
    and ``D'(lambda) = CVaR(p_lambda) - c`` with ``p_lambda`` the tilt.  The multiplier is the root of
    ``CVaR(p_lambda) = c`` (Brent's method on a bracket, to ``tol`` in the constraint); ``lambda = 0``
    when the unconstrained optimum already meets ``c``.

    For a left tail the tilt's left threshold can jump between sampled rewards as ``lambda`` grows
    (the left objective is not concave), so ``CVaR(p_lambda)`` can jump over ``c``: then no tilt of
    this family meets ``c`` with equality, the result keeps the feasible side of the jump and says so.
    """
    tail, beta, alpha = check_tail(tail), check_beta(beta), _check_alpha(alpha)
    c = float(c)
    r = as_float64(rewards, min_size=2)
    rmax = float(r.max())

    visited = []

    def at(lam: float) -> SpectralResult:
        visited.append((lam, None))
        out = solve_spectral(r, [Level(tail, beta, lam)], alpha, mean_weight=1.0, warn=False)
        visited[-1] = (lam, out.value - lam * c)  # the dual D(lam)
        return out

    def cv(res: SpectralResult) -> float:
        return res.predicted_cvars[0]

    lo_res = at(0.0)
    msg = ""
    if cv(lo_res) >= c:
        res, lam, feasible, active = lo_res, 0.0, True, False
        msg = (f"the constraint CVaR_{tail}({beta:g}) >= {c:.6g} is inactive: the unconstrained optimum already has "
               f"{cv(lo_res):.6g}")
    else:
        hi, hi_res = 1.0, at(1.0)
        if c >= rmax:  # nothing reaches it: go straight to the largest multiplier for the report
            hi, hi_res = max_multiplier, at(max_multiplier)
        while cv(hi_res) < c and hi < max_multiplier:
            hi = min(hi * 4.0, max_multiplier)
            hi_res = at(hi)
        if cv(hi_res) < c:
            res, lam, feasible, active = hi_res, hi, False, True
            why = (f"no reweighting of the {r.size} samples reaches it: the largest reward is {rmax:.6g}"
                   if c >= rmax else
                   f"it needs a multiplier above {max_multiplier:g} (KL beyond {hi_res.predicted_kl:.3g} nats)")
            msg = (f"CVaR_{tail}({beta:g}) >= {c:.6g} cannot be met at alpha={alpha:g}: {why}; the best reachable c at any alpha "
                   f"is {rmax:.6g} (the largest sampled reward, as a supremum), and {cv(hi_res):.6g} at multiplier "
                   f"{hi:g}; lower c, or draw offline samples that reach further")
        else:
            lo = 0.0
            lo_r = lo_res
            # bracket [lo, hi] with cv(lo) < c <= cv(hi): secant steps inside the bracket alternating with
            # bisection steps (the bracket at least halves every two steps), the exact cv at every point
            def f(lam):
                m = at(lam)
                return cv(m) - c, m

            lo, hi, f_lo, f_hi, lo_r, hi_res = bracketed_root(f, lo, hi, cv(lo_r) - c, cv(hi_res) - c, lo_r, hi_res,
                                                              tol=tol, iters=400)
            res, lam, feasible, active = hi_res, hi, True, True
            if abs(f_hi) > tol:
                msg = (f"CVaR_{tail}({beta:g}) of the Lagrangian's tilt jumps from {cv(lo_r):.6g} to {cv(hi_res):.6g} "
                       f"at multiplier {hi:.6g} (its {tail} threshold moves from {lo_r.etas[0]:.6g} to "
                       f"{hi_res.etas[0]:.6g}): a duality gap, no multiplier alone meets c={c:.6g}")
                if tail == "left":
                    found = _left_gap_search(np.sort(r), beta, c, alpha, [v[0] for v in visited],
                                             [lo_r.etas[0], hi_res.etas[0]], tol, max_multiplier)
                    if found is not None:
                        _, eta_g, lam_g, n_ev = found
                        res = solve_spectral(r, [Level(tail, beta, lam_g)], alpha, mean_weight=1.0, warn=False,
                                             etas=[eta_g])
                        lam = lam_g
                        msg += (f"; solved exactly instead with the threshold fixed at each sampled reward (a convex "
                                f"problem for each; branch-and-bound, {n_ev} of them solved): threshold {eta_g:.6g}, "
                                f"multiplier {lam_g:.6g}")
                else:  # the right-tail floor is a convex problem: a jump here is numerical
                    msg += "; the constraint is met with slack"
    mean, kl = res.predicted_mean, res.predicted_kl
    # infeasible: the dual is unbounded below (D(lambda) -> -inf as lambda -> inf); otherwise the smallest
    # D(lambda) met (an upper bound on the constrained optimum; equal to it without a duality gap)
    dual = min(v[1] for v in visited) if feasible else -math.inf
    if warn and msg and (not feasible or "jumps" in msg and tail == "right"):
        _warnings.warn(msg, TfftWarning, stacklevel=2)
    return ConstrainedResult(tail=tail, beta=beta, target=c, alpha=alpha, multiplier=float(lam), feasible=feasible,
                             active=active, constraint_value=cv(res), best_reachable=rmax,
                             reachable_at_max_multiplier=cv(res) if not feasible else float("nan"),
                             predicted_mean=mean, predicted_kl=kl, objective=mean - alpha * kl, dual_value=dual,
                             spectral=res, message=msg)
