"""Molecule metrics against hand-computed values on tiny sets."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem

from tfftmol.chem import metrics as M

# 6 samples: 4 valid (CCO twice, written two ways), 1 None, 1 unparsable
SAMPLES = ["CCO", "OCC", "CCN", "c1ccccc1", None, "C1CC"]


def test_validity_by_reason():
    v = M.validity(SAMPLES + [SimpleNamespace(mol=None, reason="valence"), Chem.Mol()])
    assert v == pytest.approx({"validity": 4 / 8, "invalid_decode_failed": 1 / 8, "invalid_parse_failed": 1 / 8,
                               "invalid_valence": 1 / 8, "invalid_empty": 1 / 8})


@pytest.mark.parametrize("require_connected,expected", [(False, 1.0), (True, 0.5)])
def test_validity_connected(require_connected, expected):
    assert M.validity(["CC.O", "CCO"], require_connected)["validity"] == expected


@pytest.mark.parametrize("smiles,expected", [
    (["CCO", "OCC", "CCN"], 2 / 3), (["CCO"], 1.0), ([], float("nan")), (["C", "C", "C", "N"], 0.5),
])
def test_uniqueness(smiles, expected):
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in smiles]
    np.testing.assert_equal(M.uniqueness(canon), expected)


@pytest.mark.parametrize("gen,ref,expected", [
    (["CCO", "CCN", "CCC"], ["OCC"], 2 / 3),
    (["CCO", "CCO", "CCN"], ["CCN", "CCO"], 0.0),
    (["CCO", "CCO", "CCN"], [], 1.0),
    (["CCO", "CCO", "CCN"], ["CCS"], 1.0),
])
def test_novelty(gen, ref, expected):
    canon = [Chem.MolToSmiles(Chem.MolFromSmiles(s)) for s in gen]
    assert M.novelty(canon, ref) == pytest.approx(expected)


@pytest.mark.parametrize("smiles,expected", [
    # Morgan r=2 2048 bits: CCO and CCN share 3 of 9 on-bits (T = 1/3); benzene shares none
    (["CCO", "CCN", "c1ccccc1"], (2 / 3 + 1 + 1) / 3),
    (["CCO", "CCO"], 0.0),
    (["CCO", "CCN"], 2 / 3),
    (["CCO"], float("nan")),
])
def test_internal_diversity(smiles, expected):
    np.testing.assert_allclose(M.internal_diversity(smiles), expected)


def test_internal_diversity_subsample_is_seeded():
    smiles = ["C" * k + "O" for k in range(1, 30)]
    a = M.internal_diversity(smiles, max_n=10, seed=1)
    assert a == M.internal_diversity(smiles, max_n=10, seed=1)
    assert 0 < a < 1


@pytest.mark.parametrize("values,beta,tail,expected", [
    ([1, 2, 3, 4], 0.5, "right", 3.5),
    ([1, 2, 3, 4], 0.5, "left", 1.5),
    ([4, 3, 2, 1], 0.75, "right", 4.0),
    ([1, 2, 3, 4], 0.25, "left", 1.0),
    (list(range(10)), 0.9, "right", 9.0),
    (list(range(10)), 0.1, "left", 0.0),
    ([1, 2, 3], 0.5, "right", (3 + 0.5 * 2) / 1.5),  # top 1.5 samples: 3 and half of 2
    ([1, 2, 3], 0.5, "left", (1 + 0.5 * 2) / 1.5),
    ([5.0], 0.3, "right", 5.0),
])
def test_cvar_hand_values(values, beta, tail, expected):
    assert M.cvar(values, beta, tail) == pytest.approx(expected)


@pytest.mark.parametrize("beta", [0.1, 0.37, 0.9])
def test_cvar_matches_rockafellar_uryasev(beta):
    r = np.random.default_rng(0).normal(size=101)
    etas = np.sort(r)  # the minimum over eta is attained at a sample
    ru_right = min(e + np.mean(np.maximum(r - e, 0)) / (1 - beta) for e in etas)
    ru_left = max(e - np.mean(np.maximum(e - r, 0)) / beta for e in etas)
    assert M.cvar(r, beta, "right") == pytest.approx(ru_right)
    assert M.cvar(r, beta, "left") == pytest.approx(ru_left)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.77])
@pytest.mark.parametrize("tail", ["right", "left"])
def test_local_cvar_fallback_matches(beta, tail):
    r = np.sort(np.random.default_rng(1).normal(size=37))
    assert M._local_cvar(r, beta, tail) == pytest.approx(M.cvar(r, beta, tail))


@pytest.mark.parametrize("beta,tail", [(0.0, "right"), (1.0, "left"), (0.5, "middle")])
def test_cvar_bad_args(beta, tail):
    with pytest.raises(ValueError):
        M.cvar([1.0, 2.0], beta, tail)


def test_reward_stats():
    s = M.reward_stats(np.array([-0.5, 0.2, 0.4, 0.6]), np.array([False, True, True, True]), "qed",
                       quantiles=(0.5,), cvar_levels=(0.5, ("right", 0.75)))
    assert s == pytest.approx({"qed_mean": 0.175, "qed_mean_valid": 0.4, "qed_q0.5": 0.3,
                               "qed_cvar_right_0.5": 0.5, "qed_cvar_left_0.5": -0.15,
                               "qed_cvar_right_0.75": 0.6})


def test_evaluate_one_tidy_row():
    df = M.evaluate(SAMPLES, rewards=["qed", {"name": "logp"}], reference=["CCN"], cvar_levels=(0.5,),
                    quantiles=(0.5,), name="tiny", extra={"kl": 1.25})
    assert isinstance(df, pd.DataFrame) and len(df) == 1
    row = df.iloc[0]
    assert row["name"] == "tiny" and row["n"] == 6
    assert row["validity"] == pytest.approx(4 / 6)
    assert row["invalid_decode_failed"] == pytest.approx(1 / 6)
    assert row["uniqueness"] == pytest.approx(3 / 4)
    assert row["novelty"] == pytest.approx(2 / 3)
    assert row["kl"] == 1.25
    from rdkit.Chem import QED
    q = [QED.qed(Chem.MolFromSmiles(s)) for s in SAMPLES[:4]]
    assert row["qed_mean_valid"] == pytest.approx(np.mean(q))
    assert row["qed_mean"] == pytest.approx((sum(q) - 0.5 * 2) / 6)
    assert row["qed_cvar_left_0.5"] == pytest.approx((-0.5 - 0.5 + min(q)) / 3)
    assert "logp_mean" in row and "fcd" not in row


def test_evaluate_fcd_optional():
    df = M.evaluate(["CCO", "CCN"], reference=["CCC", "CCCl"], compute_fcd=True)
    if M.fcd_available():
        assert np.isfinite(df["fcd"].iloc[0])
    else:
        assert np.isnan(df["fcd"].iloc[0])


def test_all_exports_exist():
    for name in M.__all__:
        assert hasattr(M, name), name


def test_decoder_results_keep_their_reasons():
    import torch

    from tfftmol.chem import graph

    x = graph.encode(["CCO", "CCN"])
    bad = x.clone()
    nodes, edges = graph.split_state(bad)
    edges[:, :, :] = -1.0
    edges[:, :, 3] = 1.0  # every pair a triple bond: over-bonded
    decoded = graph.decode(torch.cat([x, graph.join_state(nodes, edges)]))
    v = M.validity(decoded)
    assert v["validity"] == 0.5 and v["invalid_valence"] == 0.5
