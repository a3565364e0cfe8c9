"""Descriptor rewards: one table from a descriptor name to its RDKit function and nominal range.

Adding a descriptor is one row of :data:`DESCRIPTORS`; its reward class (e.g.
``QEDReward``) and its config name (``{name: qed}``) follow from the row.
A descriptor that raises or returns NaN on a molecule is not an error:
:func:`~.result.outcome` turns it into NaN (and the reward into an invalid
sample with reason ``reward_error`` / ``reward_nan``), here and in
:func:`calculate`.

>>> calculate(["CCO", "c1ccccc1"], ["num_rings", "mw"])["num_rings"]
array([0., 1.])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors

from tfftmol.chem.mol import check

from .base import Reward
from .result import outcome
from .sa import penalized_logp, sa_score

__all__ = [
    "Descriptor", "DESCRIPTORS", "calculate", "DescriptorReward", "QEDReward", "LogPReward", "SAReward",
    "TPSAReward", "MWReward", "NumRingsReward", "AromaticRingsReward", "PenalizedLogPReward",
    "DESCRIPTOR_REWARDS",
]


@dataclass(frozen=True)
class Descriptor:
    """One row of the table.

    Attributes:
        fn: ``Mol -> float`` (RDKit).
        nominal_range: ``(lo, hi)`` on real molecules (exact for bounded scores,
            otherwise covering drug-like and QM9 molecules); sets the default penalty.
        doc: one line, with units and reference.
    """

    fn: Callable[[Chem.Mol], float]
    nominal_range: tuple[float, float]
    doc: str


DESCRIPTORS: dict[str, Descriptor] = {
    "qed": Descriptor(QED.qed, (0.0, 1.0),
                      "Quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1]."),
    "logp": Descriptor(Crippen.MolLogP, (-5.0, 7.0),
                       "Crippen logP (Wildman & Crippen 1999), log10 octanol/water partition coefficient."),
    "sa": Descriptor(sa_score, (1.0, 10.0),
                     "Synthetic accessibility in [1, 10], 1 = easy.  Negate it (``affine: {scale: -1}``) "
                     "to reward ease."),
    "tpsa": Descriptor(rdMolDescriptors.CalcTPSA, (0.0, 200.0),
                       "Topological polar surface area (Ertl et al. 2000), Angstrom^2."),
    "mw": Descriptor(Descriptors.MolWt, (0.0, 600.0), "Average molecular weight, g/mol (hydrogens included)."),
    "num_rings": Descriptor(rdMolDescriptors.CalcNumRings, (0.0, 8.0), "Number of rings (SSSR size)."),
    "aromatic_rings": Descriptor(rdMolDescriptors.CalcNumAromaticRings, (0.0, 6.0), "Number of aromatic rings."),
    "penalized_logp": Descriptor(penalized_logp, (-10.0, 5.0),
                                 "``logP - SA - max(0, largest ring size - 6)``, unnormalised (You et al. 2018)."),
}


def calculate(mols: Sequence[Any], names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Descriptor name -> values ``(n,)`` float64 for ``mols`` (any items :func:`~tfftmol.chem.mol.check` accepts).

    Each molecule is canonicalised first (as rewards do); an invalid molecule or
    a failing descriptor gives NaN.  ``names`` defaults to every descriptor.
    """
    names = list(DESCRIPTORS) if names is None else list(names)
    unknown = sorted(set(names) - set(DESCRIPTORS))
    if unknown:
        raise ValueError(f"unknown descriptors {unknown}; valid names: {sorted(DESCRIPTORS)}")
    parsed = [check(m).mol for m in mols]
    out = {}
    for name in names:
        fn = DESCRIPTORS[name].fn
        out[name] = np.array([outcome(lambda m=m: fn(m))[0] if m is not None else np.nan for m in parsed],
                             dtype=np.float64)
    return out


class DescriptorReward(Reward):
    """A reward that is the descriptor of :data:`DESCRIPTORS` named by the class's ``name``."""

    def _score(self, mol: Chem.Mol) -> float:
        return DESCRIPTORS[self.name].fn(mol)


def _reward_class(cls_name: str, name: str) -> type[DescriptorReward]:
    row = DESCRIPTORS[name]
    return type(cls_name, (DescriptorReward,), {"name": name, "nominal_range": row.nominal_range,
                                                 "__doc__": row.doc, "__module__": __name__,
                                                 "__qualname__": cls_name})


QEDReward = _reward_class("QEDReward", "qed")
LogPReward = _reward_class("LogPReward", "logp")
SAReward = _reward_class("SAReward", "sa")
TPSAReward = _reward_class("TPSAReward", "tpsa")
MWReward = _reward_class("MWReward", "mw")
NumRingsReward = _reward_class("NumRingsReward", "num_rings")
AromaticRingsReward = _reward_class("AromaticRingsReward", "aromatic_rings")
PenalizedLogPReward = _reward_class("PenalizedLogPReward", "penalized_logp")

#: One reward class per row of :data:`DESCRIPTORS`, in table order.
DESCRIPTOR_REWARDS: tuple[type[DescriptorReward], ...] = (
    QEDReward, LogPReward, SAReward, TPSAReward, MWReward, NumRingsReward, AromaticRingsReward,
    PenalizedLogPReward)
assert [c.name for c in DESCRIPTOR_REWARDS] == list(DESCRIPTORS), "one reward class per descriptor row"
