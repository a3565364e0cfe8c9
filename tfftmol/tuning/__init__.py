"""Optuna studies over TFFT's tail level ``beta`` and KL weight ``alpha`` (``tfftmol tune``).

    >>> from tfftmol.tuning import run_study
    >>> res = run_study("configs/tune_toy2d.yaml", "toy", n_trials=12)      # doctest: +SKIP
    >>> res.best_params, res.best_values, res.default_values                  # doctest: +SKIP

Names load on first use, so ``tfftmol --help`` does not import Optuna.
"""
import importlib

_WHERE = {
    "TuneConfig": "config", "SearchSpace": "config", "ObjectiveSpec": "config", "ConstraintSpec": "config",
    "load_tune_config": "config",
    "TuneResult": "study", "run_study": "study", "make_storage": "study", "default_storage_url": "study",
    "write_outputs": "study", "FeasibleMedianPruner": "study",
    "PipelineRunner": "trials", "make_runner": "trials", "apply_params": "trials",
    "reward_metrics": "trials",
}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
