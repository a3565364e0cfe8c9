"""Scoring a batch: validity, the canonical-SMILES cache and the process pool.

:func:`score_batch` is what ``reward(mols, n_jobs=k)`` runs:

1. every item is classified once by :func:`tfftmol.chem.mol.check`; a SMILES
   string (or a decoder result carrying ``.smiles``) goes to the workers as is,
   anything else is written to canonical SMILES here;
2. strings seen before are looked up in the :class:`ScoreCache` (an input
   string remembers its canonical form, so a repeat costs no RDKit call);
3. the misses are canonicalised and scored by :func:`score_strings`, serially
   or in ``k`` worker processes (chunks of SMILES strings: workers never
   receive ``Mol`` objects); results do not depend on ``k``;
4. invalid molecules get the reward's penalty and their reason.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Optional, Protocol, Sequence

import numpy as np
from rdkit import Chem

from tfftmol.chem.mol import OK, REASONS, check, check_smiles

from .result import Outcome, RewardResult

__all__ = ["ScoreCache", "score_batch", "score_strings", "compute"]

MIN_PARALLEL = 64  # below this many cache misses, parallel start-up costs more than it saves

#: ``(canonical SMILES or None, value, reason, message)`` of one SMILES string.
Scored = tuple[Optional[str], float, str, str]


class _Scorer(Protocol):
    """What the pool needs from a reward (:class:`~tfftmol.chem.rewards.base.Reward`)."""

    name: str
    parallel_ok: bool
    penalty: float
    _cache: "ScoreCache"

    def _score_mols(self, mols: list[Chem.Mol]) -> list[Outcome]: ...


class ScoreCache:
    """LRU dictionary canonical SMILES -> :data:`Outcome`, and input string -> ``(canonical SMILES, reason)``.

    ``size`` bounds both (0 disables caching).  ``len`` and ``in`` refer to the
    canonical entries.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.entries: OrderedDict[str, Outcome] = OrderedDict()
        self.alias: dict[str, tuple[Optional[str], str]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def get(self, key: str) -> Outcome:
        """A cached outcome (counted as a hit, moved to the recent end)."""
        self.entries.move_to_end(key)
        self.hits += 1
        return self.entries[key]

    def put(self, scored: dict[str, Outcome]) -> None:
        self.misses += len(scored)
        if not self.size:
            return
        self.entries.update(scored)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)

    def remember(self, smiles: str, key: Optional[str], reason: str) -> None:
        """Remember the canonical form (or the failure) of an input string, bounded like the entries."""
        if not self.size:
            return
        self.alias[smiles] = (key, reason)
        if len(self.alias) > self.size:
            self.alias.pop(next(iter(self.alias)))

    def clear(self) -> None:
        self.entries.clear()
        self.alias.clear()
        self.hits = self.misses = 0


def _carried_smiles(item: Any) -> Optional[str]:
    """The SMILES string an item carries (a string, or ``.smiles`` of a decoder result whose ``.mol`` is set)."""
    if isinstance(item, str):
        return item
    if item is None or isinstance(item, Chem.Mol):
        return None
    smi = getattr(item, "smiles", None)
    if isinstance(smi, str) and smi and getattr(item, "mol", None) is not None:
        return smi
    return None


def score_strings(reward: _Scorer, smiles: Sequence[str]) -> list[Scored]:
    """Canonicalise and score SMILES strings (what the workers run; they receive strings only)."""
    checks = [check_smiles(s) for s in smiles]
    ok = [i for i, c in enumerate(checks) if c.valid]
    out: list[Scored] = [(None, float("nan"), c.reason, "") for c in checks]
    for i, res in zip(ok, reward._score_mols([checks[i].mol for i in ok])):
        out[i] = (checks[i].smiles, *res)
    return out


_WORKER_REWARD: Optional[_Scorer] = None


def _worker_init(reward: Optional[_Scorer]) -> None:
    global _WORKER_REWARD
    if reward is not None:
        _WORKER_REWARD = reward
    torch = sys.modules.get("torch")  # one thread per worker process
    if torch is not None:
        torch.set_num_threads(1)


def _worker_score(smiles: list[str]) -> list[Scored]:
    assert _WORKER_REWARD is not None
    return score_strings(_WORKER_REWARD, smiles)


def compute(reward: _Scorer, smiles: list[str], n_jobs: Optional[int]) -> list[Scored]:
    """:func:`score_strings` on ``n_jobs`` worker processes (``None`` or ``< 0``: every CPU).

    Serial below :data:`MIN_PARALLEL` strings, for rewards that score in-process
    (``parallel_ok = False``), and as a fallback if the pool cannot start
    (e.g. inside a daemonic process), with a ``RuntimeWarning``.
    """
    if n_jobs is None or n_jobs < 0:
        n_jobs = os.cpu_count() or 1
    if n_jobs <= 1 or len(smiles) < MIN_PARALLEL or not reward.parallel_ok:
        return score_strings(reward, smiles)
    n_chunks = min(len(smiles), 4 * n_jobs)
    bounds = np.linspace(0, len(smiles), n_chunks + 1).astype(int)
    chunks = [smiles[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    global _WORKER_REWARD
    if "fork" in mp.get_all_start_methods():
        # forked workers inherit the reward, so user callables need not pickle
        ctx, initargs = mp.get_context("fork"), (None,)
        _WORKER_REWARD = reward
    else:  # pragma: no cover - platforms without fork
        ctx, initargs = mp.get_context("spawn"), (reward,)
    try:
        with ProcessPoolExecutor(n_jobs, mp_context=ctx, initializer=_worker_init, initargs=initargs) as ex:
            parts = list(ex.map(_worker_score, chunks))
    except Exception as e:  # noqa: BLE001 - e.g. inside a daemonic worker: score serially instead
        warnings.warn(f"reward {reward.name!r}: parallel scoring failed ({type(e).__name__}: {e}); "
                      "scoring serially", RuntimeWarning, stacklevel=4)
        return score_strings(reward, smiles)
    finally:
        _WORKER_REWARD = None
    return [r for part in parts for r in part]


def score_batch(reward: _Scorer, mols: Iterable[Any] | str | Chem.Mol, n_jobs: Optional[int] = 1) -> RewardResult:
    """Score a batch with ``reward`` (steps in the module docstring); never raises on a bad molecule."""
    items = [mols] if isinstance(mols, (str, Chem.Mol)) else list(mols)
    cache = reward._cache
    n = len(items)
    keys: list[Optional[str]] = [None] * n  # the string to score: canonical, or an input string not seen yet
    failed: dict[int, str] = {}  # index -> why the item is not a valid molecule
    strings: set[str] = set()  # input strings whose canonical form is worth remembering
    for i, it in enumerate(items):
        smi = _carried_smiles(it)
        if smi is None:  # Mol, None, failed decode: classified here, scored from the canonical string
            c = check(it)
            keys[i] = c.smiles
            if not c.valid:
                failed[i] = c.reason
        elif smi in cache.alias:
            keys[i], reason = cache.alias[smi]
            if keys[i] is None:
                failed[i] = reason
        else:
            keys[i] = smi
            strings.add(smi)
    todo = list(dict.fromkeys(k for k in keys if k is not None and k not in cache))
    scored: dict[str, Outcome] = {}
    resolved: dict[str, tuple[Optional[str], str]] = {}
    for smi, (key, v, reason, msg) in zip(todo, compute(reward, todo, n_jobs)):
        resolved[smi] = (key, reason if key is None else OK)
        if key is not None:
            scored[key] = (v, reason, msg)
        if smi in strings:
            cache.remember(smi, *resolved[smi])
    penalty = reward.penalty
    values = np.full(n, penalty, dtype=np.float64)
    raw = np.full(n, np.nan, dtype=np.float64)
    reasons: list[str] = []
    messages: dict[str, str] = {}
    for i, k in enumerate(keys):
        if k in resolved:
            k, why = resolved[k]
            if k is None:
                failed[i] = why
        if i in failed:
            reason, msg = failed[i], ""
        elif k in scored:
            v, reason, msg = scored[k]
        else:
            v, reason, msg = cache.get(k)
        reasons.append(reason)
        if reason == OK:
            values[i] = raw[i] = v
        elif msg and reason not in messages:
            messages[reason] = msg
    cache.put(scored)
    counts = {r: 0 for r in REASONS}
    for r in reasons:
        counts[r] = counts.get(r, 0) + 1
    valid = np.array([r == OK for r in reasons], dtype=bool)
    return RewardResult(values, valid, raw, reasons, counts, messages, penalty)
