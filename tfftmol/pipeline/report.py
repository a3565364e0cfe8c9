"""The one report writer: markdown tables, tail-shaded histograms, training curves, CSVs, weights.

``<out_dir>/<name>/`` receives ``report.md``, ``metrics.csv`` (one row per model),
``samples.csv`` (the fine-tuned model's evaluation samples) and
``samples_pretrained.csv`` (the pre-trained model's, same noise), ``history.csv``
(stage-2 statistics), ``model.safetensors``, ``reward_hist.png`` (both models,
the target tail shaded, ``eta*`` marked), ``training.png``, and whatever the
task adds (molecule grids, image grids, scatter plots).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from ..core.checkpoint import atomic_write_text
from ..core.config import to_dict
from ..core.risk import var
from ..tables import markdown_table
from .metrics import own_tail_column, predicted_own
from .task import ReportContext

__all__ = ["write_report", "plot_reward_hist", "plot_training"]


def plot_reward_hist(values: dict, valid: dict, path: Path, tail: str, beta: float, eta: Optional[float],
                     title: str = "", xlabel: str = "reward") -> None:
    """Histograms of each model's valid rewards (bar heights are fractions of *all* samples).

    The pre-trained model's target tail (its top ``1 - beta`` or bottom ``beta``) is
    shaded and ``eta*`` marked; the invalid fraction of each model is in the legend.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = list(values)
    arrays = [(np.asarray(values[k], float), np.asarray(valid[k], bool)) for k in labels]
    both = np.concatenate([r[ok] for r, ok in arrays]) if arrays else np.zeros(0)
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    bins = np.linspace(lo, hi + 1e-9, 40) if hi > lo else 10
    for (r, ok), label in zip(arrays, labels):
        if len(r):
            ax.hist(r[ok], bins=bins, alpha=0.5, weights=np.full(int(ok.sum()), 1.0 / len(r)),
                    label=f"{label}" + (f" (invalid {1 - ok.mean():.1%})" if not ok.all() else ""))
    r_pre = arrays[0][0] if arrays else np.zeros(0)
    q = float(var(r_pre, beta, tail)) if len(r_pre) else np.nan
    if np.isfinite(q):
        if tail == "right":
            ax.axvspan(max(q, lo), hi, color="grey", alpha=0.15, label=f"pretrained top {1 - beta:.0%} (VaR {q:.3g})")
        else:
            ax.axvspan(lo, max(q, lo), color="grey", alpha=0.15, label=f"pretrained bottom {beta:.0%} (VaR {q:.3g})")
    if eta is not None and np.isfinite(eta):
        ax.axvline(eta, color="k", ls="--", label=f"eta* = {eta:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of samples")
    ax.set_title(title or f"{tail}-CVaR, beta={beta:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(history: list, path: Path, extra: Optional[pd.DataFrame] = None) -> None:
    """Loss, on-policy reward mean, active fraction and KL per logged stage-2 step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, col in zip(axes, ["loss", "reward_mean", "active_fraction", "kl"]):
        if col in hist.columns and len(hist):
            ax.plot(hist["step"], hist[col], marker=".")
        ax.set_title(col)
        ax.set_xlabel("step")
    if extra is not None and "spearman" in extra.columns and len(extra):
        ax2 = axes[1].twinx()
        ax2.plot(extra["step"], extra["spearman"], "r^", label="surrogate Spearman")
        ax2.set_ylim(-1, 1)
        ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _stage1_lines(res, metrics: pd.DataFrame, own: str, kl: float) -> list[str]:
    s1 = res.stage1
    if s1 is None:
        return []
    what = "threshold" if hasattr(s1, "eta") else "thresholds" if hasattr(s1, "etas") else "multiplier and thresholds"
    lines = ["## Stage 1", "", f"The exact {what} on the offline batch of the pre-trained model:", "",
             "```", s1.summary(), "```", ""]
    if res.refined is not None:
        kept = res.threshold is not None and res.threshold.eta == res.refined.eta
        lines += [f"Threshold refinement on the fine-tuned model (importance-weighted): eta* "
                  f"{s1.eta:.5g} -> {res.refined.eta:.5g} ({'used' if kept else 'not used'} by the final stage).", ""]
    if len(res.stages) > 1:
        lines += ["Continuation stages:", ""] + [f"- {s.describe()}" for s in res.stages] + [""]
    if own in metrics.columns and len(metrics) >= 2:
        pre, post = float(metrics[own].iloc[0]), float(metrics[own].iloc[1])
        rr = float(metrics["realisation"].iloc[1])
        lines += ["## Predicted against reached", "",
                  f"- `{own}`: {pre:.4g} (pre-trained) -> **{post:.4g}** (fine-tuned) at KL {kl:.3g}",
                  f"- stage 1 predicts {predicted_own(s1):.4g} at KL {s1.predicted_kl:.3g} for the exact optimum "
                  f"of this alpha (on the offline batch's rewards)",
                  f"- realisation ratio (reached gain / predicted gain): **{rr:.2f}**"]
        lines += _margin_lines(res, s1) + [""]
    return lines


def _margin_lines(res, s1) -> list[str]:
    """The tail margin of a CVaR run (docs/design.md §2.10): the exact expected-reward optimum at stage 1's
    predicted KL on the same offline batch, and stage 1's lead over it.  Nothing for other objectives, or when
    the batch the run kept is not the one stage 1 solved on."""
    r = getattr(res, "offline_rewards", None)
    if not hasattr(s1, "eta") or r is None or len(r) != s1.n:
        return []
    from ..core.mean_tilt import tail_margin

    mt_cvar, margin = tail_margin(r, s1)
    gain = s1.predicted_cvar - s1.pre_cvar
    share = f" ({margin / gain:.0%} of the predicted gain)" if gain > 0 else ""
    return [f"- tail margin: the exact expected-reward optimum at KL {s1.predicted_kl:.3g} holds {mt_cvar:.4g} on the "
            f"same batch, so the tail objective leads it by {margin:.3g}{share}: the most this run can gain over "
            "expected-reward fine-tuning at that KL"]


def write_report(cfg, task, result, base, reward, plots: bool = True) -> dict:
    """Write the report directory; returns ``{name: path}``.

    With ``plots=False`` (Optuna trials) the tables, CSVs, weights and ``report.md`` are
    written but no figure is drawn and the task's extra sections are skipped.
    """
    d = Path(result.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    res = result.tfft
    files = {"config": d / "config.yaml", "metrics": d / "metrics.csv", "history": d / "history.csv",
             "weights": d / "model.safetensors", "report": d / "report.md", "reward_hist": d / "reward_hist.png",
             "training": d / "training.png"}
    result.metrics.to_csv(files["metrics"], index=False)
    pd.DataFrame(res.history).to_csv(files["history"], index=False)
    labels = list(result.evaluations)
    for label in labels:
        ev = result.evaluations[label]
        if ev.samples is not None:
            key = "samples_pretrained" if label == "pretrained" else "samples"
            files[key] = d / f"{key}.csv"
            ev.samples.to_csv(files[key], index=False)
    meta = {"task": cfg.task, "run": cfg.name, "method": cfg.tfft.method,
            "config": json.dumps(to_dict(cfg), default=str)}
    task.save_model(cfg, res.model, files["weights"], meta)
    eta = None if res.threshold is None else float(res.threshold.eta)
    if plots:
        plot_reward_hist({k: result.evaluations[k].values for k in labels},
                         {k: result.evaluations[k].valid for k in labels}, files["reward_hist"], cfg.tfft.tail,
                         cfg.tfft.beta, eta, title=f"{cfg.name}: {cfg.tfft.tail}-CVaR beta={cfg.tfft.beta:g}")
        ctx = ReportContext(res, result.metrics, result.evaluations, reward, base, result.kl)
        extra_lines, extra_files = task.report(cfg, d, ctx)
        plot_training(res.history, files["training"], extra_files.pop("_training_overlay", None))
        files.update(extra_files)
    else:
        extra_lines = []
        files.pop("reward_hist")
        files.pop("training")

    own = own_tail_column(cfg)
    t = cfg.tfft
    cols = [c for c in ["method", "n", "validity", "uniqueness", "novelty", "int_div", "accuracy", "reward_mean",
                        "reward_mean_valid", "reward_q0.1", "reward_q0.5", "reward_q0.9", "reward_cvar_left_0.1",
                        "reward_cvar_right_0.9", own, "kl", "realisation"] if c in result.metrics.columns]
    cols = list(dict.fromkeys(cols))
    ev = cfg.eval
    lines = [f"# Fine-tuning report: {cfg.name}", "",
             f"- task: `{cfg.task}`; {task.describe(cfg)}",
             f"- method: **{t.method}**, {t.tail} tail, beta = {t.beta:g}, alpha = {t.alpha:g}, {t.am.steps} "
             f"Adjoint Matching steps of {t.am.batch_size} trajectories ({t.am.time_steps} time steps), "
             f"seed {cfg.seed}; stage 2: {result.metrics['stage2_path'].iloc[-1] or 'gradient'}",
             f"- offline batch: {t.offline_samples} samples ({t.offline_sampler}, {t.offline_steps} steps)",
             f"- evaluation: {ev.samples} fresh samples per model ({ev.sampler}, {ev.steps} steps, same noise)", "",
             "## Before and after", "", markdown_table(result.metrics[cols]), "",
             f"The tail this run targets is `{own}`. `kl` is the control-cost estimate of KL(p_ft || p_pre) in "
             f"nats ({ev.kl_samples} trajectories).", ""]
    lines += _stage1_lines(res, result.metrics, own, result.kl)
    lines += extra_lines
    lines += ["## Timings (s)", "",
              markdown_table(pd.DataFrame([{k: float(v) for k, v in result.timings.items()}])), "",
              *(["## Plots", "", "![reward histograms](reward_hist.png)", "", "![training curves](training.png)", ""]
                if plots else [])]
    lines += ["## Files", "", "- `metrics.csv`: the table above, all columns; `history.csv`: stage-2 statistics",
              "- `samples.csv` / `samples_pretrained.csv`: per-sample evaluation tables (same noise)",
              "- `model.safetensors`: fine-tuned weights; `config.yaml`: the config of this run; "
              "`run.json`: its manifest", ""]
    atomic_write_text(files["report"], "\n".join(lines))
    return files
