"""TFFT against expected-FT on the drug-like targets of ``zinc-selfies`` (configs ``configs/zinc_*.yaml``).

For each config and seed, runs the expected-reward baseline and TFFT through
:func:`tfftmol.pipeline.run` with the same alpha, Adjoint Matching budget,
offline batch (shared through the cache, as is the surrogate's ZINC250k warm
start) and evaluation noise, and writes one row per (target, method, seed):
the own-tail CVaR of the pre-trained and fine-tuned model, stage 1's predicted
CVaR and KL, the realisation ratio, the KL estimate, validity, uniqueness,
novelty and wall times, to ``<out>/zinc_targets.csv``.

    python benchmarks/zinc_targets.py [--targets zinc_qed_right ...] [--seeds 0 1 2] [--steps N]
        [--methods tfft expected] [--alpha A ...] [--decode-beam K] [--runs runs/zinc_targets]
        [--out benchmarks/results]
    python benchmarks/zinc_targets.py --quick --model tiny.safetensors --runs /tmp/r --out /tmp/o   # smoke
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.core.config import load_yaml, merge  # noqa: E402
from tfftmol.pipeline import load_run_config, run as run_pipeline  # noqa: E402
from tfftmol.pipeline.run import own_tail_column  # noqa: E402

TARGETS = ["zinc_qed_right", "zinc_mpo_right", "zinc_sa_left", "zinc_logp_window_left", "zinc_qed_two_sided"]
QUICK = {"eval": {"samples": 100, "steps": 10, "kl_samples": 16},
         "tfft": {"offline_samples": 200, "offline_steps": 10, "bootstrap": 0, "refine_samples": 100,
                  "am": {"steps": 4, "batch_size": 16, "time_steps": 10, "loss_time_steps": 3}},
         "options": {"warm_start": 200, "surrogate": {"epochs": 2, "refit_epochs": 1}, "refit_every": 2}}
KEEP = ["validity", "uniqueness", "novelty", "reward_mean", "kl", "cvar_predicted", "kl_predicted", "realisation",
        "eta", "train_seconds"]


def run_one(target: str, method: str, seed: int, steps: int | None, runs: Path, progress: bool,
            model: str | None = None, quick: bool = False, alpha: float | None = None,
            decode_beam: int | None = None) -> dict:
    import torch

    torch.set_num_threads(1)
    data = load_yaml(ROOT / "configs" / f"{target}.yaml")
    patch: dict = {"tfft": {"method": method}, "name": f"{target}-{method}-s{seed}", "seed": seed,
                   "out_dir": str(runs), "cache_dir": str(runs / "cache"), "threads": 1}
    if quick:  # smoke budget: the numbers mean nothing
        data = merge(data, QUICK, opaque=("reward",))
    if steps:
        patch["tfft"]["am"] = {"steps": steps}
    if model:
        patch["options"] = {"model": model}
    if decode_beam is not None:  # another decoder (1 = greedy); runs and caches apart from the config's
        patch.setdefault("options", {})["decode_beam"] = decode_beam
        patch["name"] += f"-b{decode_beam}"
    if alpha is not None:  # another KL weight (e.g. expected-FT at the KL TFFT reached)
        patch["tfft"]["alpha"] = alpha
        patch["name"] = f"{target}-{method}-a{alpha:g}-s{seed}" + (f"-b{decode_beam}" if decode_beam is not None else "")
    cfg = load_run_config(merge(data, patch, opaque=("reward",)))
    t0 = time.perf_counter()
    res = run_pipeline(cfg, overwrite=True, progress=progress, log=(print if progress else (lambda s: None)))
    wall = time.perf_counter() - t0
    m = res.metrics
    own = own_tail_column(cfg)
    row = {"target": target, "method": method, "seed": seed, "tail": own, "steps": cfg.tfft.am.steps,
           "alpha": cfg.tfft.alpha, "decode_beam": int(getattr(res.model, "decode_beam", 1)), "cvar_pre": float(m[own].iloc[0]), "cvar_post": float(m[own].iloc[1]),
           "validity_pre": float(m["validity"].iloc[0]), "uniqueness_pre": float(m["uniqueness"].iloc[0])}
    row.update({k: float(m[k].iloc[1]) for k in KEEP if k in m.columns})
    row["wall_seconds"] = wall
    print(f"{target} {method} seed {seed}: {own} {row['cvar_pre']:.4f} -> {row['cvar_post']:.4f} "
          f"(predicted {row.get('cvar_predicted', float('nan')):.4f}, realisation "
          f"{row.get('realisation', float('nan')):.2f}), KL {row['kl']:.3g}, validity {row['validity_pre']:.3f} -> "
          f"{row['validity']:.3f}, uniqueness {row['uniqueness_pre']:.3f} -> {row['uniqueness']:.3f}, "
          f"{wall:.0f} s", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", nargs="+", default=["zinc_qed_right"], choices=TARGETS)
    ap.add_argument("--methods", nargs="+", default=["tfft", "expected"], choices=["tfft", "expected"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=None, help="override the Adjoint Matching steps")
    ap.add_argument("--runs", default=str(ROOT / "runs" / "zinc_targets"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--model", default=None, help="override the configs' model (name or .safetensors path)")
    ap.add_argument("--alpha", nargs="+", type=float, default=None,
                    help="override the configs' alpha (one run per value; default: the config's)")
    ap.add_argument("--decode-beam", type=int, default=None,
                    help="override the configs' SELFIES decoder beams (1 = greedy; default: the config's)")
    ap.add_argument("--quick", action="store_true", help="smoke budget (its numbers mean nothing)")
    ap.add_argument("--progress", action="store_true")
    a = ap.parse_args(argv)
    rows = [run_one(t, m, s, a.steps, Path(a.runs), a.progress, a.model, a.quick, al, a.decode_beam)
            for t in a.targets for s in a.seeds for m in a.methods for al in (a.alpha or [None])]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    path = out / "zinc_targets.csv"
    if path.exists():  # keep the rows of other (target, method, seed, alpha, decoder, steps) runs
        old = pd.read_csv(path)
        key = ["target", "method", "seed", "alpha", "decode_beam", "steps"]
        if "decode_beam" not in old.columns:  # rows written before the decoder had a choice: greedy
            old["decode_beam"] = 1
        old = old[~old.set_index(key).index.isin(df.set_index(key).index)]
        df = pd.concat([old, df], ignore_index=True)
    df.to_csv(path, index=False)
    print(df.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
