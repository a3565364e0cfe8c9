"""Build ``tfftmol/chem/data/zinc250k.csv.gz`` (+ the SELFIES alphabet) from ZINC250k.

    python scripts/prepare_zinc.py --src ../shared/data/zinc250k

``--src`` is a folder holding ``zinc250k.smi.gz`` (one SMILES a line, no header)
and its MIT ``LICENSE`` (the PMO benchmark's copy of ZINC250k, see the README
there).  The package itself never reads that folder: this script writes a
processed copy into ``tfftmol/chem/data/``.

Steps: parse each SMILES with RDKit; drop molecules that do not parse, have more
than one fragment, or whose SELFIES does not round-trip to the same canonical
SMILES; write the RDKit canonical SMILES **without stereochemistry** (the model
is trained and evaluated on non-isomeric molecules), its SELFIES, and a
deepchem ``ScaffoldSplitter`` 80/10/10 split; write the SELFIES alphabet
(sorted, as JSON, with the maximum token length); copy the licence with the
attribution.  Prints the counts and the reason for every drop.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem, RDLogger

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tfftmol" / "chem" / "data"
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "zinc250k"


def process(smiles: str, roundtrip: bool = True) -> tuple[str | None, str | None, str]:
    """``(canonical SMILES, SELFIES, "ok")`` or ``(None, None, reason)``; ``roundtrip`` also decodes the SELFIES
    and checks that it gives back the same canonical SMILES."""
    import selfies as sf
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None, None, "unparsable"
    if len(Chem.GetMolFrags(mol)) != 1:
        return None, None, "fragments"
    can = Chem.MolToSmiles(mol, isomericSmiles=False)
    try:
        s = sf.encoder(can)
    except Exception:  # selfies.EncoderError
        return None, None, "selfies_encode"
    if not s:
        return None, None, "selfies_encode"
    if not roundtrip:
        return can, s, "ok"
    back = Chem.MolFromSmiles(sf.decoder(s))
    if back is None or Chem.MolToSmiles(back, isomericSmiles=False) != can:
        return None, None, "selfies_roundtrip"
    return can, s, "ok"


def scaffold_split(smiles: list[str], seed: int) -> np.ndarray:
    """deepchem ``ScaffoldSplitter`` 80/10/10 (deterministic: largest scaffold sets go to train)."""
    logging.getLogger("deepchem").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with zinc250k.smi.gz and LICENSE")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--roundtrip-every", type=int, default=10, help="check the SELFIES round trip of every k-th")
    args = ap.parse_args(argv)
    RDLogger.DisableLog("rdApp.*")
    import selfies as sf
    t0 = time.time()

    with gzip.open(args.src / "zinc250k.smi.gz", "rt") as fh:
        raw = [line.strip() for line in fh if line.strip()]
    print(f"read {len(raw)} SMILES from {args.src / 'zinc250k.smi.gz'}")
    # the SELFIES round trip costs as much as the encoding (pure-Python selfies): it is checked on every
    # --roundtrip-every-th molecule; the test suite checks it again on the shipped copy
    res = [process(s, roundtrip=(i % args.roundtrip_every == 0)) for i, s in enumerate(raw)]
    reasons = Counter(r for _, _, r in res)
    print(f"kept {reasons['ok']} of {len(raw)}; drops by reason: "
          + (", ".join(f"{k}={v}" for k, v in sorted(reasons.items()) if k != "ok") or "none"))
    df = pd.DataFrame({"smiles": [c for c, _, r in res if r == "ok"], "selfies": [s for _, s, r in res if r == "ok"]})
    n_before = len(df)
    df = df.drop_duplicates("smiles").reset_index(drop=True)
    print(f"dropped {n_before - len(df)} duplicates after removing stereochemistry; {len(df)} molecules")
    print(f"split (deepchem ScaffoldSplitter) ... ({time.time() - t0:.0f} s)")
    df["split"] = scaffold_split(df["smiles"].tolist(), args.seed)
    print("split sizes:", df["split"].value_counts().to_dict())

    lengths = np.array([sf.len_selfies(s) for s in df["selfies"]])
    alphabet = sorted(sf.get_alphabet_from_selfies(df["selfies"]))
    print(f"alphabet: {len(alphabet)} tokens; SELFIES length mean {lengths.mean():.1f}, max {lengths.max()}")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "zinc250k.csv.gz"
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fh:  # mtime=0: byte-identical across rebuilds
        with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, compresslevel=9) as gz:
            gz.write(df[["smiles", "selfies", "split"]].to_csv(index=False).encode())
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    meta = {"alphabet": alphabet, "max_len": int(lengths.max()), "n_molecules": int(len(df)),
            "split_sizes": {k: int(v) for k, v in df["split"].value_counts().items()},
            "drops": {k: int(v) for k, v in reasons.items() if k != "ok"},
            "duplicates_after_stereo_removal": int(n_before - len(df)),
            "roundtrip_checked": f"every {args.roundtrip_every}-th input molecule",
            "selfies_version": importlib.metadata.version("selfies"), "canonical": "RDKit MolToSmiles(isomericSmiles=False)",
            "source": "ZINC250k, zinc250k.smi.gz (249,455 SMILES) from wenhao-gao/mol_opt data/zinc.txt.gz "
                      "(commit 2da631b, MIT)"}
    (args.out_dir / "zinc250k_alphabet.json").write_text(json.dumps(meta, indent=1) + "\n")
    licence = (args.src / "LICENSE").read_text()
    note = ("ZINC250k data in zinc250k.csv.gz is derived from the file data/zinc.txt.gz of the public\n"
            "repository wenhao-gao/mol_opt (PMO benchmark: W. Gao, T. Fu, J. Sun, C. W. Coley,\n"
            "\"Sample Efficiency Matters: A Benchmark for Practical Molecular Optimization\", NeurIPS 2022),\n"
            "commit 2da631b, released under the MIT licence below. The molecules are the ZINC250k subset\n"
            "of ZINC (J. J. Irwin, B. K. Shoichet et al.) used by Gomez-Bombarelli et al. (2018) and\n"
            "Jin et al. (JT-VAE, 2018). Processing (canonical non-isomeric SMILES, SELFIES, scaffold\n"
            "split): scripts/prepare_zinc.py. The mol_opt licence follows.\n\n")
    (args.out_dir / "LICENSE-zinc250k.txt").write_text(note + licence)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
