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
from .threshold import ThresholdResult, TfftWarning, solve_threshold

__all__ = ["Stage", "plan_stages", "refine_threshold"]


@dataclass
class Stage:
    """One stage of a (possibly single-stage) fine-tune: its exact target and its step range."""

    alpha: float
    beta: float
    start: int
    stop: int
    threshold: Optional[ThresholdResult] = None

    def describe(self) -> str:
        eta = f", eta*={self.threshold.eta:.4g}, active={self.threshold.active_fraction:.2%}" if self.threshold else ""
        return f"steps {self.start}-{self.stop}: alpha={self.alpha:.4g}, beta={self.beta:.4g}{eta}"


def plan_stages(rewards: np.ndarray, cfg: TFFTConfig, log: Callable[[str], None] = print) -> list[Stage]:
    """Stage-1 solve at the requested setting and, if the hinge is starved, a continuation schedule.

    Every stage's ``eta*`` is re-solved on the same cached rewards.
    """
    total = cfg.am.steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TfftWarning)
        final = solve_threshold(rewards, cfg.beta, cfg.alpha, cfg.tail, bootstrap=cfg.bootstrap, seed=cfg.seed,
                                min_active_fraction=cfg.min_active_fraction)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    mode = cfg.continuation
    if mode == "auto":
        mode = "adaptive"
    starved = final.active_fraction < cfg.min_active_fraction
    if mode == "adaptive":
        if starved:
            log(f"stage 1: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%}: "
                f"adaptive continuation (the hinge follows the batch's {cfg.adaptive_active_fraction:.0%}-tail until the model "
                f"reaches eta*={final.eta:.4g}; the final target is exact)")
        return [Stage(cfg.alpha, cfg.beta, 0, total, final)]
    if mode == "none" or not starved or cfg.continuation_stages == 1:
        if starved:
            log(f"warning: active fraction {final.active_fraction:.3%} < {cfg.min_active_fraction:.1%} and "
                f"continuation='{cfg.continuation}': the hinge may be dead.")
        return [Stage(cfg.alpha, cfg.beta, 0, total, final)]

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
