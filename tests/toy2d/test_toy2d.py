"""The shipped 2D flows, the toy2d CLI and the benchmark's --quick mode."""

import pandas as pd
import pytest
import torch

import tfftmol
from tfftmol.core.samplers import sample_ode
from tfftmol.toy2d.metrics import mmd_rbf
from tfftmol.toy2d.flows import MLPFlow, multimodal_reward, sample_dataset, train_flow_matching
from helpers.bench import load_benchmark


@pytest.mark.parametrize("name", ["gmm", "moons", "ring"])
def test_shipped_2d_flows_load_without_pickle_and_sample_their_data(name):
    model = tfftmol.load_pretrained(f"toy2d-{name}")
    card = tfftmol.model_card(f"toy2d-{name}")
    x = sample_ode(model, 2000, 50, generator=torch.Generator().manual_seed(0))
    ref = sample_dataset(name, 2000, seed=7)
    assert x.shape == (2000, 2)
    assert mmd_rbf(x, ref) < 5e-3
    assert card["budget"]["steps"] > 0 and "mmd_model_vs_data" in card["metrics"]


def test_flow_matching_lowers_the_loss():
    torch.manual_seed(0)
    m = MLPFlow(hidden=32, layers=2)
    losses = train_flow_matching(m, sample_dataset("moons", 2000), steps=150, batch_size=256)
    assert sum(losses[-20:]) / 20 < 0.9 * sum(losses[:20]) / 20  # measured: 5.12 -> 4.19


def test_multimodal_reward_has_its_peaks_at_the_centres():
    r = multimodal_reward()
    x = torch.tensor([[2.0, 0.0], [-1.0, 1.732], [0.0, 0.0]])
    v = r(x)
    assert v[0] > v[1] > v[2]
    assert float(v[0]) == pytest.approx(1.0, abs=0.01)


@pytest.mark.slow  # 16 s
def test_toy2d_cli_prints_a_table_and_writes_a_plot(tmp_path, capsys):
    from tfftmol.cli import main

    rc = main(["toy2d", "--steps", "5", "--eval-samples", "500", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tfft-right" in out and "tfft-left" in out and "expected" in out
    t = pd.read_csv(tmp_path / "toy2d.csv")
    assert list(t.method) == ["pretrained", "expected", "tfft-right", "tfft-left"]
    assert (tmp_path / "toy2d.png").stat().st_size > 10000


@pytest.mark.slow  # 90 s: benchmarks/toy2d.py --quick
def test_benchmark_quick_mode_runs(tmp_path):
    mod = load_benchmark("toy2d")
    table = mod.main(["--quick", "--quiet", "--out", str(tmp_path)])
    assert set(table.method) == {"pretrained", "expected", "tfft-right", "tfft-left"}
    for f in ("toy2d.csv", "toy2d.md", "toy2d_continuation.csv", "toy2d_threshold_speed.csv"):
        assert (tmp_path / f).exists(), f
    # re-run one method at one alpha and merge: only that row (and its alpha's pre-trained row) change
    before = pd.read_csv(tmp_path / "toy2d.csv")
    merged = mod.main(["--quick", "--quiet", "--out", str(tmp_path), "--alphas", "0.5", "--methods", "tfft-right",
                       "--merge", "--skip-continuation"])
    assert list(zip(merged.alpha, merged.method)) == list(zip(before.alpha, before.method))
    keep = ~((merged.alpha == 0.5) & merged.method.isin(["tfft-right", "pretrained"]))
    pd.testing.assert_frame_equal(merged[keep].reset_index(drop=True), before[keep].reset_index(drop=True))
    assert "Dead-hinge continuation" in (tmp_path / "toy2d.md").read_text()


def test_benchmark_merge_replaces_the_rerun_rows_and_times_nothing_across_runs():
    mod = load_benchmark("toy2d")
    old = pd.DataFrame({"alpha": [1.0] * 4 + [0.5] * 4, "method": mod.METHODS * 2,
                        "cvar_right_0.9": [2.0, 2.4, 2.9, 2.1, 2.0, 2.6, 3.8, 2.1],
                        "wall_s": [1.0, 100.0, 110.0, 120.0, 1.0, 200.0, 210.0, 220.0],
                        "stage2_s": [None, 90.0, 95.0, 99.0, None, 190.0, 195.0, 199.0],
                        "time_ratio_vs_expected": [None, None, 1.1, 1.2, None, None, 1.05, 1.1],
                        "stage2_time_ratio_vs_expected": [None, None, 95 / 90, 1.1, None, None, 195 / 190, 199 / 190]})
    new = pd.DataFrame({"alpha": [0.5, 0.5], "method": ["pretrained", "tfft-right"], "cvar_right_0.9": [2.0, 3.7],
                        "wall_s": [1.5, 300.0], "stage2_s": [None, 285.0]})
    df = mod.merge_rows(old, new)
    assert list(zip(df.alpha, df.method)) == list(zip(old.alpha, old.method))
    row = df[(df.alpha == 0.5) & (df.method == "tfft-right")].iloc[0]
    assert row["cvar_right_0.9"] == 3.7
    assert pd.isna(row["time_ratio_vs_expected"]) and pd.isna(row["stage2_time_ratio_vs_expected"])
    assert df[(df.alpha == 0.5) & (df.method == "tfft-left")].iloc[0]["time_ratio_vs_expected"] == 1.1
    pd.testing.assert_frame_equal(df[df.alpha == 1.0].reset_index(drop=True), old[old.alpha == 1.0].reset_index(drop=True),
                                  check_dtype=False)
