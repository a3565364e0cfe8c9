"""SELFIES <-> token indices, and token indices -> molecules, never raising.

The vocabulary is ``<pad>``, ``<bos>``, ``<eos>`` followed by the sorted SELFIES
alphabet of the processed ZINC250k copy (``tfftmol/chem/data/zinc250k_alphabet.json``).
Any token sequence decodes to a molecule (the point of SELFIES); a decoded
sample is still classified, because a sequence can decode to nothing (it ends
at once) and because a latent can be NaN or infinite.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import selfies as sf
import torch
from rdkit import Chem, RDLogger, rdBase

from ..graph import DecodeResult

__all__ = ["PAD", "BOS", "EOS", "SPECIALS", "REASONS", "ALPHABET_PATH", "SelfiesVocab", "DecodeResult",
           "decode_selfies", "decode_selfies_batch"]

RDLogger.DisableLog("rdApp.*")

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
# why a decoded sample is not a valid molecule ("ok" if it is)
REASONS = ("ok", "nonfinite_latent", "empty", "selfies_error", "sanitization", "disconnected")
ALPHABET_PATH = Path(__file__).resolve().parents[1] / "data" / "zinc250k_alphabet.json"


class SelfiesVocab:
    """Token <-> index map.

    Args:
        alphabet: SELFIES symbols (e.g. ``"[C]"``, ``"[=O]"``); the specials come first.
        max_len: longest SELFIES (in symbols) the model is trained on; sequences
            carry one more position for ``<eos>``.
    """

    def __init__(self, alphabet: Sequence[str], max_len: int):
        if max_len < 1:
            raise ValueError(f"max_len={max_len} must be >= 1")
        self.tokens = list(SPECIALS) + [a for a in alphabet if a not in SPECIALS]
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.max_len = int(max_len)

    @classmethod
    def load(cls, path: Path | str = ALPHABET_PATH) -> "SelfiesVocab":
        meta = json.loads(Path(path).read_text())
        return cls(meta["alphabet"], meta["max_len"])

    def to_dict(self) -> dict:
        return {"alphabet": self.tokens[len(SPECIALS):], "max_len": self.max_len}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, selfies: Iterable[str], length: Optional[int] = None) -> torch.Tensor:
        """``(N, L)`` long tensor: symbols, then ``<eos>``, then ``<pad>``; ``L = max_len + 1`` by default.

        Raises:
            ValueError: for a symbol outside the vocabulary or a SELFIES longer than ``L - 1``.
        """
        L = (self.max_len + 1) if length is None else int(length)
        rows = []
        for s in selfies:
            sym = list(sf.split_selfies(s))
            if len(sym) > L - 1:
                raise ValueError(f"SELFIES of {len(sym)} symbols is longer than {L - 1}: {s[:60]}...")
            try:
                ids = [self.index[t] for t in sym]
            except KeyError as e:
                raise ValueError(f"symbol {e.args[0]!r} is not in the vocabulary ({len(self)} tokens)") from None
            rows.append(ids + [EOS] + [PAD] * (L - 1 - len(ids)))
        if not rows:
            return torch.zeros((0, L), dtype=torch.long)
        return torch.tensor(rows, dtype=torch.long)

    def to_selfies(self, ids: torch.Tensor | np.ndarray) -> list[str]:
        """Index rows -> SELFIES strings, read up to the first ``<eos>``/``<pad>``; ``<bos>`` is skipped."""
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
        out = []
        for row in arr:
            toks = []
            for i in row:
                i = int(i)
                if i == EOS or i == PAD:
                    break
                if i == BOS or i >= len(self.tokens) or i < 0:
                    continue
                toks.append(self.tokens[i])
            out.append("".join(toks))
        return out


def decode_selfies(s: Optional[str]) -> DecodeResult:
    """One SELFIES -> :class:`DecodeResult` (``mol``, canonical non-isomeric ``smiles``, ``reason``); never raises.

    ``reason``: ``"ok"``; ``"empty"`` (no symbol, or decodes to no atom);
    ``"selfies_error"`` (the SELFIES decoder raised); ``"sanitization"`` (RDKit
    rejects the SMILES); ``"disconnected"`` (more than one fragment).
    """
    if not s:
        return DecodeResult(None, None, "empty")
    try:
        smi = sf.decoder(s)
    except Exception:  # noqa: BLE001  (selfies.DecoderError and anything else)
        return DecodeResult(None, None, "selfies_error")
    if not smi:
        return DecodeResult(None, None, "empty")
    try:
        with rdBase.BlockLogs():
            mol = Chem.MolFromSmiles(smi)
            if mol is None:
                return DecodeResult(None, None, "sanitization")
            if mol.GetNumAtoms() == 0:
                return DecodeResult(None, None, "empty")
            if len(Chem.GetMolFrags(mol)) != 1:
                return DecodeResult(None, None, "disconnected")
            can = Chem.MolToSmiles(mol, isomericSmiles=False)
    except Exception:  # noqa: BLE001
        return DecodeResult(None, None, "sanitization")
    return DecodeResult(mol, can, "ok")


def decode_selfies_batch(strings: Sequence[Optional[str]]) -> list[DecodeResult]:
    return [decode_selfies(s) for s in strings]
