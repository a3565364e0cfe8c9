"""Benchmark of the shipped ``qm9-graph`` flow: sample quality against QM9 and speed.

    python benchmarks/qm9_model.py                 # 10,000 seeded samples
    python benchmarks/qm9_model.py --quick         # ~200 samples (used by the tests)
    python benchmarks/qm9_model.py --update-card   # also writes the figures into the model card

Measured (``n`` samples, default sampler and steps):

- validity (sanitises and is one connected fragment, no valence correction)
  and the fraction of each failure reason;
- uniqueness (distinct / valid), novelty (distinct not in the training split,
  by canonical SMILES), internal diversity (mean pairwise ``1 - Tanimoto``,
  Morgan radius 2, 2048 bits, on at most 2,000 valid molecules);
- FCD against the test split (the ChemNet of the pinned ``fcd`` package, ``tfftmol.chem.moses_metrics``;
  the model card's 6.30 was measured with ``fcd_torch``, which is no longer used);
- QED, logP (Crippen), SA (Ertl & Schuffenhauer) and MW of the valid samples
  against a seeded sample of the training split: means, 10/90% quantiles and
  the 1-Wasserstein distance (``scipy.stats.wasserstein_distance``);
- speed on one thread: molecules/s for sampling plus decoding at the default
  steps, molecule-steps/s of the velocity forward pass and of a VJP
  ``torch.autograd.grad((v * a).sum(), x)``;
- with ``--sweep``, validity against the sampler and the number of steps.

Writes ``<out-dir>/qm9_model.csv`` (one row per metric) and ``qm9_model.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rdkit import Chem, RDConfig, RDLogger  # noqa: E402
from rdkit.Chem import QED, Crippen, Descriptors  # noqa: E402

from tfftmol.chem import metrics  # noqa: E402
from tfftmol.chem.data import load_qm9  # noqa: E402
from tfftmol.chem.qm9_model import CARD_PATH, DEFAULT_SAMPLER, DEFAULT_STEPS, load_qm9_graph  # noqa: E402

RDLogger.DisableLog("rdApp.*")
PROPS = ("qed", "logp", "sa", "mw")


def _sascorer():
    sa_dir = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if sa_dir not in sys.path:
        sys.path.append(sa_dir)
    import sascorer  # noqa: E402
    return sascorer


def properties(mols: list) -> pd.DataFrame:
    """QED, logP, SA and MW of RDKit molecules (NaN where a descriptor fails)."""
    sa = _sascorer()
    rows = []
    for m in mols:
        row = {}
        for k, f in (("qed", QED.qed), ("logp", Crippen.MolLogP), ("sa", sa.calculateScore), ("mw", Descriptors.MolWt)):
            try:
                row[k] = float(f(m))
            except Exception:  # noqa: BLE001 - a failing descriptor is NaN, not a crash
                row[k] = float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(PROPS))


def speed(model, batch: int, reps: int, steps: int, n_sample: int, sampler: str = DEFAULT_SAMPLER) -> dict:
    """Molecules/s (sample + decode) and molecule-steps/s of the forward pass and the VJP."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 189, generator=g)
    t = torch.rand(batch, generator=g)
    a = torch.randn(batch, 189, generator=g)
    with torch.no_grad():
        model(x, t)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x, t)
        fwd = reps * batch / (time.perf_counter() - t0)
    xx = x.clone().requires_grad_(True)
    t0 = time.perf_counter()
    for _ in range(reps):
        v = model(xx, t)
        torch.autograd.grad((v * a).sum(), xx)
    vjp = reps * batch / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.sample(n_sample, steps=steps, sampler=sampler, seed=1, batch_size=min(n_sample, 1000))
    mps = n_sample / (time.perf_counter() - t0)
    return {"mol_per_s_sample_decode": mps, "mol_steps_per_s_forward": fwd, "mol_steps_per_s_vjp": vjp,
            "speed_batch": batch}


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="~200 samples, small reference sets")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=["ode", "heun", "sde"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", type=Path, default=None, help="safetensors file (default: the shipped one)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--update-card", action="store_true")
    ap.add_argument("--card", type=Path, default=CARD_PATH)
    ap.add_argument("--sweep", default="", help="comma-separated step counts for a validity sweep, e.g. 10,20,30,50")
    ap.add_argument("--sweep-samplers", default="ode", help="comma-separated samplers for the sweep, e.g. ode,sde")
    ap.add_argument("--sweep-n", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="sample through tfftmol.chem.fast_sampling in this network precision (with --compile, "
                         "--workers: the fast path's quality at a given step count)")
    ap.add_argument("--compile", action="store_true", help="fast path: torch.compile the sampling step")
    ap.add_argument("--workers", type=int, default=None, help="fast path: one-thread worker processes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 200 if args.quick else args.n
    n_ref = 1000 if args.quick else 10_000

    model = load_qm9_graph(path=args.weights)
    fast = args.precision != "fp32" or args.compile or args.workers is not None
    fast_kw = dict(precision=args.precision, compile=args.compile, workers=args.workers or 1, batch_size=500)
    if fast and args.compile:  # compile this shape before the clock starts
        model.sample(500, steps=args.steps, sampler=args.sampler, seed=args.seed + 7, **dict(fast_kw, workers=1))
    t0 = time.perf_counter()
    res = model.sample(n, steps=args.steps, sampler=args.sampler, seed=args.seed, **(fast_kw if fast else {}))
    t_sample = time.perf_counter() - t0
    valid_smiles = [s for s, v in zip(res.smiles, res.valid) if v]
    valid_mols = [m for m, v in zip(res.mols, res.valid) if v]
    reasons = Counter(res.reasons)

    data = load_qm9()
    train = data.loc[data.split == "train", "smiles"]
    test = data.loc[data.split == "test", "smiles"]
    ref = train.sample(n=min(n_ref, len(train)), random_state=args.seed).tolist()
    row: dict = {"n": n, "steps": args.steps, "sampler": args.sampler, "seed": args.seed,
                 "path": (f"fast ({args.precision}, compile {args.compile}, {args.workers or 1} workers)" if fast
                          else "default"),
                 "validity": res.validity}
    for k in ("empty", "valence", "disconnected", "sanitization"):
        row[f"frac_{k}"] = reasons.get(k, 0) / n
    row["uniqueness"] = metrics.uniqueness(valid_smiles)
    row["novelty"] = metrics.novelty(sorted(set(valid_smiles)), set(train))
    row["internal_diversity"] = metrics.internal_diversity(valid_mols, max_n=500 if args.quick else 2000,
                                                           seed=args.seed)
    row["internal_diversity_data"] = metrics.internal_diversity(ref, max_n=500 if args.quick else 2000,
                                                                seed=args.seed)
    if metrics.fcd_available():
        row["fcd_test"] = metrics.fcd(valid_smiles, test.sample(n=min(n_ref, len(test)),
                                                                random_state=args.seed).tolist())
    else:
        row["fcd_test"] = float("nan")
        print("FCD skipped: the pinned package fcd is not importable")

    from scipy.stats import wasserstein_distance
    ps = properties(valid_mols)
    pd_ = properties([Chem.MolFromSmiles(s) for s in ref])
    for p in PROPS:
        a, b = ps[p].dropna().to_numpy(), pd_[p].dropna().to_numpy()
        for name, vals in (("model", a), ("data", b)):
            row[f"{p}_mean_{name}"] = float(vals.mean()) if vals.size else float("nan")
            row[f"{p}_q10_{name}"] = float(np.quantile(vals, 0.1)) if vals.size else float("nan")
            row[f"{p}_q90_{name}"] = float(np.quantile(vals, 0.9)) if vals.size else float("nan")
        row[f"{p}_wasserstein"] = float(wasserstein_distance(a, b)) if a.size and b.size else float("nan")

    row["mol_per_s_full_run"] = n / t_sample
    row.update(speed(model, batch=256 if args.quick else 500, reps=2 if args.quick else 5, steps=args.steps,
                     n_sample=100 if args.quick else 1000, sampler=args.sampler))
    row["load_avg_1min"] = os.getloadavg()[0]  # speed figures depend on other load on the machine
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["threads"] = args.threads

    sweep = []
    for smp in [v.strip() for v in args.sweep_samplers.split(",") if v.strip()]:
        for s in [int(v) for v in args.sweep.split(",") if v.strip()]:
            t0 = time.perf_counter()
            r = model.sample(args.sweep_n, steps=s, sampler=smp, seed=args.seed + 1)
            sweep.append({"sampler": smp, "steps": s, "n": args.sweep_n, "validity": r.validity,
                          "mol_per_s": args.sweep_n / (time.perf_counter() - t0)})
            print(f"sweep: {smp} steps {s} validity {r.validity:.4f}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"metric": list(row), "value": list(row.values())})
    table.to_csv(args.out_dir / "qm9_model.csv", index=False)
    md = ["# qm9-graph benchmark", "",
          f"{n} samples, sampler {args.sampler}, {args.steps} steps, seed {args.seed}, {args.threads} thread(s), "
          f"sampling path: {row['path']} (the speed rows below: the default path, one thread).", "",
          "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in row.items()]
    if sweep:
        md += ["", "Validity against sampler and steps:", "", "| sampler | steps | n | validity | molecules/s |",
               "|---|---|---|---|---|"]
        md += [f"| {s['sampler']} | {s['steps']} | {s['n']} | {s['validity']:.4f} | {s['mol_per_s']:.0f} |"
               for s in sweep]
    (args.out_dir / "qm9_model.md").write_text("\n".join(md) + "\n")
    print(table.to_string(index=False))

    if args.update_card:
        card = json.loads(args.card.read_text()) if args.card.exists() else {"name": "qm9-graph"}
        card["metrics"] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}
        if sweep:
            card["validity_vs_steps"] = sweep
        if not metrics.fcd_available():
            card["metrics"]["fcd_note"] = "not measured: the package fcd is not importable"
        tmp = args.card.with_name(args.card.name + ".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, args.card)
        print(f"updated {args.card}")
    return table


if __name__ == "__main__":
    main()
