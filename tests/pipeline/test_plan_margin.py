"""``plan``'s tail margin: the exact expected-reward optimum at stage 1's predicted KL, beside stage 1."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from tfftmol.cli import main
from tfftmol.core.mean_tilt import mean_tilt_at_kl
from tfftmol.pipeline import plan


def _toy(tmp_path, tail, beta):
    cfg = {"task": "toy2d", "name": f"toy_margin_{tail}", "seed": 0,
           "tfft": {"tail": tail, "beta": beta, "alpha": 1.0, "offline_samples": 2000},
           "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}}}
    path = tmp_path / f"toy_{tail}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tail_margin_is_the_expected_optimum_at_the_predicted_kl(tmp_path):
    res = plan(str(_toy(tmp_path, "right", 0.9)), alphas=[0.1, 1.0, 10.0], out_dir=str(tmp_path / "runs"),
               plots=True, log=lambda s: None)
    t = res.table
    for _, row in t.iterrows():
        m = mean_tilt_at_kl(res.rewards, row["predicted_kl"], row["beta"], "right")
        assert row["mean_tilt_cvar"] == pytest.approx(m.cvar, abs=1e-12)
        assert row["tail_margin"] == pytest.approx(row["predicted_cvar"] - m.cvar, abs=1e-12)
        assert -1e-9 <= row["tail_margin"] <= row["predicted_gain"] + 1e-9
    assert t.sort_values("alpha")["tail_margin"].iloc[0] > 0.05  # a strong right tilt leads the mean tilt
    csv = pd.read_csv(res.files["table"])
    np.testing.assert_allclose(csv["tail_margin"], t["tail_margin"], rtol=0, atol=1e-12)
    assert "tail margin at the config's alpha" in res.summary()


def test_the_cli_plan_prints_the_margin_at_the_config_alpha(tmp_path, capsys):
    path = _toy(tmp_path, "left", 0.1)
    assert main(["plan", "--config", str(path), "--alphas", "30", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    t = pd.read_csv(tmp_path / "runs" / "toy_margin_left-plan" / "plan.csv")
    row = t[t.config].iloc[0]
    assert row["alpha"] == 1.0 and row["tail_margin"] > 0
    assert f"leads it by {row['tail_margin']:.3g}" in out


def test_a_cvar_run_report_states_its_tail_margin_and_other_objectives_do_not(tmp_path):
    from tfftmol.pipeline import run

    def _cfg(out, name):  # a tiny right-tail run on the exact 2D mixture
        return {"task": "toy2d", "name": name, "seed": 4, "out_dir": str(out),
                "eval": {"samples": 600, "steps": 12, "kl_samples": 100, "batch_size": 300},
                "tfft": {"alpha": 1.0, "offline_samples": 1000, "offline_steps": 12, "bootstrap": 0,
                         "refine_samples": 500, "am": {"steps": 8, "batch_size": 32, "time_steps": 12,
                                                       "loss_time_steps": 4}},
                "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}}}

    res = run(_cfg(tmp_path, "margin"), progress=False, log=lambda s: None)
    s1 = res.tfft.stage1
    m = mean_tilt_at_kl(res.tfft.offline_rewards, s1.predicted_kl, s1.beta, s1.tail)
    report = (res.run_dir / "report.md").read_text()
    assert f"holds {m.cvar:.4g} on the same batch" in report
    assert f"leads it by {s1.predicted_cvar - m.cvar:.3g}" in report and s1.predicted_cvar - m.cvar > 0
    d = _cfg(tmp_path, "spec")
    d["tfft"].update(levels=[{"tail": "right", "beta": 0.9, "weight": 1.0}], mean_weight=0.25)
    res = run(d, progress=False, log=lambda s: None)
    assert "tail margin" not in (res.run_dir / "report.md").read_text()
