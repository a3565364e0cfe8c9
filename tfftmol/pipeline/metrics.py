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

__all__ = ["own_tail_column", "predicted_own", "realisation_ratio", "metrics_table"]


def own_tail_column(cfg: RunConfig) -> str:
    """Name of the metrics column of the run's own objective: its tail, e.g. ``reward_cvar_right_0.9``;
    ``reward_spectral`` for a config with ``levels``; ``reward_mean`` for a constrained one."""
    objective = cfg.tfft.objective
    if objective == "spectral":
        return "reward_spectral"
    if objective == "constrained":
        return "reward_mean"
    return f"reward_cvar_{cfg.tfft.tail}_{cfg.tfft.beta:g}"


def predicted_own(stage1) -> float:
    """Stage 1's prediction of the run's own objective (a tail's CVaR, a spectral risk or a constrained mean)."""
    for name in ("predicted_cvar", "predicted_risk", "predicted_mean"):
        if hasattr(stage1, name):
            return float(getattr(stage1, name))
    raise TypeError(f"{type(stage1).__name__} has no prediction of the run's objective")


def _col(tail: str, beta: float) -> str:
    return f"reward_cvar_{tail}_{beta:g}"


def realisation_ratio(pre: float, reached: float, predicted: float) -> float:
    """``(reached - pre) / (predicted - pre)``; ``nan`` when stage 1 predicts no gain."""
    gap = predicted - pre
    if not np.isfinite(gap) or abs(gap) < 1e-12:
        return float("nan")
    return float((reached - pre) / gap)


def _row(cfg: RunConfig, label: str, ev: Evaluation) -> dict:
    tc = cfg.tfft
    t, b = tc.tail, tc.beta
    levels: list = [0.1, 0.9]
    if b not in levels:
        levels.append((t, b))
    extra = list(tc.levels or []) + ([tc.constraint] if tc.constraint is not None else [])
    for lv in extra:  # the CVaR of every level of a spectral or constrained objective
        if lv["beta"] not in levels and (lv["tail"], lv["beta"]) not in levels:
            levels.append((lv["tail"], lv["beta"]))
    row = {"method": label, "run": cfg.name, "task": cfg.task, "n": int(len(ev.values))}
    row.update(ev.row)
    row.update(reward_stats(ev.values, ev.valid, "reward", cvar_levels=levels))
    if tc.levels is not None:
        row["reward_spectral"] = tc.mean_weight * row["reward_mean"] + sum(
            lv["weight"] * row[_col(lv["tail"], lv["beta"])] for lv in tc.levels)
    if tc.constraint is not None:
        row["constraint_value"] = row[_col(tc.constraint["tail"], tc.constraint["beta"])]
        row["constraint_floor"] = tc.constraint["floor"]
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
    spectral = getattr(s1, "spectral", s1)  # a constrained result carries the spectral one at its multiplier
    m["eta_stage1"] = float(s1.eta) if hasattr(s1, "eta") else np.nan
    if hasattr(spectral, "etas"):
        m["etas_stage1"] = ";".join(f"{e:.6g}" for e in spectral.etas)
    if hasattr(s1, "multiplier"):
        m["multiplier"] = float(s1.multiplier)
    m["eta"] = np.nan if res.threshold is None else float(res.threshold.eta)
    m["eta_refined"] = np.nan if rf is None else float(rf.eta)
    m["cvar_predicted"] = np.nan if s1 is None else predicted_own(s1)
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
