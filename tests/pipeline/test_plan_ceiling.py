"""``tfftmol plan --ceiling``: the information ceiling beside stage 1 (docs/design.md §8.1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import spearmanr

from tfftmol.chem.latent_reward import LatentSurrogate
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.task import MolecularReward, SurrogateConfig
from tfftmol.cli import main
from tfftmol.core.ceiling import information_ceiling
from tfftmol.pipeline import plan
from tfftmol.pipeline.plan import CEILING_COLUMNS

ROOT = Path(__file__).resolve().parents[2]


def _reward_with_latent_surrogate(dim=8, denoise=None):
    surrogate = LatentSurrogate(dim, hidden=64, layers=2, lr=3e-3, batch_size=64, seed=0)
    return MolecularReward(build_reward({"name": "qed"}), lambda x: [], surrogate,
                           SurrogateConfig(epochs=40, patience=5), log=lambda s: None, denoise=denoise)


def test_ceiling_scores_are_out_of_fold():
    """Each sample is scored by a surrogate that never saw it: a smooth label is predicted, noise is not."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 8, generator=g)
    valid = torch.ones(800, dtype=torch.bool)
    smooth = (x[:, 0] + 0.5 * x[:, 1]).double()
    noise = torch.randn(800, generator=g).double()
    r = _reward_with_latent_surrogate()
    s_smooth = r.ceiling_scores(x, smooth, valid).numpy()
    s_noise = r.ceiling_scores(x, noise, valid).numpy()
    assert s_smooth.shape == (800,) and np.isfinite(s_smooth).all()
    assert spearmanr(s_smooth, smooth.numpy())[0] > 0.9
    # a surrogate scored on its own training samples would correlate with the noise it fitted
    assert abs(spearmanr(s_noise, noise.numpy())[0]) < 0.15
    np.testing.assert_array_equal(_reward_with_latent_surrogate().ceiling_scores(x, smooth, valid).numpy(), s_smooth)
    with pytest.raises(ValueError, match="folds=1"):
        r.ceiling_scores(x, smooth, valid, folds=1)


def test_ceiling_scores_read_the_surrogate_where_stage_2_does():
    """With terminal_time < 1 stage 2 takes the surrogate's gradient at the denoised state: the scores are taken
    there too.  A denoiser that forgets the state (all zeros) leaves one score per fold, whatever the labels."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 8, generator=g)
    y = x[:, 0].double()
    calls = []

    def forget(xs, key):
        calls.append(key)
        return torch.zeros_like(xs)

    r = _reward_with_latent_surrogate(denoise=forget)
    s = r.ceiling_scores(x, y, torch.ones(400, dtype=torch.bool)).numpy()
    assert len(np.unique(np.round(s, 10))) <= 2  # one constant per fold's surrogate
    assert spearmanr(s, y.numpy())[0] < 0.5
    assert len(calls) == 4  # per fold: the training copies, then the scored fold


@pytest.mark.skipif(not (ROOT / "tfftmol" / "chem" / "weights" / "zinc-selfies.safetensors").exists(),
                    reason="zinc-selfies weights absent")
def test_plan_with_ceiling_on_the_drug_like_model(tmp_path, capsys):
    cfg = yaml.safe_load((ROOT / "configs" / "zinc_qed_right.yaml").read_text())
    cfg["name"] = "zinc_qed_small"
    cfg["tfft"].update({"offline_samples": 800, "offline_steps": 10, "bootstrap": 0})
    cfg["options"].update({"warm_start": 400, "surrogate": {**cfg["options"]["surrogate"], "epochs": 8}})
    path = tmp_path / "zinc_qed_small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    alphas = [0.05, 0.1, 0.5]
    plain = plan(str(path), alphas=alphas, out_dir=str(tmp_path / "runs"), plots=False, log=lambda s: None)
    assert main(["plan", "--config", str(path), "--alphas", "0.05,0.1,0.5", "--out", str(tmp_path / "runs"),
                 "--ceiling", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "information ceiling: the best tilt" in out and "of the predicted gain at the config's alpha" in out
    table = pd.read_csv(tmp_path / "runs" / "zinc_qed_small-plan" / "plan.csv")
    assert set(CEILING_COLUMNS) <= set(table.columns) and len(table) == 3
    # stage 1's columns are those of a plan without the ceiling (same cached offline batch)
    for col in ("eta", "pre_cvar", "predicted_cvar", "predicted_kl"):
        np.testing.assert_allclose(table[col], plain.table[col], rtol=0, atol=1e-12)
    res = plan(str(path), alphas=alphas, out_dir=str(tmp_path / "runs"), plots=True, log=lambda s: None, ceiling=True)
    assert res.scores.shape == (800,) and -1 <= res.ceiling_spearman <= 1
    assert res.files["plot"].stat().st_size > 1000
    for _, row in res.table.iterrows():
        c = information_ceiling(res.rewards, res.scores, beta=0.9, alpha=row["alpha"], tail="right")
        assert row["ceiling_cvar"] == pytest.approx(c.cvar, rel=1e-12) and row["ceiling_kl"] == pytest.approx(c.kl)
        # the restricted optimum's objective never exceeds stage 1's on the same batch
        assert c.value <= row["predicted_cvar"] - row["alpha"] * row["predicted_kl"] + 1e-9
        assert row["ceiling_share"] == pytest.approx(row["ceiling_gain"] / row["predicted_gain"])
    np.testing.assert_allclose(res.table["ceiling_cvar"], table["ceiling_cvar"], rtol=1e-12)  # deterministic


def test_plan_with_ceiling_on_a_differentiable_reward_says_why_there_is_none(tmp_path, capsys):
    cfg = {"task": "toy2d", "name": "toy_ceiling", "seed": 0,
           "tfft": {"tail": "right", "beta": 0.9, "alpha": 1.0, "offline_samples": 500},
           "options": {"model": "gmm-exact", "reward": {"name": "linear", "w": [1.0, 0.0]}}}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["plan", "--config", str(path), "--alphas", "1", "--out", str(tmp_path / "runs"), "--ceiling",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "information ceiling: not computed" in out and "own gradient" in out
    table = pd.read_csv(tmp_path / "runs" / "toy_ceiling-plan" / "plan.csv")
    assert not set(CEILING_COLUMNS) & set(table.columns)
