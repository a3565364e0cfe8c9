"""The README's molecule grid: the first 12 molecules the pre-trained ``zinc-selfies`` flow samples.

No selection: seed 0, the model card's setting (Euler ODE, 30 steps, greedy decoding), the molecules in
the order they are drawn, each labelled with its QED, SA score and Crippen logP (the package's rewards).

    python scripts/zinc_grid.py            # writes docs/zinc_grid.png (a few seconds on one core)
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--sampler", choices=["ode", "heun", "sde"], default="ode")
    p.add_argument("--per-row", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "docs" / "zinc_grid.png"))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from PIL import Image
    from rdkit.Chem import Draw

    import tfftmol
    from tfftmol.chem.rewards import build_reward

    model = tfftmol.load_pretrained("zinc-selfies")
    res = model.sample(a.n, steps=a.steps, sampler=a.sampler, seed=a.seed)
    mols = [m for m, ok in zip(res.mols, res.valid) if ok]
    smiles = [s for s, ok in zip(res.smiles, res.valid) if ok]
    scores = {k: build_reward({"name": k})(smiles).values for k in ("qed", "sa", "logp")}
    legends = [f"QED {q:.2f}  SA {s:.1f}  logP {lp:.1f}" for q, s, lp in zip(scores["qed"], scores["sa"], scores["logp"])]
    img = Draw.MolsToGridImage(mols, molsPerRow=a.per_row, subImgSize=(260, 210), legends=legends)
    if not isinstance(img, Image.Image):  # RDKit's IPython renderer hands back PNG bytes
        img = Image.open(io.BytesIO(img.data))
    img = img.convert("RGB").quantize(colors=64)  # line drawings: a palette keeps the file small
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB): {len(mols)} of {a.n} samples valid")
    for smi, q, s, lp in zip(smiles, scores["qed"], scores["sa"], scores["logp"]):
        print(f"{smi}  QED {q:.3f}  SA {s:.2f}  logP {lp:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
