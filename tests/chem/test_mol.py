"""One parser, one canonical SMILES, one vocabulary of why a molecule is invalid (tfftmol.chem.mol)."""
from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from rdkit import Chem

from tfftmol.chem import graph
from tfftmol.chem import metrics as M
from tfftmol.chem import mol
from tfftmol.chem.rewards import build_reward
from tfftmol.chem.rewards.descriptors import DESCRIPTORS, calculate

ITEMS = [
    ("OCC", "ok"),
    (Chem.MolFromSmiles("OCC"), "ok"),
    (SimpleNamespace(mol=Chem.MolFromSmiles("CCO"), smiles="CCO"), "ok"),
    (None, "decode_failed"),
    (SimpleNamespace(mol=None), "decode_failed"),
    (3.5, "decode_failed"),
    ("C1CC", "parse_failed"),       # unclosed ring
    ("not_a_smiles", "parse_failed"),
    ("", "empty"),
    (Chem.Mol(), "empty"),
    ("C(C)(C)(C)(C)C", "valence"),  # pentavalent carbon
    ("c1cccc1", "sanitization"),    # cannot be kekulised
    (SimpleNamespace(mol=None, reason="disconnected"), "disconnected"),  # a decoder's own reason is kept
]


@pytest.mark.parametrize("item,reason", ITEMS, ids=[f"{i}-{r}" for i, (_, r) in enumerate(ITEMS)])
def test_check_reason(item, reason):
    c = mol.check(item)
    assert c.reason == reason and c.reason in mol.REASONS
    assert c.valid == (reason == "ok")
    assert (c.smiles == "CCO") if c.valid else (c.smiles is None and c.mol is None)


def test_rewards_and_metrics_give_the_same_reasons():
    items = [it for it, _ in ITEMS]
    _, metric_reasons = M.classify(items)
    res = build_reward("qed")(items)
    assert metric_reasons == res.reasons == [r for _, r in ITEMS]


@pytest.mark.parametrize("smiles,connected,reason", [("CC.O", False, "ok"), ("CC.O", True, "disconnected")])
def test_require_connected(smiles, connected, reason):
    assert mol.check(smiles, require_connected=connected).reason == reason


def test_decoder_reasons_are_the_shared_vocabulary():
    assert set(graph.REASONS) <= set(mol.REASONS)


@pytest.mark.parametrize("smiles", ["Cn1cnc2c1c(=O)n(C)c(=O)n2C", "OC1C2CC3CC1C3O2", "N#CC1=CC=CN1"])
def test_canonical_smiles_is_a_fixed_point(smiles):
    key = mol.canonical_smiles(smiles)
    assert key == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    assert mol.canonical_smiles(key) == key == mol.canonical_smiles(Chem.MolFromSmiles(smiles))


# descriptor table: known values on two molecules (REINVENT4's test style)
@pytest.mark.parametrize("name,expected", [
    ("mw", (46.069, 78.114)),       # ethanol, benzene: g/mol
    ("tpsa", (20.23, 0.0)),         # Ertl et al. 2000
    ("logp", (-0.0014, 1.6866)),    # Wildman-Crippen
    ("num_rings", (0.0, 1.0)),
    ("aromatic_rings", (0.0, 1.0)),
])
def test_descriptor_known_values(name, expected):
    got = calculate(["CCO", "c1ccccc1"], [name])[name]
    np.testing.assert_allclose(got, expected, atol=5e-3)


def test_descriptor_failures_are_nan():
    got = calculate(["CCO", None, "C1CC"], ["qed"])["qed"]
    assert np.isfinite(got[0]) and np.isnan(got[1:]).all()
    with pytest.raises(ValueError, match="valid names"):
        calculate(["CCO"], ["nope"])


@pytest.mark.parametrize("name", sorted(DESCRIPTORS))
def test_every_descriptor_is_a_reward(name):
    smiles = ["CCO", "c1ccccc1"]
    np.testing.assert_array_equal(build_reward(name)(smiles).values, calculate(smiles, [name])[name])


def test_property_model_imports_without_rewards():
    """No import cycle: the property model needs only tfftmol.chem.mol, never the rewards package."""
    code = ("import sys, tfftmol.chem.property_model; "
            "assert 'tfftmol.chem.rewards' not in sys.modules, sorted(m for m in sys.modules if 'tfftmol' in m)")
    subprocess.run([sys.executable, "-c", code], check=True)
