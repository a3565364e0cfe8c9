"""Molecular rewards with an explicit validity penalty.

A reward maps a batch of decoded samples to a :class:`RewardResult`: one float
per sample plus a validity mask and the reason each sample was (in)valid.
Higher is better everywhere in tfftmol, so a reward you want to *minimise*
(SA, MW) is negated with an ``affine`` transform.

Inputs
------
Each item of the batch may be an RDKit ``Mol``, a SMILES string, ``None`` (a
failed decode), or any object with a ``.mol`` attribute (a decoder's result;
``.mol`` may itself be ``None``).  A reward is a function of the **canonical
SMILES** of the molecule: every molecule is written to canonical SMILES, parsed
back and scored, so serial, parallel and cached scores are identical.

Validity penalty
----------------
One place decides how an invalid sample counts (the ``penalty`` of the reward):

- ``decode_failed``: ``None``, an object whose ``.mol`` is ``None``, an empty
  molecule, a SMILES string that does not parse, or a ``Mol`` whose canonical
  SMILES does not parse back (sanitisation failure);
- ``reward_error``: the reward function raised on this molecule;
- ``reward_nan``: the reward function returned NaN or +-inf.

All three get ``values[i] = penalty`` and ``valid[i] = False``; none of them
raises.  ``counts`` reports how many samples fell in each class (plus ``"ok"``).

**Default penalty.**  Every reward has a *nominal range* ``[lo, hi]`` of its
values on real molecules (exact for bounded scores such as QED, otherwise a
range covering drug-like and QM9 molecules), mapped through its transforms.
The default penalty is

    penalty = lo - 0.5 * (hi - lo)

i.e. half a range-width *below* the lowest value a valid molecule realistically
gets, so that invalid samples always sit in the lower tail: a left-CVaR
fine-tune then pushes them out first, and a right-CVaR fine-tune never
mistakes them for good molecules.  Pass ``penalty=`` to override.  Defaults of
the untransformed built-ins:

==================  ===================  ===============  ==============
name                nominal range        default penalty  units
==================  ===================  ===============  ==============
qed                 [0, 1]               -0.5             -
logp                [-5, 7]              -11              log10 P (Crippen)
sa                  [1, 10]              -3.5             - (1 easy, 10 hard)
sa + affine(-1)     [-10, -1]            -14.5            -
tpsa                [0, 200]             -100             Angstrom^2
mw                  [0, 600]             -300             g/mol
num_rings           [0, 8]               -4               count
aromatic_rings      [0, 6]               -3               count
penalized_logp      [-10, 5]             -17.5            -
similarity          [0, 1]               -0.5             Tanimoto
substructure        [min, max] of values min - 0.5 width  -
qm9_gap             [0, 17]              -8.5             eV
qm9_mu              [0, 30]              -15              Debye
sum                 weighted sum of the terms' ranges (interval arithmetic)
==================  ===================  ===============  ==============

``penalized_logp`` is the unnormalised definition of You et al. (2018) and
Jin et al. (2018): ``logP(Crippen) - SA - max(0, largest ring size - 6)``.

Configuration
-------------
``build_reward(spec)`` takes a dict, a YAML string or a YAML file::

    {name: qed}
    {name: sa, transform: [{affine: {scale: -1}}], penalty: -10}
    {name: sum, terms: [{weight: 1.0, reward: {name: qed}},
                        {weight: 0.1, reward: {name: sa, transform: [{affine: {scale: -1}}]}}]}

and ``reward.to_config()`` returns a dict that YAML round-trips to the same
reward.  Unknown names or keys raise ``ValueError`` listing the valid ones.

Speed
-----
``reward(mols, n_jobs=k)`` scores cache misses in ``k`` worker processes and
caches per-molecule outcomes in an in-memory LRU dictionary keyed by
canonical SMILES.  Workers receive SMILES strings, not Mols, and do the
canonicalisation themselves (input strings are remembered, so a repeated
string is a cache hit without touching RDKit); only ``Mol`` inputs without a
``.smiles`` are written to SMILES in the calling process.  Property-model rewards score their
batch in-process (one batched forward pass) whatever ``n_jobs`` says.

Example:
    >>> r = build_reward({"name": "qed"})
    >>> res = r(["CC(=O)Oc1ccccc1C(=O)O", None])
    >>> round(float(res.values[0]), 2), float(res.values[1]), res.counts["decode_failed"]
    (0.55, -0.5, 1)
"""
from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import os
import sys
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

import numpy as np
import yaml
from rdkit import Chem, rdBase
from rdkit.Chem import QED as _QED
from rdkit.Chem import Crippen, DataStructs, Descriptors, RDConfig, rdMolDescriptors
from rdkit.Chem import rdFingerprintGenerator

__all__ = [
    "REASONS",
    "RewardResult",
    "Reward",
    "Transform",
    "Affine",
    "Clip",
    "Sigmoid",
    "Step",
    "QEDReward",
    "LogPReward",
    "SAReward",
    "TPSAReward",
    "MWReward",
    "NumRingsReward",
    "AromaticRingsReward",
    "PenalizedLogPReward",
    "SimilarityReward",
    "SubstructureReward",
    "PropertyReward",
    "QM9GapReward",
    "QM9MuReward",
    "CallableReward",
    "WeightedSum",
    "REWARDS",
    "TRANSFORMS",
    "build_reward",
    "to_mol",
    "canonical_smiles",
    "sa_score",
    "penalized_logp",
]

#: Reasons a sample can carry, in the order they are reported.
REASONS = ("ok", "decode_failed", "reward_error", "reward_nan")

_DEFAULT_CACHE_SIZE = 200_000
_MIN_PARALLEL = 64  # below this many cache misses, parallel start-up costs more than it saves


# ----------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------
@dataclass
class RewardResult:
    """Rewards of a batch of ``n`` samples.

    Attributes:
        values: ``(n,)`` float64; the reward, with the penalty where invalid.
        valid: ``(n,)`` bool; ``True`` iff the reason is ``"ok"``.
        raw: ``(n,)`` float64; the reward where valid, ``np.nan`` where invalid
            (use it for statistics over valid molecules only).
        reasons: length ``n``; one of :data:`REASONS` per sample.
        counts: reason -> number of samples, every reason in :data:`REASONS` present.
        messages: reason -> the first error message seen for it (for reports).
        penalty: the penalty used for invalid samples.
    """

    values: np.ndarray
    valid: np.ndarray
    raw: np.ndarray
    reasons: list[str]
    counts: dict[str, int]
    messages: dict[str, str] = field(default_factory=dict)
    penalty: float = float("nan")

    def __len__(self) -> int:
        return len(self.values)

    @property
    def validity(self) -> float:
        """Fraction of valid samples in [0, 1] (``nan`` for an empty batch)."""
        return float(self.valid.mean()) if len(self.valid) else float("nan")

    def summary(self) -> str:
        """One line: counts by reason and the mean reward with and without invalid samples."""
        parts = [f"{k}={v}" for k, v in self.counts.items() if v or k == "ok"]
        mean_all = float(np.mean(self.values)) if len(self.values) else float("nan")
        mean_ok = float(np.nanmean(self.raw)) if self.valid.any() else float("nan")
        return f"n={len(self)} " + " ".join(parts) + f" mean={mean_all:.4g} mean_valid={mean_ok:.4g}"


# ----------------------------------------------------------------------------
# Molecule handling
# ----------------------------------------------------------------------------
def to_mol(item: Any) -> Optional[Chem.Mol]:
    """Turn a batch item into an RDKit ``Mol`` or ``None`` (never raises).

    Accepts a ``Mol``, a SMILES string, ``None`` or an object with a ``.mol``
    attribute.  Unparsable SMILES and empty molecules give ``None``.
    """
    try:
        if item is None:
            return None
        if isinstance(item, Chem.Mol):
            mol = item
        elif isinstance(item, str):
            with rdBase.BlockLogs():
                mol = Chem.MolFromSmiles(item)
        elif hasattr(item, "mol"):
            return to_mol(item.mol)
        else:
            return None
        if mol is None or mol.GetNumAtoms() == 0:
            return None
        return mol
    except Exception:  # noqa: BLE001 - a bad item is a failed decode, never an error
        return None


def canonical_smiles(item: Any) -> Optional[str]:
    """Canonical SMILES of a batch item, or ``None`` if it does not decode.

    The SMILES must parse back (so an unsanitisable ``Mol`` gives ``None``).
    """
    mol = to_mol(item)
    if mol is None:
        return None
    try:
        with rdBase.BlockLogs():
            smi = Chem.MolToSmiles(mol)
            if isinstance(item, str) and smi == item:
                return smi
            back = Chem.MolFromSmiles(smi)
        if back is None or back.GetNumAtoms() == 0:
            return None
        return Chem.MolToSmiles(back)
    except Exception:  # noqa: BLE001
        return None


def _canonical_and_mol(smiles: str) -> tuple[Optional[str], Optional[Chem.Mol]]:
    """Canonical SMILES of a SMILES string and the molecule parsed from it (the one rewards score)."""
    try:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(smiles)
            if mol is None or mol.GetNumAtoms() == 0:
                return None, None
            key = Chem.MolToSmiles(mol)
            if key == smiles:  # already canonical: score the molecule just parsed
                return key, mol
            back = Chem.MolFromSmiles(key)
            if back is None or back.GetNumAtoms() == 0:
                return None, None
            key = Chem.MolToSmiles(back)
            mol = Chem.MolFromSmiles(key)  # the reward is a function of the key alone
        return (key, mol) if mol is not None else (None, None)
    except Exception:  # noqa: BLE001
        return None, None


def _as_smiles(item: Any) -> Optional[str]:
    """The SMILES string carried by an item (a string, or an object with ``.smiles`` and a non-``None`` ``.mol``)."""
    if isinstance(item, str):
        return item
    if item is None or isinstance(item, Chem.Mol):
        return None
    smi = getattr(item, "smiles", None)
    if isinstance(smi, str) and smi and getattr(item, "mol", None) is not None:
        return smi
    return None


_SASCORER = None


def _sascorer():
    global _SASCORER
    if _SASCORER is None:
        path = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if path not in sys.path:
            sys.path.append(path)
        import sascorer  # type: ignore[import-not-found]

        _SASCORER = sascorer
    return _SASCORER


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009), in [1, 10], 1 = easy."""
    return float(_sascorer().calculateScore(mol))


def penalized_logp(mol: Chem.Mol) -> float:
    """``logP - SA - max(0, largest ring - 6)``: unnormalised penalised logP (You et al. 2018)."""
    rings = [len(r) for r in mol.GetRingInfo().AtomRings()]
    cycle = max(0, max(rings) - 6) if rings else 0
    return float(Crippen.MolLogP(mol) - sa_score(mol) - cycle)


# ----------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------
class Transform:
    """A monotone map applied to a reward value (so intervals map by their ends)."""

    name: ClassVar[str] = ""

    def __call__(self, v: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def params(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def map_interval(self, lo: float, hi: float) -> tuple[float, float]:
        a, b = self(lo), self(hi)
        return (min(a, b), max(a, b))

    def to_config(self) -> dict:
        return {self.name: self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()  # type: ignore[union-attr]


class Affine(Transform):
    """``v -> scale * v + shift`` (``scale=-1`` turns a cost such as SA into a reward)."""

    name = "affine"

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        self.scale, self.shift = float(scale), float(shift)
        if not (math.isfinite(self.scale) and math.isfinite(self.shift)):
            raise ValueError(f"affine: scale and shift must be finite, got scale={scale}, shift={shift}")

    def __call__(self, v: float) -> float:
        return self.scale * v + self.shift

    def params(self) -> dict:
        return {"scale": self.scale, "shift": self.shift}


class Clip(Transform):
    """``v -> min(max(v, low), high)``; either bound may be ``None``."""

    name = "clip"

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None):
        self.low = None if low is None else float(low)
        self.high = None if high is None else float(high)
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"clip: low={low} must be <= high={high}")

    def __call__(self, v: float) -> float:
        if math.isnan(v):
            return v
        if self.low is not None:
            v = max(v, self.low)
        if self.high is not None:
            v = min(v, self.high)
        return v

    def params(self) -> dict:
        return {"low": self.low, "high": self.high}


class Sigmoid(Transform):
    """Sigmoid desirability ``v -> 1 / (1 + exp(-(v - center) / width))``, in (0, 1).

    ``width > 0`` rewards values above ``center``; ``width < 0`` rewards values below.
    """

    name = "sigmoid"

    def __init__(self, center: float = 0.0, width: float = 1.0):
        self.center, self.width = float(center), float(width)
        if self.width == 0 or not math.isfinite(self.width):
            raise ValueError(f"sigmoid: width must be finite and non-zero, got {width}")

    def __call__(self, v: float) -> float:
        z = -(v - self.center) / self.width
        if z > 700:  # exp overflow
            return 0.0
        return 1.0 / (1.0 + math.exp(z))

    def params(self) -> dict:
        return {"center": self.center, "width": self.width}


class Step(Transform):
    """Step desirability ``v -> high if v >= threshold else low``.

    To reward values *below* a threshold use ``low=1, high=0``.
    """

    name = "step"

    def __init__(self, threshold: float = 0.0, low: float = 0.0, high: float = 1.0):
        self.threshold, self.low, self.high = float(threshold), float(low), float(high)

    def __call__(self, v: float) -> float:
        if math.isnan(v):
            return v
        return self.high if v >= self.threshold else self.low

    def params(self) -> dict:
        return {"threshold": self.threshold, "low": self.low, "high": self.high}


TRANSFORMS: dict[str, type[Transform]] = {t.name: t for t in (Affine, Clip, Sigmoid, Step)}


def _build_transform(spec: Any) -> Transform:
    if isinstance(spec, Transform):
        return spec
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(f"a transform is a one-key mapping such as {{affine: {{scale: -1}}}}, got {spec!r}; "
                         f"valid transforms: {sorted(TRANSFORMS)}")
    (kind, params), = spec.items()
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown transform {kind!r}; valid transforms: {sorted(TRANSFORMS)}")
    cls = TRANSFORMS[kind]
    params = dict(params or {})
    valid = list(cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount])
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"unknown keys {bad} for transform {kind!r}; valid keys: {valid}")
    return cls(**params)


# ----------------------------------------------------------------------------
# Reward base
# ----------------------------------------------------------------------------
_WORKER_REWARD: Optional["Reward"] = None


def _worker_init(reward: Optional["Reward"]) -> None:
    global _WORKER_REWARD
    if reward is not None:
        _WORKER_REWARD = reward
    torch = sys.modules.get("torch")  # only if already loaded: importing it costs seconds
    if torch is not None:
        torch.set_num_threads(1)


def _worker_score(smiles: list[str]) -> list[tuple[Optional[str], float, str, str]]:
    assert _WORKER_REWARD is not None
    return _WORKER_REWARD._score_strings(smiles)


class Reward:
    """Base class: a reward on molecules, higher is better.

    Subclasses implement ``_score(mol) -> float`` (may raise or return NaN; the
    base class turns that into an invalid sample) and set ``name`` and
    ``nominal_range``.  Call the reward on a batch to get a :class:`RewardResult`.

    Args:
        transform: transforms applied in order to the score, e.g. ``[Affine(-1)]``.
        penalty: value given to invalid samples; default ``lo - 0.5 (hi - lo)``
            for the transformed nominal range ``[lo, hi]`` (module docstring).
        cache_size: maximum number of canonical SMILES kept in the LRU cache
            (0 disables caching).
    """

    name: ClassVar[str] = ""
    nominal_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    parallel_ok: ClassVar[bool] = True

    def __init__(self, *, transform: Sequence[Any] = (), penalty: Optional[float] = None,
                 cache_size: int = _DEFAULT_CACHE_SIZE):
        self.transforms: list[Transform] = [_build_transform(t) for t in (transform or ())]
        if penalty is not None and not math.isfinite(float(penalty)):
            raise ValueError(f"penalty must be a finite number, got {penalty}")
        self._penalty = None if penalty is None else float(penalty)
        if int(cache_size) < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[str, tuple[float, str, str]] = OrderedDict()
        self._alias: dict[str, Optional[str]] = {}  # input SMILES -> canonical SMILES (or None)
        self.cache_hits = 0
        self.cache_misses = 0

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
    def score_mol(self, mol: Chem.Mol) -> float:
        """Transformed score of one valid molecule (may raise / return NaN)."""
        v = float(self._score(mol))
        for t in self.transforms:
            v = float(t(v))
        return v

    def _score_mols(self, mols: list[Chem.Mol]) -> list[tuple[float, str, str]]:
        """Score parsed molecules: ``(value, reason, message)`` each, never raises."""
        out = []
        for mol in mols:
            try:
                v = self.score_mol(mol)
            except Exception as e:  # noqa: BLE001 - a failing reward is counted, not fatal
                out.append((float("nan"), "reward_error", f"{type(e).__name__}: {e}"))
                continue
            if not math.isfinite(v):
                out.append((float("nan"), "reward_nan", f"reward returned {v}"))
            else:
                out.append((v, "ok", ""))
        return out

    def _score_strings(self, smiles: list[str]) -> list[tuple[Optional[str], float, str, str]]:
        """Canonicalise and score SMILES strings (this runs in the workers, which receive strings only).

        Returns ``(canonical SMILES or None, value, reason, message)`` per string.
        """
        keys, mols, idx = [], [], []
        for i, smi in enumerate(smiles):
            key, mol = _canonical_and_mol(smi)
            keys.append(key)
            if mol is not None:
                mols.append(mol)
                idx.append(i)
        out: list[tuple[Optional[str], float, str, str]] = [
            (None, float("nan"), "decode_failed", "molecule did not decode")] * len(smiles)
        for i, r in zip(idx, self._score_mols(mols)):
            out[i] = (keys[i], *r)
        return out

    def __call__(self, mols: Iterable[Any], n_jobs: Optional[int] = 1) -> RewardResult:
        """Score a batch.

        Args:
            mols: sequence of ``Mol`` / SMILES / ``None`` / objects with ``.mol``
                (and optionally ``.smiles``, used instead of re-writing ``.mol``).
            n_jobs: worker processes for cache misses; ``1`` (default) is serial,
                ``None`` or ``-1`` uses every CPU.  Results do not depend on it.

        Returns:
            :class:`RewardResult` of length ``len(mols)``.
        """
        items = [mols] if isinstance(mols, (str, Chem.Mol)) else list(mols)
        n = len(items)
        keys: list[Optional[str]] = [None] * n
        pending: dict[str, list[int]] = {}  # SMILES strings whose canonical form is not known yet
        for i, it in enumerate(items):
            smi = _as_smiles(it)
            if smi is None:
                keys[i] = canonical_smiles(it)  # Mol inputs: written to SMILES here, scored from the string
            elif smi in self._alias:
                keys[i] = self._alias[smi]
            elif smi in self._cache:  # cache keys are canonical
                keys[i] = smi
            else:
                pending.setdefault(smi, []).append(i)
        todo: list[str] = []
        seen: set[str] = set()
        for k in keys:
            if k is not None and k not in seen and k not in self._cache:
                seen.add(k)
                todo.append(k)
        todo += [smi for smi in pending if smi not in seen]
        computed: dict[str, tuple[float, str, str]] = {}
        resolved: dict[str, Optional[str]] = {}
        for smi, (key, v, reason, msg) in zip(todo, self._compute(todo, n_jobs)):
            resolved[smi] = key
            if key is not None:
                computed[key] = (v, reason, msg)
            if smi in pending and self.cache_size:
                self._remember_alias(smi, key)
        for smi, idx in pending.items():
            key = resolved.get(smi, smi)  # absent from todo: it equals a canonical key scored above
            for i in idx:
                keys[i] = key
        self.cache_misses += len(computed)
        penalty = self.penalty
        values = np.full(n, penalty, dtype=np.float64)
        raw = np.full(n, np.nan, dtype=np.float64)
        reasons: list[str] = []
        messages: dict[str, str] = {}
        for i, k in enumerate(keys):
            if k is None:
                v, reason, msg = float("nan"), "decode_failed", "molecule did not decode"
            elif k in computed:
                v, reason, msg = computed[k]
            else:
                v, reason, msg = self._cache[k]
                self._cache.move_to_end(k)
                self.cache_hits += 1
            reasons.append(reason)
            if reason == "ok":
                values[i] = raw[i] = v
            elif msg and reason not in messages:
                messages[reason] = msg
        if self.cache_size:
            for k, r in computed.items():
                self._cache[k] = r
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        counts = {r: 0 for r in REASONS}
        for r in reasons:
            counts[r] = counts.get(r, 0) + 1
        valid = np.array([r == "ok" for r in reasons], dtype=bool)
        return RewardResult(values, valid, raw, reasons, counts, messages, penalty)

    def _remember_alias(self, smiles: str, key: Optional[str]) -> None:
        """Remember the canonical form of an input string (bounded like the cache)."""
        self._alias[smiles] = key
        if len(self._alias) > self.cache_size:
            self._alias.pop(next(iter(self._alias)))

    def _compute(self, smiles: list[str], n_jobs: Optional[int]) -> list[tuple[Optional[str], float, str, str]]:
        if n_jobs is None or n_jobs < 0:
            n_jobs = os.cpu_count() or 1
        if n_jobs <= 1 or len(smiles) < _MIN_PARALLEL or not self.parallel_ok:
            return self._score_strings(smiles)
        n_chunks = min(len(smiles), 4 * n_jobs)
        bounds = np.linspace(0, len(smiles), n_chunks + 1).astype(int)
        chunks = [smiles[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        global _WORKER_REWARD
        if "fork" in mp.get_all_start_methods():
            # forked workers inherit the reward, so user callables need not pickle
            ctx, initargs = mp.get_context("fork"), (None,)
            _WORKER_REWARD = self
        else:  # pragma: no cover - platforms without fork
            ctx, initargs = mp.get_context("spawn"), (self,)
        try:
            with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_worker_init, initargs=initargs) as ex:
                parts = list(ex.map(_worker_score, chunks))
        except Exception as e:  # noqa: BLE001 - e.g. inside a daemonic worker: score serially instead
            warnings.warn(f"reward {self.name!r}: parallel scoring failed ({type(e).__name__}: {e}); "
                          "scoring serially", RuntimeWarning, stacklevel=3)
            return self._score_strings(smiles)
        finally:
            _WORKER_REWARD = None
        return [r for part in parts for r in part]

    def clear_cache(self) -> None:
        """Empty the canonical-SMILES cache and reset its counters."""
        self._cache.clear()
        self._alias.clear()
        self.cache_hits = self.cache_misses = 0

    # -- config -----------------------------------------------------------------
    def to_config(self) -> dict:
        """Plain dict that :func:`build_reward` turns back into an equal reward."""
        cfg: dict[str, Any] = {"name": self.name, **self.params()}
        if self.transforms:
            cfg["transform"] = [t.to_config() for t in self.transforms]
        if self._penalty is not None:
            cfg["penalty"] = self._penalty
        if self.cache_size != _DEFAULT_CACHE_SIZE:
            cfg["cache_size"] = self.cache_size
        return cfg

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_config(), sort_keys=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # never ship the caches to workers
        state["_alias"] = {}
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


# ----------------------------------------------------------------------------
# Built-in rewards
# ----------------------------------------------------------------------------
class QEDReward(Reward):
    """Quantitative estimate of drug-likeness (Bickerton et al. 2012), in [0, 1]."""

    name = "qed"
    nominal_range = (0.0, 1.0)

    def _score(self, mol):
        return _QED.qed(mol)


class LogPReward(Reward):
    """Crippen logP (Wildman & Crippen 1999), log10 octanol/water partition coefficient."""

    name = "logp"
    nominal_range = (-5.0, 7.0)

    def _score(self, mol):
        return Crippen.MolLogP(mol)


class SAReward(Reward):
    """Synthetic accessibility score in [1, 10], 1 = easy.  Negate it (``affine: {scale: -1}``) to reward ease."""

    name = "sa"
    nominal_range = (1.0, 10.0)

    def _score(self, mol):
        return sa_score(mol)


class TPSAReward(Reward):
    """Topological polar surface area (Ertl et al. 2000), Angstrom^2."""

    name = "tpsa"
    nominal_range = (0.0, 200.0)

    def _score(self, mol):
        return rdMolDescriptors.CalcTPSA(mol)


class MWReward(Reward):
    """Average molecular weight, g/mol (hydrogens included)."""

    name = "mw"
    nominal_range = (0.0, 600.0)

    def _score(self, mol):
        return Descriptors.MolWt(mol)


class NumRingsReward(Reward):
    """Number of rings (SSSR size)."""

    name = "num_rings"
    nominal_range = (0.0, 8.0)

    def _score(self, mol):
        return float(rdMolDescriptors.CalcNumRings(mol))


class AromaticRingsReward(Reward):
    """Number of aromatic rings."""

    name = "aromatic_rings"
    nominal_range = (0.0, 6.0)

    def _score(self, mol):
        return float(rdMolDescriptors.CalcNumAromaticRings(mol))


class PenalizedLogPReward(Reward):
    """``logP - SA - max(0, largest ring size - 6)``, unnormalised (You et al. 2018)."""

    name = "penalized_logp"
    nominal_range = (-10.0, 5.0)

    def _score(self, mol):
        return penalized_logp(mol)


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


class PropertyReward(Reward):
    """A QM9 property predicted by the shipped property model (:mod:`tfftmol.chem.property_model`).

    Scores a whole batch in one forward pass in this process (``n_jobs`` is
    ignored).  The model is loaded on first use.
    """

    name = "property"
    parallel_ok = False
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {"gap": (0.0, 17.0), "mu": (0.0, 30.0)}

    def __init__(self, target: str = "gap", **kw):
        super().__init__(**kw)
        if target not in self._ranges:
            raise ValueError(f"property target {target!r} unknown; valid targets: {sorted(self._ranges)}")
        self.target = target
        self._model = None

    def base_range(self):
        return self._ranges[self.target]

    def _load(self):
        if self._model is None:
            from tfftmol.chem.property_model import load_property_model

            self._model = load_property_model()
        return self._model

    def _score(self, mol):
        return float(self._load().predict([mol])[self.target][0])

    def _score_mols(self, mols):
        if not mols:
            return []
        try:
            pred = self._load().predict(mols)[self.target]
        except Exception:  # noqa: BLE001 - fall back to one molecule at a time to isolate the culprit
            return super()._score_mols(mols)
        out = []
        for p in pred:
            v = float(p)
            try:
                for t in self.transforms:
                    v = float(t(v))
            except Exception as e:  # noqa: BLE001
                out.append((float("nan"), "reward_error", f"{type(e).__name__}: {e}"))
                continue
            out.append((v, "ok", "") if math.isfinite(v) else (float("nan"), "reward_nan", f"reward returned {v}"))
        return out

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


class WeightedSum(Reward):
    """``sum_k w_k r_k(mol)``: a weighted combination of rewards.

    A molecule is valid iff every term is valid on it; term transforms apply
    before weighting, term penalties are not used (the sum's own penalty is).
    The nominal range is the interval sum of ``w_k * range_k``.
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

    def _score_mols(self, mols):
        if not mols:
            return []
        parts = [r._score_mols(mols) for _, r in self.terms]  # batched per term (property models)
        out = []
        for i in range(len(mols)):
            bad = next((p[i] for p in parts if p[i][1] != "ok"), None)
            if bad is not None:
                out.append(bad)
                continue
            v = sum(w * p[i][0] for (w, _), p in zip(self.terms, parts))
            try:
                for t in self.transforms:
                    v = float(t(v))
            except Exception as e:  # noqa: BLE001
                out.append((float("nan"), "reward_error", f"{type(e).__name__}: {e}"))
                continue
            out.append((v, "ok", "") if math.isfinite(v) else (float("nan"), "reward_nan", f"reward returned {v}"))
        return out

    def _score(self, mol):
        return sum(w * r.score_mol(mol) for w, r in self.terms)

    def params(self):
        return {"terms": [{"weight": w, "reward": r.to_config()} for w, r in self.terms]}


REWARDS: dict[str, type[Reward]] = {
    cls.name: cls
    for cls in (QEDReward, LogPReward, SAReward, TPSAReward, MWReward, NumRingsReward, AromaticRingsReward,
                PenalizedLogPReward, SimilarityReward, SubstructureReward, QM9GapReward, QM9MuReward,
                CallableReward, WeightedSum)
}

_COMMON_KEYS = ("name", "transform", "penalty", "cache_size")


def _param_names(cls: type[Reward]) -> list[str]:
    code = cls.__init__.__code__
    names = list(code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount])
    return [n for n in names if n not in _COMMON_KEYS and n != "kw"]


def build_reward(spec: Any) -> Reward:
    """Build a reward from a config.

    Args:
        spec: a :class:`Reward` (returned as is), a mapping such as
            ``{"name": "sa", "transform": [{"affine": {"scale": -1}}], "penalty": -10}``,
            a YAML string, a path to a YAML file, or a bare name such as ``"qed"``.

    Raises:
        ValueError: unknown reward name or key, bad parameter value; the
            message lists the valid names/keys.
    """
    if isinstance(spec, Reward):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith((".yaml", ".yml"))):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"reward config file {str(path)!r} does not exist")
        spec = yaml.safe_load(path.read_text())
    elif isinstance(spec, str):
        spec = yaml.safe_load(spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"a reward config is a mapping with a 'name' key, got {spec!r}; "
                         f"valid names: {sorted(REWARDS)}")
    spec = dict(spec)
    name = spec.get("name")
    if name not in REWARDS:
        raise ValueError(f"unknown reward name {name!r}; valid names: {sorted(REWARDS)}")
    cls = REWARDS[name]
    valid_keys = list(_COMMON_KEYS) + _param_names(cls)
    bad = sorted(set(spec) - set(valid_keys))
    if bad:
        raise ValueError(f"unknown keys {bad} for reward {name!r}; valid keys: {valid_keys}")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    if cls is WeightedSum:
        terms = []
        for term in kwargs.pop("terms", None) or []:
            if not isinstance(term, Mapping) or set(term) - {"weight", "reward"} or "reward" not in term:
                raise ValueError(f"sum: each term is {{weight: w, reward: {{...}}}}, got {term!r}; "
                                 "valid keys: ['weight', 'reward']")
            terms.append((float(term.get("weight", 1.0)), build_reward(term["reward"])))
        kwargs["terms"] = terms
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"reward {name!r}: {e}; valid keys: {valid_keys}") from e
