"""Network arithmetic precision: float32, or bfloat16 under ``torch.autocast``.

Only the network's own arithmetic (its matrix products) moves to bfloat16; states, time integration,
adjoints, losses and optimiser steps stay in the state's dtype.  Used by the fast molecular sampler
(:mod:`tfftmol.chem.fast_sampling`) and by Adjoint Matching (``AMConfig.precision``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Optional

import torch

__all__ = ["PRECISIONS", "BF16_FLAGS", "bf16_native", "network_autocast", "check_precision", "in_precision"]

PRECISIONS = ("fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 dot products
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpu_flags() -> Optional[set]:
    try:
        with open("/proc/cpuinfo") as fh:
            return set(fh.read().split())
    except OSError:
        return None


def bf16_native(device: Any = "cpu", cpu_flags: Optional[set] = None) -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (CUDA: always; CPU: AVX-512 BF16 or AMX).

    On a CPU the flags of ``/proc/cpuinfo`` decide (``cpu_flags`` overrides them): oneDNN also calls bfloat16
    "supported" on plain AVX-512, where it is emulated and no faster than float32.  Without ``/proc/cpuinfo``
    oneDNN's own check is used.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return True
    flags = cpu_flags if cpu_flags is not None else _cpu_flags()
    if flags is not None:
        return bool(BF16_FLAGS & set(flags))
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_precision(precision: Any, where: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming it and the choices."""
    if precision not in PRECISIONS:
        raise ValueError(f"{where}={precision!r} must be one of {PRECISIONS}")
    return precision


def network_autocast(device: Any, precision: str = "fp32"):
    """A context in which network calls run in ``precision``: ``torch.autocast`` to bfloat16, or nothing."""
    if check_precision(precision) == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def in_precision(x: torch.Tensor, precision: str, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``fn()``, a network call on the state ``x``, run in ``precision`` and returned in ``x``'s dtype."""
    with network_autocast(x.device, precision):
        return fn().to(x.dtype)
