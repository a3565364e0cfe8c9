"""``benchmarks/latent_gap.py``: its two latent-space measures against known answers, and the --quick run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.bench import load_benchmark


@pytest.fixture(scope="module")
def lg():
    return load_benchmark("latent_gap")


def test_c2st_cannot_tell_one_distribution_from_itself_and_separates_a_shifted_one(lg):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    same_lr, same_mlp = lg.c2st_auc(a, b)
    assert abs(same_lr - 0.5) < 0.07 and abs(same_mlp - 0.5) < 0.1
    shifted_lr, shifted_mlp = lg.c2st_auc(a, b + np.r_[3.0, np.zeros(7)])  # 3 sd along one axis: AUC ~ Phi(3/sqrt 2)
    assert shifted_lr > 0.95 and shifted_mlp > 0.95
    wide_lr, wide_mlp = lg.c2st_auc(a, 3.0 * b)  # a variance change only: invisible to a linear classifier
    assert abs(wide_lr - 0.5) < 0.1 and wide_mlp > 0.85


def test_nearest_code_distance_is_brute_force_in_units_of_each_dimensions_scale(lg):
    g = torch.Generator().manual_seed(0)
    codes, x = torch.randn(300, 6, generator=g), torch.randn(50, 6, generator=g)
    scale = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.1, 3.0])
    brute = torch.cdist((x / scale).double(), (codes / scale).double()).min(1).values
    assert torch.allclose(lg.nearest_code_distance(x, codes, scale, block=64), brute)
    assert float(lg.nearest_code_distance(codes[:20], codes, scale).max()) < 1e-6  # a code is its own neighbour
    # one code, a shift of 3 widths along a dimension of width 0.1: distance 3
    assert float(lg.nearest_code_distance(codes[:1] + torch.tensor([0, 0, 0, 0, 0.3, 0]), codes[:1], scale)) == \
        pytest.approx(3.0)


@pytest.mark.slow  # about 40 s: five sets of 150 latents decoded and scored (FCD included)
def test_quick_mode_writes_a_row_per_latent_set(lg, tmp_path):
    df = lg.main(["--quick", "--out-dir", str(tmp_path)])
    saved = pd.read_csv(tmp_path / "latent_gap_quick.csv")
    assert list(saved["latents"]) == ["train codes", "train posterior draws", "held-out codes", "flow ode5",
                                      "prior N(0, I)"]
    assert list(saved.columns) == lg.COLUMNS and len(df) == 5
    assert saved.loc[0, ["c2st_codes_logreg", "c2st_codes_mlp"]].isna().all()  # each reference against itself
    assert saved.loc[1, ["c2st_draws_logreg", "c2st_draws_mlp"]].isna().all()
    assert saved["c2st_codes_mlp"].iloc[1:].between(0.0, 1.0).all()
    assert saved.loc[[0, 2, 3, 4], "c2st_draws_mlp"].between(0.0, 1.0).all()
    assert (saved["validity"] == 1.0).all() and (saved["n"] == 150).all()  # SELFIES: every latent is a molecule
    assert (saved["nn_width_median"] > 0).all()  # the pool holds none of the rows' own molecules
    assert (saved["fcd"] > 0).all()
    assert (tmp_path / "latent_gap_quick.md").read_text().count("\n|") >= 6
