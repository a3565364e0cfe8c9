"""Molecules: parsing, canonical SMILES and the one vocabulary of why a molecule is invalid.

Every part of tfftmol that turns a sample into a molecule asks this module:
the decoders (:mod:`tfftmol.chem.graph`) name their failures with its reasons,
the rewards (:mod:`tfftmol.chem.rewards`) and the metrics
(:mod:`tfftmol.chem.metrics`) classify their inputs with :func:`check`, so one
sample gets the same reason everywhere.

Items
-----
An item is an RDKit ``Mol``, a SMILES string, ``None`` (a failed decode), or an
object with a ``.mol`` attribute (a decoder's result; ``.mol`` may be ``None``,
and then a string ``.reason`` names the decoder's failure).

Reasons
-------
==================  =========================================================
``ok``              a valid molecule
``decode_failed``   no molecule: ``None``, a non-molecule object, or a decoder
                    result whose ``.mol`` is ``None`` and which names no reason
``parse_failed``    a string that is not SMILES (syntax, an unclosed ring)
``empty``           a molecule (or string) with no atom
``valence``         an atom's bond orders exceed its allowed valence
``sanitization``    RDKit rejects the molecule for another reason (e.g. kekulisation)
``disconnected``    more than one fragment, where one is required
``reward_error``    the molecule is valid, the reward function raised on it
``reward_nan``      the molecule is valid, the reward returned NaN or +-inf
==================  =========================================================

A decoder reports the subset it can produce (``graph.REASONS``); a decoder
result's own ``reason`` is kept as it is, so a decoder with a finer failure
class does not lose it.

Canonical SMILES
----------------
The canonical SMILES of an item is RDKit's SMILES of the molecule parsed back
from the item's SMILES (written twice, so that a molecule and any SMILES of it
give the same string); a molecule whose SMILES does not parse back is invalid.
:attr:`MolCheck.mol` is the molecule parsed from that canonical SMILES, so
anything computed from it is a function of the canonical SMILES alone.

>>> check("OCC").smiles, check("OCC").reason
('CCO', 'ok')
>>> [check(s).reason for s in ("C1CC", "C(C)(C)(C)(C)C", "", None)]
['parse_failed', 'valence', 'empty', 'decode_failed']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from rdkit import Chem, rdBase

__all__ = [
    "OK", "DECODE_FAILED", "PARSE_FAILED", "EMPTY", "VALENCE", "SANITIZATION", "DISCONNECTED",
    "REWARD_ERROR", "REWARD_NAN", "REASONS", "MolCheck", "check", "check_smiles", "to_mol", "canonical_smiles",
]

OK = "ok"
DECODE_FAILED = "decode_failed"
PARSE_FAILED = "parse_failed"
EMPTY = "empty"
VALENCE = "valence"
SANITIZATION = "sanitization"
DISCONNECTED = "disconnected"
REWARD_ERROR = "reward_error"
REWARD_NAN = "reward_nan"

#: Every reason, in the order reports list them (see the module docstring).
REASONS = (OK, DECODE_FAILED, PARSE_FAILED, EMPTY, VALENCE, SANITIZATION, DISCONNECTED, REWARD_ERROR, REWARD_NAN)


@dataclass(frozen=True)
class MolCheck:
    """The verdict on one item.

    Attributes:
        mol: the molecule parsed from ``smiles`` (``None`` unless valid).
        smiles: canonical SMILES (``None`` unless valid).
        reason: one of :data:`REASONS` (or a decoder's own failure class).
    """

    mol: Optional[Chem.Mol]
    smiles: Optional[str]
    reason: str

    @property
    def valid(self) -> bool:
        return self.reason == OK


def _invalid(reason: str) -> MolCheck:
    return MolCheck(None, None, reason)


def _smiles_failure(smiles: str) -> str:
    """Why ``Chem.MolFromSmiles(smiles)`` gave ``None``: a syntax error, or which sanitisation step failed."""
    raw = Chem.MolFromSmiles(smiles, sanitize=False)
    if raw is None:
        return PARSE_FAILED
    if raw.GetNumAtoms() == 0:
        return EMPTY
    try:
        Chem.SanitizeMol(raw)
    except Chem.AtomValenceException:
        return VALENCE
    except Exception:  # noqa: BLE001 - kekulisation and the rest
        return SANITIZATION
    return SANITIZATION  # sanitises on its own: the failure came from the parser's other checks


def _parse(smiles: str) -> tuple[Optional[Chem.Mol], str]:
    """``(mol, OK)``, or ``(None, reason)``; call inside ``rdBase.BlockLogs()``."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, _smiles_failure(smiles)
    if mol.GetNumAtoms() == 0:
        return None, EMPTY
    return mol, OK


def check_smiles(smiles: str) -> MolCheck:
    """Parse and canonicalise one SMILES string (never raises).

    ``parse -> write``; if the string was already canonical the molecule just
    parsed is returned, otherwise the written SMILES is parsed and written once
    more and the molecule is parsed from that final string.
    """
    try:
        if not smiles.strip():
            return _invalid(EMPTY)
        with rdBase.BlockLogs():
            mol, reason = _parse(smiles)
            if mol is None:
                return _invalid(reason)
            key = Chem.MolToSmiles(mol)
            if key == smiles:  # already canonical: keep the molecule just parsed
                return MolCheck(mol, key, OK)
            back, reason = _parse(key)  # the written SMILES must parse back
            if back is None:
                return _invalid(reason)
            key = Chem.MolToSmiles(back)
            mol, reason = _parse(key)  # the molecule is a function of the canonical SMILES alone
            return MolCheck(mol, key, OK) if mol is not None else _invalid(reason)
    except Exception:  # noqa: BLE001 - a bad molecule is a reason, never an error
        return _invalid(SANITIZATION)


def _decoder_reason(item: Any) -> str:
    r = getattr(item, "reason", None)
    return r if isinstance(r, str) and r and r != OK else DECODE_FAILED


def check(item: Any, require_connected: bool = False) -> MolCheck:
    """Classify one item (never raises): canonical SMILES, the molecule parsed from it, and the reason.

    Args:
        item: ``Mol``, SMILES, ``None`` or an object with ``.mol`` (and maybe ``.reason``).
        require_connected: a molecule of several fragments is ``"disconnected"``.
    """
    if isinstance(item, str):
        out = check_smiles(item)
    elif isinstance(item, Chem.Mol):
        if item.GetNumAtoms() == 0:
            return _invalid(EMPTY)
        try:
            with rdBase.BlockLogs():
                smi = Chem.MolToSmiles(item)
        except Exception:  # noqa: BLE001 - e.g. an unsanitised molecule RDKit cannot write
            return _invalid(SANITIZATION)
        out = check_smiles(smi)
    elif item is not None and hasattr(item, "mol"):
        if item.mol is None:
            return _invalid(_decoder_reason(item))
        return check(item.mol, require_connected)
    else:
        return _invalid(DECODE_FAILED)
    if require_connected and out.valid and len(Chem.GetMolFrags(out.mol)) > 1:
        return _invalid(DISCONNECTED)
    return out


def canonical_smiles(item: Any) -> Optional[str]:
    """Canonical SMILES of an item, or ``None`` if it is not a valid molecule (see :func:`check`)."""
    return check(item).smiles


def to_mol(item: Any) -> Optional[Chem.Mol]:
    """The item as an RDKit ``Mol`` as given (not canonicalised), or ``None`` (never raises).

    A ``Mol`` is returned as is, a SMILES string is parsed, an object's
    ``.mol`` is followed; unparsable SMILES and empty molecules give ``None``.
    """
    try:
        if isinstance(item, str):
            with rdBase.BlockLogs():
                mol = Chem.MolFromSmiles(item)
        elif isinstance(item, Chem.Mol):
            mol = item
        elif item is not None and hasattr(item, "mol"):
            return to_mol(item.mol)
        else:
            return None
        return mol if mol is not None and mol.GetNumAtoms() > 0 else None
    except Exception:  # noqa: BLE001
        return None
