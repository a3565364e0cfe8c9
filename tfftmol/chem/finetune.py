"""Molecular TFFT end to end: one config in, a report directory out.

``finetune(config)`` runs, on a pre-trained molecular flow (``qm9-graph`` by
default; state ``x`` of shape ``(B, 189)``, DESIGN §3):

1. **Offline batch**: ``M = tfft.offline_samples`` molecules of the pre-trained
   model, decoded and scored with the *true* reward (invalid molecules carry the
   reward's validity penalty), cached on disk under ``cache_dir`` keyed by model
   weights, reward config, ``M``, sampler, steps and seed.
2. **Stage 1**: the exact threshold ``eta*`` with its diagnostics (printed); the
   core's continuation engages when the active fraction is small.
3. **Surrogate fit** on the offline batch: a differentiable GNN ``s(x)``
   (:class:`~tfftmol.chem.surrogate.Surrogate`) fitted to the true rewards.
4. **Stage 2**: Adjoint Matching with terminal gradient

       grad g(X_1) = g'(r_true(X_1)) * grad_x s(X_1),

   where ``g'`` is ``1[r > eta*]/(1 - beta)`` (right), ``1[r < eta*]/beta`` (left)
   or ``1`` (expected-reward baseline, ``tfft.method: expected``): the tail
   indicator uses the true reward of the decoded sample, only the direction
   comes from the surrogate.  The surrogate is refitted every ``refit_every``
   steps on the fine-tuner's own fresh samples (plus a replay buffer).
5. **Evaluation** of ``eval_samples`` fresh molecules of the pre-trained and of
   the fine-tuned model with the true reward (validity, uniqueness, novelty
   against the QM9 training split, internal diversity, reward mean, quantiles,
   CVaRs), plus the control-cost estimate of ``KL(p_ft || p_pre)``.
6. **Report** in ``<out_dir>/<name>/``: ``report.md``, ``metrics.csv``,
   ``samples.csv``, ``model.safetensors``, ``config.yaml``, ``reward_hist.png``,
   ``tails_top.png``, ``tails_bottom.png``, ``training.png``.

SIGINT during stage 2 saves a checkpoint (model, optimiser, RNG, surrogate and
its replay buffer) and raises ``KeyboardInterrupt``; ``finetune(config,
resume=True)`` continues from it and ends with the same numbers as an
uninterrupted run.

Example:
    >>> from tfftmol.chem.finetune import finetune, load_config
    >>> cfg = load_config("configs/qed_right.yaml")          # doctest: +SKIP
    >>> result = finetune(cfg)                               # doctest: +SKIP
    >>> result.metrics[["name", "validity", "reward_cvar_right_0.9"]]  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import pandas as pd
import torch

from tfftmol.tables import markdown_table
from tfftmol.core.adjoint import AdjointMatching, estimate_kl
from tfftmol.core.checkpoint import atomic_write_text, load_checkpoint, save_tensors
from tfftmol.core.config import ConfigError, dump_yaml, from_dict, load_yaml, to_dict
from tfftmol.core.reward import RewardBatch
from tfftmol.core.samplers import sample_ode, sample_sde
from tfftmol.core.tfft import TFFTConfig, TFFTResult, run_tfft

from .rewards import Reward, RewardResult, build_reward
from .surrogate import Surrogate, SurrogateReport

__all__ = ["SurrogateConfig", "MolFinetuneConfig", "MolecularReward", "FinetuneResult", "load_config", "load_base",
           "finetune", "sample_molecules", "evaluate_samples"]

EVAL_SAMPLERS = ("ode", "heun", "sde")


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------
@dataclass
class SurrogateConfig:
    """The differentiable reward surrogate and how often it learns.

    Attributes:
        hidden, layers, heads, temperature: :class:`~tfftmol.chem.surrogate.SurrogateNet` sizes
            (``temperature > 0`` of the per-slot softmax).
        lr: AdamW learning rate of the first fit (refits use half).
        batch_size: minibatch size.
        epochs: epochs of the first fit on the offline batch (early-stopped with ``patience``).
        patience: stop the first fit after this many epochs without held-out improvement (0 = off).
        refit_epochs: epochs of each refit on fresh samples.
        replay_size: samples kept in the replay buffer for refits.
        valid_fraction: held-out fraction in [0, 1) of every (re)fit, for the accuracy report.
    """

    hidden: int = 64
    layers: int = 3
    heads: int = 4
    temperature: float = 0.25
    lr: float = 3e-3
    batch_size: int = 64
    epochs: int = 30
    patience: int = 5
    refit_epochs: int = 3
    replay_size: int = 20000
    valid_fraction: float = 0.2

    def __post_init__(self):
        for k in ("hidden", "layers", "heads", "batch_size", "epochs", "refit_epochs"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{k}={v!r} must be an integer >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"heads={self.heads} must divide hidden={self.hidden}")
        if not (isinstance(self.patience, int) and self.patience >= 0):
            raise ValueError(f"patience={self.patience!r} must be an integer >= 0 (0 = off)")
        if not (isinstance(self.replay_size, int) and self.replay_size >= 0):
            raise ValueError(f"replay_size={self.replay_size!r} must be an integer >= 0")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"valid_fraction={self.valid_fraction} must be in [0, 1)")


@dataclass
class MolFinetuneConfig:
    """One molecular fine-tuning run (TFFT or the expected-reward baseline).

    Attributes:
        name: run name; the report goes to ``<out_dir>/<name>/`` (letters, digits, ``-``, ``_``, ``.``).
        model: a shipped model name (``tfftmol.available_models()``, e.g. ``"qm9-graph"``) or a
            path to a ``.safetensors`` file written by ``tfftmol.chem.qm9_model.save_qm9_graph``.
        reward: reward config for :func:`tfftmol.chem.rewards.build_reward`, e.g. ``{name: qed}``.
        tfft: :class:`~tfftmol.core.tfft.TFFTConfig` (method, tail, beta, alpha, offline batch, ``am``).
            Its ``seed`` and ``am.seed`` are set from ``seed`` below.
        surrogate: :class:`SurrogateConfig`.
        refit_every: refit the surrogate every this many stage-2 steps on the samples drawn
            since the last refit (0 = never refit).
        eval_samples: fresh molecules drawn from each of the pre-trained and fine-tuned models.
        eval_steps: integration steps of the evaluation sampler.
        eval_sampler: ``"sde"`` (default: the memoryless SDE, the process the fine-tuner samples and
            the KL estimate refers to; also the shipped model's most valid sampler), ``"ode"`` (Euler)
            or ``"heun"``.
        kl_samples: trajectories for the control-cost KL estimate (0 = skip).
        seed: the one seed of the run (offline batch, fine-tune, surrogate, evaluation).
        device: torch device.
        out_dir: parent directory of the report.
        cache_dir: where offline batches are cached (``""`` = ``<out_dir>/cache``).
        checkpoint_every: stage-2 steps between checkpoints.
        reward_jobs: worker processes for the true reward (1 = in-process).
        threads: ``torch.set_num_threads`` for the run (0 = leave unchanged).
        grid_size: molecules per tail grid image.
    """

    name: str = "run"
    model: str = "qm9-graph"
    reward: dict = field(default_factory=lambda: {"name": "qed"})
    tfft: TFFTConfig = field(default_factory=TFFTConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    refit_every: int = 50
    eval_samples: int = 1000
    eval_steps: int = 30
    eval_sampler: str = "sde"
    kl_samples: int = 500
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs"
    cache_dir: str = ""
    checkpoint_every: int = 50
    reward_jobs: int = 1
    threads: int = 0
    grid_size: int = 12

    def __post_init__(self):
        import re

        if isinstance(self.tfft, Mapping):
            self.tfft = from_dict(TFFTConfig, self.tfft, "tfft")
        if isinstance(self.surrogate, Mapping):
            self.surrogate = from_dict(SurrogateConfig, self.surrogate, "surrogate")
        if not (isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name)):
            raise ConfigError(f"name={self.name!r} must be a non-empty string of letters, digits, '-', '_', '.'")
        _check_model(self.model)
        if isinstance(self.reward, str):
            self.reward = {"name": self.reward}
        if not isinstance(self.reward, Mapping):
            raise ConfigError(f"reward: expected a mapping such as {{name: qed}}, got {self.reward!r}")
        try:
            build_reward(dict(self.reward))
        except ValueError as e:
            raise ConfigError(f"reward: {e}") from e
        for k, lo in (("refit_every", 0), ("eval_samples", 2), ("eval_steps", 1), ("kl_samples", 0),
                      ("checkpoint_every", 1), ("reward_jobs", 1), ("threads", 0), ("grid_size", 1)):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{k}={v!r} must be an integer >= {lo}")
        if self.eval_sampler not in EVAL_SAMPLERS:
            raise ConfigError(f"eval_sampler={self.eval_sampler!r} must be one of {EVAL_SAMPLERS}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"device={self.device!r} is not a torch device: {e}") from e
        # the run's one seed drives every random stream
        self.tfft.seed = self.seed
        self.tfft.am.seed = self.seed

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def offline_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir) / "cache"


def _check_model(model: Any) -> None:
    from tfftmol.pretrained import available_models

    if not isinstance(model, str) or not model:
        raise ConfigError(f"model={model!r} must be a model name {available_models()} or a .safetensors path")
    if model in available_models():
        if model != "qm9-graph":
            raise ConfigError(f"model={model!r} is not a molecular model; molecular models: ['qm9-graph']")
        return
    if model.endswith(".safetensors"):
        if not Path(model).is_file():
            raise ConfigError(f"model={model!r}: file does not exist")
        return
    raise ConfigError(f"model={model!r} is neither a shipped model name {available_models()} "
                      "nor a path to a .safetensors file")


def load_config(source: Any, **overrides: Any) -> MolFinetuneConfig:
    """Build and validate a :class:`MolFinetuneConfig` before any compute.

    Args:
        source: a :class:`MolFinetuneConfig`, a mapping, or a path to a YAML file.
        overrides: top-level fields to replace (e.g. ``out_dir="runs"``).

    Raises:
        ConfigError: an unknown key, a value out of range (e.g. ``tfft.beta=1.5``) or an
            unknown reward name; the message names the field.
    """
    if isinstance(source, MolFinetuneConfig):
        data = to_dict(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = load_yaml(path)
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(dict(source)))  # a deep copy of plain data
    else:
        raise ConfigError(f"a config is a MolFinetuneConfig, a mapping or a YAML path, got {type(source).__name__}")
    data.update(overrides)
    return from_dict(MolFinetuneConfig, data)


def load_base(model: str, device: str | torch.device = "cpu"):
    """The pre-trained molecular flow named by a config's ``model`` field (frozen, eval mode)."""
    from .qm9_model import load_qm9_graph

    _check_model(model)
    base = load_qm9_graph(device=device) if model == "qm9-graph" else load_qm9_graph(device=device, path=model)
    for p in base.parameters():
        p.requires_grad_(False)
    return base.eval()


# ----------------------------------------------------------------------------
# The reward the core sees
# ----------------------------------------------------------------------------
class MolecularReward:
    """A :class:`~tfftmol.core.reward.TerminalReward` over molecular-graph states.

    ``evaluate(x)`` decodes the states ``x`` of shape ``(B, 189)`` with the flow's
    codec and scores the molecules with the true (RDKit or property-model) reward,
    invalid molecules getting the reward's validity penalty.  ``value_and_grad(x)``
    adds ``grad_x s(x)`` of shape ``(B, 189)`` from the surrogate; the values stay
    the true ones, so the core's tail indicator ``1[r > eta*]`` is exact.

    The samples seen by ``value_and_grad`` (the fine-tuner's on-policy batches)
    are kept until the next refit (:meth:`callback`).

    Args:
        reward: the true reward (``tfftmol.chem.rewards.Reward``).
        decode: ``fn(x) -> list`` of decoder results (objects with ``.mol``, ``.smiles``, ``.reason``).
        surrogate: a :class:`~tfftmol.chem.surrogate.Surrogate` (fitted by :meth:`fit_offline`).
        config: :class:`SurrogateConfig` (epochs of fit and refits).
        refit_every: steps between refits (0 = never).
        n_jobs: worker processes for the true reward.
        log: where progress lines go.
        denoise: ``fn(x1, key) -> xhat``, the denoised states of noised copies of final states
            (:func:`denoised_copies`).  When given, every (re)fit also trains on
            ``(xhat, r(x1))`` pairs, so the surrogate learns ``E[r(X_1) | xhat]`` at the soft
            states where the fine-tuner takes its gradient (``AMConfig.terminal_time < 1``);
            ``key`` makes the noise a function of the fit, so a resumed run refits identically.
    """

    def __init__(self, reward: Reward, decode: Callable[[torch.Tensor], list], surrogate: Surrogate,
                 config: Optional[SurrogateConfig] = None, refit_every: int = 0, n_jobs: int = 1,
                 log: Callable[[str], None] = print,
                 denoise: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None):
        self.reward = reward
        self.denoise = denoise
        self.decode = decode
        self.surrogate = surrogate
        self.config = config or SurrogateConfig()
        self.refit_every = int(refit_every)
        self.n_jobs = int(n_jobs)
        self.log = log
        self.name = reward.name
        self.cache_key = "mol:" + hashlib.sha1(
            json.dumps(reward.to_config(), sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.reports: list[dict] = []  # one per (re)fit: step, R2, Spearman, tail precisions, ...
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (x, values, valid) since last refit
        self._restored = False

    # -- true rewards ---------------------------------------------------------------
    def score(self, x: torch.Tensor) -> tuple[RewardResult, list]:
        """Decode ``x`` ``(B, 189)`` and score it: the reward's result and the decoder results."""
        dec = self.decode(x.detach().cpu())
        return self.reward(dec, n_jobs=self.n_jobs), dec

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> RewardBatch:
        """True rewards ``(B,)`` (float64, penalty where invalid) and validity ``(B,)``; no gradient."""
        res, _ = self.score(x)
        return RewardBatch(torch.as_tensor(res.values, dtype=torch.float64), torch.as_tensor(res.valid))

    def value_and_grad(self, x: torch.Tensor) -> RewardBatch:
        """True rewards and validity as in :meth:`evaluate`, plus ``grad_x s(x)`` ``(B, 189)`` from the surrogate."""
        rb = self.evaluate(x)
        _, g = self.surrogate.grad(x.detach())
        if self.refit_every:  # kept for the next refit
            self._pending.append((x.detach().cpu().float(), rb.values.clone(), rb.valid.clone()))
        return RewardBatch(rb.values.to(x.device), rb.valid.to(x.device), g.to(x.device, x.dtype))

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """``grad_x s(x)`` ``(B, 189)`` of the surrogate alone, at any state (e.g. a denoised, soft one)."""
        _, g = self.surrogate.grad(x.detach())
        return g.to(x.device, x.dtype)

    # -- surrogate ------------------------------------------------------------------
    def fit_offline(self, x: torch.Tensor, values: torch.Tensor, valid: torch.Tensor) -> None:
        """First fit of the surrogate on the offline batch (called once by the core driver)."""
        if self._restored:
            self.log("surrogate: restored from the checkpoint (no refit of the offline batch)")
            return
        if not bool(valid.any()):
            raise RuntimeError("surrogate: the offline batch has no valid molecule; the pre-trained model or the "
                               "reward is broken (check the model's validity with `tfftmol sample`)")
        c = self.config
        x, values, valid = self._with_denoised(x, values, valid, key=0)
        rep = self.surrogate.fit(x, values.double().numpy(), valid.numpy(), epochs=c.epochs,
                                 valid_fraction=c.valid_fraction, patience=c.patience or None)
        self._record(0, "fit", rep)

    def _with_denoised(self, x: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, key: int):
        """``x`` with its denoised noisy copies appended (same labels), when a denoiser is set."""
        if self.denoise is None:
            return x, values, valid
        xh = self.denoise(x, key).to(x.dtype)
        return torch.cat([x, xh]), torch.cat([values, values]), torch.cat([valid, valid])

    def _record(self, step: int, kind: str, rep: SurrogateReport) -> None:
        d = {"step": step, "kind": kind, **{k: (float(v) if isinstance(v, (int, float)) else v)
                                             for k, v in rep.as_dict().items()}}
        self.reports.append(d)
        self.log(f"surrogate {kind} at step {step}: {rep}")

    def refit(self, step: int) -> Optional[SurrogateReport]:
        """Refit on the samples kept since the last refit (with replay); ``None`` if too few or none valid."""
        if not self._pending:
            return None
        x = torch.cat([p[0] for p in self._pending])
        v = torch.cat([p[1] for p in self._pending])
        ok = torch.cat([p[2] for p in self._pending])
        self._pending = []
        why = None
        if x.shape[0] < 4:
            why = f"only {x.shape[0]} fresh samples"
        elif not bool(ok.any()):
            why = f"no valid molecule among {x.shape[0]} fresh samples"
        elif self.surrogate.penalty is None and not bool(ok.all()):
            why = "invalid samples need the hurdle model, which the first fit (all valid) did not build"
        if why is not None:
            self.log(f"surrogate refit at step {step} skipped: {why}")
            return None
        c = self.config
        x, v, ok = self._with_denoised(x, v, ok, key=step)
        rep = self.surrogate.refit(x, v.numpy(), ok.numpy(), epochs=c.refit_epochs, valid_fraction=c.valid_fraction)
        self._record(step, "refit", rep)
        return rep

    def callback(self, trainer: AdjointMatching, stats: dict) -> None:
        """Stage-2 callback: refit every ``refit_every`` steps and keep the resumable state in ``trainer.extra``."""
        if self.refit_every and trainer.step_count % self.refit_every == 0:
            self.refit(trainer.step_count)
        trainer.extra["mol_reward"] = self.state()

    # -- resumable state ------------------------------------------------------------
    def state(self) -> dict:
        """Surrogate weights, replay buffer, its RNG, pending samples and the fit reports (tensors + JSON)."""
        s = self.surrogate
        buf = list(s._buffer) if s._buffer is not None else []
        return {"surrogate": s.state_dict(), "buffer": buf, "rng": _json_safe(s._rng.bit_generator.state),
                "seed": s.seed, "pending": [list(p) for p in self._pending], "reports": self.reports}

    def load_state(self, st: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (used on resume; the offline fit is then skipped)."""
        s = self.surrogate
        s.load_state_dict(dict(st["surrogate"]))
        s._buffer = tuple(st["buffer"]) if st["buffer"] else None
        s.seed = int(st["seed"])
        s._rng = np.random.default_rng(s.seed)
        s._rng.bit_generator.state = st["rng"]
        self._pending = [tuple(p) for p in st["pending"]]
        self.reports = list(st["reports"])
        self._restored = True


def denoised_copies(base, t: float, seed: int, batch_size: int = 1000) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``fn(x1, key) -> xhat``: noise final states to time ``t`` and denoise them with ``base``.

    ``x_t = t x_1 + (1 - t) eps`` (the flow's linear path) and ``xhat = x_t + (1 - t) v(x_t, t)``,
    the base model's posterior mean of the sample; ``eps`` comes from a generator seeded by
    ``(seed, key)``.  Regressing ``r(x_1)`` on ``xhat`` fits ``E[r(X_1) | xhat]``.
    """
    @torch.no_grad()
    def fn(x1: torch.Tensor, key: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
        eps = torch.randn(x1.shape, generator=gen, dtype=x1.dtype)
        out = []
        for i in range(0, x1.shape[0], batch_size):
            xt = t * x1[i:i + batch_size] + (1.0 - t) * eps[i:i + batch_size]
            dev = next(base.parameters()).device if isinstance(base, torch.nn.Module) else xt.device
            xt = xt.to(dev)
            v = base.velocity(xt, torch.full((xt.shape[0],), t, device=dev, dtype=xt.dtype))
            out.append((xt + (1.0 - t) * v).cpu())
        return torch.cat(out)

    return fn


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ----------------------------------------------------------------------------
# Sampling and evaluation
# ----------------------------------------------------------------------------
@torch.no_grad()
def sample_molecules(model, n: int, steps: int = 30, sampler: str = "sde", seed: int = 0, batch_size: int = 500,
                     progress: bool = False, desc: str = "sampling") -> tuple[torch.Tensor, list]:
    """Draw ``n`` states ``(n, 189)`` from a flow (pre-trained or fine-tuned) and decode them.

    The prior noise comes from a generator seeded with ``seed``, so the
    pre-trained and fine-tuned models see the same starting noise.

    Returns:
        ``(x, decoded)``: states on the CPU and one decoder result per row.
    """
    from .graph import decode

    if sampler not in EVAL_SAMPLERS:
        raise ValueError(f"sampler={sampler!r} must be one of {EVAL_SAMPLERS}")
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    device = p.device if p is not None else torch.device("cpu")
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    xs = []
    it = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=desc, unit="batch")
    for i in it:
        b = min(batch_size, n - i)
        x0 = torch.randn((b, *model.state_shape), generator=gen).to(device)
        if sampler == "sde":
            x = sample_sde(model, b, steps, generator=gen, x_start=x0)
        else:
            x = sample_ode(model, b, steps, method="heun" if sampler == "heun" else "euler", x0=x0)
        xs.append(x.cpu())
    if isinstance(model, torch.nn.Module):
        model.train(was_training)
    x = torch.cat(xs) if xs else torch.zeros(0, *model.state_shape)
    return x, decode(x)


def evaluate_samples(decoded: list, reward: Reward, name: str, tail: str, beta: float,
                     reference: Optional[set] = None, seed: int = 0, n_jobs: int = 1,
                     extra: Optional[Mapping[str, Any]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics row and per-sample table of decoded molecules under the true reward.

    Returns:
        ``(row, samples)``: a one-row frame of :func:`tfftmol.chem.metrics.evaluate`
        (columns ``reward_mean``, ``reward_cvar_right_0.9``, ``reward_cvar_left_0.1``, ...,
        and the run's own tail level) and a frame with columns ``smiles`` (empty if
        invalid), ``reward`` (penalty if invalid), ``valid``, ``reason`` (the decoder's
        failure class, or the reward's).
    """
    from .metrics import evaluate

    levels = [0.1, 0.9]
    if beta not in levels:
        levels.append((tail, beta))
    from .metrics import classify, novelty

    row = evaluate(decoded, {"reward": reward}, reference=None, cvar_levels=levels, name=name, seed=seed,
                   n_jobs=n_jobs, extra=extra)
    if reference is not None:  # a set of canonical SMILES: no need to re-canonicalise it on every call
        smiles, _ = classify(decoded)
        row["novelty"] = novelty([s for s in smiles if s is not None], reference)
    res = reward(decoded, n_jobs=n_jobs)
    reasons = [d.reason if d.reason != "ok" else r for d, r in zip(decoded, res.reasons)]
    samples = pd.DataFrame({"smiles": [d.smiles or "" for d in decoded], "reward": res.values,
                            "valid": res.valid, "reason": reasons})
    return row, samples


def _reference_smiles() -> set:
    """Canonical SMILES of the QM9 training split (the pre-training data), for novelty."""
    global _REFERENCE
    if _REFERENCE is None:
        from .data import load_qm9
        _REFERENCE = set(load_qm9("train")["smiles"])
    return _REFERENCE


_REFERENCE: Optional[set] = None


# ----------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------
@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        config: the validated :class:`MolFinetuneConfig`.
        run_dir: the report directory.
        metrics: two rows (``pretrained`` and the fine-tuned method) of metrics.
        samples: per-sample table of the fine-tuned model's evaluation molecules.
        pre_samples: the same for the pre-trained model.
        kl: control-cost estimate of ``KL(p_ft || p_pre)`` (nats), ``nan`` if skipped.
        eta: stage-1 threshold ``eta*`` (``None`` for the expected-reward baseline).
        tfft: the core's :class:`~tfftmol.core.tfft.TFFTResult` (model, threshold, history, timings).
        surrogate_reports: one dict per surrogate (re)fit.
        timings: seconds per phase (offline, stage 1, stage 2, evaluation, total).
        files: name -> path of every file written.
    """

    config: MolFinetuneConfig
    run_dir: Path
    metrics: pd.DataFrame
    samples: pd.DataFrame
    pre_samples: pd.DataFrame
    kl: float
    eta: Optional[float]
    tfft: TFFTResult
    surrogate_reports: list
    timings: dict
    files: dict

    @property
    def model(self):
        return self.tfft.model

    def table(self) -> pd.DataFrame:
        """The before/after table: one row per model, the headline columns."""
        cfg = self.config
        tail_col = f"reward_cvar_{cfg.tfft.tail}_{cfg.tfft.beta:g}"
        cols = ["name", "validity", "uniqueness", "novelty", "int_div", "reward_mean",
                "reward_cvar_right_0.9", "reward_cvar_left_0.1", tail_col, "kl"]
        seen, out = set(), []
        for c in cols:
            if c in self.metrics.columns and c not in seen:
                seen.add(c)
                out.append(c)
        return self.metrics[out]


def finetune(config: Any, *, resume: bool = False, progress: bool = True,
             callbacks: Optional[list[Callable[[AdjointMatching, dict], None]]] = None,
             log: Callable[[str], None] = print) -> FinetuneResult:
    """Run one molecular fine-tune end to end and write its report (module docstring).

    Args:
        config: a :class:`MolFinetuneConfig`, a mapping or a YAML path; validated
            (:func:`load_config`) before anything is computed.
        resume: continue from the checkpoint in ``<run_dir>/checkpoint`` if there is
            one (the config must be the one of the interrupted run); without it an old
            checkpoint is discarded.
        progress: show progress bars.
        callbacks: extra ``cb(trainer, stats)`` run after every stage-2 step (after the
            surrogate refit).
        log: where the diagnostics go.

    Returns:
        :class:`FinetuneResult`.

    Raises:
        ConfigError: bad config (before any compute).
        KeyboardInterrupt: on SIGINT during stage 2, after the checkpoint is saved.
    """
    cfg = load_config(config)
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = cfg.run_dir
    ckpt_dir = run_dir / "checkpoint"
    cfg_text = dump_yaml(cfg)
    cfg_path = run_dir / "config.yaml"
    if resume and cfg_path.exists() and load_checkpoint(ckpt_dir) is not None:
        old = load_config(cfg_path)
        if to_dict(old) != to_dict(cfg):
            raise ConfigError(f"resume: the config differs from the interrupted run's {cfg_path}; "
                              "run without resume to start over")
    if not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, cfg_text)

    device = torch.device(cfg.device)
    base = load_base(cfg.model, device)
    reward = build_reward(dict(cfg.reward))
    sc = cfg.surrogate
    surrogate = Surrogate(hidden=sc.hidden, layers=sc.layers, heads=sc.heads, temperature=sc.temperature,
                          lr=sc.lr, batch_size=sc.batch_size, replay_size=sc.replay_size, seed=cfg.seed,
                          device=device)
    tc = cfg.tfft.am.terminal_time
    denoise = denoised_copies(base, tc, cfg.seed) if tc < 1.0 else None
    mreward = MolecularReward(reward, base.decode, surrogate, sc, cfg.refit_every, cfg.reward_jobs, log, denoise)
    if resume:
        state = load_checkpoint(ckpt_dir)
        if state is not None and "mol_reward" in state.get("extra", {}):
            mreward.load_state(state["extra"]["mol_reward"])

    log(f"[{cfg.name}] {cfg.tfft.method} fine-tune of {cfg.model} on reward {reward.to_config()} "
        f"({cfg.tfft.tail} tail, beta={cfg.tfft.beta:g}, alpha={cfg.tfft.alpha:g}, {cfg.tfft.am.steps} steps)")
    res = run_tfft(base, mreward, cfg.tfft, cache_dir=cfg.offline_cache_dir, checkpoint_dir=ckpt_dir,
                   checkpoint_every=cfg.checkpoint_every, resume=resume, device=device, progress=progress,
                   callbacks=[mreward.callback] + list(callbacks or []), log=log)
    timings = dict(res.timings)

    # -- evaluation with the true reward --------------------------------------------
    t_eval = time.perf_counter()
    reference = _reference_smiles()
    _, dec_pre = sample_molecules(base, cfg.eval_samples, cfg.eval_steps, cfg.eval_sampler, seed=cfg.seed + 1,
                                  progress=progress, desc="evaluate pretrained")
    x_ft, dec_ft = sample_molecules(res.model, cfg.eval_samples, cfg.eval_steps, cfg.eval_sampler,
                                    seed=cfg.seed + 1, progress=progress, desc=f"evaluate {cfg.tfft.method}")
    kl = float("nan")
    if cfg.kl_samples:
        kl = estimate_kl(res.model, base, n=cfg.kl_samples, steps=cfg.tfft.am.time_steps, seed=cfg.seed + 2,
                         batch_size=min(cfg.kl_samples, 250))
    t, b = cfg.tfft.tail, cfg.tfft.beta
    row_pre, pre_samples = evaluate_samples(dec_pre, reward, "pretrained", t, b, reference, cfg.seed, cfg.reward_jobs,
                                            extra={"kl": 0.0})
    eta = float(res.threshold.eta) if res.threshold is not None else None
    row_ft, samples = evaluate_samples(dec_ft, reward, cfg.tfft.method, t, b, reference, cfg.seed, cfg.reward_jobs,
                                       extra={"kl": kl})
    metrics = pd.concat([row_pre, row_ft], ignore_index=True)
    metrics.insert(1, "run", cfg.name)
    metrics["tail"], metrics["beta"], metrics["alpha"] = t, b, cfg.tfft.alpha
    metrics["eta"] = [np.nan, np.nan if eta is None else eta]
    metrics["steps"] = [0, cfg.tfft.am.steps]
    metrics["seed"] = cfg.seed
    timings["evaluate"] = time.perf_counter() - t_eval
    metrics["train_seconds"] = [0.0, timings.get("stage2", np.nan)]

    # -- report ---------------------------------------------------------------------
    timings["tfft_total"] = timings.pop("total", np.nan)
    timings["total"] = time.perf_counter() - t_start
    files = write_report(cfg, res, metrics, samples, pre_samples, mreward.reports, kl, timings)
    log(f"report: {files['report']}")
    return FinetuneResult(cfg, run_dir, metrics, samples, pre_samples, kl, eta, res, mreward.reports, timings, files)


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def write_report(cfg: MolFinetuneConfig, res: TFFTResult, metrics: pd.DataFrame, samples: pd.DataFrame,
                 pre_samples: pd.DataFrame, surrogate_reports: list, kl: float, timings: dict) -> dict:
    """Write ``report.md``, ``metrics.csv``, ``samples.csv``, ``model.safetensors`` and the plots; returns the paths."""
    d = cfg.run_dir
    d.mkdir(parents=True, exist_ok=True)
    files = {"config": d / "config.yaml", "metrics": d / "metrics.csv", "samples": d / "samples.csv",
             "weights": d / "model.safetensors", "history": d / "history.csv", "report": d / "report.md"}
    metrics.to_csv(files["metrics"], index=False)
    samples.to_csv(files["samples"], index=False)
    pd.DataFrame(res.history).to_csv(files["history"], index=False)
    if surrogate_reports:
        files["surrogate"] = d / "surrogate.csv"
        pd.DataFrame(surrogate_reports).to_csv(files["surrogate"], index=False)
    _save_weights(res.model, files["weights"], cfg)
    eta = res.threshold.eta if res.threshold is not None else None
    files.update(_plots(cfg, res, samples, pre_samples, eta, surrogate_reports))

    tail_col = f"reward_cvar_{cfg.tfft.tail}_{cfg.tfft.beta:g}"
    cols = [c for c in ["name", "n", "validity", "uniqueness", "novelty", "int_div", "reward_mean",
                        "reward_mean_valid", "reward_q0.1", "reward_q0.5", "reward_q0.9", "reward_cvar_left_0.1",
                        "reward_cvar_right_0.9", tail_col, "kl"] if c in metrics.columns]
    cols = list(dict.fromkeys(cols))
    lines = [f"# Fine-tuning report: {cfg.name}", "",
             f"- model: `{cfg.model}`; reward: `{json.dumps(cfg.reward)}`",
             f"- method: **{cfg.tfft.method}**, {cfg.tfft.tail} tail, beta = {cfg.tfft.beta:g}, "
             f"alpha = {cfg.tfft.alpha:g}, {cfg.tfft.am.steps} Adjoint Matching steps of "
             f"{cfg.tfft.am.batch_size} trajectories ({cfg.tfft.am.time_steps} time steps), seed {cfg.seed}",
             f"- evaluation: {cfg.eval_samples} fresh molecules per model ({cfg.eval_sampler}, "
             f"{cfg.eval_steps} steps), true reward; novelty against the QM9 training split", "",
             "## Before and after", "", markdown_table(metrics[cols]), "",
             f"The tail this run targets is `{tail_col}`. `kl` is the control-cost estimate of "
             f"KL(p_ft || p_pre) in nats ({cfg.kl_samples} trajectories).", ""]
    if res.threshold is not None:
        lines += ["## Stage 1", "", "```", res.threshold.summary(), "```", ""]
        if tail_col in metrics.columns and len(metrics) == 2:
            pre, post = (float(v) for v in metrics[tail_col])
            lines += [f"Achieved against predicted: `{tail_col}` {pre:.4g} (pretrained) -> {post:.4g} (fine-tuned) "
                      f"at KL {kl:.3g}; the exact optimum of this alpha predicts {res.threshold.predicted_cvar:.4g} "
                      f"at KL {res.threshold.predicted_kl:.3g} (on the offline batch's rewards).", ""]
        if len(res.stages) > 1:
            lines += ["Continuation stages:", ""] + [f"- {s.describe()}" for s in res.stages] + [""]
    if surrogate_reports:
        sr = pd.DataFrame(surrogate_reports)
        keep = [c for c in ["step", "kind", "r2", "spearman", "rank_precision_hi", "rank_precision_lo", "mae",
                            "validity_accuracy", "n_train", "n_valid", "seconds"] if c in sr.columns]
        lines += ["## Surrogate", "", "Held-out accuracy of each (re)fit (the gradient of stage 2 comes from it; "
                  "values and the tail indicator use the true reward).", "", markdown_table(sr[keep]), ""]
    lines += ["## Timings (s)", "", markdown_table(pd.DataFrame([{k: float(v) for k, v in timings.items()}])), "",
              "## Plots", "", "![reward histograms](reward_hist.png)", "", "![training curves](training.png)", "",
              "Top tail of the fine-tuned samples:", "", "![top tail](tails_top.png)", "",
              "Bottom tail of the fine-tuned samples (valid molecules only):", "", "![bottom tail](tails_bottom.png)",
              "", "## Files", "", "- `metrics.csv`: the table above, all columns",
              "- `samples.csv`: the fine-tuned model's evaluation molecules (smiles, reward, valid, reason)",
              "- `model.safetensors`: fine-tuned weights; `config.yaml`: the config of this run",
              "- `history.csv`: stage-2 training statistics; `surrogate.csv`: surrogate accuracy per (re)fit", ""]
    atomic_write_text(files["report"], "\n".join(lines))
    return files


def _save_weights(model, path: Path, cfg: MolFinetuneConfig) -> None:
    from .model import GraphTransformerFlow
    from .qm9_model import save_qm9_graph

    meta = {"base_model": cfg.model, "run": cfg.name, "method": cfg.tfft.method}
    if isinstance(model, GraphTransformerFlow):
        save_qm9_graph(model, path, extra_metadata=meta)
    else:
        sd = {k: v for k, v in model.state_dict().items() if not k.startswith("base.")}
        save_tensors(path, sd, metadata=meta)


def _plots(cfg: MolFinetuneConfig, res: TFFTResult, samples: pd.DataFrame, pre_samples: pd.DataFrame,
           eta: Optional[float], surrogate_reports: list) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tfftmol.core.risk import var

    d = cfg.run_dir
    out = {}
    tail, beta = cfg.tfft.tail, cfg.tfft.beta
    # reward histograms of the valid molecules, pre vs post (bar heights are fractions of *all* samples, so the
    # invalid fraction, given in the legend, is the mass missing from each histogram); tail shaded, eta* marked
    fig, ax = plt.subplots(figsize=(7, 4))
    r_pre, r_ft = pre_samples["reward"].to_numpy(float), samples["reward"].to_numpy(float)
    ok_pre, ok_ft = pre_samples["valid"].to_numpy(bool), samples["valid"].to_numpy(bool)
    both = np.concatenate([r_pre[ok_pre], r_ft[ok_ft]])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    bins = np.linspace(lo, hi + 1e-9, 40) if hi > lo else 10
    for r, ok, label in ((r_pre, ok_pre, "pretrained"), (r_ft, ok_ft, cfg.tfft.method)):
        if len(r):
            ax.hist(r[ok], bins=bins, alpha=0.5, weights=np.full(int(ok.sum()), 1.0 / len(r)),
                    label=f"{label} (invalid {1 - ok.mean():.1%})")
    q = float(var(r_pre, beta, tail)) if len(r_pre) else np.nan
    if np.isfinite(q):
        if tail == "right":
            ax.axvspan(max(q, lo), hi, color="grey", alpha=0.15, label=f"pretrained top {1 - beta:.0%} (VaR {q:.3g})")
        else:
            ax.axvspan(lo, max(q, lo), color="grey", alpha=0.15,
                       label=f"pretrained bottom {beta:.0%} (VaR {q:.3g}; invalid count here)")
    if eta is not None:
        ax.axvline(eta, color="k", ls="--", label=f"eta* = {eta:.3g}")
    ax.set_xlabel("true reward of valid molecules")
    ax.set_ylabel("fraction of samples")
    ax.set_title(f"{cfg.name}: {tail}-CVaR beta={beta:g}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out["reward_hist"] = d / "reward_hist.png"
    fig.savefig(out["reward_hist"], dpi=100)
    plt.close(fig)

    # training curves
    hist = pd.DataFrame(res.history)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, col in zip(axes, ["loss", "reward_mean", "active_fraction", "kl"]):
        if col in hist.columns and len(hist):
            ax.plot(hist["step"], hist[col], marker=".")
        ax.set_title(col)
        ax.set_xlabel("step")
    if surrogate_reports and "spearman" in pd.DataFrame(surrogate_reports).columns:
        sr = pd.DataFrame(surrogate_reports)
        ax2 = axes[1].twinx()
        ax2.plot(sr["step"], sr["spearman"], "r^", label="surrogate Spearman")
        ax2.set_ylim(-1, 1)
        ax2.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out["training"] = d / "training.png"
    fig.savefig(out["training"], dpi=100)
    plt.close(fig)

    # molecule grids of the tails
    out["tails_top"] = d / "tails_top.png"
    out["tails_bottom"] = d / "tails_bottom.png"
    valid = samples[samples["valid"]].drop_duplicates("smiles").sort_values("reward", kind="stable")
    k = cfg.grid_size
    _grid(valid.iloc[::-1].head(k), out["tails_top"], f"top {k}")
    _grid(valid.head(k), out["tails_bottom"], f"bottom {k}")
    return out


def _grid(df: pd.DataFrame, path: Path, title: str) -> None:
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols, legends = [], []
    for smi, r in zip(df["smiles"], df["reward"]):
        m = Chem.MolFromSmiles(smi) if smi else None
        if m is not None:
            mols.append(m)
            legends.append(f"{r:.3f}")
    if not mols:  # an empty grid still gets a file, so the report is complete
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: no valid molecule", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    img = Draw.MolsToGridImage(mols, molsPerRow=min(6, len(mols)), subImgSize=(180, 180), legends=legends)
    if hasattr(img, "save"):  # a PIL image
        img.save(str(path))
    else:  # in a notebook RDKit's IPython renderer returns an IPython Image holding the PNG bytes
        data = getattr(img, "data", None)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"molecule grid: cannot save a {type(img).__name__} from Draw.MolsToGridImage")
        Path(path).write_bytes(bytes(data))
