"""The offline batch of stage 1: samples of the pre-trained model, scored once and cached.

``offline_batch`` draws ``M`` samples of the pre-trained model with the sampler
of :mod:`tfftmol.core.sampling`, scores them with the true reward and caches
them on disk under a key of (model fingerprint, reward key, ``M``, steps,
sampler, seed), so later runs and Optuna trials reuse them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_tensors, save_tensors
from .flow import FlowModel
from .reward import TerminalReward, reward_cache_key
from .sampling import sample

__all__ = ["offline_batch", "model_fingerprint"]


def model_fingerprint(model: Any) -> str:
    """A short hash identifying a model's weights (or its tensors, for closed-form models)."""
    key = getattr(model, "cache_key", None)  # a flow model may declare its own cache key
    if key is not None:
        return str(key)
    h = hashlib.sha1(type(model).__name__.encode())
    if isinstance(model, nn.Module):
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    else:
        for k, v in sorted(vars(model).items()):
            if isinstance(v, torch.Tensor):
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def offline_batch(base: FlowModel, reward: TerminalReward, n: int, steps: int = 50, sampler: str = "heun",
                  seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 1000,
                  device: str | torch.device = "cpu", cond_sampler=None, progress: bool = False):
    """Draw ``n`` samples of the pre-trained model and score them with the true reward.

    The batch is cached in ``cache_dir`` under a key of (model fingerprint,
    reward key, ``n``, steps, sampler, seed): later runs load it instead of
    recomputing.

    Returns:
        ``(x, values, valid, cached)`` with ``x`` of shape ``(n, *state_shape)``,
        ``values``/``valid`` of shape ``(n,)``, and ``cached`` True if it was loaded.
    """
    key = hashlib.sha1(json.dumps([model_fingerprint(base), reward_cache_key(reward), n, steps, sampler, seed]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"offline-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        t = load_tensors(path)
        return t["x"], t["values"], t["valid"].bool(), True
    gen = torch.Generator().manual_seed(seed)
    method = {"ode": "euler", "heun": "heun", "sde": "sde"}[sampler]
    xs, vs, ok = [], [], []
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="offline batch", unit="batch")
    for i in it:
        m = min(batch_size, n - i)
        x = sample(base, m, method=method, steps=steps, generator=gen, cond_sampler=cond_sampler,
                   device=device).x
        rb = reward.evaluate(x)
        xs.append(x.detach().cpu())
        vs.append(rb.values.detach().cpu().double())
        ok.append(rb.valid.detach().cpu())
    x, values, valid = torch.cat(xs), torch.cat(vs), torch.cat(ok)
    if path is not None:
        save_tensors(path, {"x": x, "values": values, "valid": valid.to(torch.uint8)},
                     metadata={"key": key, "n": str(n)})
    return x, values, valid, False
