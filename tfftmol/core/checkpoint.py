"""Atomic checkpoints: safetensors for tensors, JSON for everything else.

Weights load without executing pickled code.  Every write goes to a temporary
file in the same directory and is moved into place with ``os.replace``, so a
run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_tensors", "load_tensors",
           "save_checkpoint", "load_checkpoint", "flatten_state", "unflatten_state"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Atomically save a flat ``name -> tensor`` mapping as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    return load_file(str(path), device=str(device))


def flatten_state(state: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested state (e.g. an optimizer ``state_dict``) into tensors and JSON-able rest.

    Tensors are stored under dotted keys; the JSON part keeps a ``{"__tensor__": key}``
    placeholder where each tensor was.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj, key):
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj
            return {"__tensor__": key}
        if isinstance(obj, Mapping):
            return {"__dict__": [[_jkey(k), walk(v, f"{key}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(obj)]
        return obj

    rest = walk(state, prefix or "s")
    return tensors, rest


def _jkey(k):
    return {"__int__": k} if isinstance(k, int) else k


def unflatten_state(tensors: Mapping[str, torch.Tensor], rest: Any) -> Any:
    def walk(obj):
        if isinstance(obj, dict) and "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if isinstance(obj, dict) and "__dict__" in obj:
            return {(k["__int__"] if isinstance(k, dict) else k): walk(v) for k, v in obj["__dict__"]}
        if isinstance(obj, list):
            return [walk(v) for v in obj]
        return obj
    return walk(rest)


def save_checkpoint(directory: str | Path, state: Mapping[str, Any]) -> None:
    """Atomically save a nested state (modules' and optimizers' state dicts, counters, RNG).

    Writes ``state.safetensors`` and ``state.json``; the JSON is written last and
    names the tensor file's fingerprint, so a half-written pair is detected.
    """
    directory = Path(directory)
    tensors, rest = flatten_state(state)
    save_tensors(directory / "state.safetensors", tensors)
    stat = os.stat(directory / "state.safetensors")
    atomic_write_text(directory / "state.json", json.dumps({"rest": rest, "size": stat.st_size}))


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> dict | None:
    """Load what :func:`save_checkpoint` wrote, or ``None`` if there is no complete checkpoint."""
    directory = Path(directory)
    js, st = directory / "state.json", directory / "state.safetensors"
    if not js.exists() or not st.exists():
        return None
    meta = json.loads(js.read_text())
    if os.stat(st).st_size != meta["size"]:
        return None
    tensors = load_tensors(st, device=device)
    return unflatten_state(tensors, meta["rest"])
