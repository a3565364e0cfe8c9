"""Rewards predicted by the shipped QM9 property model (:mod:`tfftmol.chem.property_model`).

A property reward scores its whole batch in one forward pass in the calling
process (``n_jobs`` is ignored) and loads the model on first use.
"""
from __future__ import annotations

from typing import ClassVar, Optional

from rdkit import Chem

from tfftmol.chem.property_model import PropertyModel, load_property_model

from .base import Reward
from .result import Outcome, outcome

__all__ = ["PropertyReward", "QM9GapReward", "QM9MuReward"]


class PropertyReward(Reward):
    """A QM9 property predicted by the shipped property model: ``target`` is ``"gap"`` (eV) or ``"mu"`` (Debye)."""

    name = "property"
    parallel_ok = False
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {"gap": (0.0, 17.0), "mu": (0.0, 30.0)}

    def __init__(self, target: str = "gap", **kw):
        super().__init__(**kw)
        if target not in self._ranges:
            raise ValueError(f"property target {target!r} unknown; valid targets: {sorted(self._ranges)}")
        self.target = target
        self._model: Optional[PropertyModel] = None

    def base_range(self):
        return self._ranges[self.target]

    def _load(self) -> PropertyModel:
        if self._model is None:
            self._model = load_property_model()
        return self._model

    def _score(self, mol: Chem.Mol) -> float:
        return float(self._load().predict([mol])[self.target][0])

    def _score_mols(self, mols: list[Chem.Mol]) -> list[Outcome]:
        if not mols:
            return []
        try:
            pred = self._load().predict(mols)[self.target]
        except Exception:  # noqa: BLE001 - fall back to one molecule at a time to isolate the culprit
            return super()._score_mols(mols)
        return [outcome(lambda p=p: self._apply_transforms(float(p))) for p in pred]

    def params(self):
        return {}

    def __getstate__(self):
        state = super().__getstate__()
        state["_model"] = None
        return state


class QM9GapReward(PropertyReward):
    """Predicted HOMO-LUMO gap (eV) of the QM9 property model."""

    name = "qm9_gap"

    def __init__(self, **kw):
        super().__init__(target="gap", **kw)


class QM9MuReward(PropertyReward):
    """Predicted dipole moment mu (Debye) of the QM9 property model."""

    name = "qm9_mu"

    def __init__(self, **kw):
        super().__init__(target="mu", **kw)
