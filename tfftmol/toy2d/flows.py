"""2D data sets, a small MLP flow trained by flow matching, and 2D rewards.

Flow matching (Lipman et al. 2023; conditional OT path): ``x_t = t x_1 + (1 - t) x_0``,
regress ``v_theta(x_t, t)`` on ``x_1 - x_0`` with ``t ~ U[0, 1]``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.flow import TIME_FEATURES, VelocityModule, time_features
from ..core.reward import DifferentiableReward
from .gmm import circle_gmm

__all__ = ["DATASETS", "sample_dataset", "MLPFlow", "train_flow_matching", "linear_reward",
           "multimodal_reward", "REWARDS", "make_reward"]


def _gmm(n, gen):
    return circle_gmm().sample_data(n, generator=gen)


def _moons(n, gen):
    """Two interleaving half circles (scaled to about [-2, 2]), noise std 0.08."""
    k = torch.randint(0, 2, (n,), generator=gen)
    ang = torch.rand(n, generator=gen) * math.pi
    x = torch.where(k == 0, torch.cos(ang), 1 - torch.cos(ang))
    y = torch.where(k == 0, torch.sin(ang), 0.5 - torch.sin(ang))
    pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.8
    return pts + 0.08 * torch.randn(n, 2, generator=gen)


def _ring(n, gen):
    """A ring of radius 2 with radial noise std 0.1."""
    ang = torch.rand(n, generator=gen) * 2 * math.pi
    r = 2.0 + 0.1 * torch.randn(n, generator=gen)
    return torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1)


DATASETS: dict[str, Callable[[int, torch.Generator], torch.Tensor]] = {"gmm": _gmm, "moons": _moons, "ring": _ring}


def sample_dataset(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of a named 2D data set, shape ``(n, 2)``."""
    if name not in DATASETS:
        raise ValueError(f"unknown 2D data set {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name](n, torch.Generator().manual_seed(seed))


class MLPFlow(VelocityModule):
    """``v_theta(x, t)``: an MLP on ``(x, sinusoidal features of t)``. ``x``: ``(B, 2)``, ``t``: ``(B,)``."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 4):
        super().__init__()
        self.state_shape = (dim,)
        self.hparams = {"dim": dim, "hidden": hidden, "layers": layers}
        dims = [dim + TIME_FEATURES] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*mods, nn.Linear(dims[-1], dim))

    def forward(self, x, t, cond=None):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        tf = time_features(t.to(x.dtype))
        return self.net(torch.cat([x, tf], 1))


def train_flow_matching(model: MLPFlow, data: torch.Tensor, steps: int = 3000, batch_size: int = 512,
                        lr: float = 2e-3, seed: int = 0, progress: bool = False) -> list[float]:
    """Flow-matching training (:func:`tfftmol.training.train_flow_matching`); returns the loss per step."""
    from ..training import train_flow_matching as _train

    return _train(model, model.parameters(), data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                  progress=progress)


def linear_reward(w=(1.0, 0.0)) -> DifferentiableReward:
    """``r(x) = w·x``."""
    wt = torch.tensor(w, dtype=torch.float32)
    r = DifferentiableReward(lambda x: x @ wt.to(x), name=f"linear{tuple(float(v) for v in w)}")
    r.cache_key = r.name
    r.w = wt
    return r


def multimodal_reward(centers=((2.0, 0.0), (-1.0, 1.732), (-1.0, -1.732)), heights=(1.0, 0.6, 0.3),
                      width: float = 0.7) -> DifferentiableReward:
    """A sum of Gaussian bumps ``r(x) = sum_j h_j exp(-|x - c_j|^2 / (2 width^2))``: several modes of unequal height."""
    c = torch.tensor(centers, dtype=torch.float32)
    h = torch.tensor(heights, dtype=torch.float32)

    def fn(x):
        d2 = ((x[:, None, :] - c.to(x)[None]) ** 2).sum(-1)
        return (h.to(x)[None] * torch.exp(-d2 / (2 * width ** 2))).sum(1)

    r = DifferentiableReward(fn, name="multimodal")
    r.cache_key = f"multimodal{centers}{heights}{width}"
    return r


REWARDS = {"linear": linear_reward, "multimodal": multimodal_reward}


def make_reward(spec) -> DifferentiableReward:
    """Build a 2D reward from ``"linear"``, ``{"name": "linear", "w": [1, 0]}`` or similar."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown 2D reward {name!r}; valid names: {sorted(REWARDS)}")
    return REWARDS[name](**spec)
