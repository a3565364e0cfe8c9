# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Tuning `beta` and `alpha` with Optuna
#
# TFFT has two knobs: the **training tail level** `beta` (which tail the hinge targets) and the
# **KL weight** `alpha` (how far the model may move). This notebook runs a small Optuna study on
# molecules with two objectives, the right-CVaR_0.9 of QED and the validity, under a validity
# constraint; then it reads the Pareto front and the parameter importances, reloads the study from
# its SQLite file, and explains how to point many workers at PostgreSQL.
#
# Every trial is exactly `tfftmol run` on `configs/qed_right.yaml` with the trial's `beta` and
# `alpha`; the objective `cvar` is always measured at the same level (`eval_beta = 0.9`), whatever
# `beta` the trial trains with, so trials are comparable.
#
# Set `TFFTMOL_NB_SMALL=1` for the small budget the tests use (tiny trials: the mechanics, not
# meaningful numbers).

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import torch
from optuna.visualization import matplotlib as ovm

from tfftmol.tuning import run_study

SMALL = os.environ.get("TFFTMOL_NB_SMALL") == "1"
OUT = Path(os.environ.get("TFFTMOL_NB_OUT", "runs")) / "04_optuna"
CONFIGS = next(p for p in (Path("configs"), Path("../configs")) if p.is_dir())
torch.set_num_threads(1)
t_start = time.perf_counter()
# Inside Jupyter, importing RDKit replaces Draw.MolsToGridImage by a notebook renderer whose images
# cannot be saved; tfftmol's report writer saves its grids, so switch that renderer off (the grids
# below still display, as plain images).
from rdkit.Chem.Draw import IPythonConsole  # noqa: E402

IPythonConsole.UninstallIPythonRenderer()
print("small budget" if SMALL else "full budget", "| outputs in", OUT)

# %% [markdown]
# ## The study
#
# A study config is a mapping (or a YAML file such as `configs/tune_qed_multi.yaml`): the base run
# config, a budget patch applied to every trial, the search space, the objectives and the
# constraints. With two objectives Optuna's NSGA-II sampler searches for the Pareto front; a trial
# whose validity is below the constraint is infeasible and never on the front.

# %%
if SMALL:  # a few seconds per trial: 3 fine-tuning steps, but molecules sampled with 20 steps (valid ones)
    budget = {"tfft": {"offline_samples": 64, "offline_steps": 20, "offline_sampler": "sde", "bootstrap": 0,
                       "refine_samples": 32, "am": {"steps": 3, "batch_size": 8, "time_steps": 20, "loss_time_steps": 2}},
              "surrogate": {"hidden": 16, "layers": 1, "heads": 2, "epochs": 1, "refit_epochs": 1, "batch_size": 32},
              "refit_every": 2, "eval_samples": 64, "eval_steps": 20, "kl_samples": 8, "checkpoint_every": 100}
    n_trials, min_validity = 5, 0.5
else:  # the budget of configs/tune_qed_multi.yaml, about 2-3 minutes per trial on one core
    budget = {"tfft": {"offline_samples": 2000, "bootstrap": 0, "refine_samples": 500,
                       "am": {"steps": 100, "batch_size": 32, "time_steps": 30, "loss_time_steps": 8}},
              "surrogate": {"epochs": 15, "patience": 4, "refit_epochs": 2},
              "refit_every": 25, "eval_samples": 1000, "kl_samples": 200}
    n_trials, min_validity = 16, 0.85

study_config = {
    "kind": "mol",
    "base": str(CONFIGS / "qed_right.yaml"),
    "budget": budget,
    "space": {"beta": [0.8, 0.97], "alpha": [0.02, 1.0]},  # beta uniform, alpha log-uniform
    "objectives": [{"metric": "cvar", "direction": "maximize"}, {"metric": "validity", "direction": "maximize"}],
    "eval_tail": "right", "eval_beta": 0.9,
    "constraints": [{"metric": "validity", "min": min_validity}],
    "sampler": "nsga2", "population_size": 4 if SMALL else 8, "seed": 0,
}
res = run_study(study_config, "qed-pareto", n_trials=n_trials, out_dir=OUT)
cols = [c for c in res.trials.columns if c in ("number", "values_0", "values_1", "params_alpha", "params_beta",
                                               "state", "feasible")]
res.trials[cols].rename(columns={"values_0": "cvar", "values_1": "validity"}).round(4)

# %% [markdown]
# Trial 0 is the base config's own setting (`beta = 0.9`, `alpha = 0.1`), enqueued so that every
# tuned trial can be compared with the default.

# %%
print("storage:", res.storage_url)
print("default trial:", res.default_values, "| best feasible:", res.best_params, res.best_values)
res.pareto

# %% [markdown]
# ## Reload from SQLite
#
# The study lives in an SQLite file inside the study directory. Any process can reload it (or
# join it: `run_study` with the same name and storage continues the study, its trial numbers go
# on, and only the missing trials run).

# %%
study = optuna.load_study(study_name="qed-pareto", storage=res.storage_url)
done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
print(f"{len(study.trials)} trials in the file, {len(done)} complete; directions {study.directions}")
assert len(study.trials) == n_trials and len(done) >= 2
assert sorted(t.values for t in done) == sorted(res.study.trials[t.number].values for t in done)
assert study.trials[0].params == {"beta": 0.9, "alpha": 0.1}  # the enqueued default
assert res.best_params is not None and len(res.pareto) >= 1  # some trial met the constraint
for _, row in res.pareto.iterrows():  # the feasible front respects the constraint
    assert row["validity"] >= min_validity

# %% [markdown]
# ## Pareto front and importances
#
# The front trades the top-tail QED against validity (infeasible and dominated trials are shown
# too); the importances say which knob moved the right-CVaR most in this study (fANOVA).

# %%
ax = ovm.plot_pareto_front(study, target_names=["right-CVaR_0.9 of QED", "validity"], include_dominated_trials=True)
plt.show()
ax = ovm.plot_param_importances(study, target=lambda t: t.values[0], target_name="right-CVaR_0.9")
plt.show()

# %% [markdown]
# ## Many workers: PostgreSQL
#
# SQLite is right for one machine. To spread a study over several machines, give every worker
# the same SQLAlchemy URL of a PostgreSQL database (the driver, `psycopg2-binary`, is installed
# with tfftmol):
#
# ```bash
# createdb optuna                              # once, on the database server
# tfftmol tune --config configs/tune_qed_multi.yaml --study qed-pareto \
#     --storage postgresql://USER:PASSWORD@HOST:5432/optuna --n-trials 48     # on each worker
# ```
#
# or `run_study(config, "qed-pareto", storage="postgresql://...", n_trials=48)` from Python. Each
# worker asks the database for the next trial until the study holds `n_trials` finished trials.
# Workers beat a heartbeat: a trial whose worker dies is marked failed by the next worker and
# replaced. `optuna-dashboard postgresql://...` (or `optuna-dashboard sqlite:///.../study.db`)
# browses a study live. `best.yaml` in the study directory is a ready-to-run config of the best
# feasible trial: `tfftmol run --config .../best.yaml`.

# %%
print(sorted(p.name for p in res.study_dir.iterdir()))
print(f"notebook wall time: {time.perf_counter() - t_start:.0f} s ({'small' if SMALL else 'full'} budget)")
