"""xTB rewards: seeded conformers, dxtb against tblite, failures with their reasons, the cache.

``data/xtb_reference.json`` holds, for seven molecules, the conformer that
:func:`~tfftmol.chem.rewards.xtb.conformer` builds and tblite 0.8.0's GFN2 (and
for two, GFN1) energy, gap and dipole at it (``data/make_xtb_reference.py``).
The conformer tests need RDKit only; the rest skip without dxtb.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from tfftmol.chem.rewards import build_reward
from tfftmol.chem.rewards import pool as reward_pool
from tfftmol.chem.rewards import xtb
from tfftmol.chem.rewards.xtb import XTBFailure, conformer

REF = json.loads((Path(__file__).parent / "data" / "xtb_reference.json").read_text())["molecules"]
needs_dxtb = pytest.mark.skipif(not xtb.available(), reason="dxtb (optional, see tfftmol/chem/rewards/xtb.py) "
                                                            "is not installed")
#: dxtb against tblite at the same geometry (two independent GFN-xTB codes, SCF tolerances apart).
TOL = {"energy": 1e-5, "gap": 1e-3, "dipole": 1e-3}  # Hartree, eV, Debye


@pytest.mark.parametrize("row", REF, ids=[r["smiles"] for r in REF])
def test_conformer_is_the_reference_one(row):
    numbers, positions = conformer(Chem.MolFromSmiles(row["smiles"]), seed=0)
    assert numbers.tolist() == row["numbers"]
    np.testing.assert_allclose(positions, np.array(row["positions"]), atol=1e-6)


def test_conformer_seeded():
    mol = Chem.MolFromSmiles("CCCCOC(=O)CN")
    a, b, c, d = (conformer(mol, seed=s)[1] for s in (0, 0, 1, 2))
    assert np.array_equal(a, b) and not np.allclose(a, d)
    assert np.array_equal(a, c)  # RDKit's random engine takes seed 0 as 1


@pytest.mark.parametrize("smiles,reason", [("[Na+].[Cl-]", "disconnected"), ("C[Se]C", "xtb_forcefield")])
def test_conformer_failures(smiles, reason):
    with pytest.raises(XTBFailure) as e:
        conformer(Chem.MolFromSmiles(smiles))
    assert e.value.reason == reason


def test_embedding_failure(monkeypatch):
    monkeypatch.setattr(xtb, "EMBED_RETRY_ITERATIONS", 1)  # a strained QM9 cage ETKDG does not embed quickly
    with pytest.raises(XTBFailure, match="no conformer") as e:
        conformer(Chem.MolFromSmiles("N=C1OC2CN3CC12C3"))
    assert e.value.reason == "xtb_embed"


def test_time_limit_raises_and_keeps_an_outer_alarm():
    import signal
    import time

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)  # e.g. pytest-timeout's alarm
        with pytest.raises(XTBFailure) as e:
            with xtb._time_limit(0.05):
                time.sleep(1.0)
        assert e.value.reason == "xtb_timeout"
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.3  # the outer alarm is set again ...
        time.sleep(0.4)
        assert fired == [1]  # ... and fires
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(xtb.available(), reason="dxtb is installed")
def test_without_dxtb_the_config_says_how_to_install():
    with pytest.raises(ValueError, match="pip install --no-deps dxtb==0.4.0"):
        build_reward({"name": "xtb_gap"})


#: single points of the cage, the cation, the radical and GFN1 (the rest: through the rewards, below)
CASES = [(r, "gfn2") for r in REF[4:]] + [(r, "gfn1") for r in REF if "gfn1" in r]


@needs_dxtb
@pytest.mark.parametrize("row,method", CASES, ids=[f"{r['smiles']}-{m}" for r, m in CASES])
def test_dxtb_matches_tblite(row, method):
    got = xtb.single_point(np.array(row["numbers"]), np.array(row["positions"]), method, row["charge"],
                           row["unpaired"])
    for key, tol in TOL.items():
        assert got[key] == pytest.approx(row[method][key], abs=tol), key


@needs_dxtb
def test_rewards_values_cache_parallel_and_config(monkeypatch):
    rows = REF[:4]  # the small ones
    smiles = [r["smiles"] for r in rows]
    gap, energy, dipole = (build_reward(n) for n in ("xtb_gap", "xtb_energy", "xtb_dipole"))
    res = {n: r(smiles) for n, r in (("gap", gap), ("energy", energy), ("dipole", dipole))}
    for i, row in enumerate(rows):
        assert res["gap"].values[i] == pytest.approx(row["gfn2"]["gap"], abs=TOL["gap"])
        assert res["energy"].values[i] == pytest.approx(row["gfn2"]["energy"] / row["heavy_atoms"], abs=TOL["energy"])
        assert res["dipole"].values[i] == pytest.approx(row["gfn2"]["dipole"], abs=TOL["dipole"])
    again = gap(smiles)  # served by the canonical-SMILES cache
    assert np.array_equal(again.values, res["gap"].values) and gap.cache_hits == len(smiles)
    assert gap(["[H]O[H]"]).values[0] == res["gap"].values[0]  # water written another way: the same conformer
    xtb._cached.cache_clear()  # the workers compute afresh
    monkeypatch.setattr(reward_pool, "MIN_PARALLEL", 2)
    par = build_reward("xtb_dipole")(smiles, n_jobs=2)
    assert par.reasons == ["ok"] * len(smiles) and np.array_equal(par.values, res["dipole"].values)
    cfg = {"name": "xtb", "target": "dipole", "method": "gfn1", "seed": 3, "time_limit": 5.0, "maxiter": 100}
    assert build_reward(cfg).to_config() == cfg and build_reward(gap.to_config()) == gap
    assert (gap.penalty, energy.penalty, dipole.penalty) == (-7.5, -7.0, -5.0)


@needs_dxtb
def test_failures_penalised_with_their_reason(monkeypatch):
    monkeypatch.setattr(xtb, "EMBED_RETRY_ITERATIONS", 1)  # the cage fails to embed quickly
    res = build_reward("xtb_gap")([None, "C1CC", "[Na+].[Cl-]", "C[Se]C", "N=C1OC2CN3CC12C3", "CC"])
    assert res.reasons == ["decode_failed", "parse_failed", "disconnected", "xtb_forcefield", "xtb_embed", "ok"]
    assert np.all(res.values[:5] == -7.5) and res.values[5] > 0
    assert res.messages["xtb_embed"] == "ETKDG found no conformer"
    scf = build_reward({"name": "xtb_gap", "maxiter": 1})(["CCO"])
    assert scf.reasons == ["xtb_scf"] and "SCF" in scf.messages["xtb_scf"]
    xtb._cached.cache_clear()  # computed afresh, not served from an earlier test's cache
    slow = build_reward({"name": "xtb_gap", "time_limit": 1e-3})(["CCCCCCCCCO"])  # embedding alone takes longer
    assert slow.reasons == ["xtb_timeout"] and slow.values[0] == -7.5
