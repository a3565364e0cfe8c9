"""The reward's check at the door: a probe on a few samples of the model, before stage 1.

:func:`check_reward` runs a user's reward on ``n`` samples of the pre-trained model (a
4-step ODE) and checks the :class:`~tfftmol.core.reward.TerminalReward` contract: the
types and shapes of what ``evaluate`` and ``value_and_grad`` return, and a gradient of the
shape of ``x`` where one is declared.  It returns the stage-2 path the reward resolves to.
Every failure is a :class:`RewardCheckError` naming what was expected and what came back.
The flow model's own check is :func:`tfftmol.core.validate.check_flow_model`.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .reward import RewardBatch, RewardFailureError, stage2_path
from .sampling import sample

__all__ = ["RewardCheckError", "check_reward"]


class RewardCheckError(ValueError):
    """A reward that fails its probe before stage 1 (wrong shape, wrong type, or an exception)."""


def _reward_name(reward: Any) -> str:
    return str(getattr(reward, "name", None) or type(reward).__name__)


def check_reward(reward: Any, model: Any, device: Optional[str | torch.device] = None, *, stage2: str = "auto",
                 cond_sampler=None, gradient: bool = True, n: int = 4, log=None) -> str:
    """Probe a reward on ``n`` samples of ``model`` (a 4-step ODE), before stage 1; return the stage-2 path.

    Checks that ``evaluate(x)`` returns a :class:`~tfftmol.core.reward.RewardBatch` whose ``values``
    and ``valid`` have shape ``(n,)``; with ``gradient`` and a reward that declares a gradient, that
    ``value_and_grad(x)`` runs and returns a gradient of the shape of ``x``.  A numpy function inside a
    :class:`~tfftmol.core.reward.DifferentiableReward` thus fails here, with advice, instead of after
    the offline batch and stage 1.  (A reward whose gradient needs ``fit_offline`` first, such as a
    molecular surrogate, is probed with ``gradient=False``.)

    Returns:
        ``"gradient"``, ``"value"`` or ``"weighted"``: the stage-2 path ``stage2`` resolves to for this reward (and
        logs it with ``log``).

    Raises:
        RewardCheckError: naming what was expected and what came back.
    """
    name = _reward_name(reward)
    for meth in ("evaluate", "value_and_grad"):
        if not callable(getattr(reward, meth, None)):
            raise RewardCheckError(f"reward {name}: no {meth}(x) method; a reward needs evaluate(x) -> RewardBatch "
                                   f"and value_and_grad(x) -> RewardBatch (wrap a torch function of x in "
                                   f"tfftmol.DifferentiableReward)")
    with torch.random.fork_rng(devices=[]):
        x = sample(model, n, method="euler", steps=4, generator=torch.Generator().manual_seed(0), device=device,
                   cond_sampler=cond_sampler).x
    shape = tuple(x.shape)

    def _check(rb: Any, what: str) -> None:
        if not isinstance(rb, RewardBatch):
            raise RewardCheckError(f"reward {name}: {what} returned {type(rb).__name__}; expected a RewardBatch")
        for field in ("values", "valid"):
            v = getattr(rb, field)
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
                got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                raise RewardCheckError(f"reward {name}: {what}.{field} has shape {got} for x of shape {shape}; "
                                       f"expected ({n},), one value per sample")

    try:
        rb = reward.evaluate(x)
    except RewardFailureError as e:
        if e.failed is not None and e.n and e.failed < e.n:   # a few failures of 4: the batches will tell
            if log is not None:
                log(f"reward {name}: {e.failed} of {e.n} probe samples failed in the reward function; the "
                    "failure limit applies to the offline and training batches")
            return stage2_path(stage2, reward)
        raise                                                  # failed on every sample: its own clear error
    except Exception as e:  # noqa: BLE001 - reported with the reward's name and the probe
        raise RewardCheckError(f"reward {name}: evaluate(x) failed on a probe batch of {n} samples of the "
                               f"pre-trained model (x of shape {shape}): {type(e).__name__}: {e}") from e
    _check(rb, "evaluate(x)")
    path = stage2_path(stage2, reward)
    if gradient and path == "gradient":
        try:
            rg = reward.value_and_grad(x)
        except Exception as e:  # noqa: BLE001
            hint = ("; a numpy (or other non-torch) function cannot be differentiated: write the reward with "
                    "torch operations, or declare has_grad = False on the reward so that stage 2 learns from "
                    "its values only (AMConfig.stage2 = 'value')") if "numpy" in str(e).lower() or \
                isinstance(e, (TypeError, RuntimeError)) else ""
            raise RewardCheckError(f"reward {name}: value_and_grad(x) failed on a probe batch of {n} samples "
                                   f"(x of shape {shape}): {type(e).__name__}: {e}{hint}") from e
        _check(rg, "value_and_grad(x)")
        if not isinstance(rg.grad, torch.Tensor) or tuple(rg.grad.shape) != shape:
            got = tuple(rg.grad.shape) if isinstance(rg.grad, torch.Tensor) else type(rg.grad).__name__
            raise RewardCheckError(f"reward {name}: value_and_grad(x).grad has shape {got}; expected the shape "
                                   f"of x, {shape} (or declare has_grad = False for a reward without a gradient)")
    if log is not None:
        log(f"reward {name}: probe on {n} samples ok; stage 2 path: "
            + {"gradient": "gradient (the lean adjoint of the reward's gradient)",
               "value": "value (a learned value model of the reward's values; no reward gradient)",
               "weighted": "weighted (tilt-weighted flow matching on the offline batch; no reward gradient)"}[path])
    return path
