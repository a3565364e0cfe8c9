"""The :class:`Reward` base class: transforms, nominal range, default penalty, config round trip.

A subclass implements ``_score(mol) -> float`` on one valid, canonical
molecule (it may raise or return NaN: :func:`~.result.outcome` turns that into
an invalid sample) and sets ``name`` and ``nominal_range``; a reward that
scores a batch at once (a property model) overrides ``_score_mols``.  Calling
a reward runs :func:`~.pool.score_batch`.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Iterable, Optional, Sequence

import yaml
from rdkit import Chem

from tfftmol.chem.mol import OK

from .pool import ScoreCache, score_batch
from .result import Outcome, RewardResult, outcome
from .transforms import Transform, build_transform

__all__ = ["Reward", "DEFAULT_CACHE_SIZE"]

DEFAULT_CACHE_SIZE = 200_000


class Reward:
    """Base class: a reward on molecules, higher is better.

    Args:
        transform: transforms applied in order to the score, e.g. ``[Affine(-1)]``.
        penalty: value given to invalid samples; default ``lo - 0.5 (hi - lo)``
            for the transformed nominal range ``[lo, hi]`` (package docstring).
        cache_size: maximum number of canonical SMILES kept in the LRU cache
            (0 disables caching).
    """

    name: ClassVar[str] = ""
    nominal_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    parallel_ok: ClassVar[bool] = True

    def __init__(self, *, transform: Sequence[Any] = (), penalty: Optional[float] = None,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self.transforms: list[Transform] = [build_transform(t) for t in (transform or ())]
        if penalty is not None and not math.isfinite(float(penalty)):
            raise ValueError(f"penalty must be a finite number, got {penalty}")
        self._penalty = None if penalty is None else float(penalty)
        if int(cache_size) < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = int(cache_size)
        self._cache = ScoreCache(self.cache_size)

    # -- to implement ---------------------------------------------------------
    def _score(self, mol: Chem.Mol) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:
        """Constructor parameters other than ``transform``/``penalty``/``cache_size``."""
        return {}

    # -- ranges and penalty ---------------------------------------------------
    def base_range(self) -> tuple[float, float]:
        """Nominal ``[lo, hi]`` of the untransformed score on real molecules."""
        return tuple(map(float, self.nominal_range))  # type: ignore[return-value]

    @property
    def range(self) -> tuple[float, float]:
        """Nominal ``[lo, hi]`` of the reward after its transforms."""
        lo, hi = self.base_range()
        for t in self.transforms:
            lo, hi = t.map_interval(lo, hi)
        return (lo, hi)

    @property
    def penalty(self) -> float:
        """Value given to invalid samples (explicit, or ``lo - 0.5 (hi - lo)``)."""
        if self._penalty is not None:
            return self._penalty
        lo, hi = self.range
        width = hi - lo
        return float(lo - (0.5 * width if width > 0 else 1.0))

    @penalty.setter
    def penalty(self, value: Optional[float]) -> None:
        self._penalty = None if value is None else float(value)

    # -- scoring ----------------------------------------------------------------
    def _apply_transforms(self, v: float) -> float:
        """The transforms applied in order to an untransformed score."""
        for t in self.transforms:
            v = float(t(v))
        return v

    def score_mol(self, mol: Chem.Mol) -> float:
        """Transformed score of one valid molecule (may raise / return NaN)."""
        return self._apply_transforms(float(self._score(mol)))

    def _score_mols(self, mols: list[Chem.Mol]) -> list[Outcome]:
        """Score valid molecules: one :data:`~.result.Outcome` each, never raises.

        The first failure of the batch keeps its traceback in its message."""
        out: list[Outcome] = []
        first = True
        for m in mols:
            o = outcome(lambda m=m: self.score_mol(m), with_traceback=first)
            first = first and o[1] == OK
            out.append(o)
        return out

    def __call__(self, mols: Iterable[Any], n_jobs: Optional[int] = 1) -> RewardResult:
        """Score a batch.

        Args:
            mols: sequence of ``Mol`` / SMILES / ``None`` / objects with ``.mol``
                (and optionally ``.smiles``, used instead of re-writing ``.mol``).
            n_jobs: worker processes for cache misses; ``1`` (default) is serial,
                ``None`` or ``-1`` uses every CPU.  Results do not depend on it.

        Returns:
            :class:`~.result.RewardResult` of length ``len(mols)``.
        """
        return score_batch(self, mols, n_jobs)

    @property
    def cache_hits(self) -> int:
        return self._cache.hits

    @property
    def cache_misses(self) -> int:
        return self._cache.misses

    def clear_cache(self) -> None:
        """Empty the canonical-SMILES cache and reset its counters."""
        self._cache.clear()

    # -- config -----------------------------------------------------------------
    def to_config(self) -> dict:
        """Plain dict that :func:`~tfftmol.chem.rewards.build_reward` turns back into an equal reward."""
        cfg: dict[str, Any] = {"name": self.name, **self.params()}
        if self.transforms:
            cfg["transform"] = [t.to_config() for t in self.transforms]
        if self._penalty is not None:
            cfg["penalty"] = self._penalty
        if self.cache_size != DEFAULT_CACHE_SIZE:
            cfg["cache_size"] = self.cache_size
        return cfg

    def sources(self) -> dict[str, str]:
        """User code this reward runs: import path -> SHA-256 of its module's source (empty for built-ins).

        Part of the reward's identity (the offline-batch cache key), so fixing a user's
        reward function invalidates what the buggy version computed.
        """
        return {}

    def identity(self) -> dict:
        """The reward's identity: its config and the hashes of the user code it runs (:meth:`sources`)."""
        out: dict[str, Any] = {"config": self.to_config()}
        src = self.sources()
        if src:
            out["sources"] = src
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_config(), sort_keys=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = ScoreCache(self.cache_size)  # never ship the cache to workers
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_config()!r})"

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Reward):
            return False
        try:
            return self.to_config() == other.to_config()
        except ValueError:  # a wrapped Python callable has no config
            return False

    __hash__ = object.__hash__
