"""benchmarks/tuning.py --quick: a 2D and a molecular study against their defaults, and 1 vs 2 workers."""
import math

import pandas as pd
import pytest

from helpers.bench import load_benchmark

pytestmark = pytest.mark.slow  # ~150 s: three small studies, a seed re-run, 1 vs 2 workers


def test_tuning_benchmark_quick(tmp_path):
    mod = load_benchmark("tuning")
    df = mod.main(["--quick", "--quiet", "--out", str(tmp_path)])
    saved = pd.read_csv(tmp_path / "tuning.csv")
    assert list(saved["part"]) == ["2D (gmm-exact, r = x_1)", "molecules (qm9-graph, QED)", "workers", "workers"]
    toy, mol = saved.iloc[0], saved.iloc[1]
    # trial 0 of each study is the shipped default config
    assert (toy["default_beta"], toy["default_alpha"]) == (0.9, 1.0)
    assert (mol["default_beta"], mol["default_alpha"]) == (0.9, 0.1)
    for r in (toy, mol):  # the best feasible trial is never worse than the default (which is one of the trials)
        assert r["best_value"] >= r["default_value"]
        assert math.isclose(r["gain"], r["best_value"] - r["default_value"])
        assert r["wall_per_trial_s"] > 0 and r["trials"] == (4 if r is toy else 2)
    assert toy["best_constraint_metric"] <= 0.5  # KL constraint of configs/tune_toy2d.yaml
    assert mol["best_constraint_metric"] >= 0.5  # validity constraint of the quick budget
    # the molecular study's best and default are re-run on one more seed (quick): means over 2 seeds
    assert mol["confirm_seeds"] == 2 and math.isnan(toy["confirm_seeds"])
    assert math.isclose(mol["confirmed_gain"], mol["best_mean"] - mol["default_mean"])
    assert math.isclose(mol["confirm_spread"], math.hypot(mol["default_std"], mol["best_std"]))
    rerun_default = 2 * mol["default_mean"] - mol["default_value"]   # the seed-1 value of the default
    assert math.isclose(mol["default_std"], abs(rerun_default - mol["default_value"]) / math.sqrt(2), rel_tol=1e-6)
    if (mol["best_beta"], mol["best_alpha"]) == (0.9, 0.1):
        assert mol["confirm_verdict"] == "best is the default" and mol["best_mean"] == mol["default_mean"]
    else:
        assert mol["confirm_verdict"].split(";")[0] in (
            "beats the default beyond the spread", "within the spread", "below the default")
    assert "confirmed_gain" in (tmp_path / "tuning.md").read_text()
    w1, w2 = saved.iloc[2], saved.iloc[3]
    # one worker stops at the count; two may each start the last trial together (the count is read before a
    # trial is asked for), so the 2-worker study ends with 3 or 4 finished trials, never fewer
    assert (w1["workers"], w2["workers"], w1["trials"]) == (1, 2, 3) and w2["trials"] in (3, 4)
    assert math.isclose(w2["speedup"], w2["trials_per_min"] / w1["trials_per_min"])
    md = (tmp_path / "tuning.md").read_text()
    assert f"| workers2-0 | 2 | {int(w2['trials'])} |" in md and "toy2d" in md and "Mean speed-up from 2 workers" in md
    assert not (tmp_path / "tuning_runs").exists()  # the studies' scratch directory is removed
    assert len(df) == 4
