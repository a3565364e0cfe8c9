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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tfftmol.core.flow import sinusoidal_embedding
from tfftmol.core.sampling import sample

from .graph import N_EDGES, N_MAX, DecodeResult, decode, split_state
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

    #: decoding takes each slot's argmax, so the posterior mean of a state decodes like a sample
    #: (``grid="fast"`` of :mod:`tfftmol.chem.fast_sampling`)
    argmax_decoded = True

    def __init__(self, config: Optional[GraphTransformerConfig] = None):
        super().__init__(config)
        # node-by-pair incidence (9, 36): row i has a 1 at every pair (i, j) or (j, i)
        inc = torch.zeros(N_MAX, N_EDGES)
        inc[self.ii, torch.arange(N_EDGES)] = 1.0
        inc[self.jj, torch.arange(N_EDGES)] = 1.0
        self.register_buffer("incidence", inc, persistent=False)

    def _layer(self, layer, h, e, temb):
        """One :class:`~tfftmol.chem.model._Layer` with the same maths and fewer FLOPs (measured).

        * the message of the incident pairs, ``sum_p (W e_p + b)``, is ``W (sum_p e_p) + 8 b`` (linearity):
          the sum runs over the 32-wide pair features and the linear map over 9 nodes, not 36 pairs
          (one matmul with the incidence matrix instead of two ``index_add`` of ``(B, 36, D)``);
        * the pair update gathers the node projection ``(A h, P h)`` once per end, not four times.

        Everything else is :meth:`_Layer.forward` verbatim; outputs agree to float32 rounding (~1e-5 relative).
        """
        B, n, d = h.shape
        sh1, sc1, sh2, sc2 = layer.ada(temb).unsqueeze(1).chunk(4, dim=-1)
        x = layer.ln1(h) * (1 + sc1) + sh1
        q, k, v = layer.qkv(x).view(B, n, 3, layer.h, layer.dh).permute(2, 0, 3, 1, 4)
        bias = torch.cat([layer.e_bias(e), layer.diag_bias.expand(B, 1, -1)], dim=1)
        bias = bias[:, self.gather81].view(B, n, n, layer.h).permute(0, 3, 1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(layer.dh) + bias, dim=-1)
        o = (att @ v).transpose(1, 2).reshape(B, n, d)
        msg = F.linear(torch.matmul(self.incidence, e), layer.e_msg.weight, layer.e_msg.bias * (n - 1))
        h = h + layer.out(o + msg / n)
        h = h + layer.ff(layer.ln2(h) * (1 + sc2) + sh2)
        ap = layer.n2e(h)
        a_i, p_i = ap[:, self.ii].chunk(2, dim=-1)
        a_j, p_j = ap[:, self.jj].chunk(2, dim=-1)
        e = e + layer.eff(layer.lne(e) + a_i + a_j + p_i * p_j)
        return h, e

    def logits(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`GraphTransformerFlow.logits` through :meth:`_layer` (same maths, fewer FLOPs).

        When every row has the same time (a sampling step), the time embedding and the layers' adaptive
        LayerNorm parameters are computed once and broadcast, not once per row.
        """
        t = self._t(t, x)
        one_t = t.shape[0] > 1 and not t.requires_grad and bool((t == t[0]).all())
        return self._logits(x, t, t[:1] if one_t else t)

    def _logits(self, x: torch.Tensor, t: torch.Tensor, t_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits with the time embedding of ``t_emb`` (``(1,)``: one time for the batch, or ``(B,)``)."""
        c_in = torch.rsqrt(t * t + (1 - t) ** 2)[:, None, None]
        xn, xe = split_state(x)
        temb = self.t_mlp(sinusoidal_embedding(t_emb, 64))                      # (1 or B, D)
        h = self.node_in(xn * c_in) + temb[:, None]
        e = self.edge_in(xe * c_in) + self.t_edge(temb)[:, None]
        for layer in self.layers:
            h, e = self._layer(layer, h, e, temb)
        b = self.edge_out_n(h)
        return self.node_out(h), self.edge_out(e + b[:, self.ii] + b[:, self.jj])

    def step_velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity of a sampling step, every row at time ``t[0]`` (``t`` of shape ``(B,)``): the maths of
        :meth:`forward` with no data-dependent branch, so that ``torch.compile`` sees one graph
        (:mod:`tfftmol.chem.fast_sampling`).  The softmax runs in the state's dtype even under bfloat16 autocast."""
        t = self._t(t, x)
        return self._velocity_from_x1(self._x1_from_logits(*self._logits(x, t, t[:1]), x.dtype), x, t)

    def decode(self, x: torch.Tensor) -> list[DecodeResult]:
        """Argmax decoding of final states ``(B, 189)``; never raises."""
        return decode(x)

    @torch.no_grad()
    def sample(self, n: int, steps: int = DEFAULT_STEPS, sampler: str = DEFAULT_SAMPLER, seed: Optional[int] = None,
               batch_size: int = 1000, generator: Optional[torch.Generator] = None, precision: str = "fp32",
               compile: bool = False, workers: Optional[int] = None, grid: str = "uniform") -> SampleResult:
        """Draw ``n`` molecules.

        Args:
            n: number of samples (>= 0).
            steps: uniform time steps ``N`` (``h = 1/N``).
            sampler: ``"sde"`` (default: Euler-Maruyama on the memoryless SDE, the
                process the fine-tuner samples), ``"ode"`` (Euler on ``dX = v dt``)
                or ``"heun"`` (Heun on the ODE).
            seed: seeds a fresh generator (ignored if ``generator`` is given).
            batch_size: molecules per batch.
            precision, compile, workers, grid: the speed levers of :func:`tfftmol.chem.fast_sampling.sample_fast`
                (``"bf16"`` network arithmetic, ``torch.compile``, one-thread worker processes, the ``"fast"``
                time grid of the SDE with fewer network calls).  Setting any
                of them samples through it, with one generator per batch seeded from ``seed`` (the same
                molecules for any ``workers``; not the stream of the default path); ``generator`` is then
                not accepted.

        Returns:
            a :class:`SampleResult`.
        """
        from .fast_sampling import sample_fast, wants_fast
        if wants_fast(precision, compile, workers, grid):
            if generator is not None:
                raise ValueError("generator= cannot be combined with precision/compile/workers/grid; pass seed=")
            return sample_fast(self, n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                               precision=precision, compile=compile, workers=workers or 1, grid=grid)
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
                  batch_size: int = DEFAULT_SAMPLE_BATCH, precision: str = "fp32", compile: bool = False,
                  workers: Optional[int] = None, grid: str = "uniform") -> pd.DataFrame:
    """Sample ``n`` molecules and write ``smiles, valid, reason, raw`` to ``out_path`` (CSV); returns the frame.

    ``precision``, ``compile``, ``workers`` and ``grid`` (any of them set) sample through
    :func:`tfftmol.chem.fast_sampling.sample_fast`, for any molecular flow (shipped, fine-tuned or a latent one).
    """
    from .fast_sampling import sample_fast, wants_fast
    if wants_fast(precision, compile, workers, grid):
        res = sample_fast(model, n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                          precision=precision, compile=compile, workers=workers or 1, grid=grid)
    else:
        res = model.sample(n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size)
    df = res.to_frame()
    out_path = Path(out_path)
    if out_path.parent != Path(""):
        out_path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_path, index=False)
    return df
