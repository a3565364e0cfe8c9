"""Property-target benchmark: pretrained vs expected-FT vs TFFT on molecular targets.

For each target config (default: ``configs/qed_right.yaml``,
``configs/qed_left_validity.yaml``, ``configs/gap_right.yaml``,
``configs/sa_left.yaml``) and each seed, runs the expected-reward baseline and
TFFT through :func:`tfftmol.pipeline.run` with the *same* alpha,
number of Adjoint Matching steps, batch, offline batch (shared through the
cache) and evaluation noise.  The pretrained row is the pre-trained model
evaluated on the same noise inside each run.

Writes ``<out>/property_targets.csv`` (one row per target x method x seed) and
``<out>/property_targets.md``: mean ± std over seeds of the mean reward,
right-CVaR_0.9, left-CVaR_0.1, validity, uniqueness, novelty, internal
diversity, the control-cost KL estimate and wall time (stage 1 + stage 2 of the
fine-tune), and per target the TFFT / expected-FT time ratio and whether TFFT
beats expected-FT in its own tail by more than the spread over seeds.

    python benchmarks/property_targets.py [--seeds 3] [--targets qed_right sa_left] [--jobs 2]
    python benchmarks/property_targets.py --budget full [--steps N]    # the configs as written
    python benchmarks/property_targets.py --quick [--model tiny.safetensors] [--out DIR]

The default ``--budget bench`` is the ``tfftmol demo-mol`` budget (150 Adjoint
Matching steps of 32 trajectories, 2,000 offline molecules, 1,000 evaluation
molecules), a few minutes per fine-tune on one core.

``--quick`` is a smoke budget (a few steps, tens of molecules, 2 seeds) used by
the tests; its numbers mean nothing and its table says so.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.pipeline import load_run_config as load_config, run as run_pipeline  # noqa: E402
from tfftmol.core.config import load_yaml  # noqa: E402

TARGETS = ["qed_right", "qed_left_validity", "gap_right", "sa_left"]
METHODS = ["pretrained", "expected", "tfft"]
COLUMNS = ["reward_mean", "reward_cvar_right_0.9", "reward_cvar_left_0.1", "validity", "uniqueness", "novelty",
           "int_div", "kl", "train_seconds"]

QUICK = {
    "tfft": {"offline_samples": 64, "offline_steps": 5, "offline_sampler": "ode", "bootstrap": 0,
             "refine_samples": 32, "am": {"steps": 3, "batch_size": 8, "time_steps": 5, "loss_time_steps": 2}},
    "surrogate": {"hidden": 16, "layers": 1, "heads": 2, "epochs": 1, "refit_epochs": 1, "batch_size": 32},
    "refit_every": 2, "eval_samples": 32, "eval_steps": 5, "kl_samples": 8, "checkpoint_every": 100,
}

# the default budget: the `tfftmol demo-mol` budget (about 3-4 minutes per fine-tune on one core)
BENCH = {
    "tfft": {"offline_samples": 2000, "offline_steps": 30, "offline_sampler": "sde", "bootstrap": 50,
             "refine_samples": 500, "am": {"steps": 150, "batch_size": 32, "time_steps": 30, "loss_time_steps": 8}},
    "surrogate": {"epochs": 15, "patience": 4, "refit_epochs": 2},
    "refit_every": 25, "eval_samples": 1000, "eval_steps": 30, "kl_samples": 200, "checkpoint_every": 50,
}


def _merge(base: dict, patch: dict) -> dict:
    """Budget patches merge into a config section by section; the reward spec is replaced whole."""
    from tfftmol.core.config import merge

    return merge(base, patch, opaque=("reward",))


def _budget(name: str) -> dict:
    if name == "quick":
        return QUICK
    if name == "bench":
        return BENCH
    return {}


def fine_tune_seconds(timings: dict) -> float:
    """Wall time of the fine-tune proper: stage 1, stage 2, the threshold refinement and the value warm start."""
    return float(sum(timings.get(k, 0.0) for k in ("stage1", "stage2", "refine", "value_warm_start")))


def run_one(base: dict, method: str, seed: int, name: str, runs_dir: str, progress: bool):
    """One fine-tune of the config dict ``base`` with ``method`` and ``seed`` through the pipeline.

    Returns ``(metrics, train_seconds, wall_seconds, RunResult)``; the offline batch is shared
    through ``<runs_dir>/cache``.
    """
    cfg = _merge(base, {"tfft": {"method": method}})
    cfg.update(name=name, seed=seed, out_dir=str(runs_dir), cache_dir=str(Path(runs_dir) / "cache"), threads=1)
    cfg = load_config(cfg)  # validated before any compute
    t0 = time.perf_counter()
    res = run_pipeline(cfg, overwrite=True, progress=progress, log=(print if progress else (lambda s: None)))
    wall = time.perf_counter() - t0
    return res.metrics, fine_tune_seconds(res.timings), wall, res


def run_jobs(fn, calls: list[tuple], jobs: int = 1):
    """Yield ``(index, fn(*calls[index]))`` as each call finishes, in ``jobs`` spawned processes of 1 thread."""
    if jobs <= 1:
        for i, args in enumerate(calls):
            yield i, fn(*args)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
        futures = {ex.submit(fn, *args): i for i, args in enumerate(calls)}
        for f in as_completed(futures):
            yield futures[f], f.result()


def _run_pair(target: str, seed: int, budget: str, model: str | None, steps: int | None, runs_dir: str,
              progress: bool) -> list[dict]:
    """Expected-FT then TFFT for one (target, seed), sharing the offline batch; rows for all three methods."""
    import torch

    torch.set_num_threads(1)
    base = _merge(load_yaml(ROOT / "configs" / f"{target}.yaml"), _budget(budget))
    if model:
        base["model"] = model
    if steps:
        base = _merge(base, {"tfft": {"am": {"steps": steps}}})
    per_method = {}
    for method in ("expected", "tfft"):
        mm, train, wall, res = run_one(base, method, seed, f"{target}-{method}-s{seed}", runs_dir, progress)
        per_method[method] = (mm, train, wall, res)
        print(f"{target} seed {seed} {method}: {train:.1f} s fine-tune, {wall:.1f} s total", flush=True)
    rows = []
    m_pre = per_method["tfft"][0].iloc[0]
    for method in METHODS:
        if method == "pretrained":
            r, train, wall, eta = m_pre, 0.0, 0.0, float("nan")
        else:
            mm, train, wall, res = per_method[method]
            r = mm.iloc[1]
            eta = float(res.eta) if res.eta is not None else float("nan")
        row = {"target": target, "method": method, "seed": seed, "tail": r["tail"], "beta": r["beta"],
               "alpha": r["alpha"], "steps": int(r["steps"]), "eta": eta}
        for c in COLUMNS[:-1]:
            row[c] = float(r[c]) if c in r.index else float("nan")
        row["train_seconds"] = train
        row["wall_seconds"] = wall
        rows.append(row)
    return rows


def run(targets: list[str], seeds: list[int], budget: str, model: str | None, steps: int | None,
        runs_dir: Path, progress: bool, jobs: int = 1) -> pd.DataFrame:
    """One row per (target, method, seed) with the metric columns and wall times.

    ``jobs > 1`` runs (target, seed) pairs in that many processes; both methods of a pair
    always run in the same process, one after the other, so their time ratio is fair.
    """
    pairs = [(t, s) for t in targets for s in seeds]
    args = (budget, model, steps, str(runs_dir), progress)
    out = [None] * len(pairs)
    for i, rows in run_jobs(_run_pair, [(t, s, *args) for t, s in pairs], jobs):
        out[i] = rows
    return pd.DataFrame([r for rows in out for r in rows])


def _pm(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return ""
    return f"{mean:.4g}" if not np.isfinite(std) else f"{mean:.4g} ± {std:.2g}"


def summarise(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean ± std table per target x method, per-target verdicts)."""
    cols = COLUMNS
    g = df.groupby(["target", "method"], sort=False)
    mean, std = g[cols].mean(), g[cols].std(ddof=1)
    table = pd.DataFrame(index=mean.index)
    for c in cols:
        table[c] = [_pm(m, s) for m, s in zip(mean[c], std[c])]
    table = table.reset_index()
    verdicts = []
    for target, d in df.groupby("target", sort=False):
        tail, beta = d["tail"].iloc[0], float(d["beta"].iloc[0])
        col = f"reward_cvar_{tail}_{beta:g}"
        if col not in d.columns:
            col = "reward_cvar_right_0.9" if tail == "right" else "reward_cvar_left_0.1"
        t, e, p = (d[d.method == k] for k in ("tfft", "expected", "pretrained"))
        diff = float(t[col].mean() - e[col].mean())
        spread = float(math.sqrt(np.nan_to_num(t[col].std(ddof=1)) ** 2 + np.nan_to_num(e[col].std(ddof=1)) ** 2))
        te = t.set_index("seed")["train_seconds"] / e.set_index("seed")["train_seconds"]
        verdicts.append({
            "target": target, "tail": f"{tail}-CVaR_{beta:g}", "tfft": float(t[col].mean()),
            "expected": float(e[col].mean()), "pretrained": float(p[col].mean()), "tfft_minus_expected": diff,
            "spread": spread, "tfft_beats_expected": bool(diff > spread),
            "validity_change_tfft": float(t["validity"].mean() - p["validity"].mean()),
            "time_ratio_tfft_over_expected": float(te.mean()), "seeds": int(t["seed"].nunique())})
    return table, pd.DataFrame(verdicts)


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.4g}"
        return str(v)
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)])


def write(df: pd.DataFrame, out: Path, quick: bool, note: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "property_targets.csv", index=False)
    table, verdicts = summarise(df)
    lines = ["# Property targets: pretrained vs expected-FT vs TFFT", ""]
    if quick:
        lines += ["**Quick mode (smoke budget): these numbers mean nothing; they only show the script runs.**", ""]
    lines += [note, "", "Mean ± std over seeds (rewards include the validity penalty; `kl` is the control-cost "
              "estimate of KL(p_ft || p_pre) in nats; `train_seconds` is stage 1 + stage 2 of the fine-tune).", "",
              _md_table(table), "", "## Per target", "",
              "TFFT's own tail against expected-FT (`spread` = root sum of squares of the two standard deviations "
              "over seeds); `time_ratio` = TFFT / expected-FT fine-tune time, mean over seeds.", "",
              _md_table(verdicts), "", "![own-tail CVaR per target](property_targets.png)", ""]
    (out / "property_targets.md").write_text("\n".join(lines))
    plot(df, out / "property_targets.png")


def plot(df: pd.DataFrame, path: Path) -> None:
    """One panel per target: its own-tail CVaR (mean ± std over seeds) and validity, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(df["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 3.2), squeeze=False)
    colors = {"pretrained": "0.6", "expected": "tab:blue", "tfft": "tab:red"}
    for ax, target in zip(axes[0], targets):
        d = df[df.target == target]
        tail, beta = d["tail"].iloc[0], float(d["beta"].iloc[0])
        col = f"reward_cvar_{tail}_{beta:g}"
        g = d.groupby("method", sort=False)
        means, stds = g[col].mean(), g[col].std(ddof=1).fillna(0.0)
        methods = [m for m in METHODS if m in means.index]
        for i, m in enumerate(methods):  # points with error bars: a bar from 0 means nothing for a CVaR
            ax.errorbar([i], [means[m]], yerr=[stds[m]], fmt="o", capsize=5, ms=7, color=colors[m])
            ax.scatter(np.full(int((d.method == m).sum()), i + 0.12), d.loc[d.method == m, col], s=9,
                       color=colors[m], alpha=0.5)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlim(-0.5, len(methods) - 0.5)
        lo = min(min(means[m] - stds[m], d.loc[d.method == m, col].min()) for m in methods)
        hi = max(max(means[m] + stds[m], d.loc[d.method == m, col].max()) for m in methods)
        pad = 0.15 * (hi - lo + 1e-9)
        ax.set_ylim(lo - pad, hi + pad)
        for i, m in enumerate(methods):
            ax.text(i, lo - 0.5 * pad, f"valid {g['validity'].mean()[m]:.3f}", ha="center", fontsize=7)
        ax.set_title(f"{target}\n{tail}-CVaR$_{{{beta:g}}}$ (own tail)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke budget (tests); same as --budget quick")
    ap.add_argument("--budget", choices=["bench", "full", "quick"], default="bench",
                    help="bench: the demo-mol budget (default); full: the configs as written")
    ap.add_argument("--jobs", type=int, default=1, help="processes running (target, seed) pairs in parallel")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; 2 with --quick)")
    ap.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    ap.add_argument("--model", default=None, help="override the configs' model (name or .safetensors path)")
    ap.add_argument("--steps", type=int, default=None, help="override the Adjoint Matching steps")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs", default=None, help="where the per-run reports go (default runs/property_targets)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--replot", action="store_true", help="rewrite the .md and .png from the existing CSV, run nothing")
    a = ap.parse_args(argv)
    if a.replot:
        out = Path(a.out)
        df = pd.read_csv(out / "property_targets.csv")
        md = (out / "property_targets.md").read_text().splitlines()
        note = next((line for line in md if line.startswith("Targets ")), "")
        write(df, out, "Quick mode" in "\n".join(md), note)
        print((out / "property_targets.md").read_text())
        return 0
    import torch
    torch.set_num_threads(1)
    n_seeds = a.seeds if a.seeds is not None else (2 if a.quick else 3)
    runs_dir = Path(a.runs) if a.runs else ROOT / "runs" / "property_targets"
    t0 = time.perf_counter()
    budget = "quick" if a.quick else a.budget
    df = run(a.targets, list(range(n_seeds)), budget, a.model, a.steps, runs_dir, a.progress, a.jobs)
    note = (f"Targets {', '.join(a.targets)}; {n_seeds} seeds; budget `{budget}`; model "
            f"{a.model or 'from the configs'}; total wall time {time.perf_counter() - t0:.0f} s, "
            f"{a.jobs} process(es) of 1 thread.")
    write(df, Path(a.out), budget == "quick", note)
    print((Path(a.out) / "property_targets.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
