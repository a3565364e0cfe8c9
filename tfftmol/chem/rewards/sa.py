"""Synthetic accessibility (Ertl & Schuffenhauer 2009) and penalised logP (You et al. 2018).

The SA scorer is RDKit's contributed ``SA_Score/sascorer.py``, loaded once from
``RDConfig.RDContribDir`` on first use.

>>> from rdkit import Chem
>>> round(sa_score(Chem.MolFromSmiles("c1ccccc1")), 3)
1.0
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Optional

from rdkit import Chem
from rdkit.Chem import Crippen, RDConfig

__all__ = ["sa_score", "penalized_logp"]

_SASCORER: Optional[ModuleType] = None


def _sascorer() -> ModuleType:
    global _SASCORER
    if _SASCORER is None:
        path = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if path not in sys.path:
            sys.path.append(path)
        _SASCORER = importlib.import_module("sascorer")  # RDKit contrib, not an installed package
    return _SASCORER


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009), in [1, 10], 1 = easy."""
    return float(_sascorer().calculateScore(mol))


def penalized_logp(mol: Chem.Mol) -> float:
    """``logP - SA - max(0, largest ring - 6)``: unnormalised penalised logP (You et al. 2018, Jin et al. 2018)."""
    rings = [len(r) for r in mol.GetRingInfo().AtomRings()]
    cycle = max(0, max(rings) - 6) if rings else 0
    return float(Crippen.MolLogP(mol) - sa_score(mol) - cycle)
