"""Tail frontier: measured (KL, own-tail CVaR) of TFFT and expected-FT over alpha, against stage 1's prediction.

For each target and each alpha (``--alphas``: factors of the config's alpha), TFFT
and the expected-reward baseline run through :func:`tfftmol.pipeline.run` with the
same budget and seed (the offline batch of a seed is shared through the cache);
``--seeds`` seeds per alpha and ``--config-seeds`` at the config's alpha (factor 1).
Every run gives its measured control-cost KL and its own-tail CVaR on the
evaluation noise; the stage-1 solve (:func:`tfftmol.core.threshold.solve_threshold`)
on the same offline batch gives the predicted (KL, CVaR) at the run's alpha (filled
for expected-FT rows too) and, over a fine alpha grid, the predicted frontier.

Targets: the four ``qm9-graph`` configs (``qed_right``, ``qed_left_validity``,
``gap_right``, ``sa_left``) and ``digits_right``: the digits alignment reward of
``configs/digits_left.yaml`` with its right tail (``beta = 0.9``), the right tail of
the images benchmark.  ``digits_ink_right`` (``configs/digits_ink_right.yaml``) can
be asked for by name.

Writes to ``--out`` (default ``benchmarks/results``):

* ``tail_frontier.csv``: one row per run (``target, tail, beta, method, alpha, seed,
  kl, cvar_own, cvar_pretrained, cvar_predicted, kl_predicted, realisation, validity,
  uniqueness, train_seconds`` and more); ``realisation = (cvar_own - cvar_pretrained) /
  (cvar_predicted - cvar_pretrained)``.  Rows are appended as runs finish, so a killed
  job keeps what it finished;
* ``tail_frontier_curve.csv``: the stage-1 predicted curve per (target, seed) over the
  alpha grid, with the exact expected-reward optimum's CVaR at each predicted KL
  (``cvar_mean_tilt``; also a column of the run table);
* ``tail_frontier.md``: per-run table, per-alpha means, TFFT's own-tail CVaR against
  expected-FT's interpolated at the same KL along expected-FT's measured frontier (with
  the seed spread), the realisation check at the config's alpha and the time ratio;
* ``tail_frontier.png``: one axis per target, measured TFFT and expected-FT runs and
  the predicted curve.

    python benchmarks/tail_frontier.py --targets qed_right --budget demo --jobs 1
    python benchmarks/tail_frontier.py --targets digits_right --budget demo --append   # add runs to the CSV
    python benchmarks/tail_frontier.py --replot            # rebuild md/png from the CSVs, run nothing
    python benchmarks/tail_frontier.py --fill-margins      # add cvar_mean_tilt to older rows, then replot
    python benchmarks/tail_frontier.py --quick --out DIR   # smoke budget (the test); numbers mean nothing

Budgets: ``demo`` is the ``tfftmol demo-mol`` budget (150 Adjoint Matching steps of
32 trajectories, 2,000 offline samples, 1,000 evaluation samples); ``bench`` is
``benchmarks/property_targets.py``'s default budget (today the same numbers);
``full`` the configs as written; ``quick`` a smoke budget.  The digits target takes
the same patch without the molecular keys (surrogate, refit period).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from property_targets import BENCH, QUICK, _md_table, _merge, _pm, run_jobs, run_one  # noqa: E402
from tfftmol.cli import DEMO_MOL_BUDGET  # noqa: E402
from tfftmol.core.config import load_yaml  # noqa: E402
from tfftmol.pipeline.config import nest_flat  # noqa: E402

# target -> (config file, patch applied before the budget)
TARGETS = {
    "qed_right": ("qed_right", {}),
    "qed_left_validity": ("qed_left_validity", {}),
    "gap_right": ("gap_right", {}),
    "sa_left": ("sa_left", {}),
    "digits_right": ("digits_left", {"name": "digits_right", "tfft": {"tail": "right", "beta": 0.9}}),
    "digits_ink_right": ("digits_ink_right", {}),
    # the drug-like model (nested configs): QED and two GuacaMol MPO objectives, right-CVaR_0.9
    "zinc_qed_right": ("zinc_qed_right", {}),
    "zinc_osimertinib_mpo_right": ("zinc_osimertinib_mpo_right", {}),
    "zinc_fexofenadine_mpo_right": ("zinc_fexofenadine_mpo_right", {}),
}
DEFAULT_TARGETS = ["qed_right", "qed_left_validity", "gap_right", "sa_left", "digits_right"]
#: Axes per row of the frontier plot (one axis per target).
PLOT_COLUMNS = 4
#: A run whose KL exceeds this multiple of its target's median run KL sits at the plot's right edge.
FAR_KL = 20.0
METHODS = ("tfft", "expected")
MOLECULE_ONLY = ("surrogate", "refit_every", "warm_start")  # budget keys an image config does not take
CSV, CURVE = "tail_frontier.csv", "tail_frontier_curve.csv"
KEY = ["target", "method", "alpha", "seed"]
COLUMNS = ["target", "tail", "beta", "method", "alpha", "alpha_factor", "seed", "kl", "cvar_own", "cvar_pretrained",
           "cvar_predicted", "kl_predicted", "cvar_mean_tilt", "realisation", "validity", "uniqueness", "accuracy",
           "train_seconds", "wall_seconds", "steps", "reward_mean", "eta", "stage2_path", "budget"]
GRID = np.geomspace(1 / 30, 30, 61)  # factors of the config alpha for the predicted curve


def budget_patch(name: str) -> dict:
    return {"quick": QUICK, "demo": DEMO_MOL_BUDGET, "bench": BENCH, "full": {}}[name]


def target_config(target: str, budget: str, model: str | None = None) -> dict:
    """The config dict of a target at a budget (before method, alpha and seed are set)."""
    config, patch = TARGETS[target]
    base = _merge(load_yaml(ROOT / "configs" / f"{config}.yaml"), patch)
    b = budget_patch(budget)
    digits = "digits" in str(base.get("model", ""))
    if digits:
        b = {k: v for k, v in b.items() if k not in MOLECULE_ONLY}
    if "task" in base:  # a nested config: the flat budget keys go where a RunConfig keeps them
        b = {k: v for k, v in nest_flat(b, kind=base["task"]).items() if k != "task"}
    base = _merge(base, b)
    if digits and "eval_samples" in base:  # the digits task samples its prompts round-robin
        p = len(base.get("prompts") or range(10))
        base["eval_samples"] = -(-int(base["eval_samples"]) // p) * p
    if model:
        base["model"] = model
    return base


def config_alpha(target: str) -> float:
    return float(target_config(target, "full")["tfft"]["alpha"])


def plan(targets: list[str], factors: list[float], seeds: int, config_seeds: int, first_seed: int = 0) -> list[tuple]:
    """(target, method, factor, seed) in the order that makes a partial run most useful.

    Seed by seed: every alpha of seed 0 (the config's alpha first, TFFT before expected-FT),
    then seed 1, ...; the extra seeds of the config's alpha come last.  ``first_seed`` leaves out
    the seeds below it (so that two processes can share one plan's seeds).
    """
    order = sorted(factors, key=lambda f: (not math.isclose(f, 1.0), factors.index(f)))
    out = []
    for s in range(first_seed, max(seeds, config_seeds)):
        for t in targets:
            for f in order:
                if s < (config_seeds if math.isclose(f, 1.0) else seeds):
                    out += [(t, m, f, s) for m in METHODS]
    return out


def _offline_rewards(res) -> np.ndarray:
    """The offline batch rewards of a run's seed (sampled once and cached if the run did not draw it)."""
    if res.tfft.offline_rewards is not None:
        return np.asarray(res.tfft.offline_rewards, np.float64)
    from tfftmol.core.offline import offline_batch
    from tfftmol.pipeline import get_task

    cfg = res.config
    task = get_task(cfg.task)
    base = task.load_base(cfg, cfg.device)
    t = cfg.tfft
    _, v, _, _ = offline_batch(base, res.reward, t.offline_samples, t.offline_steps, t.offline_sampler, cfg.seed,
                               cfg.offline_cache_dir, device=cfg.device, cond_sampler=task.cond_sampler(cfg, base),
                               log=lambda s: None)
    return v.numpy().astype(np.float64)


def _stage1(rewards: np.ndarray, beta: float, alpha: float, tail: str):
    from tfftmol.core.threshold import solve_threshold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return solve_threshold(rewards, beta, alpha, tail)


def run_frontier_one(target: str, method: str, factor: float, seed: int, budget: str, model: str | None,
                     runs_dir: str, progress: bool, patch: dict | None = None) -> tuple[dict | None, list[dict]]:
    """One run: its CSV row (``None`` if the run failed) and the stage-1 curve of its seed's offline batch.

    ``patch``: a config patch merged last (recorded as JSON in the row's ``patch`` column)."""
    import torch

    from tfftmol.core.mean_tilt import tail_margin
    from tfftmol.pipeline.metrics import realisation_ratio

    torch.set_num_threads(1)
    base = target_config(target, budget, model)
    if patch:
        base = _merge(base, patch)
    a0 = float(base["tfft"]["alpha"])
    alpha = a0 * factor
    base = _merge(base, {"tfft": {"alpha": alpha}})
    name = f"{target}-{method}-a{factor:g}-s{seed}"
    try:
        m, train, wall, res = run_one(base, method, seed, name, runs_dir, progress)
    except Exception as e:  # one failed run (e.g. a degenerate tail at this alpha) must not lose the others
        print(f"{name}: failed, no row: {type(e).__name__}: {e}", flush=True)
        return None, []
    t = res.config.tfft
    own = f"reward_cvar_{t.tail}_{t.beta:g}"
    pre, post = m.iloc[0], m.iloc[1]
    rewards = _offline_rewards(res)
    s1 = _stage1(rewards, t.beta, alpha, t.tail)
    cvar_pre = float(pre[own])
    row = {"target": target, "tail": t.tail, "beta": t.beta, "method": method, "alpha": alpha,
           "alpha_factor": factor, "seed": seed, "kl": float(res.kl), "cvar_own": float(post[own]),
           "cvar_pretrained": cvar_pre, "cvar_predicted": float(s1.predicted_cvar),
           "kl_predicted": float(s1.predicted_kl), "cvar_mean_tilt": tail_margin(rewards, s1)[0],
           "realisation": realisation_ratio(cvar_pre, float(post[own]), float(s1.predicted_cvar)),
           "validity": float(post["validity"]) if "validity" in post.index else float("nan"),
           "uniqueness": float(post["uniqueness"]) if "uniqueness" in post.index else float("nan"),
           "accuracy": float(post["accuracy"]) if "accuracy" in post.index else float("nan"),
           "train_seconds": train, "wall_seconds": wall, "steps": int(post["steps"]),
           "reward_mean": float(post["reward_mean"]), "eta": float(res.eta) if res.eta is not None else float("nan"),
           "stage2_path": str(post.get("stage2_path", "")), "budget": budget,
           "patch": json.dumps(patch, sort_keys=True) if patch else ""}
    curve = []
    for f in sorted(set(GRID.tolist()) | {factor}):
        c = _stage1(rewards, t.beta, a0 * f, t.tail)
        curve.append({"target": target, "seed": seed, "alpha": a0 * f, "alpha_factor": f,
                      "kl_predicted": float(c.predicted_kl), "cvar_predicted": float(c.predicted_cvar),
                      "cvar_mean_tilt": tail_margin(rewards, c)[0],
                      "cvar_pretrained_offline": float(c.pre_cvar), "n_offline": int(c.n), "budget": budget})
    print(f"{name}: KL {row['kl']:.3g}, {own} {cvar_pre:.4g} -> {row['cvar_own']:.4g} (stage 1 predicts "
          f"{row['cvar_predicted']:.4g} at KL {row['kl_predicted']:.3g}; realisation {row['realisation']:.2f}); "
          f"{train:.0f} s fine-tune, {wall:.0f} s total", flush=True)
    return row, curve


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def _same_run(df: pd.DataFrame, row: dict) -> pd.Series:
    return ((df.target == row["target"]) & (df.method == row["method"]) & (df.seed == row["seed"])
            & np.isclose(df.alpha, row["alpha"], rtol=1e-9))


def _upsert(path: Path, rows: list[dict], key: list[str]) -> pd.DataFrame:
    """Add rows to a CSV, replacing rows with the same key; written atomically."""
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_csv(path)
        df = pd.concat([old, new], ignore_index=True)
        df["_k"] = df[key].round({"alpha": 12} if "alpha" in key else {}).astype(str).agg("|".join, axis=1)
        df = df.drop_duplicates("_k", keep="last").drop(columns="_k")
    else:
        df = new
    return _write_csv(path, df)


def _write_csv(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """Write atomically; the run table (it has ``kl``) with its documented columns first."""
    if "kl" in df.columns:
        df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return df


def _frontier(e: pd.DataFrame, pre: float) -> pd.DataFrame:
    """Expected-FT's measured frontier: per-alpha means (KL, CVaR, CVaR std), anchored at the pre-trained (0, CVaR)."""
    g = e.groupby("alpha")
    f = pd.DataFrame({"kl": g["kl"].mean(), "cvar": g["cvar_own"].mean(),
                      "std": g["cvar_own"].std(ddof=1).fillna(0.0)}).reset_index()
    f = pd.concat([pd.DataFrame([{"alpha": np.inf, "kl": 0.0, "cvar": pre, "std": 0.0}]), f], ignore_index=True)
    return f.sort_values("kl").reset_index(drop=True)


def _margin(tfft_rows: pd.DataFrame, expected_rows: pd.DataFrame) -> float:
    """Mean ``cvar_predicted - cvar_mean_tilt`` of TFFT's rows, else of expected-FT's at the same alpha (stage 1
    on the plain offline batch, where a TFFT run enlarged its batch to settle a near-tie); NaN without them."""
    for rows in (tfft_rows, expected_rows):
        if "cvar_mean_tilt" in rows:
            m = (rows.cvar_predicted - rows.cvar_mean_tilt).dropna()
            if len(m):
                return float(m.mean())
    return float("nan")


def matched(df: pd.DataFrame) -> pd.DataFrame:
    """Per target and TFFT alpha: TFFT's mean own-tail CVaR against expected-FT's at the same KL.

    Expected-FT's CVaR (and its seed std) is interpolated linearly in KL between its per-alpha
    means, the pre-trained model being the point (0, its CVaR); a TFFT KL beyond expected-FT's
    largest measured KL is not interpolated.  ``spread`` = root sum of squares of TFFT's seed
    std and expected-FT's interpolated one; with one TFFT seed there is no verdict.

    Beyond expected-FT's KL range a verdict is still possible one way, by dominance: when TFFT's CVaR
    lies below the best expected-FT mean measured at a *smaller* KL by more than their spread,
    expected-FT reaches more for less KL (``TFFT below, at more KL``; columns ``cvar_expected_less_kl``,
    ``kl_expected_less_kl``, ``tfft_minus_expected_less_kl``).  No such verdict exists for TFFT above.

    ``tail_margin``: stage 1's predicted CVaR less the exact expected-reward optimum's at the same predicted
    KL, on each seed's offline batch (mean over TFFT's seeds, else over expected-FT's at that alpha;
    :mod:`tfftmol.core.mean_tilt`): the lead the two exact optima have at that KL, of which runs that realise a
    share ``s`` of both show about ``s``.
    """
    out = []
    for target, d in df.groupby("target", sort=False):
        pre = float(d["cvar_pretrained"].mean())
        e, t = d[d.method == "expected"], d[d.method == "tfft"]
        if e.empty or t.empty:
            continue
        f = _frontier(e, pre)
        for alpha, g in t.groupby("alpha"):
            kl, cv, sd = float(g.kl.mean()), float(g.cvar_own.mean()), float(g.cvar_own.std(ddof=1))
            inside = 0.0 <= kl <= float(f.kl.max())
            ce = float(np.interp(kl, f.kl, f.cvar)) if inside else float("nan")
            se = float(np.interp(kl, f.kl, f["std"])) if inside else float("nan")
            diff = cv - ce  # a larger CVaR is better in either tail
            spread = math.sqrt(np.nan_to_num(sd) ** 2 + np.nan_to_num(se) ** 2)
            below = f[(f.kl <= kl) & np.isfinite(f.alpha)]  # measured expected-FT points at less KL
            best = below.loc[below.cvar.idxmax()] if len(below) else pd.Series({"kl": np.nan, "cvar": np.nan,
                                                                                   "std": np.nan})
            dom = cv - float(best.cvar)
            margin = _margin(g, d[(d.method == "expected") & np.isclose(d.alpha, alpha)])
            dom_spread = math.hypot(np.nan_to_num(sd), float(best["std"]))
            out.append({"target": target, "alpha": alpha, "alpha_factor": float(g.alpha_factor.iloc[0]),
                        "seeds": int(g.seed.nunique()), "kl_tfft": kl, "cvar_tfft": cv, "std_tfft": sd,
                        "cvar_expected_at_kl": ce, "std_expected": se, "tfft_minus_expected": diff,
                        "spread": spread, "tail_margin": float(margin),
                        "cvar_expected_less_kl": float(best.cvar), "kl_expected_less_kl": float(best.kl),
                        "tfft_minus_expected_less_kl": dom,
                        "verdict": (("TFFT below, at more KL" if len(g) > 1 and -dom > dom_spread else
                                     "outside expected-FT's KL range") if not inside else
                                    "one TFFT seed: no spread" if len(g) < 2 else
                                    "TFFT above" if diff > spread else "TFFT below" if -diff > spread else
                                    "within spread")})
    return pd.DataFrame(out)


def checks(df: pd.DataFrame) -> pd.DataFrame:
    """Per target: realisation and KL / predicted KL of TFFT at the config's alpha; TFFT / expected-FT time."""
    out = []
    for target, d in df.groupby("target", sort=False):
        t = d[(d.method == "tfft") & np.isclose(d.alpha_factor, 1.0)]
        both = d.pivot_table(index=["alpha", "seed"], columns="method", values="train_seconds")
        ratio = (both["tfft"] / both["expected"]).dropna() if {"tfft", "expected"} <= set(both.columns) else []
        out.append({"target": target, "config_alpha": float(t.alpha.iloc[0]) if len(t) else float("nan"),
                    "tfft_runs": len(t), "realisation_min": float(t.realisation.min()) if len(t) else float("nan"),
                    "realisation_mean": float(t.realisation.mean()) if len(t) else float("nan"),
                    "kl_over_predicted_max": float((t.kl / t.kl_predicted).max()) if len(t) else float("nan"),
                    "meets_0.7_and_2x": bool(len(t) and (t.realisation >= 0.7).all()
                                             and (t.kl <= 2 * t.kl_predicted).all()),
                    "time_ratio_tfft_over_expected": float(np.mean(ratio)) if len(ratio) else float("nan"),
                    "stage2_path": ", ".join(sorted(set(d.loc[d.method == "tfft", "stage2_path"].astype(str))))})
    return pd.DataFrame(out)


def write(out: Path) -> str:
    """Rebuild ``tail_frontier.md`` and ``.png`` from the CSVs; returns the markdown."""
    df = pd.read_csv(out / CSV)
    curve = pd.read_csv(out / CURVE) if (out / CURVE).exists() else pd.DataFrame()
    quick = set(df.budget) == {"quick"}
    per = df.groupby(["target", "method", "alpha"], sort=False)
    agg = []
    for (target, method, alpha), g in per:
        agg.append({"target": target, "method": method, "alpha": alpha, "seeds": int(g.seed.nunique()),
                    "kl": _pm(g.kl.mean(), g.kl.std(ddof=1)), "cvar_own": _pm(g.cvar_own.mean(), g.cvar_own.std(ddof=1)),
                    "cvar_predicted": _pm(g.cvar_predicted.mean(), g.cvar_predicted.std(ddof=1)),
                    "kl_predicted": _pm(g.kl_predicted.mean(), g.kl_predicted.std(ddof=1)),
                    "realisation": _pm(g.realisation.mean(), g.realisation.std(ddof=1)),
                    "validity": _pm(g.validity.mean(), g.validity.std(ddof=1)),
                    "accuracy": _pm(g.accuracy.mean(), g.accuracy.std(ddof=1)) if "accuracy" in g else "",
                    "train_seconds": _pm(g.train_seconds.mean(), g.train_seconds.std(ddof=1))})
    order = {t: i for i, t in enumerate(dict.fromkeys(df.target))}
    agg = pd.DataFrame(agg)
    agg = agg.sort_values(["target", "method", "alpha"], key=lambda c: c.map(order) if c.name == "target" else c,
                          kind="stable")
    runs = df.sort_values(["target", "alpha", "method", "seed"],
                          key=lambda c: c.map(order) if c.name == "target" else c)[
        ["target", "tail", "beta", "method", "alpha", "seed", "kl", "cvar_own", "cvar_pretrained", "cvar_predicted",
         "kl_predicted", "realisation", "validity", "uniqueness", "train_seconds"]]
    budgets = ", ".join(f"`{b}`" for b in sorted(set(df.budget)))
    patches = sorted({str(p) for p in df.get("patch", pd.Series(dtype=str)).fillna("") if str(p)})
    lines = ["# Tail frontier: TFFT and expected-FT over alpha, against stage 1's prediction", ""]
    if quick:
        lines += ["**Quick mode (smoke budget): these numbers mean nothing; they only show the script runs.**", ""]
    lines += [f"{len(df)} runs; targets {', '.join(dict.fromkeys(df.target))}; budget {budgets}; "
              f"{df.wall_seconds.sum() / 60:.0f} min of runs, 1 thread each. `kl` is the control-cost estimate of "
              "KL(p_ft || p_pre) in nats; `cvar_own` the run's own-tail CVaR on the evaluation noise "
              "(`cvar_pretrained`: the pre-trained model on the same noise); `cvar_predicted` / `kl_predicted` "
              "stage 1 at the run's alpha on the offline batch of its seed (filled for expected-FT rows too); "
              "`realisation` = (cvar_own - cvar_pretrained) / (cvar_predicted - cvar_pretrained); "
              "`train_seconds` = stage 1 + stage 2 (+ refinement, value warm start)."
              + "".join(f" Config patch: `{p}`." for p in patches), "",
              "## TFFT against expected-FT at matched KL", "",
              "Expected-FT's own-tail CVaR interpolated at TFFT's mean KL along expected-FT's measured frontier "
              "(its per-alpha means, linear in KL, from the pre-trained model at KL 0); `spread` = root sum of "
              "squares of TFFT's seed std and expected-FT's interpolated seed std. Where TFFT's KL lies beyond "
              "expected-FT's largest, `*_less_kl` is the best expected-FT mean at a smaller KL: TFFT below it by "
              "more than the spread is `TFFT below, at more KL`. `tail_margin`: stage 1's predicted CVaR less the "
              "CVaR of the exact expected-reward optimum at the same predicted KL on the same offline batch "
              "(`tfftmol.core.mean_tilt`; mean over seeds): the lead of the exact TFFT optimum over the exact "
              "expected-FT optimum, of which runs realising a share s of both show about s.", "",
              _md_table(matched(df)), "",
              "## Checks at the config's alpha", "",
              "The target: realisation >= 0.7 with KL <= 2x the stage-1 prediction for each TFFT run at the "
              "config's alpha; `time_ratio` = TFFT / expected-FT fine-tune time at equal steps, mean over the "
              "(alpha, seed) pairs where both ran.", "", _md_table(checks(df)), "",
              "## Per alpha (mean ± std over seeds)", "", _md_table(agg), "",
              "![tail frontier](tail_frontier.png)", "", "## Every run", "", _md_table(runs), ""]
    md = "\n".join(lines)
    (out / "tail_frontier.md").write_text(md)
    plot(df, curve, out / "tail_frontier.png")
    return md


def plot(df: pd.DataFrame, curve: pd.DataFrame, path: Path) -> None:
    """One axis per target: own-tail CVaR against KL for every run, the per-alpha means and stage 1's curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(df.target))
    ncols = min(len(targets), PLOT_COLUMNS)
    nrows = -(-len(targets) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 4.0 * nrows), squeeze=False)
    for ax in axes.flat[len(targets):]:
        ax.set_visible(False)
    colors = {"expected": "tab:blue", "tfft": "tab:red"}
    for ax, target in zip(axes.flat, targets):
        d = df[df.target == target]
        tail, beta = d["tail"].iloc[0], float(d["beta"].iloc[0])
        pre = float(d.cvar_pretrained.mean())
        # a run whose KL is far beyond the others' (a collapsed fine-tune) is drawn at the axis edge, labelled
        far = d.kl > FAR_KL * float(np.nanmedian(d.kl))
        xmax = 1.25 * float(np.nanmax(np.r_[d.kl[~far].to_numpy(), d.kl_predicted.to_numpy(), 1e-3]))
        c = curve[curve.target == target] if len(curve) else curve
        for i, (seed, cs) in enumerate(c.groupby("seed") if len(c) else []):
            cs = cs.sort_values("kl_predicted")
            cs = cs[cs.kl_predicted <= xmax]
            ax.plot(cs.kl_predicted, cs.cvar_predicted, "-", color="k", lw=1, alpha=0.7 if i == 0 else 0.3,
                    label="stage 1 predicted (offline batch)" if i == 0 else None)
            if "cvar_mean_tilt" in cs:
                ax.plot(cs.kl_predicted, cs.cvar_mean_tilt, "-.", color="tab:blue", lw=1, alpha=0.7 if i == 0 else 0.3,
                        label="exact expected-FT optimum (offline batch)" if i == 0 else None)
        ax.plot(d.kl_predicted, d.cvar_predicted, "x", color="k", ms=5, label="predicted at the run alphas")
        for method in METHODS:
            m = d[d.method == method]
            if m.empty:
                continue
            ax.scatter(m.kl.clip(upper=xmax), m.cvar_own, s=14, color=colors[method], alpha=0.45)
            for _, r in m[far[m.index]].iterrows():
                ax.annotate(f"KL {r.kl:.3g} →", (xmax, r.cvar_own), fontsize=7, color=colors[method], ha="right",
                            xytext=(-4, -10), textcoords="offset points")
            g = m.groupby("alpha").agg(kl=("kl", "mean"), cv=("cvar_own", "mean"), sd=("cvar_own", "std"),
                                       f=("alpha_factor", "first")).sort_values("kl")
            g["kl"] = g.kl.clip(upper=xmax)
            ax.errorbar(g.kl, g.cv, yerr=g.sd.fillna(0.0), fmt="o-", ms=6, capsize=3, color=colors[method],
                        label={"tfft": "TFFT", "expected": "expected-FT"}[method] + " (mean ± std over seeds)")
            for a, r in g.iterrows():
                ax.annotate(f"{r.f:g}α", (r.kl, r.cv), fontsize=7, color=colors[method], xytext=(3, 3),
                            textcoords="offset points")
        ax.axhline(pre, color="0.5", ls="--", lw=1, label="pre-trained")
        ax.set_xlim(0, xmax)
        ax.set_xlabel("KL(p_ft || p_pre) (nats)")
        ax.set_ylabel(f"{tail}-CVaR$_{{{beta:g}}}$ (own tail)")
        a0 = float((d.alpha / d.alpha_factor).iloc[0])
        ax.set_title(f"{target}\nconfig α = {a0:.3g} (points labelled by α / config α)", fontsize=9)
        ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fill_margins(out: Path, runs_dir: str, model: str | None = None, log=print) -> int:
    """Fill ``cvar_mean_tilt`` of the rows (and curve points) that lack it, from each (target, seed)'s offline
    batch: cached under ``<runs_dir>/cache`` or drawn again, exactly as the run drew it.  A row whose stage-1
    prediction the batch does not reproduce (another model or budget, or a TFFT run that enlarged its batch to
    settle a near-tie) is left unfilled, with a line saying so.  Returns the number of run rows filled."""
    from tfftmol.pipeline import plan as stage1_plan

    df = pd.read_csv(out / CSV)
    curve = pd.read_csv(out / CURVE) if (out / CURVE).exists() else pd.DataFrame(columns=["target", "seed", "alpha"])
    for d in (df, curve):
        if "cvar_mean_tilt" not in d:
            d["cvar_mean_tilt"] = np.nan
    todo = df[df.cvar_mean_tilt.isna()]
    filled = 0
    for (target, seed, budget, patch), g in todo.groupby(["target", "seed", "budget", df.get("patch", pd.Series(
            "", index=df.index)).fillna("").astype(str)], sort=False):
        base = target_config(target, budget, model)
        if patch:
            base = _merge(base, json.loads(patch))
        base.update(name=f"{target}-margins-s{seed}", seed=int(seed), out_dir=str(runs_dir),
                    cache_dir=str(Path(runs_dir) / "cache"), threads=1)
        c_rows = curve[(curve.target == target) & (curve.seed == seed)]
        alphas = sorted(set(g.alpha.tolist()) | set(c_rows.alpha.tolist()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stage1_plan(base, alphas=alphas, plots=False, log=lambda s: None,
                              out=Path(runs_dir) / "margins" / f"{target}-s{seed}")
        tab = res.table[np.isclose(res.table.beta, float(g.beta.iloc[0]))]
        look = lambda a: tab.iloc[int(np.argmin(np.abs(tab.alpha.to_numpy() - a)))]  # noqa: E731
        same = lambda a, p: math.isclose(look(a).predicted_cvar, p, rel_tol=1e-6, abs_tol=1e-9)  # noqa: E731
        ok = [i for i in g.index if same(df.loc[i, "alpha"], df.loc[i, "cvar_predicted"])]
        for i in ok:
            df.loc[i, "cvar_mean_tilt"] = float(look(df.loc[i, "alpha"]).mean_tilt_cvar)
        filled += len(ok)
        if ok:  # the batch is the runs' own: the curve is stage 1 on it
            for i in c_rows.index:
                curve.loc[i, "cvar_mean_tilt"] = float(look(curve.loc[i, "alpha"]).mean_tilt_cvar)
        left = [f"{df.loc[i, 'method']} alpha {df.loc[i, 'alpha']:g}" for i in g.index if i not in ok]
        log(f"{target} seed {seed}: {len(ok)} of {len(g)} rows filled ({'cached' if res.cached else 'drawn'} batch)"
            + (f"; the batch does not reproduce stage 1 of {', '.join(left)}: left unfilled" if left else ""))
    for d, f in ((df, CSV), (curve, CURVE)):
        if len(d):
            _write_csv(out / f, d)
    return filled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=None, choices=list(TARGETS))
    ap.add_argument("--budget", choices=["quick", "demo", "bench", "full"], default="demo")
    ap.add_argument("--alphas", nargs="+", type=float, default=None,
                    help="factors of each config's alpha (default 0.3 1 3; 1 is the config's alpha)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per alpha (default 2)")
    ap.add_argument("--config-seeds", type=int, default=None, help="seeds at the config's alpha (default 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="skip the seeds below this one (split one plan's seeds between processes)")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes of 1 thread")
    ap.add_argument("--append", action="store_true",
                    help="keep the existing CSV rows and skip runs already in it (add runs in chunks)")
    ap.add_argument("--replot", action="store_true", help="rebuild the .md and .png from the CSVs, run nothing")
    ap.add_argument("--fill-margins", action="store_true",
                    help="fill the cvar_mean_tilt column of rows that lack it from each seed's offline batch "
                         "(cached under --runs, or drawn again), then rebuild the .md and .png")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: qed_right, budget quick, alphas 1 4, one seed (numbers mean nothing)")
    ap.add_argument("--model", default=None, help="override the configs' model")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default=None, help="per-run reports (default runs/tail_frontier)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--quiet", action="store_true", help="do not print the markdown at the end")
    ap.add_argument("--patch", type=json.loads, default=None,
                    help='a JSON config patch merged into every run\'s config last, e.g. '
                         '\'{"tfft": {"am": {"late_loss_steps": 10}}}\' (use with --out: a patched frontier is a '
                         'different experiment)')
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.fill_margins:
        n = fill_margins(out, str(Path(a.runs) if a.runs else ROOT / "runs" / "tail_frontier"), a.model)
        print(f"{n} rows filled")
    if a.replot or a.fill_margins:
        md = write(out)
        if not a.quiet:
            print(md)
        return 0
    if a.quick:
        targets, budget = a.targets or ["qed_right"], "quick"
        factors, seeds, cseeds = a.alphas or [1.0, 4.0], a.seeds or 1, a.config_seeds or 1
    else:
        targets, budget = a.targets or DEFAULT_TARGETS, a.budget
        factors = a.alphas or [0.3, 1.0, 3.0]
        seeds = a.seeds if a.seeds is not None else 2
        cseeds = a.config_seeds if a.config_seeds is not None else 3
    if a.first_seed < 0:
        ap.error(f"--first-seed={a.first_seed} must be >= 0")
    todo = plan(targets, factors, seeds, cseeds, a.first_seed)
    if a.append and (out / CSV).exists():
        have = pd.read_csv(out / CSV)
        alpha0 = {t: config_alpha(t) for t in targets}
        todo = [j for j in todo if not _same_run(have, {"target": j[0], "method": j[1], "alpha": alpha0[j[0]] * j[2],
                                                          "seed": j[3]}).any()]
        print(f"--append: {len(have)} rows kept, {len(todo)} runs to do", flush=True)
    elif not a.append:
        for f in (CSV, CURVE):
            (out / f).unlink(missing_ok=True)
    runs_dir = str(Path(a.runs) if a.runs else ROOT / "runs" / "tail_frontier")
    calls = [(t, m, f, s, budget, a.model, runs_dir, a.progress, a.patch) for t, m, f, s in todo]
    print(f"{len(calls)} runs: " + ", ".join(f"{t}/{m}/{f:g}a/s{s}" for t, m, f, s in todo), flush=True)
    for _, (row, curve) in run_jobs(run_frontier_one, calls, a.jobs):
        if row is None:
            continue
        _upsert(out / CSV, [row], KEY)
        _upsert(out / CURVE, curve, ["target", "seed", "alpha"])
    if not (out / CSV).exists():
        print("nothing to do")
        return 0
    md = write(out)
    if not a.quiet:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
