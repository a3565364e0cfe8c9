"""Prompted-digit fine-tuning in the call forms of earlier releases (thin aliases of the one pipeline).

The digits run is :func:`tfftmol.run` with ``task: digits``; its domain parts are
in :mod:`tfftmol.digits.task`.  Kept for one release: ``finetune`` (with a
``DeprecationWarning``), ``load_config``, ``is_digits_config`` and the
evaluation and plotting helpers.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..core.config import load_yaml
from ..digits.task import (DIGIT_MODELS, DigitsOptions, DigitsTask, evaluate_images, plot_grid, plot_reward_hists,
                           plot_same_noise)

__all__ = ["DIGIT_MODELS", "DigitsOptions", "is_digits_config", "load_config", "finetune", "evaluate_images",
           "plot_grid", "plot_same_noise", "plot_reward_hists"]


def is_digits_config(source: Any) -> bool:
    """True if ``source`` (config object, mapping or YAML path) is a digits run config."""
    from ..pipeline.config import RunConfig

    if isinstance(source, RunConfig):
        return source.task == "digits"
    try:
        if isinstance(source, (str, Path)):
            data = load_yaml(source) if Path(source).is_file() else None
        else:
            data = dict(source) if isinstance(source, Mapping) else None
    except Exception:  # unreadable YAML: not ours to report; the loader names the problem
        return False
    if not isinstance(data, dict):
        return False
    return data.get("task") == "digits" or ("task" not in data and data.get("model") in DIGIT_MODELS)


def load_config(source: Any, **overrides: Any):
    """A validated :class:`~tfftmol.pipeline.RunConfig` of a digits run."""
    from ..pipeline.config import load_run_config

    return load_run_config(source, **overrides)


def finetune(config: Any, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
             callbacks: Optional[list] = None, log: Callable[[str], None] = print, **overrides: Any):
    """Deprecated alias of :func:`tfftmol.pipeline.run`."""
    from ..pipeline import run

    warnings.warn("tfftmol.image2d.digits_finetune.finetune is deprecated; use tfftmol.run",
                  DeprecationWarning, stacklevel=2)
    return run(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks, log=log,
               **overrides)
