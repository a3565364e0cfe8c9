"""Information ceiling: how much of stage 1's predicted tail gain a fine-tune driven by the run's surrogate can reach.

Stage 1 predicts the optimum as a tilt of the pre-trained samples by their own rewards.  On the
molecular targets stage 2 sees the reward through a surrogate ``s(x)`` fitted to the offline batch
(the gradient path) and refitted on-policy.  The best fine-tune that sees the reward only through
``s`` is the best tilt that depends on the state only through ``s``:
:func:`tfftmol.core.ceiling.information_ceiling` solves that restricted problem exactly on samples
grouped by their score (docs/design.md §8.1).

For each target, with the run's own config at ``--budget`` (``benchmarks/tail_frontier.py``'s
targets and budgets):

1. the pre-trained model's offline batch (``tfft.offline_samples`` SDE samples, the run's sampler)
   trains the run's surrogate exactly as a run's first fit does (warm start included);
2. ``--n`` fresh SDE samples, scored by the true reward, are scored by that surrogate where stage 2
   reads it (the final state, or with ``terminal_time < 1`` the denoised state of that time, whose
   gradient starts the adjoint; held-out Spearman);
3. over a grid of alphas, stage 1 on the fresh samples (the full-information prediction) and the
   information ceiling (the same samples grouped by the surrogate's score into ``--bins`` bins)
   give two frontiers of (KL, CVaR);
4. the TFFT runs of ``tail_frontier.csv`` (mean over seeds per alpha) are set beside them: their
   gain over the pre-trained model, the gain stage 1 predicts and the ceiling's gain at the run's
   alpha and at the run's KL (linear in KL along each frontier).

Writes ``information_ceiling.csv`` (one row per target and alpha of the grid),
``information_ceiling_runs.csv`` (one row per target and TFFT alpha measured; only when there are runs) and
``information_ceiling.md`` to ``--out``.

    python benchmarks/information_ceiling.py [--targets zinc_qed_right ...] [--n 10000] [--budget demo]
    python benchmarks/information_ceiling.py --quick --out DIR   # smoke size (the test); numbers mean nothing
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tail_frontier import CSV as FRONTIER_CSV  # noqa: E402
from tail_frontier import _merge, target_config  # noqa: E402
from tfftmol.core.ceiling import information_frontier  # noqa: E402
from tfftmol.core.sampling import sample  # noqa: E402
from tfftmol.pipeline.config import load_run_config  # noqa: E402
from tfftmol.pipeline.registry import get_task  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402

DEFAULT_TARGETS = ["zinc_qed_right", "zinc_osimertinib_mpo_right", "zinc_fexofenadine_mpo_right", "qed_right"]
FACTORS = np.unique(np.r_[np.geomspace(1 / 30, 10, 15), 1.0])  # factors of the config alpha (1 included)
QUICK_PATCH = {"tfft": {"offline_samples": 120, "offline_steps": 8},
               "options": {"warm_start": 100, "surrogate": {"epochs": 2, "hidden": 32}}}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


def _at_kl(frontier: pd.DataFrame, which: str, kl: float) -> float:
    """The frontier's CVaR at ``kl`` (linear in KL between grid points, from the pre-trained model at KL 0)."""
    k = np.concatenate([[0.0], frontier[f"kl_{which}"].to_numpy()])
    c = np.concatenate([[frontier["pre_cvar"].iloc[0]], frontier[f"cvar_{which}"].to_numpy()])
    order = np.argsort(k, kind="stable")
    k, c = k[order], np.maximum.accumulate(c[order])  # the frontier: the best CVaR at KL <= k
    return float(np.interp(kl, k, c)) if kl <= k[-1] else float("nan")


def measure(target: str, budget: str, n: int, bins: int | None, seed: int, quick: bool, patch: dict | None = None,
            log=print):
    """(frontier DataFrame, info dict) of one target (``patch``: merged into its config last)."""
    d = target_config(target, budget)
    if quick:
        d = _merge(d, QUICK_PATCH)
    if patch:
        d = _merge(d, patch)
    cfg = load_run_config(d)
    task = get_task(cfg.task)
    torch.manual_seed(seed)
    base = task.load_base(cfg, torch.device("cpu"))
    reward = task.build_reward(cfg, base, torch.device("cpu"), lambda *_: None)
    t = cfg.tfft
    method = {"sde": "sde", "ode": "euler", "heun": "heun"}.get(t.offline_sampler, t.offline_sampler)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x_off = sample(base, t.offline_samples, method=method, steps=t.offline_steps, generator=gen, batch_size=500).x
    rb = reward.evaluate(x_off)
    reward.fit_offline(x_off, rb.values, rb.valid)  # the run's first fit (warm start, epochs, split)
    gen = torch.Generator().manual_seed(seed + 1)
    x = sample(base, n, method=method, steps=t.offline_steps, generator=gen, batch_size=500).x
    ev = reward.evaluate(x)
    r = ev.values.double().numpy()
    # scored where stage 2 reads the surrogate: the final state, or the denoised (noisy) state of terminal_time
    xs = x if reward.denoise is None else reward.denoise(x, 1_000_003)
    s = reward.surrogate.predict(xs.float()).double().numpy()
    fr = information_frontier(r, s, beta=t.beta, alphas=list(t.alpha * FACTORS), tail=t.tail, bins=bins)
    fr.insert(0, "target", target)
    fr.insert(1, "tail", t.tail)
    fr.insert(2, "beta", t.beta)
    fr["alpha_factor"] = FACTORS
    fr["gain_full"] = fr["cvar_full"] - fr["pre_cvar"]
    fr["gain_ceiling"] = fr["cvar_ceiling"] - fr["pre_cvar"]
    fr["ceiling_share"] = fr["gain_ceiling"] / fr["gain_full"]
    info = {"target": target, "tail": t.tail, "beta": t.beta, "config_alpha": t.alpha, "n": n,
            "offline_samples": t.offline_samples, "validity": float(ev.valid.float().mean()),
            "scored_at": "x1" if reward.denoise is None else
            f"{'x_t' if t.am.terminal_state == 'noisy' else 'xhat'}(t={t.am.terminal_time:g})",
            "spearman": _spearman(s, r), "seconds": time.perf_counter() - t0,
            "fit_spearman": reward.reports[0].get("spearman") if reward.reports else float("nan")}
    log(f"{target}: held-out Spearman {info['spearman']:.3f} on {n} samples, {info['seconds']:.0f} s")
    return fr, info


def runs_beside(frontier: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The measured TFFT runs of one target (mean over seeds per alpha) beside both frontiers."""
    out = []
    for alpha, g in runs[runs["method"] == "tfft"].groupby("alpha"):
        gain = float((g["cvar_own"] - g["cvar_pretrained"]).mean())
        kl = float(g["kl"].mean())
        pre = frontier["pre_cvar"].iloc[0]
        # the frontiers at the run's alpha: interpolated in log alpha on the grid
        la, grid = np.log(alpha), np.log(frontier["alpha"].to_numpy())
        order = np.argsort(grid)
        full_a = float(np.interp(la, grid[order], frontier["gain_full"].to_numpy()[order]))
        ceil_a = float(np.interp(la, grid[order], frontier["gain_ceiling"].to_numpy()[order]))
        out.append({"target": frontier["target"].iloc[0], "alpha": float(alpha), "seeds": len(g), "kl": kl,
                    "gain": gain, "realisation": float(g["realisation"].mean()),
                    "gain_full_at_alpha": full_a, "gain_ceiling_at_alpha": ceil_a,
                    "ceiling_share_at_alpha": ceil_a / full_a if full_a else float("nan"),
                    "gain_full_at_kl": _at_kl(frontier, "full", kl) - pre,
                    "gain_ceiling_at_kl": _at_kl(frontier, "ceiling", kl) - pre})
        o = out[-1]
        o["gain_over_ceiling_at_kl"] = o["gain"] / o["gain_ceiling_at_kl"] if o["gain_ceiling_at_kl"] > 0 else float("nan")
    return pd.DataFrame(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS)
    ap.add_argument("--budget", default="demo", help="tail_frontier.py's budget of the runs compared (demo)")
    ap.add_argument("--n", type=int, default=10_000, help="fresh samples of the two frontiers")
    ap.add_argument("--bins", type=int, default=None, help="groups of the surrogate's score (default ~200 samples each)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "results" / FRONTIER_CSV,
                    help="the measured runs (tail_frontier.csv)")
    ap.add_argument("--patch", type=json.loads, default=None,
                    help='a JSON config patch, e.g. \'{"options": {"decode_beam": 4}}\' (the measured runs are then '
                         "not set beside: they ran without it)")
    ap.add_argument("--tag", default="", help="suffix of the output files (information_ceiling_<tag>.*)")
    ap.add_argument("--quick", action="store_true", help="zinc_qed_right on a few hundred samples (the test)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)
    if a.quick:
        a.targets, a.n = ["zinc_qed_right"], 400
    torch.set_num_threads(1)
    frontiers, infos, beside = [], [], []
    runs = pd.read_csv(a.runs) if a.runs.is_file() and not a.patch else pd.DataFrame()
    for target in a.targets:
        fr, info = measure(target, a.budget, a.n, a.bins, a.seed, a.quick, a.patch)
        frontiers.append(fr)
        infos.append(info)
        if len(runs) and "target" in runs and (runs["target"] == target).any():
            beside.append(runs_beside(fr, runs[runs["target"] == target]))
    frontier = pd.concat(frontiers, ignore_index=True)
    info = pd.DataFrame(infos)
    measured = pd.concat(beside, ignore_index=True) if beside else pd.DataFrame()
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "information_ceiling" + ("_quick" if a.quick else "") + (f"_{a.tag}" if a.tag else "")
    frontier.to_csv(a.out / f"{stem}.csv", index=False)
    if len(measured):
        measured.to_csv(a.out / f"{stem}_runs.csv", index=False)
    at_config = frontier[np.isclose(frontier["alpha_factor"], 1.0)]
    md = [f"# Information ceiling ({a.budget} budget configs, {a.n} fresh SDE samples per target, seed {a.seed})", "",
          *([f"Config patch: `{json.dumps(a.patch)}`.", ""] if a.patch else []),
          "`*_full`: stage 1 on the fresh samples (the tilt by each sample's own reward); `*_ceiling`: the best tilt "
          "that depends on the state only through the run's surrogate, fitted as the run's first fit does "
          "(`tfftmol.core.ceiling`); `ceiling_share` = ceiling gain / full gain.  Spearman: the surrogate against the "
          "true reward on the fresh samples.", "",
          markdown_table(info), "", "## Measured TFFT runs beside both frontiers", "",
          f"From `{a.runs.name}` (mean over seeds per alpha): `gain` = own-tail CVaR - pre-trained on the evaluation "
          "noise; `*_at_alpha`: the frontiers at the run's alpha; `*_at_kl`: at the run's measured KL; "
          "`gain_over_ceiling_at_kl` = gain / ceiling gain at that KL.", "",
          markdown_table(measured) if len(measured) else "no measured run of these targets", "",
          "## Frontiers", "", markdown_table(frontier.drop(columns=["eta_full", "eta_ceiling"])), ""]
    (a.out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md[:8]))
    if len(measured):
        print(markdown_table(measured))
    return {"frontier": frontier, "info": info, "runs": measured, "at_config": at_config}


if __name__ == "__main__":
    main()
