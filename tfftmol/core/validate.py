"""Checks at the door: a user's flow model is probed once, before any sampling or training.

:func:`check_flow_model` makes one tiny forward pass (a probe batch of two prior draws at
two times) and checks the :class:`~tfftmol.core.flow.FlowModel` interface:

* the attributes ``state_shape``, ``velocity`` and ``sample_prior`` exist (a missing one is
  named, with the pointer to :class:`~tfftmol.core.flow.VelocityModule`);
* ``sample_prior(n)`` returns a floating tensor of shape ``(n, *state_shape)``;
* ``velocity(x, t)`` with ``t`` of shape ``(B,)`` returns exactly the shape of ``x`` (a
  ``(B, 1)`` velocity for a 2-D state would be broadcast silently by the sampler), in the
  dtype of ``x`` and with finite values.

Every failure is a :class:`FlowModelError` (a ``TypeError`` for a missing piece, a
``ValueError`` otherwise) naming what was expected and what came back.  The check runs at
the start of :func:`~tfftmol.core.tfft.run_tfft`, of the pipeline (after the task loads its
base model) and of :func:`tfftmol.core.sampling.sample`, once per model object.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import torch
from torch import nn

from .flow import model_device

__all__ = ["FlowModelError", "FlowInterfaceError", "check_flow_model", "model_dtype"]

_POINTER = ("subclass tfftmol.core.flow.VelocityModule (an nn.Module whose forward(x, t, cond=None) is the "
            "velocity; it provides sample_prior) or implement the tfftmol.FlowModel interface: state_shape, "
            "velocity(x, t, cond=None) and sample_prior(n, generator=None, device=None)")


class FlowModelError(ValueError):
    """A flow model that does not keep the :class:`~tfftmol.core.flow.FlowModel` contract."""


class FlowInterfaceError(FlowModelError, TypeError):
    """A flow model that lacks a piece of the interface (``velocity``, ``sample_prior``, ``state_shape``)."""


# models already checked (by id, with a weak reference when possible so ids are not reused)
_CHECKED: dict[int, Any] = {}


def _name(model: Any) -> str:
    return type(model).__name__


def model_dtype(model: Any) -> torch.dtype:
    """The floating dtype a flow model works in.

    An ``nn.Module``'s first floating parameter (or buffer); else the dtype of a one-sample
    ``sample_prior`` draw (a closed-form model such as a float64 Gaussian mixture); else float32.
    """
    if isinstance(model, nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                return p.dtype
    fn = getattr(model, "sample_prior", None)
    if callable(fn):
        try:
            with torch.random.fork_rng(devices=[]):
                x = fn(1, generator=torch.Generator().manual_seed(0), device="cpu")
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return x.dtype
        except Exception:  # noqa: BLE001 - check_flow_model reports a broken prior; here: the default
            pass
    return torch.float32


def _already_checked(model: Any) -> bool:
    ref = _CHECKED.get(id(model))
    if ref is None:
        return False
    obj = ref() if isinstance(ref, weakref.ref) else ref
    return obj is model


def _remember(model: Any) -> None:
    try:
        _CHECKED[id(model)] = weakref.ref(model, lambda _r, k=id(model): _CHECKED.pop(k, None))
    except TypeError:  # not weak-referenceable: keep no record (it is checked again, which is cheap)
        pass


def check_flow_model(model: Any, device: Optional[str | torch.device] = None, *, cond: Optional[Any] = None,
                     cond_sampler=None, force: bool = False) -> None:
    """Check a flow model's interface on a probe batch of two samples; raise :class:`FlowModelError` if broken.

    Args:
        model: the flow model (a :class:`~tfftmol.core.flow.FlowModel`).
        device: where to run the probe (default: the model's device, else the CPU).
        cond: a condition for the probe batch (two samples), for conditional models.
        cond_sampler: ``fn(n, generator) -> cond``; draws the probe's condition when ``cond`` is ``None``
            (from its own generator: the caller's random streams are not touched).
        force: probe again even if this model object passed before.

    Raises:
        FlowInterfaceError: ``state_shape``, ``velocity`` or ``sample_prior`` missing (names the
            missing ones and points to :class:`~tfftmol.core.flow.VelocityModule`).
        FlowModelError: a prior or velocity of the wrong shape, dtype or with non-finite values.
    """
    if not force and _already_checked(model):
        return
    name = _name(model)
    missing = [a for a in ("velocity", "sample_prior") if not callable(getattr(model, a, None))]
    if getattr(model, "state_shape", None) is None:
        missing.insert(0, "state_shape")
    if missing:
        raise FlowInterfaceError(f"flow model {name} has no {', '.join(missing)}: a flow model needs state_shape, "
                                 f"velocity and sample_prior; {_POINTER}")
    try:
        shape = tuple(int(s) for s in model.state_shape)
    except TypeError:
        raise FlowInterfaceError(f"flow model {name}: state_shape={model.state_shape!r} must be a sequence of "
                                 f"integers (the shape of one sample without the batch dimension)") from None
    if not shape or any(s < 1 for s in shape):
        raise FlowModelError(f"flow model {name}: state_shape={shape} must be a non-empty shape of positive sizes "
                             f"(e.g. (2,) for points in the plane)")
    if device is None:
        device = model_device(model)
    dev = torch.device(device)
    B = 2
    with torch.random.fork_rng(devices=[]):  # a prior that ignores its generator must not move the global RNG
        if cond is None and cond_sampler is not None:
            cond = cond_sampler(B, torch.Generator().manual_seed(0))
        x = model.sample_prior(B, generator=torch.Generator().manual_seed(0), device="cpu")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise FlowModelError(f"flow model {name}: sample_prior(2) returned {type(x).__name__}"
                             f"{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}; "
                             f"expected a floating tensor of shape {(B, *shape)}")
    if tuple(x.shape) != (B, *shape):
        raise FlowModelError(f"flow model {name}: sample_prior(2) returned shape {tuple(x.shape)}; expected "
                             f"{(B, *shape)} = (n, *state_shape)")
    mdt = model_dtype(model) if isinstance(model, nn.Module) else x.dtype
    if x.dtype != mdt:
        raise FlowModelError(f"flow model {name}: sample_prior returns {x.dtype} but the model's parameters are "
                             f"{mdt}; draw the prior in the parameters' dtype (or convert the model)")
    x = x.to(dev)
    t = torch.tensor([0.25, 0.75], dtype=x.dtype, device=dev)
    # eval mode for the probe (no batch-norm statistics or dropout draws), each submodule's mode restored after
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    for m, _ in modes:
        m.training = False
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            v = model.velocity(x, t, cond)
    except Exception as e:  # noqa: BLE001 - re-raised with the probe named
        raise FlowModelError(f"flow model {name}: velocity(x, t, cond) failed on a probe batch (x of shape "
                             f"{tuple(x.shape)} and dtype {x.dtype}, t of shape {tuple(t.shape)}"
                             f"{', cond=None' if cond is None else ''}): {type(e).__name__}: {e}") from e
    finally:
        for m, mode in modes:
            m.training = mode
    if not isinstance(v, torch.Tensor):
        raise FlowModelError(f"flow model {name}: velocity returned {type(v).__name__}; expected a tensor of shape "
                             f"{tuple(x.shape)}")
    if tuple(v.shape) != tuple(x.shape):
        raise FlowModelError(f"flow model {name}: velocity(x, t) returned shape {tuple(v.shape)} for x of shape "
                             f"{tuple(x.shape)} and t of shape {tuple(t.shape)}; expected {tuple(x.shape)} = "
                             f"(B, *state_shape) with state_shape={shape} (a velocity is never broadcast)")
    if v.dtype != x.dtype:
        raise FlowModelError(f"flow model {name}: velocity returned {v.dtype} for x of dtype {x.dtype}; expected "
                             f"the dtype of x")
    if v.device != x.device:
        raise FlowModelError(f"flow model {name}: velocity returned a tensor on {v.device} for x on {x.device}")
    if not bool(torch.isfinite(v).all()):
        raise FlowModelError(f"flow model {name}: velocity returned non-finite values (NaN or inf) at t in "
                             f"{t.tolist()} on prior draws")
    _remember(model)
