"""Physics rewards from GFN-xTB through ``dxtb``: HOMO-LUMO gap, energy per heavy atom, dipole moment.

Each molecule (its canonical SMILES, as every reward) gets one geometry: RDKit
ETKDGv3 with a fixed ``seed`` on the molecule with explicit hydrogens, relaxed
with MMFF94 (up to 2,000 steps), so the same molecule always gets the same
conformer and the same value.  A GFN2-xTB (or GFN1-xTB) single point on it
(``dxtb`` 0.4.0, float64, CPU, libcint integrals, SCF forced to converge in at
most ``maxiter`` iterations, Fermi smearing at 300 K) gives

==================  =====================================================  ===========  =================
name                value                                                  units        nominal range
==================  =====================================================  ===========  =================
``xtb_gap``         LUMO - HOMO (per spin channel, the smaller)            eV           [0, 15]
``xtb_energy``      total energy / number of heavy atoms                   Hartree      [-5.5, -2.5]
``xtb_dipole``      norm of the dipole moment (about the centre of mass)   Debye        [0, 10]
==================  =====================================================  ===========  =================

The energy per heavy atom is the size-normalised form of the total energy (the
total grows with size; lower is more stable, so negate it to reward
stability).  It is still dominated by which elements a molecule has (-4.2 Eh
for methane, -5.1 Eh for water, -2.6 Eh per atom of benzene; QM9 molecules lie
between -3.3 and -2.7), so as a target it reads "which composition" as much as
"how stable".  ``{name: xtb, target: gap | energy | dipole, method: gfn2 | gfn1,
seed: 0, time_limit: 60, maxiter: 250}`` is the general form.

Failures are invalid samples with their own reason (never a crash):

- ``disconnected``: more than one fragment (ETKDG and MMFF put fragments on
  top of each other);
- ``xtb_embed``: ETKDG found no 3D conformer, also with random starting
  coordinates and 1,000 attempts, or two atoms end closer than 0.5 A (strained
  cages: 4 of 60 QM9 test molecules, 2.7% of 150 qm9-graph samples);
- ``xtb_forcefield``: MMFF has no parameters for an atom;
- ``xtb_scf``: dxtb raised (the SCF did not converge, or an element or charge
  state it cannot treat);
- ``xtb_timeout``: the molecule took longer than ``time_limit`` seconds,
  conformer included (enforced with ``SIGALRM`` where the score runs in a
  process's main thread, as in the reward's worker processes).

A failure anywhere else is a ``reward_error`` like any reward's.

Values are rounded to 8 decimals (dxtb repeated on one geometry differs by about
1e-13, from BLAS), so serial, parallel and repeated scores are the same.
Values are cached by canonical SMILES (the reward's cache) and, within one
process, per ``(SMILES, method, seed)`` so that ``xtb_gap`` and ``xtb_dipole``
in one ``sum`` share one calculation.  Scoring in ``n_jobs`` processes uses the
reward pool; a calculation takes about 0.2-1 s for a QM9-sized molecule.

``dxtb`` is not a dependency of tfftmol: its helper packages declare
``numpy<2`` while tfftmol pins numpy 2.4.6 (they run with it), so pip cannot
resolve it as an extra.  Install the pinned set without dependency resolution::

    pip install --no-deps dxtb==0.4.0 tad-mctc==0.7.0 tad-dftd3==0.6.0 tad-dftd4==0.8.0 \\
        tad-multicharge==0.5.0 tad-libcint==0.3.0 pydantic==2.14.4 pydantic-core==2.50.5 \\
        annotated-types==0.8.0 typing-inspection==0.4.5 opt-einsum==3.4.0 h5py==3.16.0 \\
        tomli==2.5.0 tomli-w==1.2.0

Building an xTB reward without it raises a ``ValueError`` that says so.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, ClassVar, Optional

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from tfftmol.chem.mol import DISCONNECTED, OK

from .base import Reward
from .result import MAX_TRACEBACK, Outcome, outcome

__all__ = [
    "XTB_EMBED", "XTB_FORCEFIELD", "XTB_SCF", "XTB_TIMEOUT", "XTB_REASONS", "XTB_INSTALL", "XTBFailure",
    "available", "conformer", "xtb_properties", "XTBReward", "XTBGapReward", "XTBEnergyReward", "XTBDipoleReward",
    "XTB_REWARDS",
]

XTB_EMBED = "xtb_embed"
XTB_FORCEFIELD = "xtb_forcefield"
XTB_SCF = "xtb_scf"
XTB_TIMEOUT = "xtb_timeout"
#: The reasons an xTB reward adds to :data:`tfftmol.chem.mol.REASONS`.
XTB_REASONS = (XTB_EMBED, XTB_FORCEFIELD, XTB_SCF, XTB_TIMEOUT)

#: The pinned packages, installed with ``pip install --no-deps`` (module docstring).
XTB_INSTALL = ("dxtb==0.4.0 tad-mctc==0.7.0 tad-dftd3==0.6.0 tad-dftd4==0.8.0 tad-multicharge==0.5.0 "
               "tad-libcint==0.3.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 "
               "typing-inspection==0.4.5 opt-einsum==3.4.0 h5py==3.16.0 tomli==2.5.0 tomli-w==1.2.0")

ANGSTROM_TO_BOHR = 1.0 / 0.529177210903  # CODATA 2018
EMBED_RETRY_ITERATIONS = 1000  # ETKDG attempts with random coordinates after the first embedding fails
MIN_DISTANCE = 0.5  # Angstrom: a conformer with two atoms closer than this is a failed embedding
HARTREE_TO_EV = 27.211386245988
AU_TO_DEBYE = 2.541746473

ROUND = 8  # decimals kept of the energy (Hartree), gap (eV) and dipole (Debye)
METHODS = ("gfn2", "gfn1")
TARGETS: dict[str, tuple[float, float]] = {"gap": (0.0, 15.0), "energy": (-5.5, -2.5), "dipole": (0.0, 10.0)}


class XTBFailure(Exception):
    """A molecule xTB cannot score, with its reason (one of :data:`XTB_REASONS`)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def available() -> bool:
    """Whether ``dxtb`` and the libcint integrals it needs for GFN2 can be imported."""
    return importlib.util.find_spec("dxtb") is not None and importlib.util.find_spec("tad_libcint") is not None


@contextmanager
def _time_limit(seconds: Optional[float]):
    """Raise :class:`XTBFailure` (``xtb_timeout``) after ``seconds``; a no-op off the main thread or for ``None``.

    An alarm already set by the caller (e.g. pytest-timeout's) is put back afterwards with the time it
    has left (at least 1 ms), so it still fires.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum, frame):
        raise XTBFailure(XTB_TIMEOUT, f"longer than the time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    outer, outer_interval = signal.setitimer(signal.ITIMER_REAL, float(seconds))
    if outer:
        signal.setitimer(signal.ITIMER_REAL, min(float(seconds), outer))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3), outer_interval)


def conformer(mol: Chem.Mol, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Atomic numbers ``(n,)`` and positions ``(n, 3)`` in Angstrom (hydrogens added) of ``mol``'s conformer.

    ETKDGv3 with ``randomSeed=seed`` (then with random starting coordinates and
    :data:`EMBED_RETRY_ITERATIONS` attempts if that fails), relaxed with MMFF94.
    Raises :class:`XTBFailure`: ``disconnected`` (more than one fragment),
    ``xtb_embed`` (no conformer, or two atoms closer than :data:`MIN_DISTANCE`),
    ``xtb_forcefield``.
    """
    if len(Chem.GetMolFrags(mol)) > 1:
        raise XTBFailure(DISCONNECTED, "xTB rewards score one connected molecule; this one has several fragments")
    mh = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    with rdBase.BlockLogs():
        cid = AllChem.EmbedMolecule(mh, params)
        if cid < 0:  # strained cages: random starting coordinates, more attempts (at most a few seconds)
            params.useRandomCoords = True
            params.maxIterations = EMBED_RETRY_ITERATIONS
            cid = AllChem.EmbedMolecule(mh, params)
        if cid < 0:
            raise XTBFailure(XTB_EMBED, "ETKDG found no conformer")
        if not AllChem.MMFFHasAllMoleculeParams(mh):
            raise XTBFailure(XTB_FORCEFIELD, "MMFF94 has no parameters for an atom of this molecule")
        AllChem.MMFFOptimizeMolecule(mh, maxIters=2000)
    numbers = np.array([a.GetAtomicNum() for a in mh.GetAtoms()], dtype=np.int64)
    positions = np.asarray(mh.GetConformer().GetPositions(), dtype=np.float64)
    masses = np.array([a.GetMass() for a in mh.GetAtoms()])
    positions = positions - masses @ positions / masses.sum()  # centre of mass at the origin (an ion's dipole)
    if len(positions) > 1:
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        if d.min() < MIN_DISTANCE:
            raise XTBFailure(XTB_EMBED, f"two atoms {d.min():.2f} A apart after MMFF (< {MIN_DISTANCE} A)")
    return numbers, positions


def _frontier_gap(emo: np.ndarray, occ: np.ndarray) -> float:
    """LUMO - HOMO (Hartree) of each spin channel, the smaller one; ``occ`` is ``(2, n_orbitals)`` in [0, 1]."""
    gaps = []
    for channel in np.atleast_2d(occ):
        filled, empty = emo[channel > 0.5], emo[channel <= 0.5]
        if len(filled) and len(empty):
            gaps.append(empty.min() - filled.max())
    if not gaps:
        raise XTBFailure(XTB_SCF, "no occupied/unoccupied orbital pair")
    return float(min(gaps))


def single_point(numbers: np.ndarray, positions: np.ndarray, method: str = "gfn2", charge: int = 0,
                 unpaired: int = 0, maxiter: int = 250) -> dict[str, float]:
    """GFN-xTB single point with dxtb at ``positions`` (Angstrom).

    Returns ``energy`` (Hartree), ``gap`` (eV), ``dipole`` (Debye) and ``dipole_vector``
    (three components, atomic units).  Raises :class:`XTBFailure` (``xtb_scf``) if dxtb raises.
    """
    import torch
    import dxtb
    from dxtb.components.field import new_efield

    if method not in METHODS:
        raise ValueError(f"xtb: method {method!r} unknown; valid: {list(METHODS)}")
    dd: dict[str, Any] = {"dtype": torch.float64, "device": torch.device("cpu")}
    num = torch.as_tensor(numbers, dtype=torch.long)
    pos = torch.as_tensor(positions, **dd) * ANGSTROM_TO_BOHR
    par = dxtb.GFN2_XTB if method == "gfn2" else dxtb.GFN1_XTB
    opts = {"verbosity": 0, "int_driver": "libcint", "force_convergence": True, "maxiter": int(maxiter)}
    try:
        with torch.no_grad():
            calc = dxtb.Calculator(num, par, interaction=[new_efield(torch.zeros(3, **dd))], opts=opts, **dd)
            dip = calc.dipole_analytical(pos, chrg=int(charge), spin=int(unpaired),
                                         store_mo_energies=True, store_occupation=True)
            energy = float(calc.cache["energy"].sum())
            emo = calc.cache["mo_energies"].numpy()
            occ = calc.cache["occupation"].numpy()
    except XTBFailure:
        raise
    except Exception as e:  # noqa: BLE001 - dxtb's failures (SCF, unsupported input) are the molecule's
        raise XTBFailure(XTB_SCF, f"dxtb: {type(e).__name__}: {e}"[:MAX_TRACEBACK]) from e
    vec = dip.numpy().astype(np.float64)
    out = {"energy": energy, "gap": _frontier_gap(emo, occ) * HARTREE_TO_EV,
           "dipole": float(np.linalg.norm(vec)) * AU_TO_DEBYE}
    if not all(math.isfinite(v) for v in out.values()):
        raise XTBFailure(XTB_SCF, f"non-finite result {out}")
    out["dipole_vector"] = vec  # type: ignore[assignment]
    return out


@functools.lru_cache(maxsize=4096)
def _cached(smiles: str, method: str, seed: int, maxiter: int) -> tuple[float, float, float, int]:
    mol = Chem.MolFromSmiles(smiles)
    numbers, positions = conformer(mol, seed)
    charge = Chem.GetFormalCharge(mol)
    unpaired = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    res = single_point(numbers, positions, method, charge, unpaired, maxiter)
    # dxtb repeated on one geometry differs in the last ~1e-13 (BLAS): rounded, so that a molecule scored
    # again, in another process or in the other order gets the same value
    return (round(res["energy"], ROUND), round(res["gap"], ROUND), round(res["dipole"], ROUND),
            mol.GetNumHeavyAtoms())


def xtb_properties(mol: Chem.Mol, method: str = "gfn2", seed: int = 0, maxiter: int = 250,
                   time_limit: Optional[float] = None) -> dict[str, float]:
    """``gap`` (eV), ``energy`` (Hartree per heavy atom), ``dipole`` (Debye) and ``total_energy`` of ``mol``.

    The molecule is written to canonical SMILES first, so any form of it gets the same
    conformer.  Raises :class:`XTBFailure` with its reason.
    """
    smiles = Chem.MolToSmiles(mol)
    with _time_limit(time_limit):
        energy, gap, dipole, heavy = _cached(smiles, method, int(seed), int(maxiter))
    return {"gap": gap, "energy": energy / heavy, "dipole": dipole, "total_energy": energy}


class XTBReward(Reward):
    """A GFN-xTB property of the molecule's seeded MMFF-relaxed conformer (module docstring).

    Args:
        target: ``"gap"`` (eV), ``"energy"`` (Hartree per heavy atom) or ``"dipole"`` (Debye).
        method: ``"gfn2"`` (default) or ``"gfn1"``.
        seed: the ETKDG seed (one conformer per molecule and seed; RDKit takes 0 and 1 as the same seed).
        time_limit: seconds per molecule, conformer included (``None``: no limit).
        maxiter: SCF iterations before ``xtb_scf``.
    """

    name = "xtb"
    _target: ClassVar[Optional[str]] = None  # fixed by the named subclasses

    def __init__(self, target: str = "gap", method: str = "gfn2", seed: int = 0, time_limit: Optional[float] = 60.0,
                 maxiter: int = 250, **kw):
        super().__init__(**kw)
        if target not in TARGETS:
            raise ValueError(f"xtb: target {target!r} unknown; valid targets: {sorted(TARGETS)}")
        if method not in METHODS:
            raise ValueError(f"xtb: method {method!r} unknown; valid methods: {list(METHODS)}")
        if time_limit is not None and not (math.isfinite(float(time_limit)) and float(time_limit) > 0):
            raise ValueError(f"xtb: time_limit must be a positive number of seconds or null, got {time_limit}")
        if int(maxiter) < 1:
            raise ValueError(f"xtb: maxiter must be >= 1, got {maxiter}")
        if not available():
            raise ValueError("xtb rewards need dxtb, which is not installed; install the pinned set with "
                             f"`pip install --no-deps {XTB_INSTALL}`")
        self.target, self.method, self.seed = target, method, int(seed)
        self.time_limit = None if time_limit is None else float(time_limit)
        self.maxiter = int(maxiter)

    def base_range(self):
        return TARGETS[self.target]

    def _score(self, mol: Chem.Mol) -> float:
        return xtb_properties(mol, self.method, self.seed, self.maxiter, self.time_limit)[self.target]

    def _score_mols(self, mols: list[Chem.Mol]) -> list[Outcome]:
        """As the base class, except that an :class:`XTBFailure` keeps its own reason."""
        out: list[Outcome] = []
        first = True
        for m in mols:
            failed: list[XTBFailure] = []

            def run(m=m) -> float:
                try:
                    return self.score_mol(m)
                except XTBFailure as f:
                    failed.append(f)
                    return float("nan")

            o = outcome(run, with_traceback=first)
            if failed:
                o = (float("nan"), failed[0].reason, str(failed[0]))
            first = first and o[1] in (OK, DISCONNECTED, *XTB_REASONS)
            out.append(o)
        return out

    def params(self) -> dict:
        out: dict[str, Any] = {} if self._target else {"target": self.target}
        out.update({"method": self.method, "seed": self.seed, "time_limit": self.time_limit, "maxiter": self.maxiter})
        return out


def _named(cls_name: str, name: str, target: str, doc: str) -> type[XTBReward]:
    def __init__(self, method: str = "gfn2", seed: int = 0, time_limit: Optional[float] = 60.0,
                 maxiter: int = 250, **kw):
        XTBReward.__init__(self, target=target, method=method, seed=seed, time_limit=time_limit, maxiter=maxiter,
                           **kw)

    return type(cls_name, (XTBReward,), {"name": name, "_target": target, "__init__": __init__, "__doc__": doc,
                                         "__module__": __name__, "__qualname__": cls_name})


XTBGapReward = _named("XTBGapReward", "xtb_gap", "gap", "GFN-xTB HOMO-LUMO gap (eV) of the molecule's conformer.")
XTBEnergyReward = _named("XTBEnergyReward", "xtb_energy", "energy",
                         "GFN-xTB total energy per heavy atom (Hartree) of the molecule's conformer.")
XTBDipoleReward = _named("XTBDipoleReward", "xtb_dipole", "dipole",
                         "GFN-xTB dipole moment (Debye) of the molecule's conformer.")

#: Every xTB reward class (registered by :mod:`~.build`).
XTB_REWARDS: tuple[type[XTBReward], ...] = (XTBReward, XTBGapReward, XTBEnergyReward, XTBDipoleReward)
