"""Build ``tfftmol/chem/data/qm9.csv.gz`` from the ``qm9pack==1.0.3`` wheel.

The wheel is read as a zip archive: the package is never installed or imported.

    pip download --no-deps qm9pack==1.0.3 -d WHEEL_DIR
    python scripts/prepare_qm9.py --wheel WHEEL_DIR/qm9pack-1.0.3-py3-none-any.whl

Steps: parse each SMILES with RDKit; drop molecules that do not parse, contain
an element other than C/N/O/F, carry a formal charge, have more than 9 heavy
atoms or more than one fragment; write the RDKit canonical SMILES (no stereo,
since the graph codec has none) with the DFT labels; split 80/10/10 with
deepchem's ``ScaffoldSplitter``; copy the wheel's licence.  Prints the counts
and the reason for every drop.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem, RDLogger

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tfftmol" / "chem" / "data"
PARTS = [f"qm9pack/data/qm9_part{i}.csv" for i in (1, 2, 3)]
ALLOWED = {"C", "N", "O", "F"}
MAX_HEAVY = 9
# qm9pack column -> our column (units unchanged: debye, bohr^3, hartree, bohr^2, cal/mol/K)
LABELS = {
    "Dipole_debye": "mu", "Polarizability_bohr3": "alpha", "HOMO_au": "homo", "LUMO_au": "lumo",
    "HOMO_LUMO_gap_au": "gap", "R2_bohr2": "r2", "ZPVE_au": "zpve", "InternalEnergy_0K_au": "u0",
    "InternalEnergy_298K_au": "u298", "Enthalphy_298K_au": "h298", "GibbsFreeEnergy_298K_au": "g298",
    "Heatcapacity_Cv_cal_mol_K": "cv",
}


def read_wheel(wheel: Path) -> tuple[pd.DataFrame, str]:
    """The three QM9 CSVs (SMILES, index, labels) concatenated, and the licence text."""
    cols = ["Index", "SMILES", *LABELS]
    with zipfile.ZipFile(wheel) as z:
        frames = [pd.read_csv(io.BytesIO(z.read(p)), usecols=cols, dtype={"SMILES": str}) for p in PARTS]
        lic = [n for n in z.namelist() if n.endswith(".dist-info/LICENSE")]
        licence = z.read(lic[0]).decode() if lic else ""
    df = pd.concat(frames, ignore_index=True).sort_values("Index").reset_index(drop=True)
    return df, licence


def check(smiles: str) -> tuple[str | None, str]:
    """``(canonical SMILES, "ok")`` or ``(None, reason)``."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, "unparsable"
    atoms = list(mol.GetAtoms())
    if any(a.GetSymbol() not in ALLOWED for a in atoms):
        return None, "element"
    if any(a.GetFormalCharge() != 0 for a in atoms):
        return None, "formal_charge"
    if len(atoms) > MAX_HEAVY:
        return None, "too_many_atoms"
    if len(Chem.GetMolFrags(mol)) != 1:
        return None, "fragments"
    if any(a.GetNumRadicalElectrons() for a in atoms):
        return None, "radical"
    return Chem.MolToSmiles(mol, isomericSmiles=False), "ok"


def scaffold_split(smiles: list[str], seed: int) -> np.ndarray:
    """deepchem ``ScaffoldSplitter`` 80/10/10 (deterministic: largest scaffold sets go to train)."""
    logging.getLogger("deepchem").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import deepchem as dc
    ds = dc.data.NumpyDataset(X=np.zeros((len(smiles), 1)), ids=np.array(smiles, dtype=object))
    tr, va, te = dc.splits.ScaffoldSplitter().split(ds, frac_train=0.8, frac_valid=0.1, frac_test=0.1, seed=seed)
    split = np.empty(len(smiles), dtype=object)
    split[np.asarray(tr, dtype=int)] = "train"
    split[np.asarray(va, dtype=int)] = "valid"
    split[np.asarray(te, dtype=int)] = "test"
    assert not any(s is None for s in split)
    return split


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, required=True, help="path to qm9pack-1.0.3-py3-none-any.whl")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    RDLogger.DisableLog("rdApp.*")
    t0 = time.time()

    raw, licence = read_wheel(args.wheel)
    print(f"read {len(raw)} molecules from {args.wheel.name}")
    res = [check(s) for s in raw["SMILES"]]
    reasons = Counter(r for _, r in res)
    keep = np.array([r == "ok" for _, r in res])
    print(f"kept {keep.sum()} of {len(raw)}; drops by reason: "
          + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()) if k != "ok"))

    df = pd.DataFrame({"qm9_index": raw["Index"][keep].to_numpy(),
                       "smiles": [s for s, r in res if r == "ok"]})
    for src, dst in LABELS.items():
        df[dst] = raw[src][keep].to_numpy()
    df["split"] = scaffold_split(df["smiles"].tolist(), args.seed)
    print("split sizes:", df["split"].value_counts().to_dict())
    print(f"distinct canonical SMILES: {df['smiles'].nunique()}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "qm9.csv.gz"
    tmp = out.with_suffix(".tmp")
    cols = ["qm9_index", "smiles", "split", *LABELS.values()]
    # mtime=0 makes the gzip byte-identical across rebuilds
    with open(tmp, "wb") as fh:
        import gzip
        with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, compresslevel=9) as gz:
            gz.write(df[cols].to_csv(index=False).encode())
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")

    note = ("QM9 data in qm9.csv.gz is derived from the PyPI package qm9pack 1.0.3\n"
            "(https://github.com/raghurama123/qm9pack, files qm9pack/data/qm9_part{1,2,3}.csv),\n"
            "which repackages QM9: R. Ramakrishnan, P. O. Dral, M. Rupp, O. A. von Lilienfeld,\n"
            "\"Quantum chemistry structures and properties of 134 kilo molecules\",\n"
            "Scientific Data 1, 140022 (2014). Processing: scripts/prepare_qm9.py.\n"
            "The qm9pack licence follows.\n\n")
    (args.out_dir / "LICENSE-qm9pack.txt").write_text(note + licence)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
