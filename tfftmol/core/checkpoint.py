"""Atomic checkpoints: safetensors for tensors, JSON for everything else.

Weights load without executing pickled code.  Every write goes to a temporary
file in the same directory and is moved into place with ``os.replace``, so a
run killed mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_tensors", "load_tensors",
           "save_checkpoint", "load_checkpoint", "flatten_state", "unflatten_state", "CheckpointError"]


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
        flat, seen = {}, set()
        for k, v in tensors.items():
            v = v.detach().contiguous().cpu()
            ptr = v.untyped_storage().data_ptr() if v.numel() else None
            if ptr is not None and ptr in seen:  # two names for one tensor (e.g. a buffer kept twice): store a copy
                v = v.clone()
            elif ptr is not None:
                seen.add(ptr)
            flat[k] = v
        save_file(flat, tmp, metadata=dict(metadata) if metadata else None)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; weights and checkpoints are ordinary readable files
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


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be trusted (corrupt, truncated, or from another run)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint manifest's canonical JSON (every field but this digest itself)."""
    body = {k: v for k, v in meta.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_checkpoint(directory: str | Path, state: Mapping[str, Any]) -> None:
    """Atomically save a nested state (modules' and optimizers' state dicts, counters, RNG).

    The tensors go to ``state-<sha256 prefix>.safetensors``; then ``state.json`` (the
    rest of the state, the tensor file's name, size and SHA-256) replaces the previous
    one atomically; only then are older tensor files removed.  A run killed at any
    point therefore leaves a complete, verifiable pair: the new one or the old one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, rest = flatten_state(state)
    tmp = directory / ".state.safetensors.new"
    save_tensors(tmp, tensors)
    digest = _sha256(tmp)
    name = f"state-{digest[:16]}.safetensors"
    os.replace(tmp, directory / name)
    size = os.stat(directory / name).st_size
    meta = {"rest": rest, "tensors": name, "size": size, "sha256": digest}
    meta["manifest_sha256"] = _manifest_digest(meta)
    atomic_write_text(directory / "state.json", json.dumps(meta))
    for old in directory.glob("state*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> dict | None:
    """Load what :func:`save_checkpoint` wrote; ``None`` if the directory holds no checkpoint.

    Raises:
        CheckpointError: a checkpoint is there but its JSON does not parse, its tensor
            file is missing, or the tensor file's size or SHA-256 differs from the one
            recorded (truncated or corrupted bytes).  A damaged checkpoint is never
            silently ignored: delete the directory to start over.
    """
    directory = Path(directory)
    js = directory / "state.json"
    if not js.exists():
        if any(directory.glob("state*.safetensors")):
            raise CheckpointError(f"checkpoint in {directory}: tensor file without state.json (incomplete write "
                                  "of an older version or a damaged checkpoint); delete the directory to start over")
        return None
    try:
        meta = json.loads(js.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
        name = meta.get("tensors", "state.safetensors")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint in {directory}: state.json is not valid JSON ({e}); "
                              "delete the directory to start over") from None
    if "manifest_sha256" in meta and meta["manifest_sha256"] != _manifest_digest(meta):
        raise CheckpointError(f"checkpoint in {directory}: state.json does not match its recorded SHA-256 "
                              "(edited or corrupted); delete the directory to start over")
    if not (isinstance(name, str) and name and Path(name).name == name and name.endswith(".safetensors")) \
            or "rest" not in meta:
        raise CheckpointError(f"checkpoint in {directory}: state.json is not a checkpoint manifest "
                              f"(tensors={name!r}, keys {sorted(map(str, meta))}); delete the directory to start over")
    st = directory / name
    if not st.exists():
        raise CheckpointError(f"checkpoint in {directory}: {name} named by state.json is missing")
    size = os.stat(st).st_size
    if size != meta.get("size"):
        raise CheckpointError(f"checkpoint in {directory}: {name} has {size} bytes, state.json recorded "
                              f"{meta.get('size')} (truncated?); delete the directory to start over")
    if "sha256" in meta and _sha256(st) != meta["sha256"]:
        raise CheckpointError(f"checkpoint in {directory}: {name} does not match its recorded SHA-256 "
                              "(corrupted bytes); delete the directory to start over")
    try:
        tensors = load_tensors(st, device=device)
    except Exception as e:  # safetensors rejects a malformed header
        raise CheckpointError(f"checkpoint in {directory}: {name} cannot be read ({e})") from None
    try:
        return unflatten_state(tensors, meta["rest"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint in {directory}: state.json does not match its tensors "
                              f"({type(e).__name__}: {e}); delete the directory to start over") from None
