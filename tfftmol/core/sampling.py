"""One sampler for every flow model: ODE (Euler, Heun) and the memoryless SDE.

Time runs from ``t = 0`` (noise) to ``t = 1`` (data).  The SDE maths (sigma,
drift, control, one Euler–Maruyama step) lives in :mod:`tfftmol.core.sde`; this
module only owns the loop: batching, seeded noise, per-sample conditions and
the optional path statistics against a base model.

* ``method="euler"`` / ``"heun"``: ``dX = v(X, t) dt`` on ``t_k = k / N`` from ``t_0 = 0``.
* ``method="sde"``: Euler–Maruyama on ``dX = (2 v - X/t) dt + sigma(t) dW`` from
  ``t_1 = h`` (see :mod:`tfftmol.core.sde` for why the grid starts there).  With
  ``base=...`` it also returns, per sample, the control cost
  ``sum_k 0.5 |u_k|^2 h`` (its mean estimates ``KL(p_model || p_base)``) and the
  Girsanov log-weight ``log dP_base/dQ = -sum_k (u_k · dW_k + 0.5 |u_k|^2 h)``
  that turns samples of the model into an estimate under the base.

Random draws come from one ``torch.Generator`` in a fixed order per batch: the
condition (``cond_sampler(m, gen)``), the prior ``x_0`` (drawn on the CPU, so the
same seed gives the same samples on every device), then one noise draw per SDE
step.

Example:
    >>> import torch
    >>> from tfftmol.core.sampling import sample
    >>> from tfftmol.core.flow import VelocityModule
    >>> class Still(VelocityModule):
    ...     state_shape = (2,)
    ...     def forward(self, x, t, cond=None): return torch.zeros_like(x)
    >>> out = sample(Still(), 5, method="euler", steps=4, generator=torch.Generator().manual_seed(0))
    >>> tuple(out.x.shape)
    (5, 2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .flow import FlowModel, model_device
from .validate import check_flow_model
from .sde import control, em_step, expand_time, sde_grid, time_grid

__all__ = ["Trajectory", "Samples", "sample", "velocity_of", "model_device", "METHODS"]

METHODS = ("euler", "heun", "sde")


@dataclass
class Trajectory:
    """States on a time grid.

    Attributes:
        xs: states, shape ``(K, B, *state_shape)``; ``xs[-1]`` is the sample at ``t = 1``.
        ts: times, shape ``(K,)``, increasing, ``ts[-1] == 1`` (``ts[0] == h`` for the SDE).
        cond: the per-sample condition used to sample, or ``None``.
    """

    xs: torch.Tensor
    ts: torch.Tensor
    cond: Optional[Any] = None

    @property
    def final(self) -> torch.Tensor:
        """The samples at ``t = 1``, shape ``(B, *state_shape)``."""
        return self.xs[-1]


@dataclass
class Samples:
    """What :func:`sample` returns.

    Attributes:
        x: final states ``(n, *state_shape)`` at ``t = 1``.
        cond: the conditions used (concatenated over batches), or ``None``.
        trajectory: the full path (only with ``return_trajectory=True``).
        control_cost: ``(n,)`` per-sample ``sum_k 0.5 |u_k|^2 h`` (SDE with ``base``), else ``None``.
        log_weights: ``(n,)`` float64 Girsanov log-weights toward ``base`` (SDE with ``base``), else ``None``.
        step_costs: ``(N - 1, n)``: ``0.5 |u_k|^2 h`` of each step (``record_steps=True``), else ``None``.
        step_noise: ``(N - 1, n)``: ``u_k · dW_k`` of each step (``record_steps=True``), else ``None``.
    """

    x: torch.Tensor
    cond: Optional[Any] = None
    trajectory: Optional[Trajectory] = None
    control_cost: Optional[torch.Tensor] = None
    log_weights: Optional[torch.Tensor] = None
    step_costs: Optional[torch.Tensor] = None
    step_noise: Optional[torch.Tensor] = None

    @property
    def kl(self) -> float:
        """Mean control cost: the estimate of ``KL(p_model || p_base)``."""
        if self.control_cost is None:
            raise ValueError("no control cost: sample with method='sde' and base=<the base model>")
        return float(self.control_cost.mean())


def velocity_of(model: FlowModel | Callable, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None):
    """``model.velocity(x, t, cond)`` with a scalar ``t`` expanded to ``(B,)``; plain callables ``f(x, t)`` too."""
    tb = expand_time(t, x.shape[0])
    if hasattr(model, "velocity"):
        return model.velocity(x, tb, cond)
    return model(x, tb) if cond is None else model(x, tb, cond)


def _cat_cond(conds: list) -> Any:
    if not conds or conds[0] is None:
        return None
    if isinstance(conds[0], torch.Tensor):
        return torch.cat(conds)
    return [c for cs in conds for c in cs]


@torch.no_grad()
def _integrate(model, x, method: str, steps: int, cond, generator, base=None, return_trajectory=False,
               record_steps=False):
    """Integrate one batch from its start state; returns ``(x1, trajectory, cost, logw, step_costs, step_noise)``."""
    xs = [x] if return_trajectory else None
    cost = logw = None
    costs, noises = ([], []) if record_steps else (None, None)
    if method in ("euler", "heun"):
        ts = time_grid(steps, device=x.device, dtype=x.dtype)
        h = 1.0 / steps
        for k in range(steps):
            v = velocity_of(model, x, ts[k], cond)
            if method == "heun":
                v2 = velocity_of(model, x + h * v, ts[k + 1], cond)
                x = x + 0.5 * h * (v + v2)
            else:
                x = x + h * v
            if return_trajectory:
                xs.append(x)
    else:
        ts = sde_grid(steps, device=x.device, dtype=x.dtype)  # t_1 .. t_N
        h = 1.0 / steps
        # a residual correction over this very base (v = v_base + r): evaluate the base once per step
        residual = getattr(model, "residual", None) if base is not None and getattr(model, "base", None) is base \
            else None
        if base is not None:
            cost = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            logw = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k in range(steps - 1):
            t = ts[k]
            if residual is not None:
                vb = velocity_of(base, x, t, cond)
                v = vb + residual(x, expand_time(t, x.shape[0]), cond)
            else:
                v = velocity_of(model, x, t, cond)
                vb = velocity_of(base, x, t, cond) if base is not None else None
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                              device=generator.device if generator is not None else x.device).to(x.device)
            if base is not None:
                u = control(v, vb, t)
                half_u2 = 0.5 * (u ** 2).flatten(1).sum(1) * h
                u_dw = (u * eps).flatten(1).sum(1) * h ** 0.5
                cost += half_u2.double()
                logw -= (u_dw + half_u2).double()
                if record_steps:
                    costs.append(half_u2)
                    noises.append(u_dw)
            x = em_step(x, v, t, h, eps)
            if return_trajectory:
                xs.append(x)
    traj = Trajectory(torch.stack(xs), ts, cond) if return_trajectory else None
    sc = torch.stack(costs) if record_steps and costs else None
    sn = torch.stack(noises) if record_steps and noises else None
    return x, traj, cost, logw, sc, sn


def _check_at_door(model, dev, cond, cond_sampler, needs_prior: bool) -> None:
    """The interface check of :mod:`tfftmol.core.validate`, once per model object (plain callables are skipped)."""

    if not needs_prior and not (hasattr(model, "velocity") and hasattr(model, "sample_prior")):
        return  # a plain callable f(x, t) with an explicit prior or start states
    probe = None
    if cond is not None:
        if isinstance(cond, torch.Tensor) and cond.dim() >= 1 and cond.shape[0] >= 1:
            probe = cond[[0, 0]]
        elif isinstance(cond, (list, tuple)) and len(cond) >= 1:
            probe = [cond[0], cond[0]]
        else:
            return  # a condition of a form the probe cannot cut to two samples
    check_flow_model(model, dev, cond=probe, cond_sampler=None if probe is not None else cond_sampler)


@torch.no_grad()
def sample(model: FlowModel, n: int, *, method: str = "sde", steps: int = 50,
           generator: Optional[torch.Generator] = None, device=None, cond: Optional[Any] = None,
           cond_sampler: Optional[Callable[[int, torch.Generator], Any]] = None,
           x0: Optional[torch.Tensor] = None, batch_size: Optional[int] = None,
           base: Optional[FlowModel] = None, return_trajectory: bool = False,
           prior: Optional[FlowModel] = None, progress: bool = False, desc: str = "sampling",
           record_steps: bool = False) -> Samples:
    """Draw ``n`` samples of ``model`` (the one sampling loop of the package).

    Args:
        model: a :class:`~tfftmol.core.flow.FlowModel` (or a callable ``f(x, t[, cond])``
            with ``prior`` given).
        n: number of samples.
        method: ``"sde"`` (memoryless SDE, what Adjoint Matching trains and evaluates
            with), ``"euler"`` or ``"heun"`` (ODE).
        steps: grid size ``N`` (``h = 1/N``); ``>= 2`` for the SDE.
        generator: seeds the prior, the conditions and the SDE noise (fresh if ``None``).
        device: where to integrate (default: the model's device).
        cond: a fixed condition for all ``n`` samples (one batch only), or ``None``.
        cond_sampler: ``fn(m, generator) -> cond`` drawn per batch, before the prior.
        x0: start states ``(n, *state_shape)`` instead of prior draws (one batch only).
        batch_size: samples per batch (default: all at once).
        base: for the SDE, the base model the control cost and Girsanov weights refer to.
        return_trajectory: keep every state (one batch only).
        prior: the model whose ``sample_prior`` draws ``x_0`` (default ``model``).
        record_steps: with ``base``, also return each step's control cost and ``u · dW`` (one batch only).

    Returns:
        :class:`Samples`.
    """
    if method == "ode":
        method = "euler"
    if method not in METHODS:
        raise ValueError(f"method={method!r} must be one of {list(METHODS) + ['ode']}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    if method == "sde" and (not isinstance(steps, int) or steps < 2):
        raise ValueError(f"steps={steps!r} must be an integer >= 2 for the memoryless SDE")
    if base is not None and method != "sde":
        raise ValueError("control cost and importance weights need method='sde'")
    bs = n if batch_size is None else int(batch_size)
    if bs < 1:
        raise ValueError(f"batch_size={batch_size!r} must be >= 1")
    if record_steps and base is None:
        raise ValueError("record_steps needs base=<the base model> (the control is measured against it)")
    one_batch = x0 is not None or cond is not None or return_trajectory or record_steps
    if one_batch:
        bs = n
    # without a generator, draw its seed from the global RNG (so torch.manual_seed still governs it)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2 ** 62, (1,))))
    dev = torch.device(device) if device is not None else (x0.device if x0 is not None else model_device(model))
    _check_at_door(model, dev, cond, cond_sampler, needs_prior=x0 is None and prior is None)
    if base is not None:
        _check_at_door(base, dev, cond, cond_sampler, needs_prior=False)
    prior = prior or model
    out_x, out_c, out_cost, out_lw, traj = [], [], [], [], None
    it = range(0, n, bs)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc, unit="batch")
    for i in it:
        m = min(bs, n - i)
        c = cond if cond is not None else (cond_sampler(m, gen) if cond_sampler else None)
        if x0 is not None:
            x = x0.to(dev).clone()
            if x.shape[0] != n:
                raise ValueError(f"x0 has {x.shape[0]} rows, expected n={n}")
        else:
            x = prior.sample_prior(m, generator=gen, device="cpu").to(dev)
        x1, traj, cost, lw, sc, sn = _integrate(model, x, method, steps, c, gen, base, return_trajectory,
                                                record_steps)
        out_x.append(x1)
        out_c.append(c)
        if cost is not None:
            out_cost.append(cost)
            out_lw.append(lw)
    return Samples(torch.cat(out_x), _cat_cond(out_c), traj,
                   torch.cat(out_cost) if out_cost else None, torch.cat(out_lw) if out_lw else None,
                   sc if record_steps else None, sn if record_steps else None)
