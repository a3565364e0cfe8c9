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

import pandas as pd

__all__ = ["ZINC_PATH", "load_zinc250k", "SPLITS"]

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
