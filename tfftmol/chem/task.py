"""The molecular task: graph and latent flows, RDKit rewards with a fitted surrogate, molecule metrics and grids.

Options (``RunConfig.options``)::

    model: qm9-graph               # a shipped molecular model (qm9-graph, zinc-selfies) or a .safetensors path
    reward: {name: qed}            # tfftmol.chem.rewards.build_reward
    surrogate: {...}               # SurrogateConfig
    refit_every: 50                # surrogate refit period in stage-2 steps (0 = never)
    warm_start: null               # latent models: ZINC250k training molecules the surrogate starts from
                                   # (null = 30000 for a latent model, 0 = off; graph models: 0 only)
    warm_labels: decoded           # warm-start labels: reward of the decoded latent, or of the data molecule
    decode_beam: null              # latent models: beams of the SELFIES decoder (1 = greedy; null = the weights
                                   # file's own setting, greedy for the shipped file); docs/design.md §8.1
    value_molecules: null          # values-only stage 2 (tfft.am.stage2: value): training molecules labelled
                                   # with the true reward whose noised copies warm-start the value model
                                   # (MolecularReward.value_pairs; QM9 for a graph model, null = 20000; encoded
                                   # ZINC250k for a latent model, labelled like warm_start, null = 0; 0 = off:
                                   # the noised offline batch); cached in the cache dir by reward identity
    reward_jobs: 1                 # worker processes for the true reward
    grid_size: 12                  # molecules per tail grid
    top_k: 50                      # molecules per end of top.csv / top.sdf (top and bottom, each model)
    filters: null                  # medicinal-chemistry filters on the reward (tfftmol.chem.filters), e.g.
                                   # {catalogs: [pains, brenk, nih], max_small_rings: 1, sa_max: 4.5, mode: penalty}
    max_reward_failure_fraction: 0.2  # stop when more of a batch than this fails in the reward itself
                                   # (reward_error / reward_nan; chemically invalid molecules do not count)

Stage 2 takes its terminal gradient from a differentiable surrogate ``s(x)``
(:class:`~tfftmol.chem.surrogate.Surrogate`) fitted to the true rewards of the
offline batch and refitted on-policy; values, validity and the tail indicator
``1[r > eta*]`` always come from the true reward of the decoded molecule:

    grad g(X_1) = g'(r_true(X_1)) * grad_x s(X_1).

The surrogate is the GNN :class:`~tfftmol.chem.surrogate.Surrogate` on the
QM9 graph state, and the MLP :class:`~tfftmol.chem.latent_reward.LatentSurrogate`
on the latent state of ``zinc-selfies`` (optionally warm-started from encoded
ZINC250k training molecules with true labels).  In latent space the decoded
molecule is a function of ``X_1``, so Adjoint Matching runs exactly
(``terminal_time: 1``).

Evaluation adds validity (with the failure reasons), uniqueness, novelty
against the model's training split (QM9 or ZINC250k) and internal diversity; the report adds the
surrogate's held-out accuracy per (re)fit and molecule grids of both tails.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import pandas as pd
import torch

from tfftmol.core.adjoint import AdjointMatching
from tfftmol.core.checkpoint import save_tensors
from tfftmol.core.config import ConfigError, check_choice, check_int, check_number, from_dict
from tfftmol.core.reward import RewardBatch, RewardFailureError
from tfftmol.pipeline.task import Evaluation, ReportContext
from tfftmol.pretrained import available_models, load_pretrained
from tfftmol.tables import markdown_table

from .rewards import Reward, RewardResult, build_reward
from .surrogate import Surrogate, SurrogateReport

__all__ = ["SurrogateConfig", "MoleculeOptions", "MoleculeTask", "MolecularReward", "denoised_copies",
           "noised_copies", "evaluate_samples", "load_base", "is_latent", "MOLECULAR_MODELS", "LATENT_MODELS",
           "RewardFailureError", "REWARD_FAILURES"]

#: Reasons that are failures of the reward itself, not of the molecule (:data:`tfftmol.chem.mol.REASONS`).
REWARD_FAILURES = ("reward_error", "reward_nan")


MOLECULAR_MODELS = ("qm9-graph", "zinc-selfies")
LATENT_MODELS = ("zinc-selfies",)
DEFAULT_WARM_START = 30000  # ZINC250k training molecules of a latent surrogate's warm start (warm_start: null)


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
        check_int(self, "hidden", "layers", "heads", "batch_size", "epochs", "refit_epochs")
        check_int(self, "patience", low=0, note=" (0 = off)")
        check_int(self, "replay_size", low=0)
        if self.hidden % self.heads:
            raise ConfigError(f"heads={self.heads} must divide hidden={self.hidden}")
        check_number(self, "temperature", 0, None, low_open=True)
        check_number(self, "lr", 0, None, low_open=True)
        check_number(self, "valid_fraction", 0, 1, high_open=True)


@dataclass
class MoleculeOptions:
    """Options of a molecular run (see the module docstring)."""

    model: str = "qm9-graph"
    reward: Any = field(default_factory=lambda: {"name": "qed"})
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    refit_every: int = 50
    reward_jobs: int = 1
    grid_size: int = 12
    top_k: int = 50
    filters: Any = None
    warm_start: Optional[int] = None
    warm_labels: str = "decoded"
    decode_beam: Optional[int] = None
    value_molecules: Optional[int] = None
    max_reward_failure_fraction: float = 0.2

    def __post_init__(self):
        if isinstance(self.surrogate, Mapping):
            self.surrogate = from_dict(SurrogateConfig, self.surrogate, "options.surrogate")
        _check_model(self.model)
        if isinstance(self.reward, str):
            self.reward = {"name": self.reward}
        if not isinstance(self.reward, Mapping):
            raise ConfigError(f"reward: expected a mapping such as {{name: qed}}, got {self.reward!r}")
        try:
            build_reward(dict(self.reward))
        except ValueError as e:
            raise ConfigError(f"reward: {e}") from e
        if self.filters is not None:
            from .filters import FilterConfig
            if isinstance(self.filters, Mapping):
                self.filters = from_dict(FilterConfig, dict(self.filters), "options.filters")
            elif not isinstance(self.filters, FilterConfig):
                raise ConfigError(f"filters={self.filters!r} must be a mapping such as "
                                  "{catalogs: [pains, brenk, nih], max_small_rings: 1, sa_max: 4.5, mode: penalty} or null")
        check_int(self, "refit_every", low=0, note=" (0 = never refit)")
        check_int(self, "reward_jobs", "grid_size", "top_k")
        check_number(self, "max_reward_failure_fraction", 0, 1)
        if self.warm_start is not None:
            check_int(self, "warm_start", low=0, note=" (0 = off, null = the default for the model)")
            if self.warm_start and not is_latent(self.model):
                raise ConfigError(f"warm_start={self.warm_start} needs a latent model {list(LATENT_MODELS)}; "
                                  f"model={self.model!r} is a graph model (use warm_start: 0)")
        from .latent_reward import WARM_LABELS
        check_choice(self, "warm_labels", WARM_LABELS)
        if self.decode_beam is not None:
            check_int(self, "decode_beam", low=1, note=" (1 = greedy decoding, null = the weights file's setting)")
            if not is_latent(self.model):
                raise ConfigError(f"decode_beam={self.decode_beam} needs a latent model {list(LATENT_MODELS)}; "
                                  f"model={self.model!r} is a graph model (use decode_beam: null)")
        if self.value_molecules is not None:
            check_int(self, "value_molecules", low=0, note=" (0 = off, null = the default for the model)")

    @property
    def warm_start_size(self) -> int:
        """``warm_start`` with ``None`` resolved: the default for a latent model, else 0."""
        if self.warm_start is not None:
            return int(self.warm_start)
        return DEFAULT_WARM_START if is_latent(self.model) else 0

    @property
    def value_molecules_size(self) -> int:
        """``value_molecules`` with ``None`` resolved: the default for a graph model, 0 for a latent one."""
        if self.value_molecules is not None:
            return int(self.value_molecules)
        from .value_data import DEFAULT_VALUE_MOLECULES
        return 0 if is_latent(self.model) else DEFAULT_VALUE_MOLECULES


def _check_model(model: Any) -> None:
    if not isinstance(model, str) or not model:
        raise ConfigError(f"model={model!r} must be a model name {available_models()} or a .safetensors path")
    if model in available_models():
        if model not in MOLECULAR_MODELS:
            raise ConfigError(f"model={model!r} is not a molecular model; molecular models: "
                              f"{list(MOLECULAR_MODELS)}")
        return
    if model.endswith(".safetensors"):
        if not Path(model).is_file():
            raise ConfigError(f"model={model!r}: file does not exist")
        return
    raise ConfigError(f"model={model!r} is neither a shipped model name {available_models()} "
                      "nor a path to a .safetensors file")


def is_latent(model: str) -> bool:
    """Whether a config's ``model`` (a name or a .safetensors path) is a latent (SELFIES) flow."""
    if model in LATENT_MODELS:
        return True
    if isinstance(model, str) and model.endswith(".safetensors") and Path(model).is_file():
        from safetensors import safe_open

        from .selfies.loader import FORMAT
        try:
            with safe_open(model, framework="pt") as f:
                return (f.metadata() or {}).get("format") == FORMAT
        except Exception:  # noqa: BLE001  (not a readable safetensors file: load_base reports it)
            return False
    return False


def load_base(model: str, device: str | torch.device = "cpu", decode_beam: Optional[int] = None):
    """The pre-trained molecular flow named by a config's ``model`` field (frozen, eval mode).

    ``decode_beam`` (latent models only): beams of the SELFIES decoder; ``None`` = the file's setting.
    """
    _check_model(model)
    base = load_pretrained(model, device, **({} if decode_beam is None else {"decode_beam": int(decode_beam)}))
    for p in base.parameters():
        p.requires_grad_(False)
    return base.eval()


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
            (:func:`denoised_copies`; or the noised states themselves, :func:`noised_copies`, for
            ``AMConfig.terminal_state = "noisy"``).  When given, every (re)fit also trains on
            ``(xhat, r(x1))`` pairs, so the surrogate learns ``E[r(X_1) | xhat]`` at the soft
            states where the fine-tuner takes its gradient (``AMConfig.terminal_time < 1``);
            ``key`` makes the noise a function of the fit, so a resumed run refits identically.
        max_failure_fraction: every scored batch (offline and stage 2) is counted by reason
            (:attr:`failures`); the first ``reward_error`` / ``reward_nan`` is logged once with its
            traceback, and a batch in which more than this fraction fails in the reward itself
            raises :class:`RewardFailureError` naming the reason and the fraction.  A penalty that
            is not below every valid reward value seen is logged as a warning (once).
        value_pairs: ``fn(n, generator) -> (x_t, t, r(x_1))``, warm-start pairs of the pre-trained process
            for the values-only stage 2 (:class:`~tfftmol.chem.value_data.QM9ValuePairs`: noised QM9
            training molecules labelled with the true reward).  When given, the reward declares the
            core's ``value_pairs`` hook (:mod:`tfftmol.core.reward`); absent otherwise.
    """

    def __init__(self, reward: Reward, decode: Callable[[torch.Tensor], list], surrogate: Surrogate,
                 config: Optional[SurrogateConfig] = None, refit_every: int = 0, n_jobs: int = 1,
                 log: Callable[[str], None] = print,
                 denoise: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None,
                 max_failure_fraction: float = 0.2,
                 value_pairs: Optional[Callable[..., tuple]] = None):
        self.reward = reward
        if value_pairs is not None:  # the declared hook exists only when there is data to give
            self.value_pairs = value_pairs
        self.max_failure_fraction = float(max_failure_fraction)
        self.failures: dict[str, int] = {}  # reason -> molecules scored with it (every batch since the start)
        self.n_scored = 0
        self.failure_messages: dict[str, str] = {}  # reward failure reason -> first message (with traceback)
        self.min_valid: Optional[float] = None  # smallest valid reward value seen
        self._penalty_warned = False
        self.denoise = denoise
        self.decode = decode
        self.surrogate = surrogate
        self.config = config or SurrogateConfig()
        self.refit_every = int(refit_every)
        self.n_jobs = int(n_jobs)
        self.log = log
        self.name = reward.name
        self.cache_key = "mol:" + hashlib.sha1(  # config + SHA-256 of any user code (Reward.identity)
            json.dumps(reward.identity(), sort_keys=True, default=str).encode()).hexdigest()[:16]
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
        self.account(res)
        return RewardBatch(torch.as_tensor(res.values, dtype=torch.float64), torch.as_tensor(res.valid))

    def account(self, res: RewardResult) -> None:
        """Count a scored batch by reason; log a reward failure once; stop on too many (class docstring).

        Raises:
            RewardFailureError: more than ``max_failure_fraction`` of the batch is ``reward_error`` or
                ``reward_nan`` (chemically invalid molecules never count).
        """
        import numpy as np

        n = len(res)
        self.n_scored += n
        for r, c in res.counts.items():
            if r != "ok" and c:
                self.failures[r] = self.failures.get(r, 0) + int(c)
        for r in REWARD_FAILURES:
            c = int(res.counts.get(r, 0))
            if c and r not in self.failure_messages:
                self.failure_messages[r] = res.messages.get(r, "")
                self.log(f"reward {self._who!r}: {r} on {c} of {n} molecules of a batch (logged once; every "
                         f"failure is counted and reported); first: {self.failure_messages[r] or '(no message)'}")
        if res.valid.any():
            lo = float(np.min(res.raw[res.valid]))
            self.min_valid = lo if self.min_valid is None else min(self.min_valid, lo)
            if not self._penalty_warned and res.penalty >= self.min_valid:
                self._penalty_warned = True
                self.log(f"warning: reward {self._who!r}: the penalty {res.penalty:g} of invalid molecules is not "
                         f"below every valid reward (a valid molecule scored {self.min_valid:g}), so invalid "
                         "molecules can outrank valid ones; set `penalty:` below the reward's range")
        bad = {r: int(res.counts.get(r, 0)) for r in REWARD_FAILURES}
        total = sum(bad.values())
        if n and total / n > self.max_failure_fraction:
            worst = max(bad, key=bad.get)
            first = (self.failure_messages.get(worst) or "").splitlines()[:1]
            raise RewardFailureError(
                f"reward {self._who!r} failed in the reward itself on {total} of {n} molecules of a batch "
                f"({total / n:.0%} > max_reward_failure_fraction={self.max_failure_fraction:g}): "
                + ", ".join(f"{r}={c} ({c / n:.0%})" for r, c in bad.items() if c)
                + (f"; first {worst}: {first[0]}" if first else "")
                + ". The molecules are valid; the reward function is what fails (fix it, or raise "
                  "options.max_reward_failure_fraction)", failed=total, n=n)

    @property
    def _who(self) -> str:
        label = getattr(self.reward, "label", None)
        return f"{self.name}:{label}" if label else self.name

    def failure_summary(self) -> dict[str, int]:
        """Molecules scored during the run (offline batch and stage 2) by reason other than ``ok``."""
        return {"scored": self.n_scored, **dict(sorted(self.failures.items()))}

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
            counts = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "no count"
            raise RuntimeError(f"surrogate: the offline batch has no valid molecule ({counts}); "
                               + ("the reward function fails on valid molecules (reward_error/reward_nan above)"
                                  if any(self.failures.get(r) for r in REWARD_FAILURES) else
                                  "the pre-trained model produces no valid molecule (check it with `tfftmol sample`)"))
        self._record(0, "fit", self._first_fit(x, values, valid, key=0))

    def _first_fit(self, x: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, key: int) -> SurrogateReport:
        """Fit the surrogate from scratch as a run's first fit does (denoised copies keyed by ``key``)."""
        c = self.config
        x, values, valid = self._with_denoised(x, values, valid, key=key)
        return self.surrogate.fit(x, values.double().numpy(), valid.numpy(), epochs=c.epochs,
                                  valid_fraction=c.valid_fraction, patience=c.patience or None)

    def ceiling_scores(self, x: torch.Tensor, values: torch.Tensor, valid: torch.Tensor,
                       folds: int = 2) -> torch.Tensor:
        """Out-of-fold surrogate scores ``(n,)`` of the offline batch, for the information ceiling.

        Each fold is scored by the surrogate fitted as :meth:`fit_offline` fits it (warm start,
        denoised copies, epochs, early stopping) on the other folds, where stage 2 reads it: at the
        final state, or with ``terminal_time < 1`` at the denoised (or, with ``terminal_state: noisy``,
        noised) state of that time, whose gradient starts the adjoint there.  The surrogate is left
        fitted on the last fold's complement: call :meth:`fit_offline` again before a run uses it.
        """
        if int(folds) < 2:
            raise ValueError(f"folds={folds} must be >= 2")
        n = int(x.shape[0])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.surrogate.seed))
        scores = torch.empty(n, dtype=torch.float64)
        for k in range(int(folds)):
            test = order[k::int(folds)]
            keep = torch.ones(n, dtype=torch.bool)
            keep[test] = False
            self._first_fit(x[keep], values[keep], valid[keep], key=k + 1)
            xs = x[test] if self.denoise is None else self.denoise(x[test], int(folds) + k + 1)
            scores[test] = self.surrogate.predict(xs.float()).double().cpu()
        return scores

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
        """Stage-2 callback: refit every ``refit_every`` steps (the pipeline keeps :meth:`state_dict` in the checkpoint)."""
        if self.refit_every and trainer.step_count % self.refit_every == 0:
            self.refit(trainer.step_count)

    # -- resumable state (the reward protocol's state_dict / load_state_dict hooks) -----
    def state_dict(self) -> dict:
        return self.state()

    def load_state_dict(self, st: Mapping[str, Any]) -> None:
        self.load_state(st)

    def state(self) -> dict:
        """The surrogate's state (weights, replay buffer, its RNG: ``Surrogate.state_dict``), pending samples
        and the fit reports (tensors + JSON)."""
        return {"surrogate": self.surrogate.state_dict(), "pending": [list(p) for p in self._pending],
                "reports": self.reports, "failures": {"scored": self.n_scored, "counts": dict(self.failures),
                                                      "messages": dict(self.failure_messages)}}

    def load_state(self, st: Mapping[str, Any]) -> None:
        """Restore what :meth:`state` returned (used on resume; the offline fit is then skipped)."""
        self.surrogate.load_state_dict(dict(st["surrogate"]))
        self._pending = [tuple(p) for p in st["pending"]]
        self.reports = list(st["reports"])
        f = st.get("failures") or {}
        self.n_scored = int(f.get("scored", 0))
        self.failures = {str(k): int(v) for k, v in (f.get("counts") or {}).items()}
        self.failure_messages = {str(k): str(v) for k, v in (f.get("messages") or {}).items()}
        self._restored = True


def _keyed_noise(x1: torch.Tensor, seed: int, key: int) -> torch.Tensor:
    """``N(0, I)`` noise shaped like ``x1``, a function of ``(seed, key)`` (a resumed run refits identically)."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(key))
    return torch.randn(x1.shape, generator=gen, dtype=x1.dtype)


def denoised_copies(base, t: float, seed: int, batch_size: int = 1000) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``fn(x1, key) -> xhat``: noise final states to time ``t`` and denoise them with ``base``.

    ``x_t = t x_1 + (1 - t) eps`` (the flow's linear path) and ``xhat = x_t + (1 - t) v(x_t, t)``,
    the base model's posterior mean of the sample; ``eps`` comes from a generator seeded by
    ``(seed, key)``.  Regressing ``r(x_1)`` on ``xhat`` fits ``E[r(X_1) | xhat]``.
    """
    @torch.no_grad()
    def fn(x1: torch.Tensor, key: int) -> torch.Tensor:
        eps = _keyed_noise(x1, seed, key)
        out = []
        for i in range(0, x1.shape[0], batch_size):
            xt = t * x1[i:i + batch_size] + (1.0 - t) * eps[i:i + batch_size]
            dev = next(base.parameters()).device if isinstance(base, torch.nn.Module) else xt.device
            xt = xt.to(dev)
            v = base.velocity(xt, torch.full((xt.shape[0],), t, device=dev, dtype=xt.dtype))
            out.append((xt + (1.0 - t) * v).cpu())
        return torch.cat(out)

    return fn


def noised_copies(t: float, seed: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``fn(x1, key) -> x_t = t x_1 + (1 - t) eps``: final states noised to time ``t`` on the flow's linear path.

    Regressing ``r(x_1)`` on ``x_t`` fits ``E[r(X_1) | X_t]`` (``AMConfig.terminal_state = "noisy"``);
    ``eps`` comes from a generator seeded by ``(seed, key)``, as in :func:`denoised_copies`.
    """
    @torch.no_grad()
    def fn(x1: torch.Tensor, key: int) -> torch.Tensor:
        return t * x1 + (1.0 - t) * _keyed_noise(x1, seed, key)

    return fn


def evaluate_samples(decoded: list, reward: Reward, name: str, tail: str, beta: float,
                     reference: Optional[set] = None, seed: int = 0, n_jobs: int = 1,
                     extra: Optional[Mapping[str, Any]] = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics row and per-sample table of decoded molecules under the true reward.

    Returns:
        ``(row, samples)``: a one-row frame of :func:`tfftmol.chem.metrics.evaluate`
        (columns ``reward_mean``, ``reward_cvar_right_0.9``, ``reward_cvar_left_0.1``, ...,
        and the run's own tail level) and a frame with columns ``smiles`` (empty if
        invalid), ``reward`` (penalty if invalid), ``valid``, ``reason`` (the decoder's
        failure class, or the reward's) and ``raw`` (for an invalid sample, the decoder's
        unsanitised SMILES of what it decoded, when it has one; empty otherwise).
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
    raw = [(getattr(d, "raw", None) or "") if not ok else "" for d, ok in zip(decoded, res.valid)]
    samples = pd.DataFrame({"smiles": [d.smiles or "" for d in decoded], "reward": res.values,
                            "valid": res.valid, "reason": reasons, "raw": raw})
    return row, samples


def _reference_smiles(latent: bool = False) -> set:
    """Canonical SMILES of the pre-training data's training split (QM9, or ZINC250k for a latent model),
    for novelty."""
    key = "zinc250k" if latent else "qm9"
    if key not in _REFERENCE:
        if latent:
            from .selfies import load_zinc250k
            _REFERENCE[key] = set(load_zinc250k("train")["smiles"])
        else:
            from .data import load_qm9
            _REFERENCE[key] = set(load_qm9("train")["smiles"])
    return _REFERENCE[key]


_REFERENCE: dict[str, set] = {}


class MoleculeTask:
    """Molecular graph flows through the one pipeline (:mod:`tfftmol.pipeline`)."""

    kind = "molecule"
    options_class = MoleculeOptions

    def check(self, cfg) -> None:
        pass

    def describe(self, cfg) -> str:
        out = f"model `{cfg.options.model}`"
        k = cfg.options.decode_beam
        if k is not None:
            out += f" (decoder: {'greedy' if k == 1 else f'beam search, {k} beams'})"
        out += f"; reward `{json.dumps(cfg.options.reward)}`"
        if cfg.options.filters is not None:
            from .filters import MedChemFilters
            f = MedChemFilters(cfg.options.filters)
            out += f"; filters ({f.config.mode}): {f.describe()}"
        return out

    def load_base(self, cfg, device):
        return load_base(cfg.options.model, device, decode_beam=cfg.options.decode_beam)

    def build_reward(self, cfg, base, device, log):
        from tfftmol.core.config import config_search_dirs

        o = cfg.options
        with config_search_dirs(*getattr(cfg, "source_dirs", ())):  # the YAML's directory (callable rewards)
            reward = build_reward(dict(o.reward))
        if o.filters is not None:
            from .filters import FilteredReward
            reward = FilteredReward(reward, o.filters)
        sc = o.surrogate
        if is_latent(o.model):
            from .latent_reward import LatentSurrogate, warm_start_data
            surrogate = LatentSurrogate(int(base.state_shape[0]), hidden=sc.hidden, layers=sc.layers, lr=sc.lr,
                                        batch_size=sc.batch_size, replay_size=sc.replay_size, seed=cfg.seed,
                                        device=device)
            if o.warm_start_size:
                surrogate.set_warm_start(*warm_start_data(base, reward, o.warm_start_size, cfg.offline_cache_dir,
                                                          labels=o.warm_labels, n_jobs=o.reward_jobs, log=log))
        else:
            surrogate = Surrogate(hidden=sc.hidden, layers=sc.layers, heads=sc.heads, temperature=sc.temperature,
                                  lr=sc.lr, batch_size=sc.batch_size, replay_size=sc.replay_size, seed=cfg.seed,
                                  device=device)
        tc = cfg.tfft.am.terminal_time
        denoise = None
        if tc < 1.0:  # the surrogate learns where stage 2 takes its gradient (AMConfig.terminal_state)
            denoise = (noised_copies(tc, cfg.seed) if cfg.tfft.am.terminal_state == "noisy"
                       else denoised_copies(base, tc, cfg.seed))
        out = MolecularReward(reward, base.decode, surrogate, sc, o.refit_every, o.reward_jobs, log, denoise,
                              max_failure_fraction=o.max_reward_failure_fraction)
        if o.value_molecules_size:
            from .value_data import LatentValuePairs, QM9ValuePairs

            # labelled lazily: only a run on the values-only path (tfft.am.stage2: value) pays for it
            prior = lambda n, g: base.sample_prior(n, generator=g, device="cpu").float()  # noqa: E731
            if is_latent(o.model):
                out.value_pairs = LatentValuePairs(base, reward, o.value_molecules_size, cfg.tfft.am.time_steps,
                                                   prior, cache_dir=cfg.offline_cache_dir, labels=o.warm_labels,
                                                   n_jobs=o.reward_jobs, log=log)
            else:
                out.value_pairs = QM9ValuePairs(
                    reward, o.value_molecules_size, cfg.tfft.am.time_steps, prior,
                    cache_dir=cfg.offline_cache_dir, reward_key=out.cache_key, n_jobs=o.reward_jobs, log=log)
        return out

    def cond_sampler(self, cfg, base):
        return None

    def callbacks(self, reward) -> list:
        return [reward.callback]

    def evaluate(self, cfg, samples, reward, label: str) -> Evaluation:
        x = samples.x.detach().cpu()
        dec = reward.decode(x)
        row, table = evaluate_samples(dec, reward.reward, label, cfg.tfft.tail, cfg.tfft.beta,
                                      _reference_smiles(is_latent(cfg.options.model)),
                                      cfg.seed, cfg.options.reward_jobs)
        keep = {k: v for k, v in row.iloc[0].to_dict().items()
                if k in ("validity", "uniqueness", "novelty", "int_div") or k.startswith("invalid_")}
        for r in REWARD_FAILURES:  # failures of the reward itself: always a column, 0 when none
            keep[f"invalid_{r}"] = float((table["reason"] == r).mean()) if len(table) else float("nan")
        return Evaluation(table["reward"].to_numpy(float), table["valid"].to_numpy(bool), keep, table,
                          {"decoded": dec})

    def report(self, cfg, run_dir: Path, ctx: ReportContext) -> tuple[list[str], dict]:
        files: dict = {}
        lines: list[str] = []
        reports = ctx.reward.reports
        if reports:
            sr = pd.DataFrame(reports)
            files["surrogate"] = run_dir / "surrogate.csv"
            sr.to_csv(files["surrogate"], index=False)
            keep = [c for c in ["step", "kind", "r2", "spearman", "rank_precision_hi", "rank_precision_lo", "mae",
                                "validity_accuracy", "n_train", "n_valid", "seconds"] if c in sr.columns]
            lines += ["## Surrogate", "", "Held-out accuracy of each (re)fit (the gradient of stage 2 comes from "
                      "it; values and the tail indicator use the true reward).", "", markdown_table(sr[keep]), ""]
            files["_training_overlay"] = sr
        fails = getattr(ctx.reward, "failure_summary", None)
        if callable(fails):
            summ = fails()
            files["reward_failures"] = run_dir / "reward_failures.csv"
            pd.DataFrame([summ]).to_csv(files["reward_failures"], index=False)
            n = max(int(summ.get("scored", 0)), 1)
            rows = [{"reason": k, "molecules": v, "fraction": v / n} for k, v in summ.items() if k != "scored"]
            lines += ["## Reward failures", "",
                      f"Molecules scored by the true reward during the run (offline batch unless cached, and stage 2): "
                      f"{summ.get('scored', 0)}; invalid by reason (`reward_error`/`reward_nan` are failures of the "
                      "reward function on valid molecules):", "",
                      markdown_table(pd.DataFrame(rows)) if rows else "none", ""]
            for r, msg in getattr(ctx.reward, "failure_messages", {}).items():
                lines += [f"First `{r}`:", "", "```", msg.strip(), "```", ""]
        lines += self._molecule_report(cfg, run_dir, ctx, files)
        return lines, files

    def _molecule_report(self, cfg, run_dir: Path, ctx: ReportContext, files: dict) -> list[str]:
        """top.csv / top.sdf, the property panel and the labelled tail grids."""
        from .inspect import molecule_properties, plot_property_panel, property_shift, top_table, write_sdf

        method = cfg.tfft.method
        ref = _reference_smiles(is_latent(cfg.options.model))
        evs = {label: ctx.evaluations[label].samples for label in ("pretrained", method)
               if label in ctx.evaluations and ctx.evaluations[label].samples is not None}
        rname = json.dumps(cfg.options.reward)
        top = top_table(evs, cfg.options.top_k, ref, rname)
        files["top_csv"] = run_dir / "top.csv"
        top.to_csv(files["top_csv"], index=False)
        files["top_sdf"] = run_dir / "top.sdf"
        n_sdf = write_sdf(top, files["top_sdf"])
        props = {}
        for label, df in evs.items():
            ok = df[df["valid"].astype(bool) & (df["smiles"] != "")]
            props[label] = molecule_properties(ok["smiles"], ref)
        from .filters import MedChemFilters
        filt = MedChemFilters(cfg.options.filters)
        shift = property_shift(props)
        shift["filters_pass"] = [filt.pass_rate(props[label]["smiles"]) for label in props]
        files["properties"] = run_dir / "properties.csv"
        shift.to_csv(files["properties"], index=False)
        files["property_panel"] = run_dir / "properties.png"
        plot_property_panel(props, files["property_panel"], f"{cfg.name}: properties of the valid evaluation molecules")
        which = "of this run" if cfg.options.filters is not None else "(the default set; none applied in this run)"
        k = cfg.options.grid_size
        files["tails_top"] = run_dir / "tails_top.png"
        files["tails_bottom"] = run_dir / "tails_bottom.png"
        samples = evs[method]
        n = len(samples)
        n_invalid = int((~samples["valid"].astype(bool)).sum())
        sub = top[top["model"] == method]
        _grid(sub[sub["end"] == "top"].head(k), files["tails_top"], f"top {k}")
        _grid(sub[sub["end"] == "bottom"].head(k), files["tails_bottom"], f"bottom {k}")
        lines = ["## Molecules", "",
                 f"`top.csv` / `top.sdf` ({n_sdf} molecules, every column an SD tag): the top and bottom "
                 f"{cfg.options.top_k} distinct valid molecules of the pre-trained and the fine-tuned evaluation "
                 "samples, "
                 "with the reward, QED, SA, logP, MW, ring counts and `novel` (not in the training set).  "
                 "Invalid samples have no structure to list; `samples.csv` keeps their raw decode and reason.", "",
                 "Property shift of the valid molecules (`properties.csv`; `strained_2+` = share with two or more "
                 f"3/4-membered rings; `filters_pass` = share passing the medicinal-chemistry filters {which}: "
                 f"{filt.describe()}):", "", markdown_table(shift), "", "![properties](properties.png)", "",
                 "Top tail of the fine-tuned samples (label: reward, QED, SA; * = novel):", "",
                 "![top tail](tails_top.png)", "",
                 f"Bottom tail of the fine-tuned samples, valid molecules only: {n_invalid} of {n} samples "
                 f"({n_invalid / max(n, 1):.1%}) are invalid and sit below these at the penalty (by reason in the "
                 "metrics' `invalid_*` columns):", "", "![bottom tail](tails_bottom.png)", ""]
        return lines

    def save_model(self, cfg, model, path: Path, metadata: dict) -> None:
        from .model import GraphTransformerFlow
        from .qm9_model import save_qm9_graph

        # the run's config goes under run_config: "config" is the model's own architecture in its weights file
        meta = {"base_model": cfg.options.model,
                **{("run_config" if k == "config" else k): str(v) for k, v in metadata.items()}}
        from .selfies import ZincSelfiesFlow, save_zinc_selfies
        if isinstance(model, ZincSelfiesFlow):  # loads back with load_base / options.model: <path>
            save_zinc_selfies(model, path, extra_metadata=meta)
        elif isinstance(model, GraphTransformerFlow):
            save_qm9_graph(model, path, extra_metadata=meta)
        else:
            sd = {k: v for k, v in model.state_dict().items() if not k.startswith("base.")}
            save_tensors(path, sd, metadata=meta)


def _grid(df: pd.DataFrame, path: Path, title: str) -> None:
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols, legends = [], []
    for _, row in df.iterrows():
        smi = row["smiles"]
        m = Chem.MolFromSmiles(smi) if smi else None
        if m is not None:
            mols.append(m)
            label = f"{row['reward']:.3f}"
            if "qed" in row and "sa" in row:
                label += f" | QED {row['qed']:.2f} SA {row['sa']:.1f}"
            if row.get("novel") is True or row.get("novel") == 1.0:
                label += " *"
            legends.append(label)
    if not mols:  # an empty grid still gets a file, so the report is complete
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: no valid molecule", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    img = Draw.MolsToGridImage(mols, molsPerRow=min(6, len(mols)), subImgSize=(220, 200), legends=legends)
    if hasattr(img, "save"):  # a PIL image
        img.save(str(path))
    else:  # in a notebook RDKit's IPython renderer returns an IPython Image holding the PNG bytes
        data = getattr(img, "data", None)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError(f"molecule grid: cannot save a {type(img).__name__} from Draw.MolsToGridImage")
        Path(path).write_bytes(bytes(data))
