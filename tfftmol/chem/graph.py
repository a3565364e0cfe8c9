"""Heavy-atom molecular graphs <-> the continuous state of the QM9 graph flow.

Layout (fixed; the surrogate and the fine-tuner rely on it):

* ``N_MAX = 9`` node slots, each one of ``NODE_CLASSES = ("C", "N", "O", "F",
  "absent")`` (index 4 = no atom);
* the 36 unordered pairs ``i < j`` in the row-major order of
  ``torch.triu_indices(9, 9, offset=1)``, each one of ``BOND_TYPES = ("none",
  "single", "double", "triple")`` (index 0 = no bond).  Each bond is stored once,
  so the noise on ``(i, j)`` and ``(j, i)`` is the same by construction;
* the state ``x`` of shape ``(B, STATE_DIM) = (B, 189)`` is
  ``concat(nodes.flatten(1), edges.flatten(1))`` with ``nodes`` of shape
  ``(B, 9, 5)`` and ``edges`` of shape ``(B, 36, 4)``, where each one-hot vector
  ``e`` is scaled to ``SCALE * (2 e - 1)`` (``SCALE = 1``: entries in {-1, +1}).

Molecules are kekulized (bonds single/double/triple only), hydrogens are
implicit, and there are no charges or stereo.  Decoding takes the argmax class
of every slot and builds an RDKit molecule from it, never correcting a valence:
a molecule is valid only if it sanitises and is a single connected fragment.

>>> x = encode(["c1ccccc1O"])
>>> x.shape
torch.Size([1, 189])
>>> decode(x)[0].smiles
'Oc1ccccc1'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from rdkit import Chem, RDLogger

from tfftmol.chem.mol import DISCONNECTED, EMPTY, OK, SANITIZATION, VALENCE, to_mol

__all__ = [
    "N_MAX", "ATOM_TYPES", "NODE_CLASSES", "ABSENT", "BOND_TYPES", "N_NODE_CLASSES", "N_EDGE_CLASSES",
    "N_EDGES", "NODE_DIM", "EDGE_DIM", "STATE_DIM", "SCALE", "MAX_VALENCE", "REASONS",
    "triu_pairs", "edge_index_full", "split_state", "join_state", "classes_to_state", "state_to_classes",
    "mol_to_classes", "encode_classes", "encode", "DecodeResult", "decode_classes", "decode",
]

RDLogger.DisableLog("rdApp.*")

N_MAX = 9
ATOM_TYPES = ("C", "N", "O", "F")
NODE_CLASSES = ATOM_TYPES + ("absent",)
ABSENT = 4                                   # node class index of "no atom"
BOND_TYPES = ("none", "single", "double", "triple")
N_NODE_CLASSES = len(NODE_CLASSES)           # 5
N_EDGE_CLASSES = len(BOND_TYPES)             # 4
N_EDGES = N_MAX * (N_MAX - 1) // 2           # 36
NODE_DIM = N_MAX * N_NODE_CLASSES            # 45
EDGE_DIM = N_EDGES * N_EDGE_CLASSES          # 144
STATE_DIM = NODE_DIM + EDGE_DIM              # 189
SCALE = 1.0                                  # one-hot e -> SCALE * (2 e - 1)
MAX_VALENCE = {"C": 4, "N": 3, "O": 2, "F": 1}
REASONS = (OK, EMPTY, VALENCE, DISCONNECTED, SANITIZATION)  # the reasons of tfftmol.chem.mol this decoder gives

_ATOM_INDEX = {s: i for i, s in enumerate(ATOM_TYPES)}
_BOND_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
_RD_BOND = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
_VAL = np.array([MAX_VALENCE[s] for s in ATOM_TYPES] + [0])

_TRIU = torch.triu_indices(N_MAX, N_MAX, offset=1)   # (2, 36)
_TRIU_NP = _TRIU.numpy()
_PAIR_INDEX = np.full((N_MAX, N_MAX), -1, dtype=np.int64)
_PAIR_INDEX[_TRIU_NP[0], _TRIU_NP[1]] = np.arange(N_EDGES)
_PAIR_INDEX[_TRIU_NP[1], _TRIU_NP[0]] = np.arange(N_EDGES)


def triu_pairs() -> torch.Tensor:
    """The ``(2, 36)`` long tensor of pairs ``(i, j)``, ``i < j``: row ``k`` of the edge block is pair ``k``."""
    return _TRIU.clone()


def edge_index_full() -> torch.Tensor:
    """``(2, 72)`` directed edge index over all pairs: the 36 pairs ``(i, j)`` then their reverses ``(j, i)``.

    Directed edge ``e`` reads its features from undirected pair ``e % 36``.
    """
    return torch.cat([_TRIU, _TRIU.flip(0)], dim=1)


def split_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (B, 189) -> (nodes (B, 9, 5), edges (B, 36, 4))`` (views, differentiable)."""
    if x.shape[-1] != STATE_DIM:
        raise ValueError(f"state has last dimension {x.shape[-1]}; expected {STATE_DIM}")
    b = x.shape[:-1]
    return x[..., :NODE_DIM].reshape(*b, N_MAX, N_NODE_CLASSES), x[..., NODE_DIM:].reshape(*b, N_EDGES, N_EDGE_CLASSES)


def join_state(nodes: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_state`: ``(B, 9, 5), (B, 36, 4) -> (B, 189)``."""
    return torch.cat([nodes.flatten(-2), edges.flatten(-2)], dim=-1)


def classes_to_state(node_cls: torch.Tensor, edge_cls: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Class indices ``(B, 9)`` in 0..4 and ``(B, 36)`` in 0..3 -> the ±SCALE one-hot state ``(B, 189)``."""
    n = torch.nn.functional.one_hot(node_cls.long(), N_NODE_CLASSES).to(dtype)
    e = torch.nn.functional.one_hot(edge_cls.long(), N_EDGE_CLASSES).to(dtype)
    return SCALE * (2.0 * join_state(n, e) - 1.0)


def state_to_classes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax classes of a state: ``(B, 9)`` node classes and ``(B, 36)`` bond classes (NaN -> class 0)."""
    x = torch.nan_to_num(x.detach().float(), nan=-1e30, posinf=1e30, neginf=-1e30)
    nodes, edges = split_state(x)
    return nodes.argmax(-1), edges.argmax(-1)


def mol_to_classes(mol: Union[str, Chem.Mol]) -> tuple[np.ndarray, np.ndarray]:
    """One molecule -> ``(node classes (9,), bond classes (36,))`` as int64 arrays.

    Raises:
        ValueError: if the molecule does not parse, has more than 9 heavy atoms,
            an element other than C/N/O/F, or a formal charge.
    """
    m = to_mol(mol)
    if m is None:
        raise ValueError(f"could not parse molecule {mol!r}")
    m = Chem.RemoveHs(m)
    if m.GetNumAtoms() > N_MAX:
        raise ValueError(f"molecule {Chem.MolToSmiles(m)!r} has {m.GetNumAtoms()} heavy atoms; at most {N_MAX}")
    m = Chem.RWMol(m)
    Chem.Kekulize(m, clearAromaticFlags=True)
    nodes = np.full(N_MAX, ABSENT, dtype=np.int64)
    edges = np.zeros(N_EDGES, dtype=np.int64)
    for a in m.GetAtoms():
        s = a.GetSymbol()
        if s not in _ATOM_INDEX:
            raise ValueError(f"element {s!r} in {Chem.MolToSmiles(m)!r} not in {ATOM_TYPES}")
        if a.GetFormalCharge() != 0:
            raise ValueError(f"formal charge in {Chem.MolToSmiles(m)!r}; charged atoms are not representable")
        nodes[a.GetIdx()] = _ATOM_INDEX[s]
    for b in m.GetBonds():
        order = _BOND_ORDER.get(b.GetBondType())
        if order is None:
            raise ValueError(f"bond type {b.GetBondType()} in {Chem.MolToSmiles(m)!r} not representable")
        edges[_PAIR_INDEX[b.GetBeginAtomIdx(), b.GetEndAtomIdx()]] = order
    return nodes, edges


def encode_classes(mols: Iterable[Union[str, Chem.Mol]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Molecules or SMILES -> class indices ``(B, 9)`` and ``(B, 36)`` (long). Raises on unrepresentable input."""
    pairs = [mol_to_classes(m) for m in mols]
    if not pairs:
        return torch.zeros(0, N_MAX, dtype=torch.long), torch.zeros(0, N_EDGES, dtype=torch.long)
    return (torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])))


def encode(mols: Union[str, Chem.Mol, Sequence[Union[str, Chem.Mol]]]) -> torch.Tensor:
    """Molecules or SMILES -> states ``(B, 189)`` with entries ``±SCALE`` (heavy atoms, kekulized).

    Atom ``k`` of the RDKit molecule goes to node slot ``k``; unused slots are
    "absent".
    """
    if isinstance(mols, (str, Chem.Mol)):
        mols = [mols]
    return classes_to_state(*encode_classes(mols))


@dataclass
class DecodeResult:
    """One decoded sample.

    Attributes:
        mol: the sanitised RDKit molecule, or ``None`` if invalid.
        smiles: its canonical SMILES (no stereo), or ``None``.
        reason: one of ``REASONS`` (:mod:`tfftmol.chem.mol`'s vocabulary): ``"ok"``; ``"empty"`` (no atom);
            ``"valence"`` (an atom's bond orders exceed its valence C4 N3 O2 F1);
            ``"sanitization"`` (RDKit rejects it for another reason);
            ``"disconnected"`` (more than one fragment).
        raw: for an invalid sample, the SMILES of the decoded graph as it is (not sanitised,
            fragments joined by ``.``; ``None`` when empty or not writable), so a failure can be
            looked at; ``None`` for a valid one (its ``smiles`` says it all).
    """

    mol: Optional[Chem.Mol]
    smiles: Optional[str]
    reason: str
    raw: Optional[str] = None

    @property
    def valid(self) -> bool:
        return self.reason == OK


def _raw_smiles(nodes: np.ndarray, edges: np.ndarray, present: np.ndarray, bond_k: np.ndarray) -> Optional[str]:
    """SMILES of the decoded graph without sanitising (for looking at an invalid sample); never raises."""
    try:
        rw = Chem.RWMol()
        slot = {int(i): rw.AddAtom(Chem.Atom(ATOM_TYPES[nodes[i]])) for i in present}
        for k in bond_k:
            rw.AddBond(slot[int(_TRIU_NP[0, k])], slot[int(_TRIU_NP[1, k])], _RD_BOND[edges[k]])
        mol = rw.GetMol()
        mol.UpdatePropertyCache(strict=False)
        return Chem.MolToSmiles(mol, canonical=False, kekuleSmiles=True)
    except Exception:  # noqa: BLE001
        return None


def _decode_one(nodes: np.ndarray, edges: np.ndarray) -> DecodeResult:
    present = np.flatnonzero(nodes != ABSENT)
    if present.size == 0:
        return DecodeResult(None, None, EMPTY)
    # bonds count only between present atoms; a bond to an absent slot is dropped
    bond_k = np.flatnonzero((edges > 0) & (nodes[_TRIU_NP[0]] != ABSENT) & (nodes[_TRIU_NP[1]] != ABSENT))
    valence = np.zeros(N_MAX, dtype=np.int64)
    np.add.at(valence, _TRIU_NP[0, bond_k], edges[bond_k])
    np.add.at(valence, _TRIU_NP[1, bond_k], edges[bond_k])
    if np.any(valence[present] > _VAL[nodes[present]]):
        return DecodeResult(None, None, VALENCE, _raw_smiles(nodes, edges, present, bond_k))
    try:
        rw = Chem.RWMol()
        slot = {}
        for i in present:
            slot[int(i)] = rw.AddAtom(Chem.Atom(ATOM_TYPES[nodes[i]]))
        for k in bond_k:
            rw.AddBond(slot[int(_TRIU_NP[0, k])], slot[int(_TRIU_NP[1, k])], _RD_BOND[edges[k]])
        mol = rw.GetMol()
        Chem.SanitizeMol(mol)
    except Chem.AtomValenceException:
        return DecodeResult(None, None, VALENCE, _raw_smiles(nodes, edges, present, bond_k))
    except Exception:  # noqa: BLE001 - decoding never raises; any RDKit failure is a reason
        return DecodeResult(None, None, SANITIZATION, _raw_smiles(nodes, edges, present, bond_k))
    if len(Chem.GetMolFrags(mol)) != 1:
        return DecodeResult(None, None, DISCONNECTED, _raw_smiles(nodes, edges, present, bond_k))
    try:
        smi = Chem.MolToSmiles(mol, isomericSmiles=False)
    except Exception:  # noqa: BLE001
        return DecodeResult(None, None, SANITIZATION)
    return DecodeResult(mol, smi, OK)


def decode_classes(node_cls: torch.Tensor, edge_cls: torch.Tensor) -> list[DecodeResult]:
    """Class indices ``(B, 9)``, ``(B, 36)`` -> one :class:`DecodeResult` per row (never raises)."""
    n = np.asarray(torch.as_tensor(node_cls).cpu(), dtype=np.int64).reshape(-1, N_MAX)
    e = np.asarray(torch.as_tensor(edge_cls).cpu(), dtype=np.int64).reshape(-1, N_EDGES)
    n = np.where((n >= 0) & (n < N_NODE_CLASSES), n, ABSENT)
    e = np.where((e >= 0) & (e < N_EDGE_CLASSES), e, 0)
    return [_decode_one(n[b], e[b]) for b in range(n.shape[0])]


def decode(x: torch.Tensor) -> list[DecodeResult]:
    """States ``(B, 189)`` (any real values; NaN allowed) -> one :class:`DecodeResult` per row.

    Each slot takes its argmax class; no valence is corrected.  Never raises
    on values; a wrong last dimension raises ``ValueError``.
    """
    x = torch.as_tensor(x)
    if x.dim() == 1:
        x = x.unsqueeze(0)
    return decode_classes(*state_to_classes(x))
