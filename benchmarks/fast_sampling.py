"""Sample quality and speed of qm9-graph's fast sampling path against its default path.

Each row draws ``--n`` seeded molecules (SDE) and scores validity, uniqueness, novelty (against the training
split) and FCD (against ``--n-ref`` molecules of the test split, the ChemNet of the pinned ``fcd`` package),
with the wall time of sampling and decoding:

* the default path, ``model.sample`` on one thread, at 30 and at ``--fewer-steps`` steps;
* :func:`tfftmol.chem.fast_sampling.sample_fast` with two one-thread workers, fp32;
* the same compiled, in bfloat16 where the CPU has it natively, at 30 and ``--fewer-steps`` steps;
* the same on the fast time grid (``grid="fast"``: two coarse steps below ``t = 1/4``, the posterior-mean jump
  from ``t = 5/6``) at each of ``--grid-steps``.

The compile happens on a first call of the same shape before the clock starts (``compile_s``).  Validity has a
standard error of about 0.26 points at 10,000 samples; two different seeds' streams differ by that much.

    python benchmarks/fast_sampling.py            # 10,000 molecules per row
    python benchmarks/fast_sampling.py --quick    # seconds (the test)

Writes ``benchmarks/results/fast_sampling.csv`` and ``.md``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem import metrics  # noqa: E402
from tfftmol.chem import moses_metrics as mm  # noqa: E402
from tfftmol.chem.data import load_qm9  # noqa: E402
from tfftmol.chem.fast_sampling import bf16_native, fast_grid, sample_fast  # noqa: E402
from tfftmol.chem.qm9_model import CARD_PATH, load_qm9_graph  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402

COLUMNS = ["path", "grid", "steps", "network_calls", "precision", "compile", "workers", "n", "validity", "uniqueness", "novelty", "fcd_test",
           "mol_per_s", "speed_up", "validity_change_points", "compile_s"]


def score(res, train: set, ref) -> dict:
    valid = [s for s, ok in zip(res.smiles, res.valid) if ok]
    return {"validity": float(res.validity), "uniqueness": metrics.uniqueness(valid),
            "novelty": mm.novelty(sorted(set(valid)), train),
            "fcd_test": float(ref.fcd(valid)) if ref is not None else float("nan")}


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-ref", type=int, default=10_000)
    ap.add_argument("--fewer-steps", type=int, default=24)
    ap.add_argument("--grid-steps", default="26,30", help="steps of the fast-grid rows (comma-separated)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="40 molecules, 4/3 steps, no compile, no FCD")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--update-card", action="store_true", help="write the table into the model card's fast_sampling")
    ap.add_argument("--card", type=Path, default=None, help="model card (default: the shipped qm9-graph card)")
    a = ap.parse_args(argv)
    n, rows_per_batch, steps, fewer = a.n, a.batch_size, 30, a.fewer_steps
    grid_steps = [int(v) for v in a.grid_steps.split(",") if v.strip()]
    compile_ = True
    if a.quick:
        n, rows_per_batch, steps, fewer, compile_, grid_steps = 40, 20, 4, 3, False, [6]
    model = load_qm9_graph()
    data = load_qm9()
    train = set(data.loc[data.split == "train", "smiles"])
    ref = None if a.quick else mm.Reference.build(
        data.loc[data.split == "test", "smiles"].sample(n=a.n_ref, random_state=a.seed).tolist())
    prec = "bf16" if bf16_native() else "fp32"
    plan = [("default", steps, "fp32", False, 1, "uniform"), ("default", fewer, "fp32", False, 1, "uniform"),
            ("fast", steps, "fp32", False, 2, "uniform"), ("fast", steps, prec, compile_, 2, "uniform"),
            ("fast", fewer, prec, compile_, 2, "uniform")]
    plan += [("fast", g, prec, compile_, 2, "fast") for g in grid_steps]
    rows = []
    threads = torch.get_num_threads()
    for path, st, pr, comp, workers, grid in plan:
        compile_s = float("nan")
        if path == "default":
            torch.set_num_threads(1)
            t0 = time.perf_counter()
            res = model.sample(n, steps=st, seed=a.seed, batch_size=rows_per_batch)
            dt = time.perf_counter() - t0
            torch.set_num_threads(threads)
        else:
            kw = dict(steps=st, batch_size=rows_per_batch, precision=pr, compile=comp, grid=grid)
            if comp:
                t0 = time.perf_counter()
                sample_fast(model, rows_per_batch, seed=a.seed + 1, **kw)
                compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = sample_fast(model, n, seed=a.seed, workers=workers, **kw)
            dt = time.perf_counter() - t0
        calls = len(fast_grid(st)) if grid == "fast" else st - 1
        row = {"path": path, "grid": grid, "steps": st, "network_calls": calls, "precision": pr, "compile": comp, "workers": workers, "n": n,
               **score(res, train, ref), "mol_per_s": n / dt, "compile_s": compile_s}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    df["speed_up"] = df["mol_per_s"] / df["mol_per_s"].iloc[0]
    df["validity_change_points"] = 100 * (df["validity"] - df["validity"].iloc[0])
    df = df[COLUMNS]
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "fast_sampling.csv", index=False, float_format="%.6g")
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else float("nan")
    md = ["# qm9-graph: the fast sampling path against the default", "",
          f"{n} molecules per row (SDE, seed {a.seed}, batches of {rows_per_batch}); FCD against "
          f"{a.n_ref} test-split molecules; speed_up and validity_change_points against the first row "
          f"(the default path, 30 steps, one thread); 1-min load {load} at the end; CPU bfloat16 native: "
          f"{bf16_native()}.", "", markdown_table(df), ""]
    (a.out / "fast_sampling.md").write_text("\n".join(md))
    if a.update_card:
        update_card(df, a.card or CARD_PATH, load)
    return df


def update_card(df: pd.DataFrame, card_path: Path, load: float) -> None:
    """Put the table into ``card["fast_sampling"]`` (atomically; the rest of the card is kept)."""
    import json

    from tfftmol.core.checkpoint import atomic_write_bytes
    card = json.loads(card_path.read_text()) if card_path.exists() else {"name": "qm9-graph"}
    card["fast_sampling"] = {
        "benchmark": "benchmarks/fast_sampling.py", "load_avg_1min": load, "bf16_native": bf16_native(),
        "rows": [{k: (None if isinstance(v, float) and v != v else round(v, 5) if isinstance(v, float) else v)
                  for k, v in r.items()} for r in df.to_dict("records")]}  # NaN -> null: the card stays JSON
    atomic_write_bytes(card_path, (json.dumps(card, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
