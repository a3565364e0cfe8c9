"""The shipped QM9 graph flow: sampling, decoding, and loading the weights.

:class:`QM9GraphFlow` is a :class:`~tfftmol.core.flow.VelocityModule` over the
189-dim state of :mod:`tfftmol.chem.graph` (t = 0 noise, t = 1 data), with
``decode`` and a one-call ``sample``.  The weights ship as safetensors (no
pickle); the network sizes sit in the safetensors metadata and the measured
figures in the model card ``qm9-graph.card.json`` next to it.

>>> from tfftmol.chem.qm9_model import load_qm9_graph
>>> model = load_qm9_graph()
>>> res = model.sample(8, steps=20, seed=0)
>>> res.x.shape
torch.Size([8, 189])
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch

from tfftmol.core.sampling import sample

from .graph import DecodeResult, decode
from .model import GraphTransformerConfig, GraphTransformerFlow

__all__ = ["QM9GraphFlow", "SampleResult", "load_qm9_graph", "save_qm9_graph", "sample_to_csv",
           "WEIGHTS_PATH", "CARD_PATH", "DEFAULT_STEPS", "DEFAULT_SAMPLER"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "qm9-graph.safetensors"
CARD_PATH = WEIGHTS_DIR / "qm9-graph.card.json"
DEFAULT_STEPS = 30
DEFAULT_SAMPLER = "sde"  # measured: higher validity than the ODE at 30 steps (see the model card)
SAMPLERS = ("ode", "heun", "sde")


@dataclass
class SampleResult:
    """Samples of a :class:`QM9GraphFlow`.

    Attributes:
        x: final states, shape ``(n, 189)``.
        mols: RDKit molecules (``None`` where invalid), length ``n``.
        smiles: canonical SMILES (``None`` where invalid), length ``n``.
        valid: bool array ``(n,)``: sanitises and is one connected fragment.
        reasons: one of ``graph.REASONS`` per sample.
    """

    x: torch.Tensor
    mols: list
    smiles: list
    valid: np.ndarray
    reasons: list

    @classmethod
    def from_decoded(cls, x: torch.Tensor, dec: list[DecodeResult]) -> "SampleResult":
        return cls(x=x, mols=[d.mol for d in dec], smiles=[d.smiles for d in dec],
                   valid=np.array([d.reason == "ok" for d in dec], dtype=bool), reasons=[d.reason for d in dec],
                   raw=[getattr(d, "raw", None) for d in dec])

    def __len__(self) -> int:
        return len(self.reasons)

    @property
    def validity(self) -> float:
        return float(self.valid.mean()) if len(self) else float("nan")

    raw: Optional[list] = None

    def to_frame(self) -> pd.DataFrame:
        """``pandas.DataFrame`` with columns ``smiles`` (empty string if invalid), ``valid``, ``reason`` and
        ``raw`` (an invalid sample's unsanitised decode, when the decoder gives one; empty otherwise)."""
        raw = self.raw if self.raw is not None else [None] * len(self)
        return pd.DataFrame({"smiles": [s or "" for s in self.smiles], "valid": self.valid, "reason": self.reasons,
                             "raw": [r or "" for r in raw]})


class QM9GraphFlow(GraphTransformerFlow):
    """Pre-trained QM9 molecular flow (heavy-atom kekulized graphs, at most 9 atoms).

    ``forward(x, t)``/``velocity(x, t)``: ``x`` (B, 189), ``t`` (B,) in [0, 1]
    -> velocity (B, 189); ``decode(x)`` -> list of
    :class:`~tfftmol.chem.graph.DecodeResult`.
    """

    def decode(self, x: torch.Tensor) -> list[DecodeResult]:
        """Argmax decoding of final states ``(B, 189)``; never raises."""
        return decode(x)

    @torch.no_grad()
    def sample(self, n: int, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: Optional[int] = None,
               batch_size: int = 1000, generator: Optional[torch.Generator] = None) -> SampleResult:
        """Draw ``n`` molecules.

        Args:
            n: number of samples (>= 0).
            steps: uniform time steps ``N`` (``h = 1/N``).
            sampler: ``"sde"`` (default: Euler-Maruyama on the memoryless SDE, the
                process the fine-tuner samples), ``"ode"`` (Euler on ``dX = v dt``)
                or ``"heun"`` (Heun on the ODE).
            seed: seeds a fresh generator (ignored if ``generator`` is given).
            batch_size: molecules per batch.

        Returns:
            a :class:`SampleResult`.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}")
        if n < 0 or batch_size < 1:
            raise ValueError(f"n={n} must be >= 0 and batch_size={batch_size} >= 1")
        device = next(self.parameters()).device
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        was_training = self.training
        self.eval()
        xs = []
        if n > 0:
            method = {"sde": "sde", "heun": "heun", "ode": "euler"}[sampler]
            xs = [sample(self, n, method=method, steps=steps, generator=generator, batch_size=batch_size,
                         device=device).x.cpu()]
        self.train(was_training)
        x = torch.cat(xs) if xs else torch.zeros(0, *self.state_shape)
        return SampleResult.from_decoded(x, decode(x))


def save_qm9_graph(model: GraphTransformerFlow, path: Union[str, Path] = WEIGHTS_PATH,
                   extra_metadata: Optional[dict] = None) -> Path:
    """Write the weights as safetensors (atomically), with the config as JSON metadata."""
    from tfftmol.core.checkpoint import save_tensors

    path = Path(path)
    meta = {k: str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({"format": "tfftmol.qm9-graph", "config": json.dumps(model.config.to_dict())})  # the model's own win
    save_tensors(path, {k: v.float() for k, v in model.state_dict().items()}, metadata=meta)
    return path


def load_qm9_graph(device: Union[str, torch.device] = "cpu", path: Union[str, Path, None] = None) -> QM9GraphFlow:
    """Load the shipped QM9 graph flow (safetensors; no pickled code is executed).

    Raises:
        FileNotFoundError: if the weights file does not exist.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.exists():
        raise FileNotFoundError(f"weights {path} not found; train and export them with scripts/pretrain_qm9.py")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path} has no 'config' metadata; not a qm9-graph weights file")
    model = QM9GraphFlow(GraphTransformerConfig(**json.loads(meta["config"])))
    model.load_state_dict(load_file(str(path), device="cpu"))
    return model.to(device).eval()


#: Default molecules per sampling batch of ``tfftmol sample``: measured on qm9-graph (SDE, 30 steps, one thread),
#: 100-250 were up to ~10% faster per molecule than 500-1000 (the README's workflow section).
DEFAULT_SAMPLE_BATCH = 250


def sample_to_csv(model: QM9GraphFlow, n: int, out_path: Union[str, Path], steps: int = DEFAULT_STEPS,
                  sampler: str = DEFAULT_SAMPLER, seed: Optional[int] = 0,
                  batch_size: int = DEFAULT_SAMPLE_BATCH) -> pd.DataFrame:
    """Sample ``n`` molecules and write ``smiles, valid, reason, raw`` to ``out_path`` (CSV); returns the frame."""
    df = model.sample(n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size).to_frame()
    out_path = Path(out_path)
    if out_path.parent != Path(""):
        out_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_path, index=False)
    return df
