"""benchmarks/speed.py: --quick runs every measurement of the full mode in seconds and writes the table."""
import math

import pandas as pd

from helpers.bench import load_benchmark


def _speed():
    mod = load_benchmark("speed")
    return mod


def test_quick_mode_measures_every_figure_and_writes_csv_and_md(tmp_path):
    speed = _speed()
    rows = speed.main(["--quick", "--out", str(tmp_path)])
    df = pd.read_csv(tmp_path / "speed.csv")
    assert list(df.columns) == ["figure", "unit", "before", "after", "ratio"]
    figs = set(df["figure"])
    for f in ("qm9_sample_mol_per_s", "am_step_per_s_qm9", "tfft_over_expected_qm9", "zinc_sample_mol_per_s",
              "qm9_forward_flop_limit_mol_steps_per_s"):
        assert f in figs
    after = dict(zip(df["figure"], df["after"]))
    for f in ("qm9_sample_mol_per_s", "zinc_sample_mol_per_s", "am_step_per_s_qm9", "am_step_per_s_qm9_expected",
              "qm9_forward_mol_steps_per_s", "qm9_forward_flop_limit_mol_steps_per_s", "am_step_per_s_zinc",
              "am_step_per_s_zinc_expected", "tfft_over_expected_zinc", "qm9_sample_fast_mol_per_s"):
        assert after[f] > 0 and math.isfinite(after[f])
    # the FLOP count of one molecule-step of the shipped network: ~6.5 MFLOP (4 layers, d_node 80, d_edge 32)
    assert 5e6 < after["qm9_flops_per_mol_step"] < 8e6
    ratio = after["am_step_per_s_qm9_expected"] / after["am_step_per_s_qm9"]
    assert abs(after["tfft_over_expected_qm9"] - ratio) < 1e-4 * ratio  # the csv keeps 6 significant digits
    assert 0 <= after["qm9_validity"] <= 1 and 0 <= after["zinc_validity"] <= 1 and 0 <= after["qm9_validity_fast"] <= 1
    # quick mode has no `before` tree: NaN before and ratio, never a made-up figure
    assert df["before"].isna().all() and df["ratio"].isna().all()
    assert len(rows) == len(df)
    assert "| figure | unit | before | after | ratio |" in (tmp_path / "speed.md").read_text()


def test_ratio_reads_as_a_speed_up_for_throughputs_and_for_the_time_ratio():
    speed = _speed()
    rows = {r["figure"]: r for r in speed.table({"qm9_sample_mol_per_s": 100.0, "tfft_over_expected_qm9": 1.2},
                                                {"qm9_sample_mol_per_s": 250.0, "tfft_over_expected_qm9": 1.0})}
    assert rows["qm9_sample_mol_per_s"]["ratio"] == 2.5
    assert rows["tfft_over_expected_qm9"]["ratio"] == 1.2
