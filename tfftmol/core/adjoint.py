"""Adjoint Matching (Domingo-Enrich et al., ICLR 2025) with the lean adjoint.

Conventions (docs/design.md §3-§4): ``t = 0`` noise, ``t = 1`` data; memoryless SDE
``dX = b(X, t) dt + sigma(t) dW`` with ``sigma(t) = sqrt(2 (1 - t) / t)`` and
``b = 2 v - x / t``.  The fine-tuned model ``v_theta`` defines the control
``u = 2 (v_theta - v_base) / sigma``, so that the controlled drift is
``b_base + sigma u``.

One training step:

1. sample ``B`` trajectories from the *current* fine-tuned model (on-policy,
   no gradients) on the grid ``t_1 = h, ..., t_N = 1``;
2. terminal adjoint ``a_N = -lam * grad g(X_1)`` where ``g`` is the terminal
   objective (the pseudo-reward of TFFT, or the reward itself) and
   ``lam = 1 / alpha``;
3. lean adjoint backwards with the *base* model only:
   ``a_k = a_{k+1} + h J_b(X_k, t_k)^T a_{k+1}``, ``J_b = 2 J_v - I / t``
   (one vector–Jacobian product per step);
4. loss ``mean_k || u_theta(X_k, t_k) + sigma(t_k) a_k ||^2`` over a random
   subset of ``t_1 .. t_{N-1}`` (``t = 1``, where ``sigma = 0``, is left out).
   The optimum is ``u* = -sigma a``; with ``r = w·x`` it moves the mean toward
   ``+w`` (a sign check that the tests make).

The control cost ``E sum_k 0.5 ||u||^2 h`` estimates ``KL(p_ft || p_pre)``
(for the memoryless schedule the path KL equals the KL of the final marginals).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .estimators import estimate_kl, sample_importance
from .flow import TIME_FEATURES, FlowModel, VelocityModule, time_features, zero_output_mlp
from .precision import bf16_native, in_precision
from .pseudo import ExpectedReward, TerminalTransform
from .reward import TerminalReward, reward_hook, stage2_path
from .sampling import Trajectory, sample, velocity_of
from .sde import adjoint_step, control, sigma_memoryless
from .settings import AMConfig
from .validate import model_dtype
from .value import ValueTrainer, freeze_transform, reward_has_grad, sample_controlled

__all__ = ["AMConfig", "AdjointMatching", "ResidualFlow", "lean_adjoint", "path_log_weights",
           "StepStats", "estimate_kl", "sample_importance",
           "TerminalTransform", "IdentityTransform"]


class IdentityTransform(ExpectedReward):
    """``g(r) = r``: the expected-reward baseline (alias of :class:`~tfftmol.core.pseudo.ExpectedReward`)."""


class ResidualFlow(VelocityModule):
    """``v_theta = v_base + MLP(x, t)``, the MLP's last layer zero-initialised so ``v_theta == v_base`` at start.

    Used when the base model is not an ``nn.Module`` (e.g. the exact GMM flow).
    """

    def __init__(self, base: FlowModel, hidden: int = 64, layers: int = 3):
        super().__init__()
        self.base = base
        self.state_shape = tuple(base.state_shape)
        d = int(torch.Size(self.state_shape).numel())
        self.net = zero_output_mlp(d + TIME_FEATURES, d, hidden, layers)

    def residual(self, x, t, cond=None):
        """``v_theta - v_base`` (the correction alone, without evaluating the base)."""
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        h = torch.cat([x.flatten(1), time_features(t.to(x.dtype))], 1)
        return self.net(h).view_as(x)

    def forward(self, x, t, cond=None):
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        return self.base.velocity(x, t, cond) + self.residual(x, t, cond)


def _inputs_to_float32(module, args):
    """Forward pre-hook: floating tensor inputs of a float32 network (e.g. the value network of a float64 flow)."""
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def _check_finite(reward: TerminalReward, values: torch.Tensor) -> None:
    """Stage-2 rewards must be finite: a NaN or inf is never dropped or trained on silently."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(f"reward {getattr(reward, 'name', type(reward).__name__)!r} returned {int(bad.sum())} "
                         f"non-finite values (NaN or inf) in a stage-2 batch of {values.numel()}; a reward must give "
                         "every sample a finite value (a penalty for an invalid one)")


def terminal_grad(reward: TerminalReward, x: torch.Tensor) -> torch.Tensor:
    """The reward's gradient at ``x``: ``reward.grad(x)`` if it has one, else ``value_and_grad(x).grad``."""
    fn = reward_hook(reward, "grad")
    if callable(fn):
        return fn(x)
    g = reward.value_and_grad(x).grad
    if g is None:
        raise ValueError(f"reward {getattr(reward, 'name', reward)!r} returned no gradient")
    return g


def lean_adjoint(base: FlowModel, traj: Trajectory, a_terminal: torch.Tensor, exponential: bool = False,
                 velocities: Optional[torch.Tensor] = None, precision: str = "fp32") -> torch.Tensor:
    """Integrate the lean adjoint backwards along ``traj`` with the base model.

    Args:
        base: the pre-trained flow (its parameters are not differentiated).
        traj: trajectory with ``xs`` of shape ``(N, B, *S)`` on ``ts = t_1..t_N``.
        a_terminal: ``a(1)``, shape ``(B, *S)``.
        exponential: integrate the ``-I/t`` part exactly (:func:`~tfftmol.core.sde.adjoint_step`).
        velocities: optional ``(N, B, *S)`` buffer: ``v_base(x_k, t_k)`` of every ``k < N - 1`` is written
            into it (the forward pass that each vector-Jacobian product makes anyway; the loss reuses them).
        precision: the base network's arithmetic (:func:`~tfftmol.core.precision.network_autocast`).

    Returns:
        Adjoint states ``(N, B, *S)`` on the same grid: ``a_k = a_{k+1} + h (2 J_v^T a_{k+1} - a_{k+1}/t_k)``.
    """
    xs, ts = traj.xs, traj.ts
    N = xs.shape[0]
    h = float(ts[1] - ts[0]) if N > 1 else 1.0
    out = torch.empty_like(xs)
    a = a_terminal
    out[-1] = a
    for k in range(N - 2, -1, -1):
        t = ts[k]
        with torch.enable_grad():
            x = xs[k].detach().requires_grad_(True)
            v = in_precision(x, precision, lambda: velocity_of(base, x, t.expand(x.shape[0]), traj.cond))
            (vjp,) = torch.autograd.grad(v, x, grad_outputs=a)
        if velocities is not None:
            velocities[k] = v.detach()
        a = adjoint_step(a, vjp, t, h, exponential)
        out[k] = a
    return out


class _InPrecision:
    """A flow whose ``velocity`` runs in ``precision`` and returns the state's dtype
    (:func:`~tfftmol.core.precision.in_precision`); every other attribute is the flow's own."""

    def __init__(self, model, precision: str):
        self._model, self._precision = model, precision

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        return in_precision(x, self._precision, lambda: self._model.velocity(x, t, cond))

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def _cond_rows(cond, sel):
    """The per-sample condition of the rows ``sel`` (a slice or an index tensor); ``None`` stays ``None``."""
    if cond is None or isinstance(sel, slice):
        return cond
    if isinstance(cond, torch.Tensor):
        return cond[sel]
    return [cond[i] for i in sel.tolist()]


def path_log_weights(ct, lam: float, g_values: torch.Tensor) -> torch.Tensor:
    """``log dP*/dP_u`` of each controlled trajectory up to a constant: ``lam g(r) - sum_k (u_k . dW_k + 0.5 |u_k|^2 h)``.

    The reward tilt of the target over the base less the controlled process's own log-likelihood ratio to
    the base (Girsanov; ``ct`` from :func:`~tfftmol.core.value.sample_controlled`, sharing the prior at ``t_1``).
    """
    return lam * g_values.to(ct.cost.dtype) - (ct.cost + ct.noise).sum(0)


@dataclass
class StepStats:
    step: int
    loss: float
    kl: float
    active_fraction: float
    reward_mean: float
    lr: float
    stage: int = 0
    stage2: str = "gradient"
    value_loss: Optional[float] = None


class AdjointMatching:
    """Fine-tune a flow toward ``p* ∝ p_base exp(lam g(r(x)))`` by Adjoint Matching.

    Args:
        base: the pre-trained :class:`FlowModel` (never modified).
        reward: a :class:`TerminalReward` (true values + gradient).
        transform: terminal transform ``g`` (pseudo-reward or identity), with ``grad(r)``.
        lam: reward multiplier ``1/alpha``.
        config: :class:`AMConfig`.
        device: torch device for the fine-tuned model and sampling.
        cond_sampler: optional ``fn(n, generator) -> cond`` for conditional models.
    """

    def __init__(self, base: FlowModel, reward: TerminalReward, transform: TerminalTransform, lam: float,
                 config: AMConfig | None = None, device: str | torch.device = "cpu",
                 cond_sampler: Optional[Callable[[int, torch.Generator], Any]] = None):
        self.config = config or AMConfig()
        self.base = base
        self.reward = reward
        self.transform = transform
        self.lam = float(lam)
        self.device = torch.device(device)
        self.cond_sampler = cond_sampler
        c = self.config
        mode = c.correction
        if mode == "auto":
            mode = "copy" if isinstance(base, nn.Module) else "residual"
        if mode == "copy":
            if not isinstance(base, nn.Module):
                raise ValueError("correction='copy' needs an nn.Module base model; use 'residual'")
            self.model = copy.deepcopy(base).to(self.device)
        else:
            with torch.random.fork_rng(devices=[]):  # a seeded initialisation: same config, same numbers
                torch.manual_seed(c.seed)
                # in the base's dtype: a float64 base (e.g. GaussianMixtureFlow(dtype=float64)) trains in float64
                self.model = ResidualFlow(base, c.hidden, c.layers).to(self.device, dtype=model_dtype(base))
        if c.precision == "bf16":
            if model_dtype(base) != torch.float32:
                raise ValueError(f"am.precision='bf16' needs a float32 flow; this one is {model_dtype(base)} "
                                 f"(use precision='fp32')")
            if not bf16_native(self.device):
                warnings.warn("am.precision='bf16' on a CPU without native bfloat16: it is emulated, and slower "
                              "than fp32", RuntimeWarning, stacklevel=2)
        if isinstance(base, nn.Module):
            for p in base.parameters():
                p.requires_grad_(False)
        self.params = [p for n, p in self.model.named_parameters() if not n.startswith("base.")]
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.params, lr=c.lr)
        self.ema_params = [p.detach().clone() for p in self.params] if c.ema > 0 else None
        self.generator = torch.Generator(device="cpu").manual_seed(c.seed)
        # stage 2 path: the lean adjoint of the reward gradient, or a learned value model (values only)
        if c.stage2 == "gradient" and not reward_has_grad(reward):
            raise ValueError(f"stage2='gradient' needs a reward with a gradient; reward "
                             f"{getattr(reward, 'name', type(reward).__name__)!r} declares has_grad=False: "
                             f"use stage2='value' or 'auto'")
        self.stage2 = stage2_path(c.stage2, reward)
        if self.stage2 == "weighted" and cond_sampler is not None:
            raise ValueError("stage2='weighted' fits the offline batch of an unconditional flow; this flow takes a "
                             "condition (cond_sampler is set): use stage2='gradient', 'value' or 'auto'")
        self.pool: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # the offline batch (stage2 = "weighted")
        self.value = ValueTrainer(base.state_shape, c.value, self.device, seed=c.seed) \
            if self.stage2 == "value" else None
        if self.value is not None and model_dtype(base) != torch.float32:  # float32 value net, inputs cast
            getattr(self.value.model, "net", self.value.model).register_forward_pre_hook(_inputs_to_float32)
        self._base_velocities = None  # (buffer, filled) of the current step (step)
        self.step_count = 0
        self.history: list[dict] = []
        self.extra: dict = {}  # driver state that must survive a resume (JSON-able)
        self.lr_scale: float | None = None  # set by the first step of a target (step_trust)

    # -- schedule ------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.config
        if c.warmup_steps and step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        frac = min(1.0, max(0.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)))
        lo = c.lr * c.lr_final_fraction
        return lo + 0.5 * (c.lr - lo) * (1 + math.cos(math.pi * frac))

    def set_target(self, transform: TerminalTransform, lam: float) -> None:
        """Change the terminal objective (used by continuation schedules)."""
        if float(lam) != self.lam:
            self.lr_scale = None  # the target's scale changed: the next step measures the trust again
        self.transform, self.lam = transform, float(lam)

    def _trust_step(self, old: list[torch.Tensor], xs, ts, cond, v_b: torch.Tensor, u: torch.Tensor,
                    target: torch.Tensor) -> None:
        """Bound the first step of a target: it may move the control by ``step_trust`` x RMS(target).

        Adam moves every weight by about ``lr`` whatever the gradient's scale, so a target that is
        almost zero (a very large ``alpha``) would otherwise be overshot by orders of magnitude and
        the model would drift off the base.  The step is measured in control units on the step's
        own points; if it is too large, the weights are pulled back along it and the learning rate
        keeps that factor (``lr_scale``) until the target changes.
        """
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            u_new = control(self._velocity(self.model, xs, ts, cond), v_b, ts)
            moved = float((u_new - u).pow(2).mean().sqrt())
            scale = float(target.pow(2).mean().sqrt())
        self.first_step_ratio = moved / max(scale, 1e-300)  # diagnostics: step size / target size
        self.lr_scale = 1.0 if moved <= self.config.step_trust * scale else \
            max(self.config.step_trust * scale / moved, 1e-12)
        if self.lr_scale < 1.0:
            with torch.no_grad():
                for p, p0 in zip(self.params, old):
                    p.copy_(p0 + self.lr_scale * (p - p0))

    def _clip(self, a: torch.Tensor, shape: tuple) -> torch.Tensor:
        """Clip each sample's adjoint to norm ``adjoint_clip`` (``0`` = off)."""
        clip = self.config.adjoint_clip
        if clip <= 0:
            return a
        nrm = a.flatten(1).norm(dim=1).clamp_min(1e-12)
        return a * (clip / nrm).clamp(max=1.0).reshape(shape)

    def _denoised_adjoint(self, traj: Trajectory, gp: torch.Tensor, shape: tuple) -> tuple[torch.Tensor, int]:
        """Adjoint started at ``t_c = terminal_time`` from the reward gradient at the denoised state.

        For a flow on the linear path ``x_t = t x_1 + (1 - t) x_0`` the posterior mean of the
        sample is ``xhat(x, t) = x + (1 - t) v(x, t)``.  When the data are discrete (one-hot
        classes) the base flow snaps every trajectory onto a corner near ``t = 1``, so
        ``dX_1 / dX_t`` vanishes and the exact lean adjoint carries almost no signal to earlier
        times.  Here the terminal condition is moved to the grid time ``t_c <= terminal_time``:
        ``a(t_c) = -lam g'(r(X_1)) (d xhat / d x)^T grad r(xhat(X_{t_c}, t_c))`` (the tail
        weight ``g'`` still uses the true reward of the final sample), integrated back with the
        lean adjoint; later times have zero target and are left out of the loss.  With
        ``terminal_state="noisy"`` it is ``a(t_c) = -lam g'(r(X_1)) grad r(X_{t_c})`` (a reward model
        of noisy states; no denoiser Jacobian).

        Returns:
            adjoint ``(N, B, *S)`` (``a(t_c)`` also in the slot after ``t_c``, zero later) and the
            size of the loss-time pool.
        """
        xs, ts = traj.xs, traj.ts
        kc = int(torch.searchsorted(ts, torch.tensor(self.config.terminal_time, dtype=ts.dtype), right=True)) - 1
        kc = max(0, min(kc, xs.shape[0] - 2))
        tc = ts[kc]
        adj = torch.zeros_like(xs)
        sel = self._active_rows(gp)
        if sel is None:
            return adj, kc + 1
        vb, filled = self._velocity_buffer(xs)
        xr_all, cond = xs[:, sel], _cond_rows(traj.cond, sel)
        if self.config.terminal_state == "noisy":  # a reward model of noisy states: its gradient at X_{t_c}
            jt = terminal_grad(self.reward, xr_all[kc].detach()).to(xs.dtype)
        else:
            with torch.enable_grad():
                xr = xr_all[kc].detach().requires_grad_(True)
                v_c = in_precision(xr, self.config.precision,
                                   lambda: velocity_of(self.base, xr, tc.expand(xr.shape[0]), cond))
                vb[kc, sel], filled[kc, sel] = v_c.detach(), True
                xhat = xr + (1.0 - tc) * v_c
                g_hat = terminal_grad(self.reward, xhat.detach()).to(xhat.dtype)
                (jt,) = torch.autograd.grad(xhat, xr, grad_outputs=g_hat)
        a_c = self._clip(-self.lam * gp[sel].reshape(shape) * jt, shape)
        adj[: kc + 1, sel] = self._lean(Trajectory(xr_all[: kc + 1], ts[: kc + 1], cond), a_c, sel, (vb, filled))
        adj[kc + 1, sel] = a_c  # the control at t_c is regressed on the adjoint one slot later (see step)
        return adj, kc + 1

    def _active_rows(self, gp: torch.Tensor):
        """The samples whose terminal adjoint is not zero (``g'(r) != 0``): a slice of all of them, the indices of
        some, or ``None`` for none.

        The network acts on each sample separately, so the lean adjoint of a sample depends on that sample alone
        and is linear in its terminal value: a sample with ``g'(r) = 0`` (below a right tail's threshold, above a
        left tail's) has a zero adjoint at every time, and its vector-Jacobian products are skipped.
        """
        active = gp != 0
        if bool(active.all()):
            return slice(None)
        if not bool(active.any()):
            return None
        return active.nonzero().flatten()

    def _lean(self, traj: Trajectory, a_start: torch.Tensor, sel, buffer) -> torch.Tensor:
        """:func:`lean_adjoint` on the rows ``sel`` of this step's trajectory (``traj`` already cut to them),
        recording the base velocities it computes into ``buffer`` (:meth:`_velocity_buffer`)."""
        vbs = torch.empty_like(traj.xs)
        out = lean_adjoint(self.base, traj, a_start, self.config.adjoint_integrator == "exponential", vbs,
                           self.config.precision)
        vb, filled = buffer
        last = traj.xs.shape[0] - 1
        vb[:last, sel], filled[:last, sel] = vbs[:last], True
        return out

    # -- one step ------------------------------------------------------------------
    def _velocity(self, model, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """``model.velocity(x, t, cond)`` in ``AMConfig.precision``, returned in the state's dtype."""
        return _InPrecision(model, self.config.precision).velocity(x, t, cond)

    def _in_precision(self, model):
        """``model`` itself in float32; else a view of it whose velocity runs in ``AMConfig.precision`` and returns
        the state's dtype (what the sampler checks a flow for)."""
        return model if self.config.precision == "fp32" else _InPrecision(model, self.config.precision)

    def _velocity_buffer(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's ``(v_base at every grid point and sample, which of them are filled (N, B))``: the lean
        adjoint's forward passes fill it, and the loss reads the base velocities of its points from it instead of
        a second forward pass (the points it does not hold are computed there)."""
        if self._base_velocities is None or self._base_velocities[0].shape != xs.shape:
            self._base_velocities = (torch.empty_like(xs), torch.zeros(xs.shape[:2], dtype=torch.bool))
        return self._base_velocities

    def _loss_base_velocities(self, traj_xs, idx, xs, ts, cond) -> torch.Tensor:
        """``v_base`` at the loss points ``(xs, ts)`` (grid times ``idx`` of every sample): read from the step's
        buffer where the adjoint computed them, one batched forward pass for the others."""
        vb, filled = self._velocity_buffer(traj_xs)
        self._base_velocities = None
        need = ~filled[idx].flatten()
        if not bool(need.any()):
            return vb[idx].flatten(0, 1)
        with torch.no_grad():
            if bool(need.all()) or not (cond is None or isinstance(cond, torch.Tensor)):
                return self._velocity(self.base, xs, ts, cond)
            out = vb[idx].flatten(0, 1)
            out[need] = self._velocity(self.base, xs[need], ts[need], None if cond is None else cond[need])
            return out

    def sample_trajectories(self, n: int) -> Trajectory:
        cond = self.cond_sampler(n, self.generator) if self.cond_sampler else None
        self.model.eval()
        x0 = self.base.sample_prior(n, generator=self.generator, device="cpu").to(self.device)
        return sample(self._in_precision(self.model), n, method="sde", steps=self.config.time_steps,
                      generator=self.generator, cond=cond, x0=x0, return_trajectory=True).trajectory

    def warm_start_value(self, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor,
                         steps: Optional[int] = None, cond: Optional[torch.Tensor] = None) -> float:
        """Warm-start the value model (``stage2 == "value"``) on ``(x_t, t, r(x_1))`` pairs of the base process.

        E.g. noised training data or the offline batch (:func:`tfftmol.core.value.noised_pairs`).
        ``kind="scalar"`` values them with the current target ``lam g(r)``; ``cond`` are the pairs'
        conditions for a conditional flow.  Returns the last loss.
        """
        if self.value is None:
            raise ValueError("warm_start_value needs stage2='value' (this trainer uses the reward gradient)")
        x_t, t, r = x_t.to(self.device), t.to(self.device), r.to(self.device)
        target = None
        if self.value.config.kind == "scalar":
            target = self.lam * freeze_transform(self.transform, r).value(r).to(x_t.dtype)
        cond = cond.to(self.device) if isinstance(cond, torch.Tensor) else cond
        return self.value.fit_pairs(x_t, t, r.to(x_t.dtype), steps=steps, target=target, cond=cond)

    def _path_weights(self, ct, r: torch.Tensor) -> torch.Tensor:
        """``(B,)`` tempered, self-normalised weights ``(dP*/dP_u)^gamma`` with mean 1 (``AMConfig.path_weights``).

        ``log dP*/dP_u = lam g(r(X_1)) - sum_k (u_k . dW_k + 0.5 |u_k|^2 h) + const``: the reward tilt
        of the target over the base, less the controlled process's own log-likelihood ratio to the
        base (Girsanov; the two processes share the prior at ``t_1``).  ``gamma`` is the largest of
        ``1, 1/2, 1/4, ...`` whose effective sample size is at least ``path_weights`` of the batch.
        """
        with torch.no_grad():
            logw = path_log_weights(ct, self.lam, freeze_transform(self.transform, r).value(r))
            logw = torch.where(torch.isfinite(logw), logw, torch.full_like(logw, -torch.inf))
            n = logw.shape[0]
            gamma = 1.0
            for _ in range(30):
                w = torch.softmax(gamma * logw, 0)
                if float(1.0 / (w ** 2).sum()) >= self.config.path_weights * n:
                    break
                gamma *= 0.5
            self.last_path_gamma = gamma
            return (w * n).to(r.dtype)

    def _sample_controlled(self, n: int):
        """On-policy trajectories with their per-step control costs (for the value path)."""
        cond = self.cond_sampler(n, self.generator) if self.cond_sampler else None
        self.model.eval()
        x0 = self.base.sample_prior(n, generator=self.generator, device="cpu").to(self.device)
        return sample_controlled(self._in_precision(self.model), self.base, n, self.config.time_steps,
                                 generator=self.generator, cond=cond, x_start=x0)

    def _optimise(self, loss: torch.Tensor, lr: float, after_step: Optional[Callable[[], None]] = None) -> None:
        """One optimiser step on ``loss`` at learning rate ``lr`` (gradient clip, then ``after_step``, then EMA)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.opt.step()
        if after_step is not None:
            after_step()
        if self.ema_params is not None:
            with torch.no_grad():
                for e, p in zip(self.ema_params, self.params):
                    e.lerp_(p.detach(), 1 - self.config.ema)

    def set_pool(self, x: torch.Tensor, values: torch.Tensor) -> None:
        """Give the weighted path (``stage2 == "weighted"``) its samples of the pre-trained model and their rewards."""
        if x.shape[0] != values.shape[0] or x.shape[0] < 2:
            raise ValueError(f"set_pool needs matching samples and rewards (at least 2); got {tuple(x.shape)} "
                             f"and {tuple(values.shape)}")
        values = values.to(torch.float64)
        if not bool(torch.isfinite(values).all()):
            raise ValueError("set_pool: the rewards must be finite")
        self.pool = (x.to(self.device), values.to(self.device))

    def pool_weights(self) -> torch.Tensor:
        """The target's tilt of the pool, ``exp(lam g(r_i))`` normalised to mean 1 (float64)."""
        x, r = self.pool
        g = freeze_transform(self.transform, r).value(r).to(torch.float64)
        return torch.softmax(self.lam * g, 0) * r.shape[0]

    def _weighted_step(self, stage: int) -> StepStats:
        """One step of tilt-weighted flow matching on the pool (docs/design.md §6.1).

        With ``y = x_1 - x_0`` and ``x_t = t x_1 + (1 - t) x_0`` (``t`` uniform on the grid ``t_1 .. t_{N-1}``), the loss
        ``E_pool |v - v_base|^2 + E_pool[(w - 1) |v - y|^2]`` has the velocity of ``p* ∝ p_pool w`` as its
        minimiser whatever the base's own fitting error (``w = exp(lam g(r))`` with mean 1; with every
        ``w = 1`` it is ``|v - v_base|^2``).  With ``w - 1 = (w - 1)_+ - (1 - w)_+``: half the points draw
        ``x_1`` uniformly (the anchor and ``-(1 - w)_+ |v - y|^2``), half in proportion to ``(w - 1)_+`` (its
        part, times its mean ``z``), so that a strong tilt whose weight sits on a few samples is seen on every
        step, and a flat one (every ``w`` near 1) adds no noise: at ``w = 1`` the gradient is exactly zero.
        """
        c = self.config
        if self.pool is None:
            raise RuntimeError("stage2='weighted' needs the offline batch: call set_pool(x, rewards) first")
        x_pool, r_pool = self.pool
        w = self.pool_weights()
        n_pts = max(2, c.batch_size * (c.loss_time_steps or c.time_steps))
        w_pos = (w - 1.0).clamp_min(0.0)
        z_pos = float(w_pos.mean())  # = mean (1 - w)_+ as well: the tilt's total excess weight
        nu = n_pts // 2 if z_pos > 0 else n_pts
        idx = torch.randint(0, x_pool.shape[0], (nu,), generator=self.generator)
        if nu < n_pts:
            idx = torch.cat([idx, torch.multinomial(w_pos.float(), n_pts - nu, replacement=True,
                                                    generator=self.generator)])
        idx = idx.to(self.device)
        w_neg = (1.0 - w[idx[:nu]]).clamp_min(0.0)
        x1 = x_pool[idx]
        x0 = self.base.sample_prior(n_pts, generator=self.generator, device="cpu").to(self.device, x1.dtype)
        h = 1.0 / c.time_steps
        # the grid times t_1 .. t_{N-1} at which the SDE applies the control (the last one included: a
        # continuous t reaches the edge of [h, 1 - h] too rarely, and the control is most costly there)
        k = torch.randint(1, c.time_steps, (n_pts,), generator=self.generator)
        t = (k.to(torch.float64) * h).to(self.device, x1.dtype)
        tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
        xt = tt * x1 + (1.0 - tt) * x0
        with torch.no_grad():
            v_b = self._velocity(self.base, xt, t, None)
        self.model.train()
        v_ft = self._velocity(self.model, xt, t, None)
        fm = ((v_ft - (x1 - x0)) ** 2).flatten(1).sum(1)
        anchor = ((v_ft[:nu] - v_b[:nu]) ** 2).flatten(1).sum(1)
        loss = (anchor - w_neg.to(fm.dtype) * fm[:nu]).mean()
        if nu < n_pts:
            loss = loss + z_pos * fm[nu:].mean()
        lr = self.lr_at(self.step_count)
        self._optimise(loss, lr)
        with torch.no_grad():  # the target's path KL, on its own noised points: E_w[0.5 |u|^2] on the grid
            c2 = 0.5 * (control(v_ft.detach(), v_b, t) ** 2).flatten(1).sum(1)
            kl = float(((1.0 - w_neg).to(c2.dtype) * c2[:nu]).mean())  # E_w = E_pool[min(w, 1) .] + z_pos E_pos[.]
            if nu < n_pts:
                kl += z_pos * float(c2[nu:].mean())
            kl *= 1.0 - h  # the grid sum h sum_k over t_1 .. t_{N-1}
            gp = freeze_transform(self.transform, r_pool).grad(r_pool[idx[:nu]])  # of the uniform half
            active = float((gp != 0).to(torch.float64).mean())
            r_target = float((w * r_pool).mean())  # the mean reward of the target on the pool
        stats = StepStats(self.step_count, float(loss.detach()), kl, active, r_target, lr, stage, self.stage2)
        self.step_count += 1
        if self.step_count % c.log_every == 0 or self.step_count == 1:
            self.history.append(stats.__dict__.copy())
        return stats

    def step(self, stage: int = 0) -> StepStats:
        c = self.config
        if self.stage2 == "weighted":
            return self._weighted_step(stage)
        vloss, pw = None, None
        weighted = self.value is None and c.path_weights > 0
        # the value path and the path weights need each step's control terms; plain AM does not
        ct = self._sample_controlled(c.batch_size) if self.value is not None or weighted else None
        traj = ct.traj if ct is not None else self.sample_trajectories(c.batch_size)
        x1 = traj.final
        self._base_velocities = None
        shape = (-1,) + (1,) * (x1.dim() - 1)
        if self.value is not None:
            # values-only stage 2: the adjoint is -grad V_phi of the learned value (core/value.py)
            rb = self.reward.evaluate(x1)
            _check_finite(self.reward, rb.values)
            gp = self.transform.grad(rb.values).to(x1.dtype)
            vloss = self.value.update(ct, rb.values, self.transform, self.lam)
            adj, pool = None, traj.xs.shape[0] - 1
        else:
            rb = self.reward.value_and_grad(x1)
            _check_finite(self.reward, rb.values)
            gp = self.transform.grad(rb.values).to(x1.dtype)                  # g'(r), (B,)
            if c.terminal_time < 1.0:
                adj, pool = self._denoised_adjoint(traj, gp, shape)
            else:
                a_T = self._clip(-self.lam * gp.reshape(shape) * rb.grad, shape)  # a(1) = -lam grad g(X_1)
                adj = torch.zeros_like(traj.xs)                            # (N, B, *S)
                sel = self._active_rows(gp)
                if sel is not None:
                    adj[:, sel] = self._lean(Trajectory(traj.xs[:, sel], traj.ts, _cond_rows(traj.cond, sel)),
                                             a_T[sel], sel, self._velocity_buffer(traj.xs))
                pool = traj.xs.shape[0] - 1                                # t_1 .. t_{N-1}
        if weighted:
            pw = self._path_weights(ct, rb.values)
        tw = self.transform.regression_weights(rb.values) if hasattr(self.transform, "regression_weights") else None
        if tw is not None:  # the transform's own weights (the tracker's tail balance), times the path weights
            tw = tw.to(device=x1.device, dtype=x1.dtype).reshape(-1)
            pw = tw if pw is None else pw * tw / (pw * tw).mean()
        k = pool if c.loss_time_steps in (0, None) or c.loss_time_steps >= pool else c.loss_time_steps
        idx = torch.randperm(pool, generator=self.generator)[:k].sort().values
        B = x1.shape[0]
        # after terminal_time the target is zero: the control there is regressed toward the base
        # (late_loss_steps), instead of left to drift with the weights it shares with earlier times
        late_pool = traj.xs.shape[0] - 1 - pool if adj is not None and c.terminal_time < 1.0 else 0
        k_late = min(c.late_loss_steps, late_pool)
        if k_late > 0:
            late = pool + torch.randperm(late_pool, generator=self.generator)[:k_late].sort().values
            idx = torch.cat([idx, late])
            # each group stands for its share of the grid: the loss is the time integral over [0, 1)
            tpw = torch.cat([torch.full((k,), pool / k), torch.full((k_late,), late_pool / k_late)])
            tpw = (tpw / tpw.mean()).to(device=x1.device, dtype=x1.dtype).repeat_interleave(B)
        else:
            tpw = None
        kt = idx.numel()
        xs = traj.xs[idx].flatten(0, 1)                                    # (kt B, *S)
        ts = traj.ts[idx].repeat_interleave(B)                             # (kt B,)
        cond = traj.cond
        if cond is not None and isinstance(cond, torch.Tensor):
            cond = cond.repeat(kt, *([1] * (cond.dim() - 1)))  # early and late loss times alike
        # The control at t_k moves X_{k+1}: its target is the adjoint at t_{k+1}.  For the Euler-Maruyama
        # process this is the exact discrete optimum (the tilted Gaussian transition's mean shift,
        # h sigma_k^2 E[grad V_{k+1}(X_{k+1})]); the adjoint at t_k itself carries the factor
        # (I + h J_b(t_k))^T, whose -h/t_k term zeroes the first step's target and halves the second's:
        # an O(h) shortfall of the whole tilt (12% of a Gaussian's mean shift at 20 steps; docs/design.md §4.3).
        nxt = idx + 1
        if adj is None:
            nxt = nxt.clamp(max=pool - 1)  # the value model is fitted on t_1 .. t_{N-1}
            a = self.value.adjoint(traj.xs[nxt].flatten(0, 1), traj.ts[nxt].repeat_interleave(B),
                                   self.value.g_bins(self.transform, self.lam, rb.values), cond)
        else:
            a = adj[nxt].flatten(0, 1)
        sig = sigma_memoryless(ts).reshape(shape)
        self.model.train()
        v_ft = self._velocity(self.model, xs, ts, cond)
        v_b = self._loss_base_velocities(traj.xs, idx, xs, ts, cond)
        u = control(v_ft, v_b, ts)                                         # 2 (v_ft - v_base) / sigma
        per_point = ((u + sig * a) ** 2).flatten(1).sum(1)
        # path weights: importance weights toward the target path measure, the same for every loss time
        if tpw is not None:
            per_point = per_point * tpw
        loss = (per_point * pw.repeat(kt)).mean() if pw is not None else per_point.mean()
        measure = self.config.step_trust > 0 and self.lr_scale is None
        old = [p.detach().clone() for p in self.params] if measure else None
        lr = self.lr_at(self.step_count) * (self.lr_scale or 1.0)
        self._optimise(loss, lr, (lambda: self._trust_step(old, xs, ts, cond, v_b, u.detach(), (sig * a).detach()))
                       if measure else None)
        h = 1.0 / c.time_steps
        u2 = 0.5 * (u.detach() ** 2).flatten(1).sum(1) * h
        kl = float(u2[: k * B].mean() * pool)
        if k_late > 0:  # the late times' control cost too (zero target: the guards must see it)
            kl += float(u2[k * B:].mean() * late_pool)
        stats = StepStats(self.step_count, float(loss.detach()), kl, float((gp != 0).float().mean()),
                          float(rb.values.mean()), lr, stage, self.stage2, vloss)
        self.step_count += 1
        if self.step_count % c.log_every == 0 or self.step_count == 1:
            self.history.append(stats.__dict__.copy())
        return stats

    # -- results -------------------------------------------------------------------
    def final_model(self) -> nn.Module:
        """The fine-tuned model, with EMA weights if ``ema > 0``."""
        if self.ema_params is None:
            return self.model
        m = copy.deepcopy(self.model)
        params = [p for n, p in m.named_parameters() if not n.startswith("base.")]
        with torch.no_grad():
            for p, e in zip(params, self.ema_params):
                p.copy_(e)
        return m

    def state_dict(self) -> dict:
        return {
            "model": {k: v for k, v in self.model.state_dict().items() if not k.startswith("base.")},
            "opt": self.opt.state_dict(),
            "ema": list(self.ema_params) if self.ema_params is not None else [],
            "gen": self.generator.get_state(),
            "step": self.step_count,
            "history": self.history,
            "lam": self.lam,
            "lr_scale": self.lr_scale,
            "extra": self.extra,
            **({"value": self.value.state_dict()} if self.value is not None else {}),
        }

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"], strict=False)
        self.opt.load_state_dict(s["opt"])
        if self.ema_params is not None and s["ema"]:
            for e, v in zip(self.ema_params, s["ema"]):
                e.copy_(v)
        self.generator.set_state(s["gen"])
        self.step_count = int(s["step"])
        self.history = list(s["history"])
        self.lam = float(s["lam"])
        self.lr_scale = s.get("lr_scale")
        self.extra = dict(s.get("extra", {}))
        if self.value is not None and "value" in s:
            self.value.load_state_dict(s["value"])
