"""The metrics table of a run: one row per evaluated model, the same columns for every task.

Columns: ``method`` (``pretrained``, ``tfft`` or ``expected``), ``run``, ``task``, ``n``,
the task's own columns (validity, uniqueness, accuracy, ...), the reward columns
(``reward_mean``, ``reward_mean_valid``, ``reward_q{q}``, ``reward_cvar_{tail}_{beta}``
at 0.1, 0.9 and the run's own level), ``kl``, ``tail``, ``beta``, ``alpha``, ``seed``,
``steps``, ``train_seconds``, ``stage2_path``, the thresholds (``eta_stage1``, ``eta``
used by the final stage, ``eta_refined``), stage 1's prediction (``cvar_predicted``,
``kl_predicted``) and the ``realisation`` ratio.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core.risk import reward_stats
from .task import Evaluation

if TYPE_CHECKING:  # annotations only
    from ..core.tfft import TFFTResult
    from .config import RunConfig

__all__ = ["own_tail_column", "realisation_ratio", "metrics_table"]


def own_tail_column(cfg: RunConfig) -> str:
    """Name of the metrics column of the run's own tail, e.g. ``reward_cvar_right_0.9``."""
    return f"reward_cvar_{cfg.tfft.tail}_{cfg.tfft.beta:g}"


def realisation_ratio(pre: float, reached: float, predicted: float) -> float:
    """``(reached - pre) / (predicted - pre)``; ``nan`` when stage 1 predicts no gain."""
    gap = predicted - pre
    if not np.isfinite(gap) or abs(gap) < 1e-12:
        return float("nan")
    return float((reached - pre) / gap)


def _row(cfg: RunConfig, label: str, ev: Evaluation) -> dict:
    t, b = cfg.tfft.tail, cfg.tfft.beta
    levels: list = [0.1, 0.9]
    if b not in levels:
        levels.append((t, b))
    row = {"method": label, "run": cfg.name, "task": cfg.task, "n": int(len(ev.values))}
    row.update(ev.row)
    row.update(reward_stats(ev.values, ev.valid, "reward", cvar_levels=levels))
    return row


def metrics_table(cfg: RunConfig, res: TFFTResult, evs: dict, kl: float, timings: dict) -> pd.DataFrame:
    """One row per evaluated model, the same columns for every task."""
    t = cfg.tfft
    rows = [_row(cfg, label, ev) for label, ev in evs.items()]
    m = pd.DataFrame(rows)
    own = own_tail_column(cfg)
    m["kl"] = [0.0] + [kl] * (len(m) - 1)
    m["tail"], m["beta"], m["alpha"], m["seed"] = t.tail, t.beta, t.alpha, cfg.seed
    m["steps"] = [0] + [t.am.steps] * (len(m) - 1)
    m["train_seconds"] = [0.0] + [timings.get("stage2", np.nan)] * (len(m) - 1)
    m["stage2_path"] = ["", *[str(getattr(res.trainer, "stage2", "gradient"))] * (len(m) - 1)]
    s1, rf = res.stage1, res.refined
    m["eta_stage1"] = np.nan if s1 is None else float(s1.eta)
    m["eta"] = np.nan if res.threshold is None else float(res.threshold.eta)
    m["eta_refined"] = np.nan if rf is None else float(rf.eta)
    m["cvar_predicted"] = np.nan if s1 is None else float(s1.predicted_cvar)
    m["kl_predicted"] = np.nan if s1 is None else float(s1.predicted_kl)
    tracking = getattr(res, "tracking", None) or {}
    m["eta_tracked"] = float(tracking["eta"]) if tracking.get("eta") is not None else np.nan
    if res.threshold is not None or tracking.get("eta") is not None:
        eta = float(tracking["eta"]) if tracking.get("eta") is not None else float(res.threshold.eta)
        # mass of each model's evaluation samples beyond the final threshold (the target puts 1 - beta or beta there)
        m["mass_beyond_eta"] = [float(np.mean(ev.values > eta) if t.tail == "right" else np.mean(ev.values < eta))
                                for ev in evs.values()]
    pre = float(m[own].iloc[0])
    m["realisation"] = [np.nan] + [realisation_ratio(pre, float(v), float(m["cvar_predicted"].iloc[0]))
                                   for v in m[own].iloc[1:]]
    return m
