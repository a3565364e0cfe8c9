"""Stage planning for a starved hinge, and the threshold refinement on the fine-tuned model.

* :func:`plan_stages` solves stage 1 at the requested ``(alpha, beta)`` and, when
  the active fraction is below ``min_active_fraction``, plans a continuation:
  ``"auto"`` / ``"adaptive"`` keep one stage whose hinge follows the batch
  (:class:`~tfftmol.core.pseudo.AdaptiveHinge`); ``"alpha"`` anneals alpha
  geometrically; ``"beta"`` ramps the tail level; ``"eta"`` ramps the threshold.
  Every stage's ``eta*`` is re-solved on the same cached rewards, and the last
  stage is always the exact requested target.
* :func:`refine_threshold` re-solves ``eta*`` on importance-weighted samples of the
  current fine-tuned model (Girsanov path weights).
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .estimators import sample_importance
from .settings import TFFTConfig
from .threshold import (DegenerateTailError, TailDegeneracy, ThresholdResult, TfftWarning, solve_threshold,
                        tail_degeneracy)

__all__ = ["Stage", "plan_stages", "refine_threshold", "rescue_possible"]


@dataclass
class Stage:
    """One stage of a (possibly single-stage) fine-tune: its exact target and its step range."""

    alpha: float
    beta: float
    start: int
    stop: int
    threshold: Optional[ThresholdResult] = None
    degeneracy: Optional[TailDegeneracy] = None  # stage 1's diagnosis of the final target (tail_degeneracy)

    def describe(self) -> str:
        eta = f", eta*={self.threshold.eta:.4g}, active={self.threshold.active_fraction:.2%}" if self.threshold else ""
        return f"steps {self.start}-{self.stop}: alpha={self.alpha:.4g}, beta={self.beta:.4g}{eta}"


def rescue_possible(rewards: np.ndarray, cfg: TFFTConfig, threshold: ThresholdResult) -> tuple[bool, str]:
    """Whether the configured continuation can give a starved hinge its signal, and why (or why not).

    The continuations move the hinge to where the model's samples are: the adaptive hinge to the
    batch's own ``adaptive_active_fraction`` tail, the alpha/beta/eta ramps to easier targets solved on
    the same rewards.  Either needs samples strictly beyond the moved hinge: when at least that
    fraction of the offline batch is tied at the extreme reward (the maximum for a right tail, the
    minimum for a left one), the moved hinge sits on the tie and has no gradient either.
    ``continuation="none"`` never rescues.
    """
    r = np.asarray(rewards, dtype=np.float64)
    mode = "adaptive" if cfg.continuation == "auto" else cfg.continuation
    if mode == "none":
        return False, "continuation='none' leaves the hinge where stage 1 put it"
    if mode != "adaptive" and cfg.continuation_stages == 1:
        return False, f"continuation={cfg.continuation!r} with continuation_stages=1 has no easier stage"
    ext = r.max() if cfg.tail == "right" else r.min()
    tied = float(np.mean(np.abs(r - ext) <= 1e-12 * max(1.0, abs(ext))))
    need = cfg.adaptive_active_fraction if mode == "adaptive" else cfg.continuation_start_active
    if tied >= need:
        which = "largest" if cfg.tail == "right" else "smallest"
        return False, (f"{tied:.1%} of the offline samples are tied at the {which} "
                       f"reward {ext:.6g}, at least the {need:.1%} tail the {mode} continuation moves the hinge to, "
                       "so the moved hinge has no gradient either")
    return True, ""


def _starved_message(final: ThresholdResult, cfg: TFFTConfig, why: str) -> str:
    side = "above" if cfg.tail == "right" else "below"
    knob = "lower beta" if cfg.tail == "right" else "raise beta"
    return (f"only {final.active_fraction:.2%} of the {final.n} pre-trained samples lie {side} eta*={final.eta:.6g} "
            f"(minimum {cfg.min_active_fraction:.1%}) and the continuation cannot help: {why}; the hinge gets almost "
            f"no signal: increase alpha (now {cfg.alpha:g}), {knob} (now {cfg.beta:g})"
            + (", or use continuation: auto" if cfg.continuation == "none" else ""))


def plan_stages(rewards: np.ndarray, cfg: TFFTConfig, log: Callable[[str], None] = print,
                bounds: Optional[tuple[float, float]] = None, stop_on_saturated: bool = False) -> list[Stage]:
    """Stage-1 solve at the requested setting and, if the hinge is starved, a continuation schedule.

    Every stage's ``eta*`` is re-solved on the same cached rewards.  A starved hinge (active
    fraction below ``cfg.min_active_fraction``) is a :class:`TfftWarning` only when the
    continuation cannot supply the signal (:func:`rescue_possible`); otherwise one log line says
    which continuation takes over.

    A degenerate tail (:func:`~tfftmol.core.threshold.tail_degeneracy`; ``bounds`` is the reward's
    declared range, for the wording) is a :class:`TfftWarning` and is kept on the final stage
    (``Stage.degeneracy``); with ``stop_on_saturated`` a saturated tail (nothing to gain) raises
    :class:`~tfftmol.core.threshold.DegenerateTailError` instead, before any stage-2 step.
    """
    total = cfg.am.steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TfftWarning)
        final = solve_threshold(rewards, cfg.beta, cfg.alpha, cfg.tail, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                min_active_fraction=0.0)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    deg = tail_degeneracy(final, bounds)
    if deg is not None:
        if deg.stop and stop_on_saturated:
            raise DegenerateTailError(deg.message, deg)
        final = dataclasses.replace(final, warnings=(deg.message,) + tuple(final.warnings))
        warnings.warn(deg.message, TfftWarning, stacklevel=2)
    mode = cfg.continuation
    if mode == "auto":
        mode = "adaptive"
    starved = final.active_fraction < cfg.min_active_fraction
    if deg is not None and deg.kind == "saturated":  # said above; the continuation cannot help it
        return [Stage(cfg.alpha, cfg.beta, 0, total, final, deg)]
    if starved:
        ok, why = rescue_possible(rewards, cfg, final)
        if not ok:
            msg = _starved_message(final, cfg, why)
            final = dataclasses.replace(final, warnings=(msg,) + tuple(final.warnings))
            warnings.warn(msg, TfftWarning, stacklevel=2)
            return [Stage(cfg.alpha, cfg.beta, 0, total, final, deg)]
    if mode == "adaptive":
        if starved:
            log(f"stage 1: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%}: "
                f"adaptive continuation (the hinge follows the batch's {cfg.adaptive_active_fraction:.0%}-tail until the model "
                f"reaches eta*={final.eta:.4g}; the final target is exact)")
        return [Stage(cfg.alpha, cfg.beta, 0, total, final, deg)]
    if not starved:
        return [Stage(cfg.alpha, cfg.beta, 0, total, final, deg)]

    def solve(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            return solve_threshold(rewards, b, a, cfg.tail, min_active_fraction=0.0, min_ess_fraction=0.0)

    n = cfg.continuation_stages

    if mode == "eta":
        # thresholds from the pre-trained quantile with active fraction continuation_start_active up to eta*:
        # each intermediate target tilts *more* than p*, so the model overshoots into the tail and the
        # final stage starts with many active samples and relaxes onto the exact target.
        q = 1 - cfg.continuation_start_active if cfg.tail == "right" else cfg.continuation_start_active
        eta0 = float(np.quantile(rewards, q))
        params = [(cfg.alpha, cfg.beta)] * n
        thresholds = [dataclasses.replace(final, eta=eta0 + (final.eta - eta0) * j / (n - 1)) for j in range(n - 1)]
    elif mode == "alpha":
        a0 = cfg.alpha
        for _ in range(40):
            a0 *= 2.0
            if solve(a0, cfg.beta).active_fraction >= cfg.min_active_fraction:
                break
        params = [(a0 * (cfg.alpha / a0) ** (j / (n - 1)), cfg.beta) for j in range(n)]
    else:  # beta ramp toward the requested level at fixed alpha
        # tail masses (1-beta for right, beta for left) geometric from an easy level to the requested one;
        # the easy level is the most extreme whose stage-1 active fraction reaches continuation_start_active.
        m_final = 1 - cfg.beta if cfg.tail == "right" else cfg.beta
        m_easy = m_final
        for j in range(1, 61):
            m_try = min(0.95, m_final * (0.95 / m_final) ** (j / 60))
            b_try = 1 - m_try if cfg.tail == "right" else m_try
            m_easy = m_try
            if solve(cfg.alpha, b_try).active_fraction >= cfg.continuation_start_active:
                break
        masses = [m_easy * (m_final / m_easy) ** (j / (n - 1)) for j in range(n)]
        params = [(cfg.alpha, 1 - m if cfg.tail == "right" else m) for m in masses]
    if mode != "eta":
        thresholds = [solve(a, b) for a, b in params[:-1]]
    thresholds.append(final)  # the last stage is always the exact requested target
    final_steps = max(1, int(round(total * cfg.final_stage_fraction)))
    pre = total - final_steps
    bounds = [round(pre * j / (n - 1)) for j in range(n)] + [total]
    stages = [Stage(float(a), float(b), int(bounds[j]), int(bounds[j + 1]), thresholds[j])
              for j, (a, b) in enumerate(params)]
    stages = [s for s in stages if s.stop > s.start]
    stages[-1].degeneracy = deg
    log(f"stage 1: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%}; "
        f"continuation over {mode} in {len(stages)} stages:")
    for s in stages:
        log("  " + s.describe())
    return stages


def refine_threshold(model, base, reward, current: ThresholdResult, cfg: TFFTConfig, cond_sampler=None,
                     log: Callable[[str], None] = print) -> ThresholdResult:
    """Re-solve ``eta*`` on importance-weighted samples of the current fine-tuned model.

    Keeps ``current`` unless the refined solve has a larger tilt ESS.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    x, logw = sample_importance(model, base, cfg.refine_samples, cfg.am.time_steps, gen, cond_sampler)
    r = reward.evaluate(x).values.detach().cpu().double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        new = solve_threshold(r, cfg.beta, cfg.alpha, cfg.tail, log_weights=logw.cpu().numpy(),
                              bootstrap=cfg.bootstrap, seed=cfg.seed, min_active_fraction=0.0)
    use = new.ess > current.ess
    log(f"threshold refinement on {len(r)} importance-weighted samples of the fine-tuned model: "
        f"eta* {current.eta:.5g} -> {new.eta:.5g} (tilt ESS {current.ess:.0f} -> {new.ess:.0f}, "
        f"importance ESS {new.is_ess:.0f}); {'using the refined value' if use else 'keeping the stage-1 value'}")
    return new if use else current
