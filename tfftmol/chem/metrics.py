"""Molecule-set metrics: validity, uniqueness, novelty, diversity, reward tails, FCD.

All functions take a batch of samples in the form rewards accept (RDKit
``Mol``, SMILES, ``None`` for a failed decode, or objects with ``.mol``) and
never raise on a bad molecule.  :func:`evaluate` gathers everything into one
tidy ``pandas.DataFrame`` row.

Definitions (``n`` samples, ``V`` the valid ones, ``U`` the distinct canonical
SMILES among ``V``, ``Ref`` a reference set):

- validity      = |V| / n, and per failure reason the fraction of all ``n``;
- uniqueness    = |U| / |V|;
- novelty       = |U \\ Ref| / |U|;
- int. diversity = mean over pairs i < j of V of ``1 - Tanimoto(fp_i, fp_j)``,
  Morgan fingerprints radius 2, 2048 bits (a seeded subsample of at most
  ``max_n`` molecules for large sets);
- right-CVaR_beta = mean of the top ``1 - beta`` fraction of rewards;
  left-CVaR_beta = mean of the bottom ``beta`` fraction.  With ``k = (1-beta) n``
  not an integer, the boundary sample enters with weight ``k - floor(k)``
  (the exact CVaR of the empirical distribution, Rockafellar & Uryasev 2000);
  computed by ``tfftmol.core.risk.cvar``.
  Rewards include the validity penalty (as the fine-tune sees them).
- FCD (Preuer et al. 2018) with the ChemNet of the pinned ``fcd`` package
  (:func:`tfftmol.chem.moses_metrics.fcd`).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from rdkit.Chem import DataStructs, rdFingerprintGenerator

from tfftmol.chem.mol import OK, check, to_mol
from tfftmol.chem.rewards import Reward, RewardResult, build_reward
from tfftmol.core.risk import reward_stats  # the one definition; re-exported here

try:  # the core's risk measures, when present, are the single source of truth
    from tfftmol.core.risk import cvar as _core_cvar
except ImportError:  # pragma: no cover - the local implementation below is equivalent
    _core_cvar = None

__all__ = [
    "classify",
    "validity",
    "uniqueness",
    "novelty",
    "internal_diversity",
    "cvar",
    "reward_stats",
    "fcd",
    "fcd_available",
    "evaluate",
]


def classify(samples: Iterable[Any], require_connected: bool = False) -> tuple[list[Optional[str]], list[str]]:
    """Canonical SMILES (``None`` if invalid) and a reason per sample.

    Each sample is judged by :func:`tfftmol.chem.mol.check`, so the reasons are
    the one vocabulary of :data:`tfftmol.chem.mol.REASONS` (a decoder result
    keeps its own ``.reason``); ``"disconnected"`` only with ``require_connected``.
    """
    checks = [check(item, require_connected) for item in samples]
    return [c.smiles for c in checks], [c.reason for c in checks]


def validity(samples: Iterable[Any], require_connected: bool = False) -> dict[str, float]:
    """``{"validity": |V|/n, "invalid_<reason>": fraction of n, ...}`` (fractions in [0, 1])."""
    _, reasons = classify(samples, require_connected)
    n = len(reasons)
    out: dict[str, float] = {"validity": (reasons.count(OK) / n) if n else float("nan")}
    for r in sorted(set(reasons) - {OK}):
        out[f"invalid_{r}"] = reasons.count(r) / n
    return out


def uniqueness(valid_smiles: Sequence[str]) -> float:
    """|distinct| / |valid| for canonical SMILES of valid molecules (``nan`` if none)."""
    return len(set(valid_smiles)) / len(valid_smiles) if len(valid_smiles) else float("nan")


def _canon_set(reference: Iterable[Any]) -> set[str]:
    smiles, _ = classify(reference)
    return {s for s in smiles if s is not None}


def novelty(valid_smiles: Sequence[str], reference: Iterable[Any] | set[str]) -> float:
    """Fraction of distinct valid molecules not in ``reference`` (in [0, 1]; ``nan`` if none).

    ``reference`` is canonicalised unless it is already a ``set`` of canonical SMILES.
    """
    ref = reference if isinstance(reference, (set, frozenset)) else _canon_set(reference)
    uniq = set(valid_smiles)
    return len(uniq - ref) / len(uniq) if uniq else float("nan")


def internal_diversity(valid: Sequence[Any], max_n: int = 1000, seed: int = 0, radius: int = 2,
                       n_bits: int = 2048) -> float:
    """Mean pairwise Tanimoto distance ``1 - T(i, j)`` over pairs ``i < j``, in [0, 1].

    Args:
        valid: valid molecules (``Mol`` or SMILES); duplicates count as pairs at distance 0.
        max_n: subsample this many molecules (without replacement, seeded) if there are more.
    Returns:
        ``nan`` with fewer than two molecules.
    """
    mols = [m for m in (to_mol(v) for v in valid) if m is not None]
    if len(mols) > max_n:
        idx = np.random.default_rng(seed).choice(len(mols), size=max_n, replace=False)
        mols = [mols[i] for i in sorted(idx)]
    if len(mols) < 2:
        return float("nan")
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    fps = [gen.GetFingerprint(m) for m in mols]
    total, pairs = 0.0, 0
    for i in range(len(fps) - 1):
        sims = DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1:])
        total += float(np.sum(1.0 - np.asarray(sims)))
        pairs += len(sims)
    return total / pairs


def cvar(values: Sequence[float] | np.ndarray, beta: float, tail: str = "right") -> float:
    """Empirical CVaR of rewards (docs/design.md §2.1).

    right-CVaR_beta = mean of the top ``(1 - beta)`` fraction;
    left-CVaR_beta = mean of the bottom ``beta`` fraction.  Fractional counts
    weight the boundary sample, so this equals the Rockafellar-Uryasev value
    ``min_eta eta + E[(r - eta)_+]/(1 - beta)`` (right) on the samples.

    Args:
        values: ``(n,)`` finite rewards.
        beta: tail level in (0, 1).
        tail: ``"right"`` or ``"left"``.
    """
    if not 0.0 < float(beta) < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta}")
    if tail not in ("right", "left"):
        raise ValueError(f"tail must be 'right' or 'left', got {tail!r}")
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        return float("nan")
    if _core_cvar is not None:
        return float(_core_cvar(v, float(beta), tail))
    return _local_cvar(v, float(beta), tail)


def _local_cvar(v: np.ndarray, beta: float, tail: str) -> float:
    """Fallback CVaR on ascending ``v`` (same definition as ``tfftmol.core.risk.cvar``)."""
    if tail == "right":
        v = v[::-1]
        mass = (1.0 - beta) * v.size
    else:
        mass = beta * v.size
    k = int(np.floor(mass + 1e-12))
    frac = mass - k
    if frac < 1e-12:
        frac = 0.0
    total = float(v[:k].sum()) + (frac * float(v[k]) if frac > 0 and k < v.size else 0.0)
    return total / mass


def fcd_available() -> bool:
    """Whether the pinned ``fcd`` package (the ChemNet weights of :mod:`tfftmol.chem.moses_metrics`) imports."""
    try:
        import fcd  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def fcd(smiles: Sequence[str], reference: Sequence[str], n_jobs: int = 1, device: str = "cpu") -> float:
    """Frechet ChemNet Distance between two SMILES sets (lower is closer), with the ChemNet of the pinned
    ``fcd`` package (:func:`tfftmol.chem.moses_metrics.fcd`, its weights loaded without pickled code); ``nan``
    for fewer than two molecules on either side or without the package.  ``n_jobs`` and ``device`` are accepted
    for backward compatibility and ignored (one CPU process)."""
    if len(smiles) < 2 or len(reference) < 2 or not fcd_available():
        return float("nan")
    from .moses_metrics import fcd as _fcd
    return float(_fcd(list(smiles), list(reference)))


def _as_rewards(rewards: Any) -> dict[str, Reward]:
    if rewards is None:
        return {}
    if isinstance(rewards, Mapping):
        if "name" in rewards and not isinstance(rewards.get("name"), (Reward, Mapping)):
            r = build_reward(rewards)
            return {r.name: r}
        return {str(k): build_reward(v) for k, v in rewards.items()}
    if isinstance(rewards, (Reward, str)):
        rewards = [rewards]
    out = {}
    for spec in rewards:
        r = build_reward(spec)
        out[getattr(r, "label", r.name) if r.name == "callable" else r.name] = r
    return out


def evaluate(samples: Iterable[Any], rewards: Any = None, reference: Optional[Iterable[Any]] = None,
             cvar_levels: Sequence[float | tuple[str, float]] = (0.1, 0.9),
             quantiles: Sequence[float] = (0.1, 0.5, 0.9), name: str = "samples", *,
             require_connected: bool = False, diversity_max_n: int = 1000, seed: int = 0,
             compute_fcd: bool = False, n_jobs: int = 1, extra: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
    """Evaluate a set of generated molecules; returns a one-row ``DataFrame``.

    Args:
        samples: ``Mol`` / SMILES / ``None`` / objects with ``.mol`` (and optionally ``.reason``).
        rewards: a reward, a name, a config, a list of those, or a mapping
            column-prefix -> reward.  Each adds mean, valid-only mean,
            quantiles and CVaRs (invalid samples carry the reward's penalty).
        reference: molecules for novelty and FCD (e.g. the training set).
        cvar_levels: levels ``beta`` (both tails) or ``(tail, beta)`` pairs.
        name: value of the ``name`` column.
        compute_fcd: compute FCD against ``reference`` (:func:`fcd`).
        extra: more columns, e.g. ``{"kl": 0.8}``.

    Columns: ``name, n, validity, invalid_<reason>..., uniqueness, novelty,
    int_div, <reward>_...``, ``fcd`` (if asked), then ``extra``.
    """
    items = list(samples)
    smiles, reasons = classify(items, require_connected)
    n = len(items)
    valid_smiles = [s for s in smiles if s is not None]
    row: dict[str, Any] = {"name": name, "n": n,
                           "validity": len(valid_smiles) / n if n else float("nan")}
    for r in sorted(set(reasons) - {OK}):
        row[f"invalid_{r}"] = reasons.count(r) / n
    row["uniqueness"] = uniqueness(valid_smiles)
    ref_set = _canon_set(reference) if reference is not None else None
    row["novelty"] = novelty(valid_smiles, ref_set) if ref_set is not None else float("nan")
    row["int_div"] = internal_diversity(valid_smiles, max_n=diversity_max_n, seed=seed)
    # rewards see exactly the molecules judged valid here (``None`` elsewhere)
    for prefix, reward in _as_rewards(rewards).items():
        res: RewardResult = reward(smiles, n_jobs=n_jobs)
        row.update(reward_stats(res.values, res.valid, prefix, quantiles, cvar_levels))
    if compute_fcd:
        row["fcd"] = fcd(valid_smiles, sorted(ref_set), n_jobs=n_jobs) if ref_set else float("nan")
    if extra:
        row.update(dict(extra))
    return pd.DataFrame([row])
