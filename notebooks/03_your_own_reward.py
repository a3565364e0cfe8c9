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
# # 3. Your own reward: a Python function, SA, a substructure penalty and a property model
#
# A reward in tfftmol is anything that scores RDKit molecules, with an explicit value (the
# *penalty*) for molecules that do not decode. This notebook
#
# 1. writes a reward as a plain Python function of an RDKit `Mol`;
# 2. combines it with synthetic accessibility (SA) and a SMARTS substructure penalty, and with
#    the shipped QM9 property model (HOMO-LUMO gap, eV) as a fourth term;
# 3. fits the differentiable surrogate that gives the fine-tune its gradient, and checks its
#    accuracy **near the threshold** `eta*`, where the tail indicator switches;
# 4. fine-tunes for the top 10% of the combined reward.
#
# Set `TFFTMOL_NB_SMALL=1` for the small budget the tests use.

# %%
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import yaml
from rdkit import Chem

import tfftmol
from tfftmol.chem.rewards import CallableReward, WeightedSum, build_reward
from tfftmol.chem.surrogate import Surrogate

SMALL = os.environ.get("TFFTMOL_NB_SMALL") == "1"
OUT = Path(os.environ.get("TFFTMOL_NB_OUT", "runs")) / "03_your_own_reward"
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
t_start = time.perf_counter()
# Inside Jupyter, importing RDKit replaces Draw.MolsToGridImage by a notebook renderer whose images
# cannot be saved; tfftmol's report writer saves its grids, so switch that renderer off (the grids
# below still display, as plain images).
from rdkit.Chem.Draw import IPythonConsole  # noqa: E402

IPythonConsole.UninstallIPythonRenderer()
print("small budget" if SMALL else "full budget", "| outputs in", OUT)


# %% [markdown]
# ## 1. A reward as a Python function
#
# Any `fn(mol) -> float`. Here: the fraction of heavy atoms that sit in a ring (0 for a chain,
# 1 for a fully cyclic molecule). `range` is the function's nominal range on real molecules; the
# default penalty of an invalid molecule is derived from it (half a range below the lowest value).
# A function that raises or returns NaN on a molecule does not stop a run: that molecule is counted
# as invalid, with its reason.

# %%
def ring_fraction(mol):
    return sum(atom.IsInRing() for atom in mol.GetAtoms()) / mol.GetNumAtoms()


rings = CallableReward(ring_fraction, range=(0.0, 1.0))
check = rings(["CCO", "c1ccccc1", "C1CC1CCC", "not a molecule", None])
print(check.values, check.valid, check.reasons)
assert np.allclose(check.values[:3], [0.0, 1.0, 0.5]) and list(check.valid) == [True, True, True, False, False]
assert check.values[3] == rings.penalty == -0.5

# %% [markdown]
# ## 2. Combining rewards
#
# Built-in rewards come from a config (`build_reward`), so the same spec works in YAML:
# SA is 1 (easy) .. 10 (hard) and lower is better, so it enters negated; a three-membered ring
# (SMARTS `[r3]`) costs 1; the QM9 property model predicts the HOMO-LUMO gap in eV.

# %%
neg_sa = build_reward({"name": "sa", "transform": [{"affine": {"scale": -1.0}}]})
no_r3 = build_reward({"name": "substructure", "smarts": "[r3]", "match_value": -1.0, "nomatch_value": 0.0})
gap = build_reward("qm9_gap")
combined = WeightedSum([(1.0, rings), (0.1, neg_sa), (1.0, no_r3), (0.1, gap)])
print("nominal range", combined.range, "penalty", combined.penalty)

mols = ["CCO", "c1ccccc1", "C1CC1CCC", "O=C1CCCCC1"]
terms = {"ring_fraction": rings, "-SA": neg_sa, "[r3] penalty": no_r3, "gap (eV)": gap, "combined": combined}
pd.DataFrame({name: r(mols).values for name, r in terms.items()}, index=mols).round(3)

# %% [markdown]
# The combined reward on molecules of the pre-trained model:

# %%
model = tfftmol.load_pretrained("qm9-graph")
n = 1200 if SMALL else 6000
samples = model.sample(n, steps=30, seed=0)
scored = combined(samples.mols)
print(scored.summary())
frame = samples.to_frame().assign(reward=scored.values)
frame[frame.valid].nlargest(8, "reward")

# %% [markdown]
# ## 3. The surrogate and its accuracy near the threshold
#
# RDKit rewards have no gradient. The fine-tune fits a differentiable graph network `s(x)` on the
# flow's continuous state to the true rewards (invalid samples included, through a validity
# head), and uses `grad s` as the direction; whether a sample is in the tail (`r > eta*`) is always
# decided by the true reward. What matters is that `s` ranks molecules correctly **around `eta*`**.
# We fit on 80% of the samples and test on the held-out 20%.

# %%
alpha, beta = 2.0, 0.9
thr = tfftmol.solve_threshold(scored.values, beta=beta, alpha=alpha, tail="right")
print(f"eta* = {thr.eta:.3f}, active fraction {thr.active_fraction:.1%}")
# with a small alpha eta* can sit above (almost) every sample; then judge the surrogate at the top-10% boundary
cut = thr.eta if thr.active_fraction >= 0.02 else float(np.quantile(scored.values, 0.9))

k = int(0.8 * n)
sur = Surrogate(seed=0)
report = sur.fit(samples.x[:k], scored.values[:k], scored.valid[:k], epochs=10 if SMALL else 30, patience=5)
print(report)
pred = sur.predict(samples.x[k:]).numpy()
true = scored.values[k:]
ok = scored.valid[k:]

above_pred, above_true = pred > cut, true > cut
precision = (above_pred & above_true).sum() / max(above_pred.sum(), 1)
recall = (above_pred & above_true).sum() / max(above_true.sum(), 1)
top = np.argsort(-pred)[: max(1, int(0.1 * len(pred)))]
rank_precision = float((true[top] >= np.quantile(true, 0.9)).mean())
rho = pd.Series(pred[ok]).corr(pd.Series(true[ok]), method="spearman")
print(f"held-out: Spearman (valid) {rho:.3f}; 'r > {cut:.3f}' precision {precision:.2f}, recall {recall:.2f} "
      f"(base rate {above_true.mean():.2f}); top-10% rank precision {rank_precision:.2f} (chance 0.10)")

fig, ax = plt.subplots(figsize=(5, 4.5))
ax.scatter(true[ok], pred[ok], s=6, alpha=0.5)
ax.axvline(cut, color="k", ls="--", lw=1, label="threshold (true reward)")
ax.axhline(cut, color="grey", ls=":", lw=1, label="threshold (surrogate)")
ax.set_xlabel("true combined reward (valid held-out molecules)")
ax.set_ylabel("surrogate s(x)")
ax.legend(fontsize=8)
plt.show()
assert rho > 0.3 and rank_precision > 0.2  # far better than chance (0 and 0.1)
assert precision > 1.5 * above_true.mean()  # "beyond the threshold" is predicted far better than by chance

# %% [markdown]
# ## 4. Fine-tuning on your reward
#
# A run config holds the reward as a spec, so a Python function enters it by import path
# (`module:function`): we write `ring_fraction` to a small module next to the outputs. Invalid
# molecules get the combined reward's default penalty.

# %%
(OUT / "my_rewards.py").write_text(
    "def ring_fraction(mol):\n"
    "    return sum(atom.IsInRing() for atom in mol.GetAtoms()) / mol.GetNumAtoms()\n")
sys.path.insert(0, str(OUT.resolve()))
reward_spec = {"name": "sum", "terms": [
    {"weight": 1.0, "reward": {"name": "callable", "fn": "my_rewards:ring_fraction", "range": [0.0, 1.0]}},
    {"weight": 0.1, "reward": {"name": "sa", "transform": [{"affine": {"scale": -1.0}}]}},
    {"weight": 1.0, "reward": {"name": "substructure", "smarts": "[r3]", "match_value": -1.0, "nomatch_value": 0.0}},
    {"weight": 0.1, "reward": {"name": "qm9_gap"}}]}
assert build_reward(reward_spec)(mols).values.tolist() == combined(mols).values.tolist()

cfg = {"name": "my_reward_right", "model": "qm9-graph", "reward": reward_spec, "out_dir": str(OUT), "threads": 1,
       "tfft": {"method": "tfft", "tail": "right", "beta": beta, "alpha": alpha, "offline_samples": 10000,
                "offline_steps": 30, "offline_sampler": "sde", "bootstrap": 100, "refine_samples": 2000,
                "am": {"steps": 300, "batch_size": 64, "time_steps": 30, "loss_time_steps": 10, "lr": 3e-4,
                       "terminal_time": 0.5}},
       "surrogate": {"epochs": 30, "patience": 5, "refit_epochs": 3},
       "refit_every": 25, "eval_samples": 2000, "eval_steps": 30, "kl_samples": 500, "seed": 0}
if SMALL:
    cfg["tfft"].update(offline_samples=500, offline_steps=20, bootstrap=0, refine_samples=200)
    cfg["tfft"]["am"].update(steps=30, batch_size=32, time_steps=20, loss_time_steps=6, lr=5e-4)
    cfg["surrogate"].update(epochs=8, patience=3, refit_epochs=1)
    cfg.update(refit_every=15, eval_samples=300, eval_steps=20, kl_samples=50, checkpoint_every=1000)
result = tfftmol.run(cfg, overwrite=True, progress=not SMALL, log=print if not SMALL else (lambda s: None))
result.table().round(4)

# %% [markdown]
# The surrogate's held-out accuracy at every (re)fit during the run, including the tail precisions
# at the 0.9 quantile (`precision_hi`: of the molecules the surrogate puts in the top tail, the
# fraction truly there; `rank_precision_hi`: the same for its top-ranked 10%):

# %%
reports = pd.DataFrame(result.reward.reports)  # the surrogate's held-out accuracy per (re)fit
print(reports[["step", "kind", "spearman", "spearman_valid", "precision_hi", "rank_precision_hi", "mae",
               "validity_accuracy"]].round(3).to_string())
assert len(result.samples) == cfg["eval_samples"] and set(result.samples.columns) >= {"smiles", "reward", "valid"}
print(f"notebook wall time: {time.perf_counter() - t_start:.0f} s ({'small' if SMALL else 'full'} budget)")
