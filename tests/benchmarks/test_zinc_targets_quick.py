"""``benchmarks/zinc_targets.py --quick``: one row per (target, method, seed) with the run's own column,
for a one-tail target and the two-sided spectral one, on the shipped ``zinc-selfies``."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from helpers.bench import load_benchmark


@pytest.mark.slow  # about 30 s: two smoke-budget fine-tunes of the drug-like model
def test_quick_mode_writes_a_row_per_run_with_its_own_objective(tmp_path):
    mod = load_benchmark("zinc_targets")
    assert mod.main(["--quick", "--targets", "zinc_qed_right", "zinc_qed_two_sided", "--methods", "tfft",
                     "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    df = pd.read_csv(tmp_path / "out" / "zinc_targets.csv")
    assert list(df["target"]) == ["zinc_qed_right", "zinc_qed_two_sided"]
    assert list(df["tail"]) == ["reward_cvar_right_0.9", "reward_spectral"]
    for _, r in df.iterrows():
        assert math.isfinite(r["cvar_pre"]) and math.isfinite(r["cvar_post"]) and math.isfinite(r["cvar_predicted"])
        assert r["validity"] == 1.0 and r["kl"] >= 0
    # the two-sided objective is right-CVaR_0.9 + left-CVaR_0.1 of QED: between 0 and 2
    assert 0 < df["cvar_pre"].iloc[1] < 2
