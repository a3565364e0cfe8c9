"""Weighted combinations of rewards.

>>> from tfftmol.chem.rewards.descriptors import QEDReward, SAReward
>>> r = WeightedSum([(1.0, QEDReward()), (-0.1, SAReward())])
>>> r.range  # interval sum of the weighted terms' ranges
(-1.0, 0.9)
"""
from __future__ import annotations

import math
from typing import Sequence

from rdkit import Chem

from tfftmol.chem.mol import OK

from .base import Reward
from .result import Outcome, outcome

__all__ = ["WeightedSum"]


class WeightedSum(Reward):
    """``sum_k w_k r_k(mol)``: a weighted combination of rewards.

    A molecule is valid iff every term is valid on it (otherwise it takes the
    first failing term's reason); term transforms apply before weighting, term
    penalties are not used (the sum's own penalty is).  The nominal range is the
    interval sum of ``w_k * range_k``.
    """

    name = "sum"

    def __init__(self, terms: Sequence[tuple[float, Reward]], **kw):
        super().__init__(**kw)
        if not terms:
            raise ValueError("sum: needs at least one term")
        self.terms = [(float(w), r) for w, r in terms]
        for w, r in self.terms:
            if not math.isfinite(w) or not isinstance(r, Reward):
                raise ValueError(f"sum: each term is (finite weight, Reward), got ({w!r}, {r!r})")
        self.parallel_ok = all(r.parallel_ok for _, r in self.terms)  # type: ignore[misc]

    def base_range(self):
        lo = hi = 0.0
        for w, r in self.terms:
            a, b = r.range
            lo += min(w * a, w * b)
            hi += max(w * a, w * b)
        return (lo, hi)

    def _score_mols(self, mols: list[Chem.Mol]) -> list[Outcome]:
        if not mols:
            return []
        parts = [r._score_mols(mols) for _, r in self.terms]  # batched per term (property models)
        out = []
        for i in range(len(mols)):
            bad = next((p[i] for p in parts if p[i][1] != OK), None)
            if bad is not None:
                out.append(bad)
                continue
            total = sum(w * p[i][0] for (w, _), p in zip(self.terms, parts))
            out.append(outcome(lambda v=total: self._apply_transforms(v)))
        return out

    def _score(self, mol: Chem.Mol) -> float:
        return sum(w * r.score_mol(mol) for w, r in self.terms)

    def sources(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for _, r in self.terms:
            out.update(r.sources())
        return out

    def params(self):
        return {"terms": [{"weight": w, "reward": r.to_config()} for w, r in self.terms]}
