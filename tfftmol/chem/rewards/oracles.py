"""Structure oracles and user functions: Tanimoto similarity, a SMARTS match, a wrapped ``fn(mol)``.

>>> round(float(SimilarityReward("CCO")(["OCC"]).values[0]), 3)
1.0
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Optional, Sequence

from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import rdFingerprintGenerator

from tfftmol.chem.mol import to_mol

from .base import Reward

__all__ = ["SimilarityReward", "SubstructureReward", "CallableReward"]


class SimilarityReward(Reward):
    """Tanimoto similarity in [0, 1] to ``target`` on Morgan fingerprints (radius 2, 2048 bits)."""

    name = "similarity"
    nominal_range = (0.0, 1.0)

    def __init__(self, target: str, radius: int = 2, n_bits: int = 2048, **kw):
        super().__init__(**kw)
        mol = to_mol(target)
        if mol is None:
            raise ValueError(f"similarity: target {target!r} is not a valid SMILES")
        if int(radius) < 0 or int(n_bits) < 1:
            raise ValueError(f"similarity: need radius >= 0 and n_bits >= 1, got radius={radius}, n_bits={n_bits}")
        self.target, self.radius, self.n_bits = str(target), int(radius), int(n_bits)
        self._gen = None
        self._target_fp = None

    def _fp(self, mol):
        if self._gen is None:
            self._gen = rdFingerprintGenerator.GetMorganGenerator(radius=self.radius, fpSize=self.n_bits)
            self._target_fp = self._gen.GetFingerprint(to_mol(self.target))
        return self._gen.GetFingerprint(mol)

    def _score(self, mol):
        fp = self._fp(mol)
        return DataStructs.TanimotoSimilarity(fp, self._target_fp)

    def params(self):
        return {"target": self.target, "radius": self.radius, "n_bits": self.n_bits}

    def __getstate__(self):
        state = super().__getstate__()
        state["_gen"] = state["_target_fp"] = None  # rebuilt lazily in the worker
        return state


class SubstructureReward(Reward):
    """``match_value`` if the molecule matches ``smarts``, else ``nomatch_value``.

    A penalty filter is ``match_value=-1, nomatch_value=0``; a reward for a wanted
    group is ``match_value=1, nomatch_value=0`` (the default).
    """

    name = "substructure"

    def __init__(self, smarts: str, match_value: float = 1.0, nomatch_value: float = 0.0, **kw):
        super().__init__(**kw)
        with rdBase.BlockLogs():
            patt = Chem.MolFromSmarts(str(smarts))
        if patt is None:
            raise ValueError(f"substructure: {smarts!r} is not a valid SMARTS")
        self.smarts, self.match_value, self.nomatch_value = str(smarts), float(match_value), float(nomatch_value)
        self._patt = None

    def base_range(self):
        return (min(self.match_value, self.nomatch_value), max(self.match_value, self.nomatch_value))

    def _score(self, mol):
        if self._patt is None:
            self._patt = Chem.MolFromSmarts(self.smarts)
        return self.match_value if mol.HasSubstructMatch(self._patt) else self.nomatch_value

    def params(self):
        return {"smarts": self.smarts, "match_value": self.match_value, "nomatch_value": self.nomatch_value}

    def __getstate__(self):
        state = super().__getstate__()
        state["_patt"] = None
        return state


class CallableReward(Reward):
    """Wrap a user's ``fn(mol) -> float`` as a reward.

    Args:
        fn: a callable, or an import path ``"package.module:function"`` (the only
            form that survives :meth:`to_config`).
        range: nominal ``(lo, hi)`` of ``fn`` on real molecules; the default
            penalty is derived from it.  Give ``range`` or ``penalty``.
        label: a name for reports (defaults to the function's name).
    """

    name = "callable"

    def __init__(self, fn: Callable[[Chem.Mol], float] | str, range: Optional[Sequence[float]] = None,
                 label: Optional[str] = None, **kw):
        super().__init__(**kw)
        if isinstance(fn, str):
            self.path: Optional[str] = fn
            fn = _import_path(fn)
        else:
            self.path = None
        if not callable(fn):
            raise ValueError(f"callable reward: {fn!r} is not callable")
        if range is None and self._penalty is None:
            raise ValueError("callable reward: give range=(lo, hi) or penalty= so invalid molecules get a "
                             "penalty below the reward's values")
        if range is not None:
            lo, hi = map(float, range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ValueError(f"callable reward: range must be finite with lo <= hi, got {range}")
            self._range: Optional[tuple[float, float]] = (lo, hi)
        else:
            self._range = None
        self.fn = fn
        self.label = label or (self.path.split(":")[-1] if self.path else getattr(fn, "__name__", "callable"))

    def base_range(self):
        if self._range is not None:
            return self._range
        return (self._penalty + 1.0, self._penalty + 1.0)  # only used when penalty is explicit

    def _score(self, mol):
        return self.fn(mol)

    def params(self):
        if self.path is None:
            raise ValueError(f"callable reward {self.label!r} wraps a Python object; only an import path "
                             "'package.module:function' can be written to a config")
        out: dict[str, Any] = {"fn": self.path}
        if self._range is not None:
            out["range"] = list(self._range)
        if self.label != self.path.split(":")[-1]:
            out["label"] = self.label
        return out


def _import_path(path: str) -> Callable:
    mod, sep, attr = path.partition(":")
    if not sep or not mod or not attr:
        raise ValueError(f"callable reward: import path must look like 'package.module:function', got {path!r}")
    try:
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"callable reward: cannot import {path!r}: {e}") from e
    return obj
