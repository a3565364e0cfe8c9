"""The gradient-free stage 2: a learned value model of the pseudo-reward (docs/design.md §6).

Adjoint Matching (``adjoint.py``) regresses the control onto ``-sigma(t) a(t)``, where the lean
adjoint ``a`` starts from the reward gradient ``a(1) = -lam grad g(X_1)``.  Its conditional
expectation is ``E[a(t) | X_t = x] = -grad_x V(x, t)`` with the soft value

    V(x, t) = log E_base[exp(lam g(X_1)) | X_t = x],      u*(x, t) = sigma(t) grad_x V(x, t),

which is smooth for ``t < 1`` even where ``g`` (or ``r``) has no useful gradient.  This module
replaces the adjoint by ``-grad_x V_phi(X_t, t)`` of a learned ``V_phi`` that needs reward
*values* only, so that the stage-2 loss becomes ``|| u_theta(X_t, t) - sigma(t) grad_x V_phi(X_t, t) ||^2``.

``V_phi`` is learned on-policy, on the trajectories the trainer samples anyway (soft policy
iteration, as in Value Matching, Jensen, De Santi, Krause et al., ICLR 2026).  Under the current
fine-tuned model ``q`` (control ``u``), Girsanov gives

    V(x, t) = log E_q[exp(lam g(X_1) - int_t^1 (u . dW + 0.5 |u|^2 ds)) | X_t = x],

and the value of ``q`` itself, ``V^q(x, t) = E_q[lam g(X_1) - int_t^1 0.5 |u|^2 ds | X_t = x]``,
is a lower bound (Jensen) that is exact at the optimum; the improved control ``sigma grad V^q``
has the optimum as its fixed point.  Two parametrisations (``ValueConfig.kind``):

* ``"distribution"`` (default): a categorical model ``p_phi(r | x_t, t)`` of the *reward* given
  the state, over bins whose representative values are the running means of the rewards that
  fell in them, plus a scalar head ``C_phi(x_t, t)`` for the control cost to go
  ``int_t^1 0.5 |u|^2 ds``.  Then ``V^q = lam sum_b p_b g(rbar_b) - C_phi`` for *any* terminal
  transform ``g``: the threshold ``eta`` may move every batch (the adaptive hinge) or be refined
  mid-run without invalidating the model, the same model serves the left and right tails and
  expected-reward fine-tuning, and it can be warm-started from ``(x_t, t, r(x_1))`` pairs of a
  data set before ``eta`` is known (a noise-conditional reward model).
* ``"scalar"``: ``V_phi`` regressed directly on ``lam g(r(X_1)) - sum_{j >= k} (u_j . dW_j + 0.5 |u_j|^2 h)``;
  the ``u . dW`` term has conditional mean zero and makes the target's variance vanish at the
  optimum (a control variate).  Tied to one ``(g, lam)``.

**Measured** on the exact 2D GMM (``circle_gmm``, ``r = x_1`` given as values only, TFFT
right-CVaR_0.9 at alpha 1, M = 20,000, 300 steps of batch 256, 30 SDE steps, 10 loss times,
Adam 2e-3, EMA 0.95, the default threshold tracking; |own-tail CVaR - exact target's| with
the target at 2.955, pre-trained 2.199), seeds 0 / 1 / 2 / 3:

* reward gradient (lean adjoint): 0.172 / 0.195 / 0.158 / 0.162 (KL 0.27 / 0.25 / 0.28 / 0.28);
* ``scalar`` (default: all grid times, one value step per step, warm start from the offline
  batch): 0.184 / 0.169 / 0.141 / 0.126 (KL 0.26 / 0.28 / 0.30 / 0.33), at most 1.07x the
  gradient path's error; with 10 grid times per step 0.152 / 0.171 / 0.287 / 0.156 (one seed
  1.8x); without the warm start 0.198 / 0.179 (seeds 0 / 1);
* ``distribution`` with the warm start: 0.331 (seed 0); without it 0.43;
* a third form, the base's own conditional law of ``r`` learned with Girsanov weights and
  ``V = log E_base[exp(lam g)]`` read off it in closed form (exact for any policy, no policy
  iteration), diverged: its log-sum-exp is dominated by the extrapolated top bins, whose
  ``x``-gradients are noise (CVaR 2.20 -> 1.03, KL 2.9).  Not kept.
* left-CVaR_0.1 (seed 0, 10 grid times): 0.051 against the gradient path's 0.045;
* starved right tail (alpha 0.5, adaptive hinge, target 3.81): 0.341 against the gradient path's 0.491;
* a reward with no useful gradient, ``r = floor(4 x_1) / 4``: the gradient path does not move
  (right-CVaR_0.9 2.072 -> 2.072, KL 0); the value path reaches 2.736 of the exact 2.946 (76%).

Cost per fine-tuning step, same budget (CPU time, one thread, 80 steps each, interleaved so
that the machine's load hits all alike): expected-reward fine-tuning 49.7 ms, TFFT with the
reward gradient 47.4 ms (0.95x), TFFT values only 45.3 ms (0.91x), expected-reward values only
47.8 ms (0.96x).  The value path replaces the lean adjoint's ``N`` vector-Jacobian products by
``N`` base evaluations (one, for a residual correction) and one small MLP step.  The warm start
(300 steps of 1,024 pairs) costs 0.91 s CPU, 18 expected-FT steps, once: over 300 steps the
values-only run costs 0.97x expected-FT, value model included.

Everything is tensors and callables: a flow is a :class:`~tfftmol.core.flow.FlowModel`, the value
network defaults to an MLP on the flattened state and Fourier time features, and a domain may
pass its own ``net(x, t) -> (B, out)`` (e.g. a graph network).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from .config import check_choice, check_int, check_number
from .flow import TIME_FEATURES, time_features, zero_output_mlp
from .reward import reward_has_grad, reward_hook
from .sampling import Trajectory, sample

__all__ = ["ValueConfig", "ValueNet", "ValueModel", "ValueTrainer", "ControlledTrajectory", "sample_controlled",
           "noised_pairs", "reward_has_grad", "ValuesOnly", "freeze_transform", "start_value_stage"]


# -- settings -------------------------------------------------------------------------------
@dataclass
class ValueConfig:
    """Settings of the value model of the gradient-free stage 2.

    Attributes:
        kind: ``"scalar"`` (default: ``V`` regressed directly, with the ``u . dW`` control variate)
            or ``"distribution"`` (categorical model of ``r`` given ``(x_t, t)`` plus a control-cost
            head; valid for any threshold).  Chosen by measurement, see the module docstring.
        hidden, layers: width and depth of the default MLP.
        lr: Adam learning rate of the value model.
        iters: value-model optimisation steps per fine-tuning step.
        batch: points per value-model step (``0`` = all points of the batch).
        time_steps: how many grid times per trajectory enter the value-model loss (``0`` = all).
        bins: number of reward bins (``kind="distribution"``).
        bin_momentum: EMA momentum of the per-bin reward means.
        warm_start_steps: steps of :meth:`ValueTrainer.fit_pairs` on data a domain supplies
            (``0`` = no warm start even if pairs are given).
        grad_clip: gradient-norm clip of the value model (``0`` = off).
        cond_classes: number of integer classes of a class-conditional flow (``0`` = unconditional).
        replay: share of each on-policy update's points drawn from the warm-start pairs (base
            process, zero control cost), so that what the warm start learned about the reward is
            not forgotten under on-policy updates (``0`` = off).
    """

    kind: str = "scalar"
    hidden: int = 64
    layers: int = 3
    lr: float = 3e-3
    iters: int = 1
    batch: int = 0
    time_steps: int = 0
    bins: int = 64
    bin_momentum: float = 0.05
    warm_start_steps: int = 300
    grad_clip: float = 1.0
    cond_classes: int = 0
    replay: float = 0.0

    def __post_init__(self):
        check_choice(self, "kind", ("distribution", "scalar"))
        check_int(self, "hidden", "layers", "iters")
        check_int(self, "bins", low=4)
        check_int(self, "batch", "time_steps", "warm_start_steps", "cond_classes", low=0)
        check_number(self, "lr", 0, None, low_open=True)
        check_number(self, "bin_momentum", 0, 1, low_open=True)
        check_number(self, "grad_clip", 0, None)
        check_number(self, "replay", 0, 1, high_open=True)


# -- rewards without gradients --------------------------------------------------------------
class ValuesOnly:
    """A reward seen through its values only: ``has_grad = False``, ``value_and_grad`` returns ``grad=None``.

    For black-box oracles, and for testing the gradient-free stage 2 on a reward that has a gradient.
    """

    has_grad = False

    def __init__(self, reward: Any):
        self.reward = reward
        self.name = getattr(reward, "name", type(reward).__name__)
        for hook in ("cache_key", "value_pairs"):   # forwarded; the gradient hooks are not
            if reward_hook(reward, hook) is not None:
                setattr(self, hook, reward_hook(reward, hook))

    def evaluate(self, x: torch.Tensor):
        return self.reward.evaluate(x)

    def value_and_grad(self, x: torch.Tensor):
        rb = self.reward.evaluate(x)
        rb.grad = None
        return rb


def freeze_transform(transform: Any, values: torch.Tensor) -> Any:
    """The transform as applied to this batch: a batch-adaptive hinge is fixed at the threshold it uses here.

    A transform whose threshold follows the batch (``AdaptiveHinge``, the threshold tracker) must
    not be evaluated on other numbers (the value model's bin means) as if they were a batch of
    rewards: that would move its threshold and, for the tracker, replace the batch it tracks.
    Such a transform exposes the fixed pseudo-reward it applies to a batch as ``at(r)`` (or the
    private ``_at`` / ``_pseudo`` of the current classes).
    """
    for name in ("at", "_at", "_pseudo"):
        fn = getattr(transform, name, None)
        if callable(fn):
            return fn(values)
    return transform


# -- networks -------------------------------------------------------------------------------
class ValueNet(nn.Module):
    """MLP on ``[flatten(x), time features(t)]`` with ``out`` outputs; SiLU, so ``grad_x`` is smooth.

    With ``cond_classes > 0`` it also takes an integer class condition ``(B,)`` (a class-conditional
    flow, e.g. the digits model), embedded in 16 dimensions.
    """

    def __init__(self, dim: int, out: int, hidden: int = 128, layers: int = 3, cond_classes: int = 0):
        super().__init__()
        self.cond_classes = int(cond_classes)
        self.embed = nn.Embedding(self.cond_classes, 16) if self.cond_classes > 0 else None
        self.net = zero_output_mlp(dim + TIME_FEATURES + (16 if self.embed is not None else 0), out, hidden, layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        h = [x.flatten(1), time_features(t.to(x.dtype))]
        if self.embed is not None:
            if not (isinstance(cond, torch.Tensor) and cond.dim() == 1 and not cond.is_floating_point()):
                raise ValueError(f"value network with cond_classes={self.cond_classes} needs an integer class "
                                 f"condition of shape (B,), got {type(cond).__name__}")
            if int(cond.min()) < 0 or int(cond.max()) >= self.cond_classes:
                raise ValueError(f"class condition out of range [0, {self.cond_classes}): "
                                 f"{int(cond.min())}..{int(cond.max())}; raise value.cond_classes")
            h.append(self.embed(cond.long()).to(x.dtype))
        return self.net(torch.cat(h, 1))


class ValueModel(nn.Module):
    """``V_phi(x, t)`` in one of the two parametrisations of the module docstring.

    Args:
        state_shape: shape of one state.
        config: :class:`ValueConfig`.
        net: optional ``nn.Module`` mapping ``(x, t)`` to ``(B, bins + 1)`` (distribution) or ``(B, 1)``
            (scalar); default :class:`ValueNet`.
    """

    def __init__(self, state_shape, config: ValueConfig | None = None, net: Optional[nn.Module] = None):
        super().__init__()
        self.config = c = config or ValueConfig()
        self.state_shape = tuple(state_shape)
        d = int(torch.Size(self.state_shape).numel())
        out = c.bins + 1 if c.kind == "distribution" else 1
        self.net = net if net is not None else ValueNet(d, out, c.hidden, c.layers, c.cond_classes)
        # reward bins: interior edges (bins - 1,), representative value of each bin (bins,);
        # set from the first rewards seen (``init_bins``)
        self.register_buffer("edges", torch.zeros(c.bins - 1))
        self.register_buffer("rbar", torch.zeros(c.bins))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        # scale of the scalar outputs (cost to go; or V for kind="scalar"), fixed at the first batch
        self.register_buffer("scale", torch.ones(()))

    # -- bins ----------------------------------------------------------------------
    @torch.no_grad()
    def init_bins(self, r: torch.Tensor) -> None:
        """Bin edges from the rewards ``r`` seen first: 3/4 of the bins on their quantiles, 1/8 each side beyond.

        The outer bins are open; every bin's representative value is the running mean of the
        rewards that fell in it, so rewards beyond the first range keep their magnitude.
        """
        c = self.config
        r = r.detach().double().flatten()
        r = r[torch.isfinite(r)]
        if r.numel() < 2:
            raise ValueError("the value model needs at least two finite rewards to place its bins")
        K = c.bins
        n_out = max(1, K // 8)
        n_in = K - 2 * n_out                       # interior bins between the 1% and 99% quantiles
        q = torch.quantile(r, torch.linspace(0.01, 0.99, n_in + 1, dtype=torch.float64))
        lo, hi = float(q[0]), float(q[-1])
        span = max(hi - lo, 1e-6)
        below = torch.linspace(lo - 0.5 * span, lo, n_out + 1, dtype=torch.float64)[:-1]
        above = torch.linspace(hi, hi + 0.5 * span, n_out + 1, dtype=torch.float64)[1:]
        edges = torch.cat([below, q, above])
        edges, _ = torch.sort(edges)
        # strictly increasing (ties from discrete rewards are spread by a tiny amount)
        eps = 1e-9 * span
        for i in range(1, len(edges)):
            if edges[i] <= edges[i - 1]:
                edges[i] = edges[i - 1] + eps
        edges = edges[1:-1]                        # K - 1 interior edges -> K bins (outer ones open)
        assert edges.numel() == K - 1, (edges.numel(), K)
        mids = torch.empty(K, dtype=torch.float64)
        mids[1:-1] = 0.5 * (edges[1:] + edges[:-1])
        mids[0] = edges[0] - 0.5 * (edges[1] - edges[0])
        mids[-1] = edges[-1] + 0.5 * (edges[-1] - edges[-2])
        self.edges.copy_(edges.to(self.edges.dtype))
        self.rbar.copy_(mids.to(self.rbar.dtype))
        self.ready.fill_(True)

    def bin_index(self, r: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(r.to(self.edges.dtype).contiguous(), self.edges)

    @torch.no_grad()
    def update_bin_means(self, r: torch.Tensor, momentum: float) -> None:
        r = r.detach().to(self.rbar.dtype)
        k = self.bin_index(r)
        cnt = torch.bincount(k, minlength=self.rbar.numel()).to(r.dtype)
        tot = torch.zeros_like(self.rbar).index_add_(0, k, r)
        seen = cnt > 0
        self.rbar[seen] += momentum * (tot[seen] / cnt[seen] - self.rbar[seen])

    # -- values ----------------------------------------------------------------------
    def outputs(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        if cond is None and not (isinstance(self.net, ValueNet) and self.net.embed is not None):
            return self.net(x, t)
        if isinstance(self.net, ValueNet) and self.net.embed is None:
            raise ValueError("the flow is conditional but the value network takes no condition: set "
                             "am.value.cond_classes to the number of integer classes, or pass net=<a module "
                             "taking (x, t, cond)>")
        return self.net(x, t, cond)

    def value(self, x: torch.Tensor, t: torch.Tensor, g_bins: Optional[torch.Tensor] = None,
              cond: Optional[Any] = None) -> torch.Tensor:
        """``V_phi(x, t)``, shape ``(B,)``.  ``g_bins = lam g(rbar)`` is required for ``kind="distribution"``."""
        out = self.outputs(x, t, cond)
        if self.config.kind == "scalar":
            return self.scale * out[:, 0]
        p = torch.softmax(out[:, :-1], dim=1)
        return p @ g_bins.to(p.dtype) - self.scale * out[:, -1]

    def reward_distribution(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``p_phi(r in bin b | x_t, t)``, shape ``(B, bins)`` (``kind="distribution"``)."""
        return torch.softmax(self.outputs(x, t)[:, :-1], dim=1)


# -- on-policy trajectories with their control costs -----------------------------------------
@dataclass
class ControlledTrajectory:
    """A trajectory of the fine-tuned model with its per-step controls.

    Attributes:
        traj: states on ``t_1 .. t_N`` (:class:`Trajectory`).
        cost: ``(N - 1, B)``: ``0.5 |u_k|^2 h`` of step ``k`` (from ``t_k`` to ``t_{k+1}``).
        noise: ``(N - 1, B)``: ``u_k . dW_k`` of step ``k``.
    """

    traj: Trajectory
    cost: torch.Tensor
    noise: torch.Tensor

    def cost_to_go(self, with_noise: bool = False) -> torch.Tensor:
        """``(N, B)``: ``sum_{j >= k} 0.5 |u_j|^2 h`` (plus ``u_j . dW_j`` if ``with_noise``); zero at ``t = 1``."""
        c = self.cost + self.noise if with_noise else self.cost
        out = torch.zeros((c.shape[0] + 1, c.shape[1]), dtype=c.dtype, device=c.device)
        out[:-1] = torch.flip(torch.cumsum(torch.flip(c, [0]), 0), [0])
        return out


@torch.no_grad()
def sample_controlled(model, base, n: int, steps: int, generator: Optional[torch.Generator] = None,
                      cond: Optional[Any] = None, x_start: Optional[torch.Tensor] = None) -> ControlledTrajectory:
    """On-policy trajectories of the fine-tuned model with each step's ``0.5 |u_k|^2 h`` and ``u_k . dW_k``.

    The one sampling loop (:func:`tfftmol.core.sampling.sample` with ``base`` and
    ``record_steps``): the memoryless SDE from ``t_1 = h``, ``u = 2 (v - v_base) / sigma``.
    """
    out = sample(model, n, method="sde", steps=steps, generator=generator, cond=cond, x0=x_start, base=base,
                 return_trajectory=True, record_steps=True, prior=base)
    return ControlledTrajectory(out.trajectory, out.step_costs, out.step_noise)


# -- data for the warm start ----------------------------------------------------------------
def noised_pairs(x1: torch.Tensor, r: torch.Tensor, times_per_sample: int = 4, steps: int = 50,
                 generator: Optional[torch.Generator] = None):
    """``(x_t, t, r)`` pairs from clean samples ``x1`` with rewards ``r``: ``x_t = t x1 + (1 - t) x0``.

    For the memoryless schedule the base path given ``X_1`` has exactly these marginals, so with
    ``x1`` drawn from the pre-trained distribution (e.g. its training data) the pairs are samples of
    ``(X_t, r(X_1))`` under the base process.  Times are drawn on the grid ``t_1 .. t_{N-1}`` of ``steps``.
    """
    n = x1.shape[0]
    xr = x1.repeat(times_per_sample, *([1] * (x1.dim() - 1)))
    rr = r.repeat(times_per_sample)
    k = torch.randint(1, steps, (xr.shape[0],), generator=generator)
    t = (k.to(x1.dtype) / steps).to(x1.device)
    x0 = torch.randn(xr.shape, generator=generator, dtype=x1.dtype).to(x1.device)
    tt = t.reshape(-1, *([1] * (x1.dim() - 1)))
    return tt * xr + (1 - tt) * x0, t, rr


# -- trainer ------------------------------------------------------------------------------
class ValueTrainer:
    """Learns ``V_phi`` on-policy and gives the adjoint ``-grad_x V_phi`` for the Adjoint Matching loss.

    Args:
        state_shape: shape of one state.
        config: :class:`ValueConfig`.
        device: torch device.
        net: optional custom network (see :class:`ValueModel`).
        seed: seeds the initialisation and the minibatches.
    """

    def __init__(self, state_shape, config: ValueConfig | None = None, device: str | torch.device = "cpu",
                 net: Optional[nn.Module] = None, seed: int = 0):
        self.config = config or ValueConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 104729)
            self.model = ValueModel(state_shape, self.config, net).to(device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=self.config.lr)
        self.generator = torch.Generator().manual_seed(seed + 15485863)
        self.updates = 0
        self.last_loss = float("nan")
        self.replay_pairs: Optional[tuple] = None   # (x_t, t, r, cond) of the warm start, with replay > 0

    # -- losses ------------------------------------------------------------------------
    def _loss(self, x, t, r, cost, target, cond=None):
        m = self.model
        out = m.outputs(x, t, cond)
        if self.config.kind == "scalar":
            return (((out[:, 0] - target / m.scale) ** 2)).mean()
        ce = nn.functional.cross_entropy(out[:, :-1], m.bin_index(r))
        mse = ((out[:, -1] - cost / m.scale) ** 2).mean()
        return ce + mse

    def _fit(self, x, t, r, cost, target, iters: int, batch: int, cond=None) -> float:
        c = self.config
        n = x.shape[0]
        loss = torch.zeros(())
        self.model.train()
        for _ in range(iters):
            if batch and batch < n:
                i = torch.randint(0, n, (batch,), generator=self.generator).to(x.device)
                args = [a[i] if isinstance(a, torch.Tensor) else a for a in (x, t, r, cost, target, cond)]
            else:
                args = [x, t, r, cost, target, cond]
            loss = self._loss(*args)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.opt.step()
        self.updates += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    def _prepare(self, r: torch.Tensor, scale_from: torch.Tensor) -> None:
        m = self.model
        if self.config.kind == "distribution" and not bool(m.ready):
            m.init_bins(r)
        if self.updates == 0 and bool((m.scale == 1).all()):
            s = float(scale_from.detach().double().std()) if scale_from.numel() > 1 else 1.0
            s = s if s > 0 else 1.0
            m.scale.fill_(max(s, 1e-2) if math.isfinite(s) else 1.0)
        if self.config.kind == "distribution":
            m.update_bin_means(r, self.config.bin_momentum)

    # -- public API -----------------------------------------------------------------------
    def fit_pairs(self, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, steps: Optional[int] = None,
                  batch_size: int = 1024, target: Optional[torch.Tensor] = None,
                  cond: Optional[torch.Tensor] = None) -> float:
        """Warm start on ``(x_t, t, r(x_1))`` pairs under the *base* process (control cost zero).

        ``kind="distribution"`` learns ``p(r | x_t, t)`` (no threshold needed); ``kind="scalar"``
        needs the value ``target = lam g(r)`` per pair.  ``cond``: the pairs' conditions, for a
        conditional flow.
        """
        if self.config.kind == "scalar" and target is None:
            raise ValueError("kind='scalar' needs target = lam * g(r) for its warm start; use kind='distribution' "
                             "to warm-start before the threshold is known")
        steps = self.config.warm_start_steps if steps is None else steps
        r = r.detach().to(x_t.dtype)
        self.set_replay(x_t, t, r, cond)
        zeros = torch.zeros_like(r)                                   # base process: no control cost
        # kind="distribution": the scale belongs to the control-cost head, and the base process has no
        # control cost, so the reward's spread must not set it (it did: with QED's spread ~0.08 the
        # on-policy cost targets became ~13x too large and their MSE, up to ~400, swamped the reward head)
        self._prepare(r, target if target is not None else torch.ones(()))
        loss = float("nan")
        for _ in range(steps):
            loss = self._fit(x_t, t.to(x_t.dtype), r, zeros, target, 1, batch_size, cond)
        self.updates = max(self.updates, 1)
        return loss

    def set_replay(self, x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, cond=None) -> None:
        """Keep warm-start pairs for replay in on-policy updates (``config.replay > 0``; else nothing)."""
        if self.config.replay > 0:
            self.replay_pairs = (x_t.detach(), t.detach().to(x_t.dtype), r.detach().to(x_t.dtype), cond)

    def _with_replay(self, x, t, r, cost, target, cond, transform, lam):
        """Append ``replay / (1 - replay)`` times as many warm-start pairs as the batch has points."""
        if self.replay_pairs is None or self.config.replay <= 0:
            return x, t, r, cost, target, cond
        xp, tp, rp, cp = self.replay_pairs
        m = int(round(x.shape[0] * self.config.replay / (1.0 - self.config.replay)))
        i = torch.randint(0, xp.shape[0], (m,), generator=self.generator)
        xi, ti, ri = xp[i].to(x.device, x.dtype), tp[i].to(x.device, x.dtype), rp[i].to(x.device, x.dtype)
        zeros = torch.zeros_like(ri)                                  # base process: no control cost
        if target is not None:                                        # scalar: V = lam g(r) under the base
            target = torch.cat([target, lam * freeze_transform(transform, r).value(ri).to(x.dtype)])
        if cost is not None:
            cost = torch.cat([cost, zeros])
        if isinstance(cond, torch.Tensor) and isinstance(cp, torch.Tensor):
            cond = torch.cat([cond, cp[i].to(cond.device)])
        return torch.cat([x, xi]), torch.cat([t, ti]), torch.cat([r, ri]), cost, target, cond

    def update(self, ct: ControlledTrajectory, r: torch.Tensor, transform=None, lam: float = 1.0) -> float:
        """One on-policy update on a batch of controlled trajectories with terminal rewards ``r`` (``(B,)``).

        ``transform``/``lam`` are needed only for ``kind="scalar"`` (the target ``lam g(r) - cost to go``).
        """
        c = self.config
        xs, ts = ct.traj.xs, ct.traj.ts
        N, B = xs.shape[0], xs.shape[1]
        pool = N - 1                                                     # t_1 .. t_{N-1}
        k = pool if c.time_steps == 0 or c.time_steps >= pool else c.time_steps
        idx = torch.randperm(pool, generator=self.generator)[:k].sort().values.to(xs.device)
        x = xs[idx].flatten(0, 1)
        t = ts[idx].repeat_interleave(B)
        cond = ct.traj.cond
        if isinstance(cond, torch.Tensor):
            cond = cond.repeat(k, *([1] * (cond.dim() - 1)))
        r = r.detach().to(xs.dtype)
        rr = r.repeat(k)
        if c.kind == "scalar":
            g = freeze_transform(transform, r)
            y = lam * g.value(r).to(xs.dtype)[None] - ct.cost_to_go(with_noise=True)[idx]
            target = y.flatten()
            self._prepare(r, target)
            x, t, rr, _, target, cond = self._with_replay(x, t, rr, None, target, cond, transform, lam)
            return self._fit(x, t, rr, None, target, c.iters, c.batch, cond)
        cost = ct.cost_to_go(with_noise=False)[idx].flatten()
        self._prepare(r, cost if float(cost.abs().max()) > 0 else torch.ones(()))
        x, t, rr, cost, _, cond = self._with_replay(x, t, rr, cost, None, cond, transform, lam)
        return self._fit(x, t, rr, cost, None, c.iters, c.batch, cond)

    def g_bins(self, transform, lam: float, r_batch: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """``lam g(rbar_b)`` on the bins (``kind="distribution"``); the transform frozen at ``r_batch``."""
        if self.config.kind == "scalar":
            return None
        g = freeze_transform(transform, r_batch) if r_batch is not None else transform
        return lam * g.value(self.model.rbar.detach().clone())

    def adjoint(self, x: torch.Tensor, t: torch.Tensor, g_bins: Optional[torch.Tensor] = None,
                cond: Optional[Any] = None) -> torch.Tensor:
        """``-grad_x V_phi(x, t)``, the stand-in for the lean adjoint ``a(t)`` (no parameter gradients)."""
        self.model.eval()
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            v = self.model.value(xr, t, g_bins, cond)
            (gx,) = torch.autograd.grad(v.sum(), xr)
        return -gx.detach()

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "gen": self.generator.get_state(),
                "updates": self.updates}

    def load_state_dict(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.generator.set_state(s["gen"])
        self.updates = int(s["updates"])


def start_value_stage(trainer: Any, x_off: Optional[torch.Tensor], r_off: Optional[torch.Tensor],
                      log: Callable[[str], None] = print, seed: int = 0) -> float:
    """Say which stage-2 path a trainer runs and, on the value path, warm-start its value model.

    The data: the reward's ``value_pairs(n, generator)`` hook if it declares one (a domain's
    ``(x_t, t, r(x_1))`` pairs, e.g. its noised training set with every reward labelled), else
    the offline batch, which holds samples of the pre-trained model with their true rewards
    (drawn for stage 1 anyway), so that its noised copies (:func:`noised_pairs`) are free
    warm-start data.  A resumed trainer (``step_count > 0``) keeps its value model.

    Returns:
        seconds spent on the warm start.
    """
    import time
    if getattr(trainer, "stage2", None) == "weighted":
        log("stage 2: values only (tilt-weighted flow matching on the offline batch; the reward gradient is not used)")
        return 0.0
    if getattr(trainer, "value", None) is None:
        tc = float(getattr(getattr(trainer, "config", None), "terminal_time", 1.0))
        log("stage 2: reward gradient (lean adjoint, exact Adjoint Matching)" if tc >= 1.0 else
            f"stage 2: reward gradient (lean adjoint started at t = {tc:g} from the denoised state)")
        return 0.0
    vc = trainer.value.config
    log(f"stage 2: values only (learned value model, kind={vc.kind}; the reward gradient is not used)")
    pairs_fn = reward_hook(trainer.reward, "value_pairs")
    if vc.warm_start_steps == 0 or (not callable(pairs_fn) and (x_off is None or r_off is None)):
        return 0.0
    resumed = trainer.step_count > 0
    if resumed and vc.replay <= 0:
        return 0.0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 7)
    cond = None
    if callable(pairs_fn):
        pairs = pairs_fn(256 * vc.warm_start_steps, gen)   # each pair seen ~4 times at batch 1024
        x_t, t, r = pairs[:3]
        cond = pairs[3] if len(pairs) > 3 else None
        where = "pairs the reward supplies (value_pairs)"
    elif getattr(trainer, "cond_sampler", None) is not None:
        log("value model: no warm start (the offline batch keeps no conditions of a conditional flow; "
            "a reward can supply (x_t, t, r, cond) through value_pairs)")
        return 0.0
    else:
        x_t, t, r = noised_pairs(x_off, r_off, 4, trainer.config.time_steps, gen)
        where = "noised offline samples"
    ok = torch.isfinite(r)
    x_t, t, r = x_t[ok].float(), t[ok].float(), r[ok].float()
    cond = cond[ok] if isinstance(cond, torch.Tensor) else cond
    if resumed:   # the value model comes from the checkpoint; only the replay pairs are drawn again
        trainer.value.set_replay(x_t.to(trainer.device), t.to(trainer.device), r.to(trainer.device), cond)
        log(f"value model: {len(r)} warm-start pairs drawn again for replay ({where})")
        return time.perf_counter() - t0
    loss = trainer.warm_start_value(x_t, t, r, cond=cond)
    log(f"value model warm-started on {len(r)} {where} ({vc.warm_start_steps} steps, loss {loss:.4g})")
    return time.perf_counter() - t0
