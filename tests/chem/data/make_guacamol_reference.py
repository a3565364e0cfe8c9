"""Write ``guacamol_reference.json``: the ``guacamol`` package's own scores of the GuacaMol/PMO objectives.

Not part of the test suite: run it by hand in a separate, throw-away environment
that has ``guacamol==0.5.5`` (installed with ``--no-deps``), ``tqdm`` and the same
RDKit as the project (``rdkit==2026.09.1``)::

    python3.11 -m venv gvenv
    gvenv/bin/pip install rdkit==2026.09.1 numpy==2.4.6 scipy==1.17.1 tqdm==4.70.1
    gvenv/bin/pip install --no-deps guacamol==0.5.5
    gvenv/bin/python tests/chem/data/make_guacamol_reference.py

guacamol 0.5.5 imports two things that no longer exist or that the
goal-directed objectives never use: ``scipy.histogram`` (removed from SciPy;
aliased here to ``numpy.histogram``, used only by distribution-learning code)
and the ``fcd``/``joblib`` packages (the Frechet ChemNet distance; stubbed).
The scoring functions themselves run unchanged.

The molecules are the canonical SMILES (as ``tfftmol.chem.mol`` writes them) of
every objective's target molecules, hand-made isomers and SMARTS hits, and the
first molecules of the ZINC250k and QM9 test splits shipped with tfftmol.
"""
from __future__ import annotations

import csv
import gzip
import json
import sys
import types
from pathlib import Path

import numpy
import scipy

scipy.histogram = numpy.histogram  # removed from SciPy; guacamol imports it for distribution learning only
for _mod in ("fcd", "joblib"):  # distribution-learning dependencies, unused by goal-directed objectives
    sys.modules.setdefault(_mod, types.ModuleType(_mod))
sys.modules["joblib"].Parallel = sys.modules["joblib"].delayed = None

import guacamol  # noqa: E402
from guacamol.benchmark_suites import goal_directed_suite_v2  # noqa: E402
from guacamol.standard_benchmarks import isomers_c7h8n2o2, qed_benchmark  # noqa: E402
from rdkit import Chem, rdBase  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "tfftmol" / "chem" / "data"

#: guacamol benchmark name -> tfftmol reward name.
NAMES = {
    "Celecoxib rediscovery": "celecoxib_rediscovery",
    "Troglitazone rediscovery": "troglitazone_rediscovery",
    "Thiothixene rediscovery": "thiothixene_rediscovery",
    "Aripiprazole similarity": "aripiprazole_similarity",
    "Albuterol similarity": "albuterol_similarity",
    "Mestranol similarity": "mestranol_similarity",
    "C11H24": "isomers_c11h24",
    "C9H10N2O2PF2Cl": "isomers_c9h10n2o2pf2cl",
    "Median molecules 1": "median1",
    "Median molecules 2": "median2",
    "Osimertinib MPO": "osimertinib_mpo",
    "Fexofenadine MPO": "fexofenadine_mpo",
    "Ranolazine MPO": "ranolazine_mpo",
    "Perindopril MPO": "perindopril_mpo",
    "Amlodipine MPO": "amlodipine_mpo",
    "Sitagliptin MPO": "sitagliptin_mpo",
    "Zaleplon MPO": "zaleplon_mpo",
    "Valsartan SMARTS": "valsartan_smarts",
    "Deco Hop": "deco_hop",
    "Scaffold Hop": "scaffold_hop",
    "C7H8N2O2": "isomers_c7h8n2o2",
    "QED": "qed",
}

HAND = [
    # the objectives' own molecules
    "CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F",  # celecoxib
    "Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O",  # troglitazone
    "CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1",  # thiothixene
    "Clc4cccc(N3CCN(CCCCOc2ccc1c(NC(=O)CC1)c2)CC3)c4Cl",  # aripiprazole
    "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",  # albuterol
    "COc1ccc2[C@H]3CC[C@@]4(C)[C@@H](CC[C@@]4(O)C#C)[C@@H]3CCc2c1",  # mestranol
    "CC1(C)C2CCC1(C)C(=O)C2",  # camphor
    "CC(C)C1CCC(C)CC1O",  # menthol
    "O=C1N(CC(N2C1CC3=C(C2C4=CC5=C(OCO5)C=C4)NC6=C3C=CC=C6)=O)C",  # tadalafil
    "CCCC1=NN(C2=C1N=C(NC2=O)C3=C(C=CC(=C3)S(=O)(=O)N4CCN(CC4)C)OCC)C",  # sildenafil
    "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc2nccc(n2)c3cn(C)c4ccccc34",  # osimertinib
    "CC(C)(C(=O)O)c1ccc(cc1)C(O)CCCN2CCC(CC2)C(O)(c3ccccc3)c4ccccc4",  # fexofenadine
    "COc1ccccc1OCC(O)CN2CCN(CC(=O)Nc3c(C)cccc3C)CC2",  # ranolazine
    "O=C(OCC)C(NC(C(=O)N1C(C(=O)O)CC2CCCCC12)C)CCC",  # perindopril
    "Clc1ccccc1C2C(=C(/N/C(=C2/C(=O)OCC)COCCN)C)\\C(=O)OC",  # amlodipine
    "Fc1cc(c(F)cc1F)CC(N)CC(=O)N3Cc2nnc(n2CC3)C(F)(F)F",  # sitagliptin
    "O=C(C)N(CC)C1=CC=CC(C2=CC=NC3=C(C=NN23)C#N)=C1",  # zaleplon
    "CCCCC(=O)N(Cc1ccc(cc1)-c1ccccc1-c1nn[nH]n1)C(C(C)C)C(O)=O",  # valsartan (matches the SMARTS)
    "CN(C=O)Cc1ccc(-c2ccccc2)cc1",  # the valsartan SMARTS as a molecule
    "CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C",  # deco-hop / scaffold-hop start molecule
    "CCCOc1cc2ncnc(Nc3ccc4ccccc4c3)c2cc1O",  # scaffold kept, decorations changed
    "CCCOc1cc2cccc(Nc3ccc4ncsc4c3)c2cc1",  # scaffold changed, decoration kept
    "CCCOc1ccc(Nc2ccc3ncsc3c2)cc1",
    # isomers
    "CCCCCCCCCCC",  # undecane, C11H24
    "CC(C)CC(C)(C)CC(C)C",  # C11H24
    "CCCCCCCCCC",  # decane, one carbon short
    "Cc1cc([N+](=O)[O-])ccc1N",  # 2-methyl-4-nitroaniline, C7H8N2O2
    "NC(=O)c1ccc(O)c(N)c1",  # C7H8N2O2
    "O=C(NCc1ccc(Cl)cc1)OP(F)F",  # C8H7NO2PF2Cl, near C9H10N2O2PF2Cl
    "CN(C)c1ccc(C(=O)OP(F)F)cc1Cl",  # C9H9NO2PF2Cl
    "CNC(=O)c1ccc(NP(F)(F)=O)c(Cl)c1C",  # C9H10N2O2PF2Cl
]


def canonical(smiles: str) -> str:
    """Canonical SMILES as tfftmol writes it: parse, write, parse, write."""
    with rdBase.BlockLogs():
        s = Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
        return Chem.MolToSmiles(Chem.MolFromSmiles(s))


def first(path: Path, n: int, split: str = "test") -> list[str]:
    out = []
    with gzip.open(path, "rt") as fh:
        for row in csv.DictReader(fh):
            if row["split"] == split and Chem.MolFromSmiles(row["smiles"]) is not None:
                out.append(row["smiles"])
                if len(out) == n:
                    break
    return out


def main() -> None:
    smiles: list[str] = []
    for s in HAND + first(DATA / "zinc250k.csv.gz", 40) + first(DATA / "qm9.csv.gz", 200)[100::10]:
        c = canonical(s)
        if c not in smiles:
            smiles.append(c)
    benches = goal_directed_suite_v2() + [isomers_c7h8n2o2(), qed_benchmark()]
    scores, terms = {}, {}
    for b in benches:
        name = NAMES[b.name]
        scores[name] = [float(b.objective.score(s)) for s in smiles]
        parts = getattr(b.objective, "scoring_functions", None)
        if parts is not None:  # a mean of terms: each term's modified score, in guacamol's order
            terms[name] = [[float(f.score(s)) for f in parts] for s in smiles]
    out = {
        "about": "scores (and, for a mean of terms, each term's score) of the guacamol 0.5.5 package "
                 "(goal_directed_suite_v2, plus isomers_c7h8n2o2 and QED at their defaults) on canonical "
                 "SMILES; written by make_guacamol_reference.py",
        "guacamol": guacamol.__version__ if hasattr(guacamol, "__version__") else "0.5.5",
        "rdkit": rdBase.rdkitVersion,
        "smiles": smiles,
        "scores": scores,
        "terms": terms,
    }
    (HERE / "guacamol_reference.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"{len(smiles)} molecules x {len(scores)} objectives")


if __name__ == "__main__":
    main()
