"""The offline batch of stage 1: samples of the pre-trained model, scored once and cached.

``offline_batch`` draws ``M`` samples of the pre-trained model with the sampler
of :mod:`tfftmol.core.sampling`, scores them with the true reward and caches
them on disk under a key of (model fingerprint, reward key, ``M``, steps,
sampler, seed), so later runs and Optuna trials reuse them.

A cache entry is two files: ``offline-<key>.safetensors`` (the tensors, with
metadata ``key`` and ``n``) and then ``offline-<key>.json`` (its manifest: the
tensor file's size and SHA-256, the key, ``n`` and the tensor shapes and dtypes),
both written atomically, the manifest last.  A load verifies all of it and that
the values are finite; anything that does not match (a missing or damaged
manifest, truncated or flipped bytes, another key or ``n``, wrong shapes or
dtypes, NaN or inf) is logged in one line naming what differs, and the batch is
recomputed: a cache is never trusted blindly and never blamed on the reward.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .checkpoint import _sha256, atomic_write_text, load_tensors, save_tensors
from .flow import FlowModel
from .reward import TerminalReward, reward_cache_key
from .sampling import sample

__all__ = ["offline_batch", "model_fingerprint", "load_offline_cache", "offline_cache_key"]


def model_fingerprint(model: Any) -> str:
    """A short hash identifying a model's weights (or its tensors, for closed-form models), and its
    ``fingerprint_extra`` when the model declares one (e.g. the SELFIES flow's beam decoding)."""
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
    extra = getattr(model, "fingerprint_extra", None)  # e.g. a decoding setting that changes what samples mean
    if extra is not None:
        h.update(str(extra).encode())
    return h.hexdigest()[:16]


def offline_cache_key(base: Any, reward: Any, n: int, steps: int, sampler: str, seed: int) -> str:
    """The cache key of an offline batch: a hash of (model fingerprint, reward key, ``n``, steps, sampler, seed)."""
    return hashlib.sha1(json.dumps([model_fingerprint(base), reward_cache_key(reward), n, steps, sampler, seed]
                                   ).encode()).hexdigest()[:20]


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def load_offline_cache(path: str | Path, key: str, n: int, state_shape=None):
    """Load and verify a cached offline batch.

    Returns:
        ``((x, values, valid), None)`` if every check passes, else ``(None, why)`` with
        ``why`` naming the first check that failed (``None, None`` if there is no cache).
    """
    path = Path(path)
    man_path = _manifest_path(path)
    if not path.exists() and not man_path.exists():
        return None, None
    if not path.exists():
        return None, f"{path.name} named by {man_path.name} is missing"
    if not man_path.exists():
        return None, f"no manifest {man_path.name} (an older cache, or a write that did not finish)"
    try:
        man = json.loads(man_path.read_text())
        if not isinstance(man, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return None, f"manifest {man_path.name} is not valid JSON ({e})"
    if man.get("key") != key or man.get("n") != n:
        return None, f"manifest is for key {man.get('key')!r}, n={man.get('n')!r}; requested key {key!r}, n={n}"
    size = os.stat(path).st_size
    if size != man.get("size"):
        return None, f"{path.name} has {size} bytes, the manifest recorded {man.get('size')} (truncated?)"
    if _sha256(path) != man.get("sha256"):
        return None, f"{path.name} does not match the SHA-256 in its manifest (corrupted bytes)"
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        t = load_tensors(path)
    except Exception as e:  # noqa: BLE001 - safetensors rejects a malformed header in several ways
        return None, f"{path.name} cannot be read ({type(e).__name__}: {e})"
    if meta.get("key") != key or meta.get("n") != str(n):
        return None, (f"its metadata says key {meta.get('key')!r}, n={meta.get('n')!r}; "
                      f"requested key {key!r}, n={n}")
    if set(t) != {"x", "values", "valid"}:
        return None, f"it holds tensors {sorted(t)}, expected ['valid', 'values', 'x']"
    x, values, valid = t["x"], t["values"], t["valid"]
    want = None if state_shape is None else (n, *tuple(int(s) for s in state_shape))
    if x.dim() < 2 or x.shape[0] != n or (want is not None and tuple(x.shape) != want):
        return None, f"x has shape {tuple(x.shape)}, expected {want or (n, '...')}"
    if tuple(values.shape) != (n,) or tuple(valid.shape) != (n,):
        return None, f"values/valid have shapes {tuple(values.shape)}/{tuple(valid.shape)}, expected ({n},)"
    if values.dtype != torch.float64 or valid.dtype != torch.uint8 or not x.is_floating_point():
        return None, f"dtypes x={x.dtype}, values={values.dtype}, valid={valid.dtype}; expected float, float64, uint8"
    if not bool(torch.isfinite(values).all()) or not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(values)).sum()) + int((~torch.isfinite(x).flatten(1).all(1)).sum())
        return None, f"{bad} non-finite entries (NaN or inf) in values or x"
    if bool((valid > 1).any()):
        return None, "valid holds values other than 0 and 1"
    return (x, values, valid.bool()), None


def _save_cache(path: Path, key: str, n: int, x, values, valid) -> None:
    tensors = {"x": x, "values": values, "valid": valid.to(torch.uint8)}
    save_tensors(path, tensors, metadata={"key": key, "n": str(n)})
    man = {"key": key, "n": n, "size": os.stat(path).st_size, "sha256": _sha256(path),
           "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                       for k, v in tensors.items()}}
    atomic_write_text(_manifest_path(path), json.dumps(man, indent=1))


def offline_batch(base: FlowModel, reward: TerminalReward, n: int, steps: int = 50, sampler: str = "heun",
                  seed: int = 0, cache_dir: str | Path | None = None, batch_size: int = 1000,
                  device: str | torch.device = "cpu", cond_sampler=None, progress: bool = False,
                  log: Optional[Callable[[str], None]] = None):
    """Draw ``n`` samples of the pre-trained model and score them with the true reward.

    The batch is cached in ``cache_dir`` under a key of (model fingerprint,
    reward key, ``n``, steps, sampler, seed): later runs load it instead of
    recomputing, after verifying it (module docstring); a cache that fails a check
    is recomputed and the reason goes to ``log`` (default: ``warnings.warn``).  A
    cache directory that cannot be written is logged too, and the batch is used
    uncached.

    Returns:
        ``(x, values, valid, cached)`` with ``x`` of shape ``(n, *state_shape)``,
        ``values``/``valid`` of shape ``(n,)``, and ``cached`` True if it was loaded.
    """
    if log is None:
        import warnings

        def log(msg: str) -> None:
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
    key = offline_cache_key(base, reward, n, steps, sampler, seed)
    path = Path(cache_dir) / f"offline-{key}.safetensors" if cache_dir is not None else None
    if path is not None:
        got, why = load_offline_cache(path, key, n, getattr(base, "state_shape", None))
        if got is not None:
            return (*got, True)
        if why is not None:
            log(f"offline cache {path}: {why}; not trusted, recomputing the offline batch")
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
    if tuple(values.shape) != (n,) or tuple(valid.shape) != (n,):
        raise ValueError(f"reward {reward_cache_key(reward)!r} returned values/valid of shapes "
                         f"{tuple(values.shape)}/{tuple(valid.shape)} for {n} samples; expected ({n},)")
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(f"reward {reward_cache_key(reward)!r} returned {int(bad.sum())} non-finite values (NaN or "
                         f"inf) among the {n} offline samples (first at index {int(bad.nonzero()[0])}); a reward "
                         "must give every sample a finite value (a penalty for an invalid one)")
    if path is not None:
        try:
            _save_cache(path, key, n, x, values, valid)
        except OSError as e:
            log(f"offline cache {path}: cannot be written ({type(e).__name__}: {e}); continuing without caching")
    return x, values, valid, False
