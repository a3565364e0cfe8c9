"""Molecular rewards with an explicit validity penalty.

A reward maps a batch of decoded samples to a :class:`RewardResult`: one float
per sample plus a validity mask and the reason each sample was (in)valid.
Higher is better everywhere in tfftmol, so a reward you want to *minimise*
(SA, MW) is negated with an ``affine`` transform.

Modules
-------
==================  ==============================================================
``descriptors``     the table descriptor name -> RDKit function (qed, logp, sa, ...)
``oracles``         Tanimoto similarity, SMARTS match, a user's ``fn(mol)``
``guacamol``        the GuacaMol / PMO goal-directed objectives by name (osimertinib_mpo, median1, ...)
``property``        the QM9 property model's predictions (qm9_gap, qm9_mu)
``xtb``             GFN-xTB gap, energy per heavy atom, dipole through dxtb (optional install)
``combine``         weighted sums of rewards
``transforms``      affine, clip, sigmoid, step
``sa``              the synthetic-accessibility scorer and penalised logP
``base``            the :class:`Reward` base class: ranges, penalty, config
``result``          :class:`RewardResult`; :func:`~.result.outcome`, where a failing score becomes NaN
``pool``            a batch through validity, the canonical-SMILES cache and the process pool
``build``           the name -> class registry and :func:`build_reward`
==================  ==============================================================

Inputs
------
Each item of the batch may be an RDKit ``Mol``, a SMILES string, ``None`` (a
failed decode), or any object with a ``.mol`` attribute (a decoder's result;
``.mol`` may itself be ``None``).  A reward is a function of the **canonical
SMILES** of the molecule (:func:`tfftmol.chem.mol.check`): every molecule is
written to canonical SMILES, parsed back and scored, so serial, parallel and
cached scores are identical.

Validity penalty
----------------
An invalid sample gets ``values[i] = penalty``, ``valid[i] = False`` and a
reason from the one vocabulary of :mod:`tfftmol.chem.mol` (the same reason
:mod:`tfftmol.chem.metrics` gives it); nothing raises.  The molecule itself may
be invalid (``decode_failed``, ``parse_failed``, ``empty``, ``valence``,
``sanitization``, or a decoder's own ``.reason``), or the reward fails on a
valid molecule (``reward_error``: it raised; ``reward_nan``: it returned NaN or
+-inf).  ``counts`` reports how many samples fell in each class.

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
GuacaMol / PMO      [0, 1]               -0.5             - (every objective of ``guacamol``)
xtb_gap             [0, 15]              -7.5             eV (GFN2-xTB)
xtb_energy          [-5.5, -2.5]         -7               Hartree per heavy atom
xtb_dipole          [0, 10]              -5               Debye
==================  ===================  ===============  ==============

``penalized_logp`` is the unnormalised definition of You et al. (2018) and
Jin et al. (2018): ``logP(Crippen) - SA - max(0, largest ring size - 6)``.

Configuration
-------------
:func:`~tfftmol.chem.rewards.build.build_reward` takes a spec such as
``{name: qed}`` (a dict, a YAML string or file, or a bare name; transforms,
penalties and weighted sums are shown in its docstring), and
``reward.to_config()`` gives the spec back.

Speed
-----
``reward(mols, n_jobs=k)`` scores cache misses in ``k`` worker processes and
caches per-molecule outcomes in an in-memory LRU dictionary keyed by
canonical SMILES (:mod:`~tfftmol.chem.rewards.pool`).  Workers receive SMILES
strings, not Mols, and do the canonicalisation themselves (input strings are
remembered, so a repeated string is a cache hit without touching RDKit); only
``Mol`` inputs without a ``.smiles`` are written to SMILES in the calling
process.  Property-model rewards score their batch in-process (one batched
forward pass) whatever ``n_jobs`` says.

Example:
    >>> r = build_reward({"name": "qed"})
    >>> res = r(["CC(=O)Oc1ccccc1C(=O)O", None])
    >>> round(float(res.values[0]), 2), float(res.values[1]), res.counts["decode_failed"]
    (0.55, -0.5, 1)
"""
from __future__ import annotations

from tfftmol.chem.mol import canonical_smiles, to_mol

from .base import Reward
from .build import REWARDS, build_reward
from .combine import WeightedSum
from .descriptors import (DESCRIPTORS, AromaticRingsReward, Descriptor, DescriptorReward, LogPReward, MWReward,
                          NumRingsReward, PenalizedLogPReward, QEDReward, SAReward, TPSAReward)
from .guacamol import GUACAMOL_REWARDS, OBJECTIVES, PMO_TASKS, GuacaMolReward
from .oracles import CallableReward, SimilarityReward, SubstructureReward
from .property import PropertyReward, QM9GapReward, QM9MuReward
from .result import REASONS, RewardResult
from .sa import penalized_logp, sa_score
from .xtb import XTB_REWARDS, XTBReward
from .transforms import TRANSFORMS, Affine, Clip, Sigmoid, Step, Transform

__all__ = [
    "REASONS",
    "RewardResult",
    "Reward",
    "Transform",
    "Affine",
    "Clip",
    "Sigmoid",
    "Step",
    "Descriptor",
    "DESCRIPTORS",
    "DescriptorReward",
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
    "GuacaMolReward",
    "GUACAMOL_REWARDS",
    "OBJECTIVES",
    "PMO_TASKS",
    "XTBReward",
    "XTB_REWARDS",
    "WeightedSum",
    "REWARDS",
    "TRANSFORMS",
    "build_reward",
    "to_mol",
    "canonical_smiles",
    "sa_score",
    "penalized_logp",
]
