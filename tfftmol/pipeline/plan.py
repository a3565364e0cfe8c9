"""``plan(config)``: stage 1 only, on the (cached) offline batch, for a grid of alpha (and beta).

Before paying for stage 2, a plan answers "what does each alpha buy, at what KL?"
from the same exact solve a run starts with (:func:`tfftmol.core.threshold.solve_threshold`
on the run's offline batch, cached under the same key, so a later ``run`` of the
same config reuses it):

* a table with one row per ``(beta, alpha)``: ``eta*`` with its bootstrap interval,
  the pre-trained and predicted own-tail CVaR, the predicted gain, the predicted KL
  (nats), the active fraction, the tilt ESS, and a degenerate-tail flag
  (:func:`tfftmol.core.threshold.tail_degeneracy`: ``saturated`` = nothing to gain,
  ``expected`` = TFFT reduces to scaled expected-reward fine-tuning);
* the tail margin: the CVaR the exact *expected-reward* optimum holds at the same predicted KL
  (:func:`tfftmol.core.mean_tilt.mean_tilt_at_kl`, column ``mean_tilt_cvar``) and the predicted CVaR's
  lead over it (``tail_margin``, ``>= 0``): the most a tail fine-tune can gain over plain
  expected-reward fine-tuning at that KL on this batch.  A margin near 0 says the tail objective
  buys nothing the mean does not;
* the predicted CVaR-KL curve, with the expected-reward optimum's (``plan.png``);
* with a KL budget: the recommended alpha, the smallest alpha (the largest predicted
  CVaR) whose predicted KL stays within the budget, found by bisection on the exact
  solve (predicted KL falls as alpha grows).

* with ``ceiling=True``: the information ceiling at every row (:mod:`tfftmol.core.ceiling`): the
  best tilt that sees the reward only through the predictor that drives stage 2 (a molecular
  run's surrogate, scored out of fold on the offline batch through the reward's
  ``ceiling_scores`` hook, read where stage 2 reads it), i.e. what a run driven by that predictor
  can reach at each KL unless its on-policy refits learn more.

Stage 1 predicts the exact optimum on the offline batch; a run reaches a share of the
predicted gain (its realisation ratio, in the run's report) at a KL that can differ
from the prediction.  The row at the config's own ``(alpha, beta)`` is the stage-1
result of a run of that config, to the last bit.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from ..core.mean_tilt import tail_margin
from ..core.threshold import TfftWarning, solve_threshold, tail_degeneracy

__all__ = ["plan", "PlanResult", "DEFAULT_ALPHAS", "recommend_alpha"]

#: The default alpha grid (the config's own alpha is always added).
DEFAULT_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)

COLUMNS = ["tail", "beta", "alpha", "eta", "eta_low", "eta_high", "pre_cvar", "predicted_cvar", "predicted_gain",
           "predicted_kl", "mean_tilt_cvar", "tail_margin", "active_fraction", "ess", "ess_fraction", "degenerate",
           "config", "recommended"]
#: Added with ``ceiling=True``.
CEILING_COLUMNS = ["ceiling_cvar", "ceiling_gain", "ceiling_kl", "ceiling_share"]


@dataclass
class PlanResult:
    """What :func:`plan` returns.

    Attributes:
        table: one row per ``(beta, alpha)`` (columns :data:`COLUMNS`), sorted by beta then alpha.
        config: the validated run config.
        rewards: the offline batch's rewards, shape ``(M,)``.
        cached: whether the offline batch came from the cache.
        kl_budget: the stated KL budget (nats) or ``None``.
        recommended: ``{"alpha", "beta", "predicted_cvar", "predicted_kl", ...}`` for the budget, or ``None``.
        messages: the degenerate-tail diagnoses, one per distinct message.
        files: ``name -> path`` of ``plan.csv`` and ``plan.png``.
        seconds: wall time of the plan (offline batch included).
        ceiling_spearman: with ``ceiling=True``: Spearman correlation of the out-of-fold scores with the
            rewards (``None`` otherwise, or when the reward has no predictor to score with).
        scores: the out-of-fold scores, shape ``(M,)``, or ``None``.
    """

    table: pd.DataFrame
    config: Any
    rewards: np.ndarray
    cached: bool
    kl_budget: Optional[float] = None
    recommended: Optional[dict] = None
    messages: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    seconds: float = float("nan")
    ceiling_spearman: Optional[float] = None
    scores: Optional[np.ndarray] = None

    def summary(self) -> str:
        cfg = self.config
        t = cfg.tfft
        cols = ["beta", "alpha", "eta", "eta_low", "eta_high", "pre_cvar", "predicted_cvar", "predicted_kl",
                "tail_margin", "active_fraction", "ess", "degenerate"]
        if "ceiling_cvar" in self.table:
            cols += ["ceiling_cvar", "ceiling_kl", "ceiling_share"]
        tab = self.table[cols].copy()
        mark = np.where(self.table["config"], "<- config", np.where(self.table["recommended"], "<- budget", ""))
        tab[""] = mark
        with pd.option_context("display.width", 200, "display.max_columns", 40,
                               "display.float_format", "{:.4g}".format):
            body = tab.to_string(index=False)
        head = (f"stage-1 plan for {cfg.name}: {t.tail} tail, {len(self.rewards)} offline samples "
                f"({'cached' if self.cached else 'sampled'}, {t.offline_sampler}, {t.offline_steps} steps); "
                f"predicted own-tail CVaR_{t.beta:g} and KL (nats) of the exact optimum on the offline batch")
        lines = [head, body]
        if self.kl_budget is not None:
            if self.recommended is None:
                lines.append(f"KL budget {self.kl_budget:g}: no alpha on the grid keeps the predicted KL within it "
                             "(try larger alphas with --alphas)")
            else:
                r = self.recommended
                lines.append(f"KL budget {self.kl_budget:g} nats: recommended alpha = {r['alpha']:.3g} "
                             f"(beta {r['beta']:g}): predicted CVaR {r['predicted_cvar']:.4g} "
                             f"(pre-trained {r['pre_cvar']:.4g}) at predicted KL {r['predicted_kl']:.3g}")
        if self.ceiling_spearman is not None:
            c = self.table[self.table["config"]]
            share = float(c["ceiling_share"].iloc[0]) if len(c) else float("nan")
            lines.append(f"information ceiling: the best tilt that sees the reward only through the run's surrogate, "
                         f"read where stage 2 reads it (out-of-fold Spearman {self.ceiling_spearman:.2f} on the offline "
                         f"batch), reaches {share:.0%} of the predicted gain at the config's alpha; a run driven by it "
                         "gets more only by spending more KL (ceiling_* columns: the ceiling at each alpha) or by "
                         "learning more in its on-policy refits (docs/design.md §8.1)")
        c = self.table[self.table["config"]]
        if len(c):
            c = c.iloc[0]
            share = c["tail_margin"] / c["predicted_gain"] if c["predicted_gain"] > 0 else float("nan")
            lines.append(f"tail margin at the config's alpha: the exact expected-reward optimum at the same KL holds "
                         f"{c['mean_tilt_cvar']:.4g}, so the tail objective leads it by {c['tail_margin']:.3g} "
                         f"({share:.0%} of the predicted gain); a fine-tune that realises a share of both optima "
                         "shows about that share of the margin over expected-reward fine-tuning")
        lines += [f"note: {m}" for m in self.messages]
        lines.append("stage 1 predicts the exact optimum; a run realises a share of the predicted gain "
                     "(its realisation ratio) at a KL that can differ from the prediction")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _solve(rewards, beta, alpha, t, bootstrap):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        return solve_threshold(rewards, beta, alpha, t.tail, bootstrap=bootstrap, seed=t.seed,
                               min_active_fraction=0.0, min_ess_fraction=0.0)


def recommend_alpha(rewards: np.ndarray, beta: float, tail: str, kl_budget: float,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, rel_tol: float = 1e-3) -> Optional[float]:
    """The smallest alpha whose predicted KL is within ``kl_budget`` (nats), by bisection on log alpha.

    The predicted KL of the exact tilt falls as alpha grows, so the smallest feasible alpha has the
    largest predicted CVaR within the budget.  ``None`` if even the largest alpha of ``alphas`` exceeds
    the budget.

    Raises:
        ValueError: ``kl_budget`` not a finite number > 0.
    """
    if not (isinstance(kl_budget, (int, float)) and math.isfinite(kl_budget) and kl_budget > 0):
        raise ValueError(f"kl_budget={kl_budget!r} must be a finite number of nats > 0")

    def kl(a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TfftWarning)
            return solve_threshold(rewards, beta, a, tail, min_active_fraction=0.0, min_ess_fraction=0.0).predicted_kl

    grid = sorted(float(a) for a in alphas)
    ok = [a for a in grid if kl(a) <= kl_budget]
    if not ok:
        return None
    hi = ok[0]
    below = [a for a in grid if a < hi]
    if not below:
        return hi
    lo = below[-1]  # infeasible
    while hi / lo > 1 + rel_tol:
        mid = math.sqrt(lo * hi)
        if kl(mid) <= kl_budget:
            hi = mid
        else:
            lo = mid
    return float(f"{hi:.3g}") if kl(float(f"{hi:.3g}")) <= kl_budget else hi


def plot_plan(table: pd.DataFrame, path: Path, title: str = "", kl_budget: Optional[float] = None) -> None:
    """Predicted own-tail CVaR against predicted KL, one curve per beta, points labelled by alpha."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for beta, g in table.groupby("beta"):
        g = g.sort_values("predicted_kl")
        line, = ax.plot(g["predicted_kl"], g["predicted_cvar"], marker="o", label=f"beta={beta:g}")
        ax.axhline(float(g["pre_cvar"].iloc[0]), color=line.get_color(), ls=":", lw=1)
        for _, row in g.iterrows():
            ax.annotate(f"{row['alpha']:.3g}", (row["predicted_kl"], row["predicted_cvar"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
            if row["config"]:
                ax.plot(row["predicted_kl"], row["predicted_cvar"], "ks", ms=8, mfc="none")
            if row["recommended"]:
                ax.plot(row["predicted_kl"], row["predicted_cvar"], "r*", ms=12)
        if "mean_tilt_cvar" in g:
            ax.plot(g["predicted_kl"], g["mean_tilt_cvar"], ls="-.", lw=1, color=line.get_color(),
                    label=f"beta={beta:g}, expected-reward optimum at that KL")
        if "ceiling_cvar" in g:
            c = g.sort_values("ceiling_kl")
            ax.plot(c["ceiling_kl"], c["ceiling_cvar"], ls="--", marker=".", color=line.get_color(),
                    label=f"beta={beta:g}, information ceiling")
    if kl_budget is not None:
        ax.axvline(kl_budget, color="r", ls="--", lw=1, label=f"KL budget {kl_budget:g}")
    ax.set_xscale("symlog", linthresh=1e-2)
    ax.set_xlabel("predicted KL(p* || p_pre) (nats)")
    ax.set_ylabel("predicted own-tail CVaR")
    ax.set_title(title or "stage-1 plan (labels: alpha; dotted: pre-trained CVaR)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plan(config: Any, *, alphas: Optional[Sequence[float]] = None, betas: Optional[Sequence[float]] = None,
         kl_budget: Optional[float] = None, out: Optional[str | Path] = None, plots: bool = True,
         progress: bool = False, log: Callable[[str], None] = print, ceiling: bool = False,
         **overrides: Any) -> PlanResult:
    """Stage 1 only, for a grid of alpha (and beta), on the config's cached offline batch.

    Args:
        config: a run config (YAML path, mapping or :class:`~tfftmol.pipeline.RunConfig`).
        alphas: KL weights to solve at (default :data:`DEFAULT_ALPHAS`); the config's alpha is always added.
        betas: tail levels (default: the config's beta only).
        kl_budget: a KL budget in nats: adds the recommended alpha (its own row, ``recommended=True``).
        out: directory of ``plan.csv`` / ``plan.png`` (default ``<out_dir>/<name>-plan``; never the
            run directory, which a plan does not claim).
        plots: draw ``plan.png``.
        progress: progress bar of the offline batch (when it is not cached).
        log: where the offline batch's lines go.
        ceiling: add the information ceiling columns (:data:`CEILING_COLUMNS`) through the reward's
            ``ceiling_scores`` hook (for a molecular run: two more surrogate fits); a reward without the
            hook gets a note instead (its stage 2 has the reward's own gradient, or no predictor to score with).
        overrides: top-level config fields to replace (``out_dir``, ``name``, ...).

    Returns:
        :class:`PlanResult` (``print(result)`` shows the table and the recommendation).

    Raises:
        ConfigError: a bad config.
        ValueError: an alpha or beta outside its range (alpha > 0, 0 < beta < 1) or a bad ``kl_budget``.
    """
    import torch

    from ..core.offline import offline_batch
    from ..core.tfft import reward_bounds
    from .config import load_run_config
    from .registry import get_task

    t0 = time.perf_counter()
    cfg = load_run_config(config, **overrides)
    t = cfg.tfft
    grid_a = [float(a) for a in (DEFAULT_ALPHAS if alphas is None else alphas)]
    grid_b = [float(b) for b in ([t.beta] if betas is None else betas)]
    for a in grid_a:
        if not (math.isfinite(a) and a > 0):
            raise ValueError(f"alpha={a!r} must be a finite number > 0")
    for b in grid_b:
        if not 0 < b < 1:
            raise ValueError(f"beta={b!r} must lie in the open interval (0, 1)")
    if kl_budget is not None and not (math.isfinite(float(kl_budget)) and float(kl_budget) > 0):
        raise ValueError(f"kl_budget={kl_budget!r} must be a finite number of nats > 0")
    grid_a = sorted(set(grid_a) | {float(t.alpha)})
    grid_b = sorted(set(grid_b) | ({float(t.beta)} if betas is None else set()))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = get_task(cfg.task)
    device = torch.device(cfg.device)
    base = task.load_base(cfg, device)
    quiet = lambda s: None  # noqa: E731  (the reward's own chatter; the plan prints its summary)
    reward = task.build_reward(cfg, base, device, quiet)
    x_off, values, valid, cached = offline_batch(base, reward, t.offline_samples, t.offline_steps, t.offline_sampler,
                                                 t.seed, cfg.offline_cache_dir, device=device,
                                                 cond_sampler=task.cond_sampler(cfg, base), progress=progress,
                                                 log=log)
    rewards = values.numpy().astype(np.float64)
    bounds = reward_bounds(reward)
    rows, messages = [], []
    scores = spearman = None
    if ceiling:
        from ..core.reward import reward_hook

        hook = reward_hook(reward, "ceiling_scores")
        if hook is None:
            messages.append("information ceiling: not computed: the reward has no predictor to score the offline "
                            "batch with (a differentiable reward drives stage 2 with its own gradient)")
        else:
            from scipy.stats import spearmanr

            scores = np.asarray(hook(x_off.detach().cpu(), values.detach().cpu(), valid.detach().cpu()),
                                dtype=np.float64).reshape(-1)
            spearman = float(spearmanr(scores, rewards)[0])

    def row(beta, alpha, recommended=False):
        res = _solve(rewards, beta, alpha, t, t.bootstrap)
        deg = tail_degeneracy(res, bounds)
        mt_cvar, margin = tail_margin(rewards, res)
        if deg is not None and deg.message not in messages:
            messages.append(deg.message)
        lo, hi = res.eta_interval if res.eta_interval is not None else (np.nan, np.nan)
        out = {"tail": t.tail, "beta": beta, "alpha": alpha, "eta": res.eta, "eta_low": lo, "eta_high": hi,
               "pre_cvar": res.pre_cvar, "predicted_cvar": res.predicted_cvar,
               "predicted_gain": res.predicted_cvar - res.pre_cvar, "predicted_kl": res.predicted_kl,
               "mean_tilt_cvar": mt_cvar, "tail_margin": margin,
               "active_fraction": res.active_fraction, "ess": res.ess, "ess_fraction": res.ess_fraction,
               "degenerate": "" if deg is None else deg.kind,
               "config": bool(alpha == t.alpha and beta == t.beta), "recommended": recommended}
        if scores is not None:
            from ..core.ceiling import information_ceiling

            c = information_ceiling(rewards, scores, beta=beta, alpha=alpha, tail=t.tail)
            gain = res.predicted_cvar - res.pre_cvar
            out.update({"ceiling_cvar": c.cvar, "ceiling_gain": c.cvar - c.pre_cvar, "ceiling_kl": c.kl,
                        "ceiling_share": (c.cvar - c.pre_cvar) / gain if gain > 0 else float("nan")})
        return out

    for b in grid_b:
        for a in grid_a:
            rows.append(row(b, a))
    rec = None
    if kl_budget is not None:
        b = float(t.beta)
        a = recommend_alpha(rewards, b, t.tail, float(kl_budget), grid_a)
        if a is not None:
            hit = [r for r in rows if r["beta"] == b and r["alpha"] == a]
            if hit:
                hit[0]["recommended"] = True
                rec = hit[0]
            else:
                rec = row(b, a, recommended=True)
                rows.append(rec)
            rec = {k: rec[k] for k in ("alpha", "beta", "eta", "pre_cvar", "predicted_cvar", "predicted_kl",
                                       "active_fraction", "degenerate")}
    table = pd.DataFrame(rows, columns=COLUMNS + (CEILING_COLUMNS if scores is not None else [])).sort_values(["beta", "alpha"], kind="stable").reset_index(drop=True)
    result = PlanResult(table, cfg, rewards, bool(cached), None if kl_budget is None else float(kl_budget), rec,
                        messages, ceiling_spearman=spearman, scores=scores)
    d = Path(out) if out is not None else Path(cfg.out_dir) / f"{cfg.name}-plan"
    d.mkdir(parents=True, exist_ok=True)
    result.files["table"] = d / "plan.csv"
    table.to_csv(result.files["table"], index=False)
    if plots:
        result.files["plot"] = d / "plan.png"
        plot_plan(table, result.files["plot"], f"{cfg.name}: {t.tail} tail, predicted CVaR vs KL (labels: alpha)",
                  result.kl_budget)
    result.seconds = time.perf_counter() - t0
    return result
