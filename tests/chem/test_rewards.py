"""Rewards: known values, validity penalty, transforms, combinations, config, parallel and cache."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rdkit import Chem
from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors

from tfftmol.chem import rewards as R
from tfftmol.chem.rewards import build_reward

SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",  # ibuprofen
    "c1ccccc1",  # benzene
    "CCO",  # ethanol
    "OC1C2CC3CC1C3O2",  # a QM9-like cage
    "N#CC1=CC=CN1",
]

DIRECT = {
    "qed": QED.qed,
    "logp": Crippen.MolLogP,
    "sa": R.sa_score,
    "tpsa": rdMolDescriptors.CalcTPSA,
    "mw": Descriptors.MolWt,
    "num_rings": rdMolDescriptors.CalcNumRings,
    "aromatic_rings": rdMolDescriptors.CalcNumAromaticRings,
}


@pytest.mark.parametrize("name", sorted(DIRECT))
@pytest.mark.parametrize("smiles", SMILES)
def test_matches_direct_rdkit(name, smiles):
    res = build_reward(name)([smiles])
    assert res.valid[0] and res.reasons == ["ok"]
    assert res.values[0] == pytest.approx(DIRECT[name](Chem.MolFromSmiles(smiles)), abs=1e-12)


@pytest.mark.parametrize("name,smiles,expected,tol", [
    ("qed", "CC(=O)Oc1ccccc1C(=O)O", 0.55, 0.005),  # Bickerton et al. 2012, aspirin
    ("tpsa", "CC(=O)Oc1ccccc1C(=O)O", 63.6, 0.05),  # PubChem, aspirin
    ("tpsa", "CCO", 20.23, 0.005),  # Ertl et al. 2000: one aliphatic OH
    ("mw", "CC(=O)Oc1ccccc1C(=O)O", 180.16, 0.01),  # aspirin
    ("logp", "c1ccccc1", 1.6866, 1e-4),  # Wildman-Crippen benzene
    ("sa", "c1ccccc1", 1.0, 1e-6),  # benzene sits at the easy end of the [1, 10] scale
])
def test_literature_values(name, smiles, expected, tol):
    assert build_reward(name)([smiles]).values[0] == pytest.approx(expected, abs=tol)


def test_penalized_logp_definition():
    smi = "C1CCCCCCC1"  # one 8-ring: ring penalty 2
    m = Chem.MolFromSmiles(smi)
    expected = Crippen.MolLogP(m) - R.sa_score(m) - 2
    assert build_reward("penalized_logp")([smi]).values[0] == pytest.approx(expected)


@pytest.mark.parametrize("spec,expected", [
    ({"name": "qed"}, -0.5),
    ({"name": "logp"}, -11.0),
    ({"name": "sa"}, -3.5),
    ({"name": "sa", "transform": [{"affine": {"scale": -1}}]}, -14.5),
    ({"name": "tpsa"}, -100.0),
    ({"name": "mw"}, -300.0),
    ({"name": "num_rings"}, -4.0),
    ({"name": "aromatic_rings"}, -3.0),
    ({"name": "penalized_logp"}, -17.5),
    ({"name": "similarity", "target": "CCO"}, -0.5),
    ({"name": "substructure", "smarts": "[OH]", "match_value": -1, "nomatch_value": 0}, -1.5),
    ({"name": "qm9_gap"}, -8.5),
    ({"name": "qm9_mu"}, -15.0),
    ({"name": "qed", "transform": [{"sigmoid": {"center": 0.5, "width": 0.1}}]}, None),
    ({"name": "qed", "penalty": -10}, -10.0),
])
def test_default_penalty_below_range(spec, expected):
    r = build_reward(spec)
    lo, hi = r.range
    assert r.penalty < lo
    if expected is not None:
        assert r.penalty == pytest.approx(expected)


class _Holder:
    def __init__(self, mol):
        self.mol = mol


@pytest.mark.parametrize("item,reason", [
    (None, "decode_failed"), ("not_a_smiles", "parse_failed"), ("C1CC", "parse_failed"), ("", "empty"),
    (Chem.Mol(), "empty"), (_Holder(None), "decode_failed"), (SimpleNamespace(mol=None), "decode_failed"),
    (42, "decode_failed"), ("C(C)(C)(C)(C)C", "valence"), (SimpleNamespace(mol=None, reason="valence"), "valence"),
], ids=["none", "garbage", "open_ring", "empty_str", "empty_mol", "holder_none", "ns_none", "int", "pentavalent",
        "decoder_reason"])
def test_invalid_inputs_penalised(item, reason):
    r = build_reward({"name": "qed", "penalty": -3.0})
    res = r(["CCO", item])
    assert res.reasons == ["ok", reason]  # the reason tfftmol.chem.mol.check (and the metrics) give
    assert res.values[1] == -3.0 and np.isnan(res.raw[1]) and not res.valid[1]
    assert res.counts == {**{r: 0 for r in R.REASONS}, "ok": 1, reason: 1}


def test_mol_and_holder_inputs():
    m = Chem.MolFromSmiles("CCO")
    res = build_reward("qed")([m, _Holder(m), "OCC"])
    assert res.valid.all()
    assert res.values[0] == res.values[1] == res.values[2] == pytest.approx(QED.qed(m))


def _picky(mol):
    n = mol.GetNumAtoms()
    if n == 3:
        raise RuntimeError("three atoms")
    if n == 4:
        return float("nan")
    if n == 5:
        return float("inf")
    return float(n)


@pytest.mark.parametrize("smiles,reason", [
    ("CC", "ok"), ("CCC", "reward_error"), ("CCCC", "reward_nan"), ("CCCCC", "reward_nan"), (None, "decode_failed"),
])
def test_failing_callable_counted_not_fatal(smiles, reason):
    r = R.CallableReward(_picky, range=(0, 10))
    res = r(["CCCCCC", smiles])
    assert res.reasons[1] == reason and res.reasons[0] == "ok"
    assert res.counts[reason] == (2 if reason == "ok" else 1)
    expected = 2.0 if reason == "ok" else r.penalty
    assert res.values[1] == expected and r.penalty == -5.0
    if reason == "reward_error":
        assert "three atoms" in res.messages["reward_error"]


def test_callable_needs_range_or_penalty():
    with pytest.raises(ValueError, match="range"):
        R.CallableReward(_picky)


@pytest.mark.parametrize("transform,x,expected", [
    ({"affine": {"scale": -1}}, 2.0, -2.0),
    ({"affine": {"scale": 2, "shift": 1}}, 2.0, 5.0),
    ({"clip": {"low": 0, "high": 1}}, 2.0, 1.0),
    ({"clip": {"low": 3}}, 2.0, 3.0),
    ({"sigmoid": {"center": 2, "width": 1}}, 2.0, 0.5),
    ({"sigmoid": {"center": 1, "width": 0.5}}, 2.0, 1 / (1 + math.exp(-2))),
    ({"sigmoid": {"center": 1, "width": -0.5}}, 2.0, 1 / (1 + math.exp(2))),
    ({"step": {"threshold": 2}}, 2.0, 1.0),
    ({"step": {"threshold": 2.5}}, 2.0, 0.0),
    ({"step": {"threshold": 2.5, "low": 1, "high": 0}}, 2.0, 1.0),
])
def test_transforms(transform, x, expected):
    r = build_reward({"name": "num_rings", "transform": [transform]})
    smi = "C1CC2CCC1C2"  # two rings (bicyclo[2.2.1])
    assert rdMolDescriptors.CalcNumRings(Chem.MolFromSmiles(smi)) == x
    assert r([smi]).values[0] == pytest.approx(expected)


def test_transforms_compose_in_order():
    r = build_reward({"name": "qed", "transform": [{"affine": {"scale": 10}}, {"clip": {"high": 5}}]})
    res = r(SMILES)
    direct = np.minimum(10 * np.array([QED.qed(Chem.MolFromSmiles(s)) for s in SMILES]), 5)
    np.testing.assert_allclose(res.values, direct)


def test_weighted_sum():
    spec = {"name": "sum", "terms": [
        {"weight": 1.0, "reward": {"name": "qed"}},
        {"weight": 0.1, "reward": {"name": "sa", "transform": [{"affine": {"scale": -1}}]}},
        {"weight": -0.5, "reward": {"name": "logp"}},
    ]}
    r = build_reward(spec)
    res = r(SMILES + [None])
    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    direct = [QED.qed(m) - 0.1 * R.sa_score(m) - 0.5 * Crippen.MolLogP(m) for m in mols]
    np.testing.assert_allclose(res.values[:-1], direct)
    # nominal range by interval arithmetic: [0,1] + 0.1*[-10,-1] - 0.5*[-5,7]
    assert r.range == pytest.approx((0 - 1 - 3.5, 1 - 0.1 + 2.5))
    assert res.values[-1] == r.penalty == pytest.approx(-4.5 - 0.5 * 7.9)


def test_weighted_sum_invalid_if_any_term_invalid():
    r = R.WeightedSum([(1.0, R.QEDReward()), (1.0, R.CallableReward(_picky, range=(0, 10)))])
    res = r(["CCC", "CCCCCC"])
    assert res.reasons == ["reward_error", "ok"]
    assert res.values[0] == r.penalty


ROUND_TRIP = [
    {"name": "qed"},
    {"name": "sa", "transform": [{"affine": {"scale": -1.0, "shift": 0.0}}], "penalty": -10.0},
    {"name": "similarity", "target": "CCO", "radius": 2, "n_bits": 2048},
    {"name": "substructure", "smarts": "[#7]", "match_value": -1.0, "nomatch_value": 0.0},
    {"name": "callable", "fn": "rdkit.Chem.Descriptors:MolWt", "range": [0.0, 600.0]},
    {"name": "qm9_gap", "transform": [{"clip": {"low": 0.0, "high": 12.0}}]},
    {"name": "sum", "terms": [
        {"weight": 1.0, "reward": {"name": "qed"}},
        {"weight": 0.25, "reward": {"name": "sa", "transform": [{"sigmoid": {"center": 3.0, "width": -1.0}}]}},
    ], "transform": [{"step": {"threshold": 0.5, "low": 0.0, "high": 1.0}}], "penalty": -1.0},
]


@pytest.mark.parametrize("spec", ROUND_TRIP, ids=[s["name"] for s in ROUND_TRIP])
def test_yaml_round_trip(spec):
    r = build_reward(spec)
    assert r.to_config() == spec
    text = yaml.safe_dump(r.to_config())
    r2 = build_reward(text)
    assert r2 == r and r2.to_config() == spec


def test_yaml_file(tmp_path):
    p = tmp_path / "reward.yaml"
    p.write_text("name: sa\ntransform:\n  - affine: {scale: -1}\npenalty: -10\n")
    r = build_reward(str(p))
    assert isinstance(r, R.SAReward) and r.penalty == -10 and r(["CCO"]).values[0] < 0


@pytest.mark.parametrize("spec,match", [
    ({"name": "nope"}, "valid names"),
    ({"name": "qed", "scale": 2}, "valid keys"),
    ({"name": "qed", "transform": [{"shift": {"by": 1}}]}, "valid transforms"),
    ({"name": "qed", "transform": [{"affine": {"slope": 1}}]}, "valid keys"),
    ({"name": "similarity"}, "target"),
    ({"name": "similarity", "target": "xx("}, "not a valid SMILES"),
    ({"name": "substructure", "smarts": "[[["}, "not a valid SMARTS"),
    ({"name": "sum", "terms": [{"w": 1, "reward": {"name": "qed"}}]}, "valid keys"),
    ({"name": "qed", "penalty": float("nan")}, "finite"),
    ({"name": "callable", "fn": "os:nonexistent_fn", "range": [0, 1]}, "cannot import"),
    (["qed"], "valid names"),
])
def test_bad_config_raises(spec, match):
    with pytest.raises(ValueError, match=match):
        build_reward(spec)


def test_lambda_callable_refuses_to_config():
    r = R.CallableReward(lambda m: 1.0, range=(0, 1))
    assert r(["CCO"]).values[0] == 1.0
    with pytest.raises(ValueError, match="import path"):
        r.to_config()


@pytest.mark.parametrize("smiles,expected", [("CCO", 1.0), ("OCC", 1.0), ("CCCCCCCCN", None)])
def test_similarity(smiles, expected):
    res = build_reward({"name": "similarity", "target": "CCO"})([smiles])
    if expected is None:
        assert 0 <= res.values[0] < 1
    else:
        assert res.values[0] == pytest.approx(expected)


@pytest.mark.parametrize("smiles,expected", [("CCO", -1.0), ("CCC", 0.0)])
def test_substructure(smiles, expected):
    r = build_reward({"name": "substructure", "smarts": "[OX2H]", "match_value": -1, "nomatch_value": 0})
    assert r([smiles]).values[0] == expected


def _many_smiles():
    out = []
    for k in range(1, 25):
        out += ["C" * k + "O", "C" * k + "N", "O=C" + "C" * k, "c1ccccc1" + "C" * k, "C1CC1" + "C" * k + "F"]
    return out + [None, "garbage", "CCC"] * 3  # invalid and duplicates


def _odd_fail(mol):
    if mol.GetNumAtoms() % 7 == 0:
        raise ValueError("multiple of seven")
    return QED.qed(mol)


@pytest.mark.parametrize("name", ["qed", "sa", "odd_fail"])
def test_parallel_equals_serial(name):
    smiles = _many_smiles()

    def make():
        if name == "odd_fail":
            return R.CallableReward(_odd_fail, range=(0, 1))
        return build_reward(name)

    serial = make()(smiles, n_jobs=1)
    parallel = make()(smiles, n_jobs=2)
    np.testing.assert_array_equal(serial.values, parallel.values)
    assert serial.reasons == parallel.reasons and serial.counts == parallel.counts
    if name == "odd_fail":
        assert serial.counts["reward_error"] > 0


def test_cache_hits_and_lru():
    r = build_reward({"name": "qed", "cache_size": 3})
    first = r(["CCO", "OCC", "CCN"])
    assert r.cache_misses == 2 and r.cache_hits == 0  # CCO and OCC share a canonical SMILES
    again = r(["CCO", "CCN"])
    assert r.cache_hits == 2 and r.cache_misses == 2
    np.testing.assert_array_equal(again.values, first.values[[0, 2]])
    r(["CCCC", "CCCCC"])  # evicts the oldest (CCO)
    assert len(r._cache) == 3 and "CCO" not in r._cache
    r.clear_cache()
    assert len(r._cache) == 0 and r.cache_hits == 0


def test_result_summary_and_validity():
    res = build_reward("qed")(["CCO", None, "CC"])
    assert res.validity == pytest.approx(2 / 3)
    assert "decode_failed=1" in res.summary()
    assert len(res) == 3


def test_all_exports_exist():
    for name in R.__all__:
        assert hasattr(R, name), name


def test_single_item_and_decoder_results():
    from tfftmol.chem import graph

    r = build_reward("qed")
    assert len(r("CCO")) == 1 and r("CCO").valid[0]
    decoded = graph.decode(graph.encode(["CCO", "c1ccoc1"]))
    res = r(decoded)
    np.testing.assert_allclose(res.values, [QED.qed(d.mol) for d in decoded])


def test_parallel_falls_back_to_serial_in_daemon(monkeypatch):
    class Broken:
        def __init__(self, *a, **k):
            raise AssertionError("daemonic processes are not allowed to have children")

    monkeypatch.setattr(R.pool, "ProcessPoolExecutor", Broken)
    smiles = _many_smiles()
    with pytest.warns(RuntimeWarning, match="serially"):
        res = build_reward("qed")(smiles, n_jobs=2)
    np.testing.assert_array_equal(res.values, build_reward("qed")(smiles).values)
