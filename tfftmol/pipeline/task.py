"""The :class:`Task` protocol: what a domain supplies to the one pipeline.

The pipeline (:func:`tfftmol.pipeline.run.run`) owns the steps every run shares:
validation, the run directory and resume, ``run_tfft``, same-noise evaluation,
the KL estimate, the metrics table and the report.  A task owns only its domain:

* ``options_class``: the dataclass of its options (``RunConfig.options``);
* ``check(cfg)``: cross-field checks that need the whole config (optional);
* ``load_base(cfg, device)``: the pre-trained flow (frozen);
* ``build_reward(cfg, base, device, log)``: the :class:`~tfftmol.core.reward.TerminalReward`;
* ``cond_sampler(cfg, base)``: the per-sample condition of conditional flows, or ``None``;
* ``callbacks(reward)``: extra stage-2 callbacks (e.g. a surrogate refit);
* ``evaluate(cfg, samples, reward, label)``: an :class:`Evaluation` of one model's
  evaluation samples (metrics row, per-sample table, reward values and validity);
* ``report(cfg, run_dir, context)``: extra markdown lines and files (plots, grids);
* ``save_model(cfg, model, path, metadata)``: the fine-tuned weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import numpy as np
import pandas as pd

__all__ = ["Task", "Evaluation", "ReportContext"]


@dataclass
class Evaluation:
    """One model's evaluation samples as a task scores them.

    Attributes:
        values: ``(n,)`` float reward values (the task's penalty where invalid).
        valid: ``(n,)`` bool validity.
        row: domain metrics of the batch (validity, uniqueness, accuracy, ...), one row.
        samples: per-sample table (written as ``samples_<label>.csv``), or ``None``.
        extra: anything the task's report needs later (decoded objects, images).
    """

    values: np.ndarray
    valid: np.ndarray
    row: dict = field(default_factory=dict)
    samples: Optional[pd.DataFrame] = None
    extra: dict = field(default_factory=dict)


@dataclass
class ReportContext:
    """What the pipeline hands a task's ``report``: the run's results so far."""

    result: Any                       # tfftmol.core.tfft.TFFTResult
    metrics: pd.DataFrame
    evaluations: dict                 # label -> Evaluation ("pretrained", then the method)
    reward: Any
    base: Any
    kl: float


@runtime_checkable
class Task(Protocol):
    kind: str
    options_class: type

    def check(self, cfg) -> None: ...

    def describe(self, cfg) -> str: ...

    def load_base(self, cfg, device): ...

    def build_reward(self, cfg, base, device, log: Callable[[str], None]): ...

    def cond_sampler(self, cfg, base) -> Optional[Callable]: ...

    def callbacks(self, reward) -> list: ...

    def evaluate(self, cfg, samples, reward, label: str) -> Evaluation: ...

    def report(self, cfg, run_dir: Path, ctx: ReportContext) -> tuple[list[str], dict]: ...

    def save_model(self, cfg, model, path: Path, metadata: dict) -> None: ...
