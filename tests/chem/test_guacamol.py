"""GuacaMol / PMO objectives: every objective and every term against the guacamol package's own scores.

``data/guacamol_reference.json`` holds the scores of ``guacamol==0.5.5`` (its
goal-directed suite v2, plus ``isomers_c7h8n2o2`` and QED) on 81 molecules, made
by ``data/make_guacamol_reference.py`` in a separate environment; guacamol is
not needed here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rdkit import Chem

from tfftmol.chem.mol import canonical_smiles
from tfftmol.chem.rewards import OBJECTIVES, PMO_TASKS, REWARDS, build_reward
from tfftmol.chem.rewards.guacamol import (Clipped, Formula, Gaussian, MaxGaussian, MinGaussian, ThresholdedLinear,
                                          fingerprint)

REF = json.loads((Path(__file__).parent / "data" / "guacamol_reference.json").read_text())
SMILES: list[str] = REF["smiles"]
TOL = 1e-9


def test_reference_covers_every_objective():
    assert len(SMILES) >= 50
    assert set(REF["scores"]) == set(OBJECTIVES) | {"qed"}
    assert set(PMO_TASKS) <= set(REWARDS) and len(PMO_TASKS) == 21  # PMO's 23 less drd2, jnk3, gsk3b ...
    assert set(OBJECTIVES) - set(PMO_TASKS) == {"isomers_c11h24"}  # ... plus GuacaMol v2's C11H24


def test_reference_molecules_are_canonical():
    assert [canonical_smiles(s) for s in SMILES] == SMILES


@pytest.mark.parametrize("name", sorted(REF["scores"]))
def test_matches_guacamol(name):
    res = build_reward({"name": name})(SMILES)
    assert res.valid.all(), res.summary()
    ref = np.asarray(REF["scores"][name])
    assert np.max(np.abs(res.values - ref)) <= TOL
    assert np.all((res.values >= 0) & (res.values <= 1))


@pytest.mark.parametrize("name", sorted(REF["terms"]))
def test_terms_match_guacamol(name):
    obj = OBJECTIVES[name]
    rows = range(0, len(SMILES), 3 if name.endswith("_hop") else 1)  # PHCO costs ~25 ms a molecule: every third
    got = np.array([obj.parts(Chem.MolFromSmiles(SMILES[i])) for i in rows])
    ref = np.array(REF["terms"][name])[list(rows)]
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= TOL


@pytest.mark.parametrize("name,target", [
    ("celecoxib_rediscovery", "CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F"),
    ("troglitazone_rediscovery", "Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O"),
    ("thiothixene_rediscovery", "CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1"),
    ("albuterol_similarity", "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1"),
    ("isomers_c11h24", "CCCCCCCCCCC"),
    ("isomers_c7h8n2o2", "Cc1cc([N+](=O)[O-])ccc1N"),
])
def test_known_maxima(name, target):
    """A target scores 1.0 on its own rediscovery/similarity task, an isomer on its isomer task (GuacaMol paper)."""
    assert build_reward(name)([target]).values[0] == pytest.approx(1.0, abs=1e-12)


def test_isomer_formula_counts():
    mol = Chem.MolFromSmiles("CCCCCCCCCC")  # C10H22 against C11H24: one C, two H, three atoms short
    g = Formula(formula="C11H24").parts(mol)
    assert g == pytest.approx([np.exp(-0.5), np.exp(-2.0), np.exp(-0.5 * (3 / 2) ** 2)])
    with pytest.raises(ValueError, match="formula"):
        Formula(formula="C11x")


def test_modifiers():
    assert Gaussian(2.0, 0.5)(2.5) == pytest.approx(np.exp(-0.5))
    assert MinGaussian(1.0, 1.0)(-3.0) == 1.0 and MinGaussian(1.0, 1.0)(2.0) == pytest.approx(np.exp(-0.5))
    assert MaxGaussian(100.0, 10.0)(150.0) == 1.0 and MaxGaussian(100.0, 10.0)(90.0) == pytest.approx(np.exp(-0.5))
    assert [Clipped(0.75)(x) for x in (-0.1, 0.3, 0.75, 0.9)] == pytest.approx([0.0, 0.4, 1.0, 1.0])
    assert [ThresholdedLinear(0.5)(x) for x in (0.25, 0.8)] == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="unknown fingerprint"):
        fingerprint(Chem.MolFromSmiles("CCO"), "ECFP8")


def test_yaml_penalty_parallel_and_cache():
    r = build_reward(yaml.safe_load("{name: osimertinib_mpo}"))
    assert r.penalty == -0.5 and r.range == (0.0, 1.0)
    assert build_reward(r.to_config()) == r and type(r).__name__ == "OsimertinibMPOReward"
    batch = SMILES[:70] + [None, "C1CC", "C(C)(C)(C)(C)C"]
    serial = r(batch)
    assert serial.reasons[-3:] == ["decode_failed", "parse_failed", "valence"]
    assert np.all(serial.values[-3:] == -0.5)
    par = build_reward("osimertinib_mpo")(batch, n_jobs=2)
    assert np.array_equal(par.values, serial.values) and par.reasons == serial.reasons
    again = r(batch)
    assert np.array_equal(again.values, serial.values) and r.cache_hits >= 70
    with pytest.raises(ValueError, match="unknown keys"):
        build_reward({"name": "median1", "target": "CCO"})


def test_readme_reward_table_lists_every_reward():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Rewards", 1)[1].split("\n#", 1)[0]
    missing = [name for name in REWARDS if f"`{name}`" not in table]
    assert not missing, f"README reward table misses {missing}"
