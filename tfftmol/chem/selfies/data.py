"""The processed ZINC250k copy that ships in the package (``tfftmol/chem/data/zinc250k.csv.gz``).

Columns: ``smiles`` (RDKit canonical, non-isomeric), ``selfies``, ``split``
(``train``/``valid``/``test``, deepchem scaffold split 80/10/10).  Built by
``scripts/prepare_zinc.py``; licence and attribution in
``tfftmol/chem/data/LICENSE-zinc250k.txt``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["ZINC_PATH", "load_zinc250k", "SPLITS", "neutralise", "moses_view"]

ZINC_PATH = Path(__file__).resolve().parents[1] / "data" / "zinc250k.csv.gz"
SPLITS = ("train", "valid", "test")


@lru_cache(maxsize=1)
def _frame() -> pd.DataFrame:
    if not ZINC_PATH.exists():
        raise FileNotFoundError(f"{ZINC_PATH} not found; build it with scripts/prepare_zinc.py")
    return pd.read_csv(ZINC_PATH, dtype={"smiles": str, "selfies": str, "split": str}, keep_default_na=False)


def load_zinc250k(split: Optional[str] = None) -> pd.DataFrame:
    """The processed ZINC250k frame (a copy), optionally one split.

    Raises:
        ValueError: for a split other than ``None``, ``"train"``, ``"valid"``, ``"test"``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r} must be None or one of {SPLITS}")
    df = _frame()
    if split is not None:
        df = df[df["split"] == split]
    return df.reset_index(drop=True).copy()


def neutralise(smiles: str) -> Optional[str]:
    """The neutral form of a molecule (RDKit ``Uncharger``: protonated amines and carboxylates
    back to their neutral forms; groups whose charges cannot be removed, such as nitro, keep them), as a
    canonical non-isomeric SMILES; ``None`` if the SMILES does not parse.

    ZINC stores molecules in their pH-7 protonation states, so about 28% of its SMILES carry a
    formal charge; the MOSES filters reject any charged atom.

    >>> neutralise("C[NH3+]"), neutralise("CC(=O)[O-]"), neutralise("C[N+](=O)[O-]")
    ('CN', 'CC(=O)O', 'C[N+](=O)[O-]')
    """
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return Chem.MolToSmiles(_uncharger().uncharge(mol), isomericSmiles=False)


@lru_cache(maxsize=1)
def _uncharger():
    """One RDKit ``Uncharger`` per process (it is stateless; :func:`neutralise` runs per molecule)."""
    from rdkit.Chem.MolStandardize import rdMolStandardize

    return rdMolStandardize.Uncharger()


def _moses_row(smiles: str) -> tuple[str, str, bool]:
    import selfies as sf

    from tfftmol.chem.moses_metrics import filter_flags

    neutral = neutralise(smiles)
    if neutral is None:
        return smiles, "", False
    try:
        enc = sf.encoder(neutral)
    except Exception:  # noqa: BLE001 - selfies raises its own EncoderError on unsupported valences
        return neutral, "", False
    return neutral, enc or "", bool(enc) and filter_flags(neutral)[0]


def moses_view(df: pd.DataFrame, processes: int = 1) -> pd.DataFrame:
    """The MOSES-style view of a ZINC250k frame: every molecule neutralised (:func:`neutralise`),
    kept only if it passes the MOSES medicinal-chemistry filters
    (:func:`tfftmol.chem.moses_metrics.filter_flags`, formal-charge rule included), with its
    SELFIES re-encoded.  The ``split`` column is kept, so the scaffold split carries over.

    This is how MOSES built its own dataset from ZINC (filters and neutral forms): a model trained
    on this view sees only molecules that pass the filters.  About 6 ms per molecule (the MCF and PAINS
    substructure scans); ``processes`` > 1 spreads them over worker processes.
    """
    smiles = df["smiles"].tolist()
    if processes > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(processes) as pool:
            rows = pool.map(_moses_row, smiles, chunksize=512)
    else:
        rows = [_moses_row(s) for s in smiles]
    out = df.copy()
    out["smiles"] = [r[0] for r in rows]
    out["selfies"] = [r[1] for r in rows]
    keep = np.array([r[2] for r in rows], dtype=bool)
    return out[keep].reset_index(drop=True)
