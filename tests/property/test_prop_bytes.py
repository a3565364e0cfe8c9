"""Checkpoint and offline-cache bytes under truncation, bit flips and random manifests.

A damaged checkpoint is a :class:`CheckpointError` (never a silent restart, never another exception, never
wrong data); a damaged cache is refused with a reason by :func:`load_offline_cache` and recomputed by
:func:`offline_batch` (never trusted, never a crash).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from hypothesis import strategies as st

from helpers.prop import cases, scratch_dir
from tfftmol.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tfftmol.core.offline import _save_cache, load_offline_cache, offline_batch

_ROOT = Path(scratch_dir("tfftmol-prop-bytes-"))
STATE = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4), "opt": {"step": 7, "m": [torch.ones(5)]},
         "rng": torch.arange(4, dtype=torch.uint8), "extra": {"run_key": "abc"}}


def _pristine_checkpoint() -> Path:
    d = _ROOT / "ckpt"
    if not d.exists():
        save_checkpoint(d, STATE)
    return d


_PRISTINE: dict[Path, dict[str, bytes]] = {}


def _workdir(src: Path, name: str) -> Path:
    """``_ROOT/<name>`` holding exactly the pristine files of ``src`` (rewritten for every example: cheap)."""
    files = _PRISTINE.setdefault(src, {f.name: f.read_bytes() for f in src.iterdir() if f.is_file()})
    d = _ROOT / name
    if d.exists():
        for f in d.iterdir():
            if f.name not in files:
                f.unlink()
    d.mkdir(exist_ok=True)
    for k, v in files.items():
        (d / k).write_bytes(v)
    return d


def _damage(f: Path, how: str, pos: float, bit: int, length: int) -> bool:
    b = bytearray(f.read_bytes())
    i = int(pos * len(b))
    if how == "truncate":
        b = b[:i]
    elif how == "flip":
        b[i] ^= 1 << bit
    elif how == "append":
        b += bytes([bit]) * length
    else:
        b[i:i + length] = bytes(len(b[i:i + length]))
    changed = bytes(b) != f.read_bytes()
    f.write_bytes(bytes(b))
    return changed


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


damage = st.tuples(st.sampled_from(["tensors", "json"]), st.sampled_from(["truncate", "flip", "append", "zero"]),
                   st.floats(0, 1, exclude_max=True), st.integers(0, 7), st.integers(1, 64))


def check_checkpoint_damage(d):
    which, how, pos, bit, length = d
    ck = _workdir(_pristine_checkpoint(), "ck-damage")
    name = json.loads((ck / "state.json").read_text())["tensors"]
    changed = _damage(ck / (name if which == "tensors" else "state.json"), how, pos, bit, length)
    try:
        state = load_checkpoint(ck)
    except CheckpointError as e:
        assert str(e)
        return
    # loaded: only if the damage changed nothing the data depends on, and then the data is exact
    assert state is not None and _same(state, STATE), f"damaged checkpoint loaded wrong data ({d}, {changed})"


test_a_damaged_checkpoint_is_a_checkpoint_error, test_a_damaged_checkpoint_is_a_checkpoint_error_many = \
    cases(check_checkpoint_damage, 1000, damage)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2, 10**6), st.floats(allow_nan=False),
                                     st.text(max_size=12), st.sampled_from(["state-0.safetensors", "../x", "/etc/passwd",
                                                                            "state.json", ""])),
                           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(
                               st.sampled_from(["rest", "tensors", "size", "sha256", "__tensor__", "__dict__", "x"]),
                               c, max_size=4)), max_leaves=8)


def check_random_manifest(man):
    ck = _workdir(_pristine_checkpoint(), "ck-manifest")
    good = json.loads((ck / "state.json").read_text())
    if isinstance(man, dict):                                   # mostly a patch of the real manifest
        man = {**good, **man}
    (ck / "state.json").write_text(json.dumps(man))
    try:
        state = load_checkpoint(ck)
    except CheckpointError:
        return
    assert state is not None and _same(state, STATE)


test_a_random_checkpoint_manifest_is_an_error_or_exact, test_a_random_checkpoint_manifest_is_an_error_or_exact_many = \
    cases(check_random_manifest, 600, json_values)


# -- the offline cache --------------------------------------------------------------------------

N = 16
KEY = "k" * 20


def _pristine_cache() -> Path:
    p = _ROOT / "cache" / f"offline-{KEY}.safetensors"
    if not p.exists():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(N, 2, generator=g)
        _save_cache(p, KEY, N, x, x[:, 0].double(), x[:, 1] > 0)
    return p


def check_cache_damage(d):
    which, how, pos, bit, length = d
    src = _pristine_cache()
    want, _ = load_offline_cache(src, KEY, N, (2,))
    w = _workdir(src.parent, "cache-damage")
    p = w / src.name
    _damage(p if which == "tensors" else p.with_suffix(".json"), how, pos, bit, length)
    got, why = load_offline_cache(p, KEY, N, (2,))
    if got is None:
        assert why                                              # refused, with a reason
    else:                                                       # trusted only if it is exactly the original
        assert all(torch.equal(a, b) for a, b in zip(got, want))


test_a_damaged_cache_is_refused_with_a_reason, test_a_damaged_cache_is_refused_with_a_reason_many = \
    cases(check_cache_damage, 1000, damage)


_REF: list = []


def check_cache_recompute(d):
    """End to end: a damaged cache in ``cache_dir`` is recomputed; the batch equals a fresh one."""
    from tfftmol.toy2d.gmm import circle_gmm
    from tfftmol.toy2d.flows import linear_reward

    which, how, pos, bit, length = d
    base, reward = circle_gmm(), linear_reward()
    fresh = _ROOT / "fresh"
    if not _REF:
        _REF.append(offline_batch(base, reward, 12, steps=3, sampler="ode", seed=2, cache_dir=fresh,
                                  log=lambda s: None))
    ref = _REF[0]
    w = _workdir(fresh, "cache-recompute")
    st_file = next(w.glob("offline-*.safetensors"))
    _damage(st_file if which == "tensors" else st_file.with_suffix(".json"), how, pos, bit, length)
    logs: list[str] = []
    x, v, ok, cached = offline_batch(base, reward, 12, steps=3, sampler="ode", seed=2, cache_dir=w, log=logs.append)
    assert torch.equal(x, ref[0]) and torch.equal(v, ref[1]) and torch.equal(ok, ref[2])
    assert cached or (len(logs) == 1 and "recomputing" in logs[0])


test_a_damaged_cache_is_recomputed, test_a_damaged_cache_is_recomputed_many = \
    cases(check_cache_recompute, 300, damage)
