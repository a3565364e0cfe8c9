"""Molecular fine-tuning in the call forms of earlier releases (thin aliases of the one pipeline).

The molecular run is :func:`tfftmol.run` (``tfftmol.pipeline.run``) with
``task: molecule``; its domain parts are in :mod:`tfftmol.chem.task`.  This
module keeps the earlier names for one release:

* ``finetune(config, resume=...)`` -> ``tfftmol.pipeline.run`` (with a ``DeprecationWarning``);
* ``load_config(source)`` -> :func:`tfftmol.pipeline.load_run_config` (flat configs are read as before);
* ``sample_molecules``, ``evaluate_samples``, ``MolecularReward``, ``SurrogateConfig``, ``load_base``.

Example:
    >>> import tfftmol
    >>> result = tfftmol.run("configs/qed_right.yaml")       # doctest: +SKIP
    >>> result.table()                                       # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from tfftmol.core.sampling import sample
from tfftmol.pipeline import RunConfig, RunResult, load_run_config, run

from .task import (MOLECULAR_MODELS, MoleculeOptions, MolecularReward, SurrogateConfig, denoised_copies,
                   evaluate_samples, load_base)

__all__ = ["SurrogateConfig", "MoleculeOptions", "MolecularReward", "FinetuneResult", "load_config", "load_base",
           "finetune", "sample_molecules", "evaluate_samples", "denoised_copies", "MOLECULAR_MODELS"]

FinetuneResult = RunResult
EVAL_SAMPLERS = ("ode", "heun", "sde")


def load_config(source: Any, **overrides: Any) -> RunConfig:
    """A validated :class:`~tfftmol.pipeline.RunConfig` from a config object, mapping or YAML path."""
    return load_run_config(source, **overrides)


def finetune(config: Any, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
             callbacks: Optional[list] = None, log: Callable[[str], None] = print, **overrides: Any) -> RunResult:
    """Deprecated alias of :func:`tfftmol.pipeline.run` (same arguments)."""
    warnings.warn("tfftmol.chem.finetune.finetune is deprecated; use tfftmol.run (tfftmol.pipeline.run)",
                  DeprecationWarning, stacklevel=2)
    return run(config, resume=resume, overwrite=overwrite, progress=progress, callbacks=callbacks, log=log,
               **overrides)


@torch.no_grad()
def sample_molecules(model, n: int, steps: int = 30, sampler: str = "sde", seed: int = 0, batch_size: int = 500,
                     progress: bool = False, desc: str = "sampling") -> tuple[torch.Tensor, list]:
    """Draw ``n`` states of a molecular flow (pre-trained or fine-tuned) and decode them.

    The noise comes from a generator seeded with ``seed``, so two models see the same noise.

    Returns:
        ``(x, decoded)``: states on the CPU and one decoder result per row.
    """
    from .graph import decode

    if sampler not in EVAL_SAMPLERS:
        raise ValueError(f"sampler={sampler!r} must be one of {EVAL_SAMPLERS}")
    was = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    if n == 0:
        x = torch.zeros(0, *model.state_shape)
    else:
        x = sample(model, n, method={"ode": "euler"}.get(sampler, sampler), steps=steps,
                   generator=torch.Generator().manual_seed(seed), batch_size=batch_size, progress=progress,
                   desc=desc).x.cpu()
    if isinstance(model, torch.nn.Module):
        model.train(was)
    return x, decode(x)
