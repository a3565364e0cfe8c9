"""QM9 as shipped with tfftmol: canonical SMILES, DFT labels and a scaffold split.

The committed file ``tfftmol/chem/data/qm9.csv.gz`` is built by
``scripts/prepare_qm9.py`` from the CSVs inside the PyPI wheel
``qm9pack==1.0.3`` (MIT, see ``tfftmol/chem/data/LICENSE-qm9pack.txt``), which
repackage QM9 (Ramakrishnan, Dral, Rupp, von Lilienfeld, *Sci. Data* 1, 140022,
2014).  Kept: molecules whose SMILES parse, with only C/N/O/F heavy atoms, no
formal charge on any atom, at most 9 heavy atoms (130,251 of 130,831).

Columns of :func:`load_qm9`:

=============  ============================================================
``qm9_index``  1-based index of the molecule in QM9 (``dsgdb9nsd_<index>``)
``smiles``     RDKit canonical SMILES (aromatic form, no hydrogens, no
               stereo), identical to ``Chem.MolToSmiles`` of the kekulized
               graph after sanitisation: what the graph codec round-trips to
``split``      ``"train"``, ``"valid"`` or ``"test"`` (deepchem
               ``ScaffoldSplitter``, 80/10/10 by Bemis-Murcko scaffold)
``mu``         dipole moment, debye
``alpha``      isotropic polarizability, bohr^3
``homo``       HOMO energy, hartree
``lumo``       LUMO energy, hartree
``gap``        LUMO - HOMO, hartree
``r2``         electronic spatial extent, bohr^2
``zpve``       zero-point vibrational energy, hartree
``u0``         internal energy at 0 K, hartree
``u298``       internal energy at 298.15 K, hartree
``h298``       enthalpy at 298.15 K, hartree
``g298``       free energy at 298.15 K, hartree
``cv``         heat capacity at 298.15 K, cal/(mol K)
=============  ============================================================

>>> from tfftmol.chem.data import load_qm9
>>> df = load_qm9("train")
>>> sorted(set(df.split))
['train']
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional

import pandas as pd

__all__ = ["QM9_PATH", "SPLITS", "LABELS", "HARTREE_TO_EV", "load_qm9"]

QM9_PATH = Path(__file__).resolve().parent / "data" / "qm9.csv.gz"
SPLITS = ("train", "valid", "test")
LABELS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u298", "h298", "g298", "cv")
HARTREE_TO_EV = 27.211386245988  # CODATA 2018


@lru_cache(maxsize=1)
def _read_all() -> pd.DataFrame:
    if not QM9_PATH.exists():
        raise FileNotFoundError(f"{QM9_PATH} is missing; rebuild it with scripts/prepare_qm9.py")
    return pd.read_csv(QM9_PATH, dtype={"smiles": str, "split": str})


def load_qm9(split: Optional[str] = None) -> pd.DataFrame:
    """The processed QM9 table (a fresh copy), optionally one split only.

    Args:
        split: ``None`` (all 130,251 molecules) or one of ``"train"``,
            ``"valid"``, ``"test"``.

    Returns:
        A ``pandas.DataFrame`` with the columns listed in the module docstring,
        index reset to ``0..n-1``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r} must be None or one of {SPLITS}")
    df = _read_all()
    if split is not None:
        df = df[df["split"] == split]
    return df.reset_index(drop=True).copy()
