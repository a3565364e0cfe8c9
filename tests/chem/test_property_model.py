"""The shipped QM9 property model: card, safetensors weights, reproduced test MAE, rewards; benchmark smoke run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tfftmol.chem.data import HARTREE_TO_EV, load_qm9
from tfftmol.chem.property_model import MODEL_NAMES, WEIGHTS_DIR, load_property_model
from tfftmol.chem.rewards import build_reward
from helpers.bench import load_benchmark

CARD = WEIGHTS_DIR / "qm9-property.card.json"
WEIGHTS = WEIGHTS_DIR / "qm9-property.safetensors"


@pytest.fixture(scope="module")
def model():
    return load_property_model()


def test_card_and_weights_files():
    card = json.loads(CARD.read_text())
    assert WEIGHTS.stat().st_size < 20e6
    assert card["featurizer"]["type"] == "deepchem.feat.CircularFingerprint"
    assert {t["name"]: t["units"] for t in card["tasks"]} == {"gap": "eV", "mu": "Debye"}
    assert "scaffold" in card["data"]["split"]
    assert card["metrics"]["test_mae"]["gap"] < card["metrics"]["test_mae_of_train_mean"]["gap"]
    with open(WEIGHTS, "rb") as f:  # safetensors: 8-byte header length, then a JSON header; no pickle
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")


def test_reproduces_card_test_mae(model):
    sub_card = model.card["metrics"]["test_subsample"]
    test = load_qm9("test").sample(sub_card["n"], random_state=sub_card["seed"])
    pred = model.predict(test["smiles"].tolist())
    err_gap = np.abs(pred["gap"] - test["gap"].to_numpy() * HARTREE_TO_EV)
    err_mu = np.abs(pred["mu"] - test["mu"].to_numpy())
    # the same subsample reproduces the card's figure to float precision ...
    assert err_gap.mean() == pytest.approx(sub_card["mae"]["gap"], abs=1e-4)
    assert err_mu.mean() == pytest.approx(sub_card["mae"]["mu"], abs=1e-4)
    # ... and agrees with the full-test-split MAE within 4 standard errors
    full = model.card["metrics"]["test_mae"]
    assert abs(err_gap.mean() - full["gap"]) < 4 * err_gap.std() / np.sqrt(len(err_gap))
    assert abs(err_mu.mean() - full["mu"]) < 4 * err_mu.std() / np.sqrt(len(err_mu))


@pytest.mark.parametrize("name,task", [("qm9_gap", "gap"), ("qm9_mu", "mu")])
def test_property_rewards(model, name, task):
    smiles = ["CCO", "c1ccoc1", "N#CC(=O)N", "OCC1CC1"]
    reward = build_reward({"name": name})
    res = reward(smiles + [None, "garbage"], n_jobs=2)
    np.testing.assert_allclose(res.values[:4], model.predict(smiles)[task], rtol=1e-6)
    assert res.reasons[4:] == ["decode_failed", "parse_failed"]
    assert (res.values[4:] == reward.penalty).all() and reward.penalty < reward.range[0]


def test_gap_in_physical_range(model):
    gap = model.predict(load_qm9("valid")["smiles"].iloc[:200].tolist())["gap"]
    assert np.all((gap > 0) & (gap < 20))  # QM9 gaps lie in about [0.7, 17] eV


def test_unknown_model_name():
    with pytest.raises(ValueError, match="valid names"):
        load_property_model("qm9-nope")
    assert MODEL_NAMES == ("qm9-property",)


@pytest.mark.slow  # 9.4 s: the rewards benchmark's --quick run
def test_benchmark_quick(tmp_path, model):
    bench = load_benchmark("rewards")
    df = bench.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "rewards.csv").is_file() and (tmp_path / "rewards.md").is_file()
    eq = df[(df.metric == "parallel_equals_serial")]
    assert len(eq) == 2 and eq.value.all()
    assert set(df.group) == {"throughput", "surrogate", "property"}
