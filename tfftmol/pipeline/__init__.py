"""The one pipeline for every domain: one config in, a report directory out.

* :mod:`~tfftmol.pipeline.config`: :class:`RunConfig`, the one config dialect (with a task kind);
* :mod:`~tfftmol.pipeline.task`: the :class:`Task` protocol a domain implements;
* :mod:`~tfftmol.pipeline.registry`: task kind -> task;
* :mod:`~tfftmol.pipeline.rundir`: the run directory (lock, no silent overwrite, safe resume);
* :mod:`~tfftmol.pipeline.run`: :func:`run` (validate, resume, ``run_tfft``, same-noise evaluation,
  KL, metrics, report);
* :mod:`~tfftmol.pipeline.report`: the report writer;
* :mod:`~tfftmol.pipeline.plan`: :func:`plan` (stage 1 only, for a grid of alpha, before paying for a run).
"""
from .config import EvalConfig, RunConfig, load_run_config
from .registry import get_task, register_task, task_kinds
from .run import RunResult, evaluate_models, own_tail_column, realisation_ratio, run
from .plan import PlanResult, plan
from .rundir import RunDir, RunDirError
from .task import Evaluation, ReportContext, Task

__all__ = ["EvalConfig", "RunConfig", "load_run_config", "get_task", "register_task", "task_kinds",
           "RunResult", "evaluate_models", "own_tail_column", "realisation_ratio", "run", "RunDir", "RunDirError",
           "Evaluation", "ReportContext", "Task", "plan", "PlanResult"]
