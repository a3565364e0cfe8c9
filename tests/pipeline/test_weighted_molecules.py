"""The weighted stage 2 through the pipeline on the shipped QM9 graph flow (real RDKit QED).

A smoke budget: the numbers mean nothing; what is checked is the path the run took and reported,
that no surrogate was fitted for it, and that the offline batch it fitted is the one stage 1 solved.
"""
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tfftmol.cli import _merge
from tfftmol.core.config import load_yaml
from tfftmol.pipeline import run

ROOT = Path(__file__).resolve().parents[2]
SMOKE = {
    "tfft": {"offline_samples": 96, "offline_steps": 5, "offline_sampler": "sde", "bootstrap": 0,
             "refine_samples": 32, "am": {"steps": 4, "batch_size": 8, "time_steps": 5, "loss_time_steps": 2,
                                          "stage2": "weighted"}},
    "surrogate": {"hidden": 16, "layers": 1, "heads": 2, "epochs": 1, "refit_epochs": 1, "batch_size": 32},
    "refit_every": 2, "eval_samples": 32, "eval_steps": 5, "kl_samples": 8, "checkpoint_every": 100,
}


def test_a_molecular_run_on_the_weighted_path_says_so_and_fits_no_surrogate(tmp_path):
    cfg = _merge(load_yaml(ROOT / "configs" / "qed_right.yaml"), SMOKE)
    cfg.update(name="weighted", out_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), threads=1)
    logs = []
    res = run(cfg, progress=False, log=logs.append, plots=False)
    m = pd.read_csv(res.run_dir / "metrics.csv")
    assert m["stage2_path"].iloc[-1] == "weighted"
    assert "stage 2: weighted" in (res.run_dir / "report.md").read_text()
    assert any("tilt-weighted flow matching" in s for s in logs)
    assert not res.reward.reports                       # the surrogate was never fitted
    tr = res.tfft.trainer
    assert tr.pool is not None and tr.pool[0].shape[0] == 96
    np.testing.assert_allclose(tr.pool[1].cpu().numpy(), res.tfft.offline_rewards)
    h = pd.read_csv(res.run_dir / "history.csv")
    assert set(h["stage2"]) == {"weighted"} and np.isfinite(h["kl"]).all()
    assert json.loads((res.run_dir / "run.json").read_text())  # the run finished and wrote its manifest
