"""The flow in the SELFIES VAE's latent space: the ``zinc-selfies`` :class:`FlowModel`.

State: the VAE latent, normalised per dimension to unit scale,
``x = (z - z_mean) / z_std`` (shape ``(latent_dim,)``).  Interpolant
``x_t = t x_1 + (1 - t) x_0``, ``x_0 ~ N(0, I)`` (t = 0 noise, t = 1 data); the
velocity field is an MLP, differentiable in ``x`` (Adjoint Matching in latent
space is exact).  ``decode(x)`` un-normalises and decodes greedily with the VAE
decoder, and never raises: a non-finite latent row is classified
``"nonfinite_latent"``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from tfftmol.core.flow import VelocityModule
from tfftmol.core.sampling import sample

from .autoencoder import SelfiesVAE
from .codec import DecodeResult, SelfiesVocab, decode_selfies

__all__ = ["FlowConfig", "LatentVelocityMLP", "ZincSelfiesFlow", "LATENT_CLAMP", "SAMPLERS"]

LATENT_CLAMP = 50.0     # finite normalised latents are clamped to +-this before decoding (data: |x| < ~6)
SAMPLERS = ("ode", "heun", "sde")


@dataclass
class FlowConfig:
    dim: int
    width: int = 256
    depth: int = 3
    t_dim: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``t`` in [0, 1], shape ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=t.dtype))
    a = t[:, None] * freqs[None, :] * math.pi
    return torch.cat([torch.sin(a), torch.cos(a)], -1)


class LatentVelocityMLP(nn.Module):
    """Residual MLP ``v(x, t)``: input projection of ``[x, time features]``, ``depth`` residual SiLU blocks
    each with its own time shift, linear output."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        c = self.config = config
        self.inp = nn.Linear(c.dim + c.t_dim, c.width)
        self.t_proj = nn.Linear(c.t_dim, c.depth * c.width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.SiLU(), nn.Linear(c.width, c.width), nn.SiLU(),
                                                   nn.Linear(c.width, c.width)) for _ in range(c.depth)])
        self.outp = nn.Sequential(nn.SiLU(), nn.Linear(c.width, c.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tf = time_features(t.to(x.dtype).reshape(-1).expand(x.shape[0]), self.config.t_dim)
        h = self.inp(torch.cat([x, tf], -1))
        shifts = self.t_proj(tf).chunk(self.config.depth, -1)
        for blk, s in zip(self.blocks, shifts):
            h = h + blk(h + s)
        return self.outp(h)


class ZincSelfiesFlow(VelocityModule):
    """Pre-trained drug-like molecular flow: a latent flow over a SELFIES VAE trained on ZINC250k.

    ``velocity(x, t)``: ``x`` (B, latent_dim), ``t`` (B,) -> (B, latent_dim);
    ``decode(x)`` -> list of :class:`~tfftmol.chem.graph.DecodeResult`
    (``mol``, ``smiles``, ``reason``); ``sample(n, ...)`` -> a ``SampleResult``.

    ``decode_beam``: 1 decodes greedily, ``k > 1`` by beam search over ``k`` beams (a smoother map
    from latent to molecule, docs/design.md §8.1).  It is part of the model's identity: the
    offline-batch and warm-start caches key on it (:attr:`fingerprint_extra`), and a fine-tuned
    model's weights file records it.
    """

    def __init__(self, vae: SelfiesVAE, net: LatentVelocityMLP, vocab: SelfiesVocab,
                 z_mean: torch.Tensor, z_std: torch.Tensor, decode_beam: int = 1):
        super().__init__()
        if isinstance(decode_beam, bool) or int(decode_beam) != decode_beam or decode_beam < 1:
            raise ValueError(f"decode_beam={decode_beam!r} must be an integer >= 1 (1 = greedy)")
        self.decode_beam = int(decode_beam)
        self.vae = vae
        self.net = net
        self.vocab = vocab
        self.state_shape = (net.config.dim,)
        self.register_buffer("z_mean", z_mean.detach().clone().float().reshape(-1))
        self.register_buffer("z_std", z_std.detach().clone().float().reshape(-1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return self.net(x, t)

    # -- latent <-> molecules ----------------------------------------------------------------
    @torch.no_grad()
    def encode_selfies(self, selfies: list[str], sample: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised latents ``(N, latent_dim)`` of SELFIES strings (posterior mean, or a posterior draw)."""
        tok = self.vocab.encode(selfies).to(self.z_mean.device)
        mu, logvar = self.vae.encode(tok)
        z = mu
        if sample:
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        return (z - self.z_mean) / self.z_std

    @property
    def fingerprint_extra(self) -> Optional[str]:
        """What besides the weights defines the model (``None`` for greedy decoding: the weights alone)."""
        return None if self.decode_beam == 1 else f"decode_beam={self.decode_beam}"

    @torch.no_grad()
    def decode_selfies_strings(self, x: torch.Tensor, batch_size: int = 2000) -> list[Optional[str]]:
        """SELFIES of each normalised latent row (greedy, or beam search with ``decode_beam > 1``);
        ``None`` for a non-finite row."""
        x = x.detach().reshape(x.shape[0], -1).float()
        finite = torch.isfinite(x).all(1)
        out: list[Optional[str]] = [None] * x.shape[0]
        idx = torch.nonzero(finite).reshape(-1)
        was = self.vae.training
        self.vae.eval()
        try:
            for s in range(0, len(idx), batch_size):
                ii = idx[s:s + batch_size]
                xb = x[ii].to(self.z_mean.device).clamp(-LATENT_CLAMP, LATENT_CLAMP)
                z = xb * self.z_std + self.z_mean
                for k, st in zip(ii.tolist(), self.vocab.to_selfies(self.vae.generate(z, beam=self.decode_beam))):
                    out[k] = st
        finally:
            self.vae.train(was)
        return out

    def decode(self, x: torch.Tensor) -> list[DecodeResult]:
        """Final latents ``(B, latent_dim)`` -> molecules; never raises (NaN/inf rows: ``"nonfinite_latent"``)."""
        try:
            strings = self.decode_selfies_strings(x)
        except Exception:  # noqa: BLE001  (the decoder must never kill a fine-tuning run)
            return [DecodeResult(None, None, "selfies_error") for _ in range(int(x.shape[0]))]
        return [DecodeResult(None, None, "nonfinite_latent") if s is None else decode_selfies(s) for s in strings]

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_latents(self, n: int, steps: int = 30, sampler: str = "ode", seed: Optional[int] = None,
                       batch_size: int = 2000, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}")
        if n < 0 or batch_size < 1 or steps < 1:
            raise ValueError(f"n={n} must be >= 0, batch_size={batch_size} >= 1 and steps={steps} >= 1")
        device = self.z_mean.device
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2 ** 31 - 1, ()).item()))
        was = self.training
        self.eval()
        xs = []
        if n > 0:  # the one sampling loop; per batch: prior draw, then the SDE noise
            method = {"sde": "sde", "heun": "heun", "ode": "euler"}[sampler]
            xs = [sample(self, n, method=method, steps=steps, generator=generator, batch_size=batch_size,
                         device=device).x.cpu()]
        self.train(was)
        return torch.cat(xs) if xs else torch.zeros(0, *self.state_shape)

    def sample(self, n: int, steps: int = 30, sampler: str = "ode", seed: Optional[int] = None,
               batch_size: int = 2000, generator: Optional[torch.Generator] = None):
        """Draw ``n`` molecules: latent flow (``sampler`` ``"ode"`` Euler, ``"heun"``, or the memoryless
        ``"sde"``, ``steps`` uniform steps) then greedy decoding.  Returns a ``SampleResult``
        (``x``, ``mols``, ``smiles``, ``valid``, ``reasons``)."""
        from tfftmol.chem.qm9_model import SampleResult
        x = self.sample_latents(n, steps=steps, sampler=sampler, seed=seed, batch_size=batch_size,
                                generator=generator)
        return SampleResult.from_decoded(x, self.decode(x))


def decoded_validity(dec: list[DecodeResult]) -> float:
    return float(np.mean([d.reason == "ok" for d in dec])) if dec else float("nan")
