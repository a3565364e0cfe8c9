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
