"""How smooth the reward of a decoded latent is, greedy against beam-search decoding, on ``zinc-selfies``.

A fine-tune of a latent flow moves latent mass smoothly, so it can only tilt toward the part of
``r(decode(x))`` that survives small moves of ``x`` (docs/design.md §8.1).  For each decoder
(``--beams``: 1 = greedy, k = beam search over k beams) this benchmark reports, on the same SDE model
samples:

* ``same`` / ``reward_corr`` at latent moves ``scale * N(0, I)`` (``tfftmol.chem.latent_reward.decoder_smoothness``,
  QED as the reward);
* the samples' FCD against the scaffold-split test set, the MOSES filter pass rate, mean QED, and the
  decoding time per molecule (GRU decoding, SELFIES and RDKit; one thread).

Writes ``<out>/decoder_smoothness.csv`` (smoothness rows) and ``decoder_smoothness_samples.csv`` (per-decoder
sample metrics) and a markdown summary.

    python benchmarks/decoder_smoothness.py [--beams 1 4 16] [--n 1000] [--n-fcd 5000] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem import moses_metrics as mm  # noqa: E402
from tfftmol.chem.latent_reward import decoder_smoothness  # noqa: E402
from tfftmol.chem.rewards import build_reward  # noqa: E402
from tfftmol.chem.selfies import load_zinc250k, load_zinc_selfies  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=None, help="a zinc-selfies .safetensors file (default: the shipped one)")
    ap.add_argument("--beams", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--n", type=int, default=1000, help="model samples of the smoothness rows")
    ap.add_argument("--n-fcd", type=int, default=5000, help="model samples (and test molecules) of the FCD")
    ap.add_argument("--scales", nargs="+", type=float, default=[0.01, 0.05, 0.1, 0.3])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fcd", action="store_true")
    ap.add_argument("--quick", action="store_true", help="60 samples, beams 1 and 2, no FCD (used by the tests)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args(argv)
    if a.quick:
        a.beams, a.n, a.n_fcd, a.no_fcd, a.steps = [1, 2], 60, 60, True, 10
    torch.set_num_threads(1)
    qed = build_reward({"name": "qed"})
    base = load_zinc_selfies(path=a.weights)
    x = base.sample_latents(a.n, steps=a.steps, sampler="sde", seed=a.seed)
    xf = base.sample_latents(a.n_fcd, steps=a.steps, sampler="sde", seed=a.seed + 1)
    ref = None
    if not a.no_fcd:
        test = load_zinc250k("test")
        ref = mm.Reference.build(test["smiles"].sample(n=min(a.n_fcd, len(test)), random_state=a.seed).tolist())
    rows, samples = [], []
    for k in a.beams:
        model = load_zinc_selfies(path=a.weights, decode_beam=k)
        d = decoder_smoothness(model, x, qed, scales=tuple(a.scales), seed=a.seed)
        d.insert(0, "decode_beam", k)
        rows.append(d)
        t0 = time.perf_counter()
        dec = model.decode(xf)
        sec = time.perf_counter() - t0
        smi = [r.smiles for r in dec if r.smiles]
        s = {"decode_beam": k, "n": len(dec), "validity": len(smi) / max(1, len(dec)),
             "qed_mean": float(np.mean(qed(smi).values)) if smi else float("nan"),
             "filters": mm.filter_pass_rate(smi), "decode_ms_per_mol": 1000 * sec / max(1, len(dec))}
        if ref is not None:
            s["fcd"] = ref.fcd(smi)
        samples.append(s)
        print(f"beam {k}: " + ", ".join(f"{c} {v:.4g}" if isinstance(v, float) else f"{c} {v}" for c, v in s.items()),
              flush=True)
    smooth, samp = pd.concat(rows, ignore_index=True), pd.DataFrame(samples)
    a.out.mkdir(parents=True, exist_ok=True)
    stem = "decoder_smoothness_quick" if a.quick else "decoder_smoothness"
    smooth.to_csv(a.out / f"{stem}.csv", index=False)
    samp.to_csv(a.out / f"{stem}_samples.csv", index=False)
    md = [f"# Decoder smoothness of zinc-selfies ({a.n} SDE samples, {a.steps} steps, seed {a.seed})", "",
          "`same`: the decoded molecule is unchanged after the latent moves by scale x N(0, I) (normalised latent); "
          "`reward_corr`: Pearson correlation of QED before and after.", "", markdown_table(smooth), "",
          f"Samples ({a.n_fcd} SDE samples, one thread; FCD against as many scaffold-split test molecules):", "",
          markdown_table(samp), ""]
    (a.out / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))
    return {"smoothness": smooth, "samples": samp}


if __name__ == "__main__":
    main()
