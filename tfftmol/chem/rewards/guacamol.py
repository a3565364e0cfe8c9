"""The GuacaMol / PMO goal-directed objectives, offline and pure RDKit.

Each objective of GuacaMol's goal-directed suite v2 (Brown et al. 2019,
*J. Chem. Inf. Model.* 59, 1096) that the PMO benchmark (Gao et al. 2022,
NeurIPS Datasets and Benchmarks) reuses is one row of :data:`OBJECTIVES` and one
reward, by its PMO name: ``{name: osimertinib_mpo}``.  Every score lies in
``[0, 1]``, higher is better (default penalty -0.5).  ``qed`` is the
descriptor reward of :mod:`~.descriptors` (the same ``QED.qed``).

An objective is a *mean* (geometric or arithmetic, as GuacaMol sets it) of
*terms*; a term is a raw score passed through a *modifier*:

- :class:`Tanimoto`: similarity to a target molecule on one of GuacaMol's
  fingerprints (:data:`FINGERPRINTS`): ``ECFP4``/``ECFP6`` (unhashed Morgan
  count fingerprints of radius 2/3), ``FCFP4`` (the same with pharmacophoric
  feature invariants), ``AP`` (atom-pair counts up to 10 bonds), ``PHCO``
  (Gobbi-Poppinger 2D pharmacophore bits); Tanimoto on counts where the
  fingerprint counts;
- :class:`Property`: an RDKit descriptor (:data:`PROPERTIES`);
- :class:`Formula`: closeness to a molecular formula (an isomer task): the
  mean of one Gaussian(n, 1) per element of the formula on its atom count
  (hydrogens included) and a Gaussian(N, 2) on the total atom count; elements
  absent from the formula count only through the total;
- :class:`Smarts`: 1 if the molecule matches the SMARTS, else 0 (or the
  reverse for an unwanted pattern).

Modifiers (:class:`Gaussian`, :class:`MinGaussian`, :class:`MaxGaussian`,
:class:`Clipped`, :class:`ThresholdedLinear`) map a raw score to ``[0, 1]``.
The definitions follow GuacaMol's ``standard_benchmarks.py`` for suite v2;
``isomers_c7h8n2o2`` (PMO, not in suite v2) uses GuacaMol's default geometric
mean.  ``tests/chem/test_guacamol.py`` checks every objective, and every term
of every mean, against the ``guacamol`` package's own scores on 81 molecules
(``tests/chem/data/guacamol_reference.json``, agreement to 1e-9).

Left out: PMO's three model-based oracles (``drd2``, ``jnk3``, ``gsk3b``),
pickled scikit-learn classifiers of unclear licence.

>>> round(OBJECTIVES["celecoxib_rediscovery"](Chem.MolFromSmiles(
...     "Cc1ccc(-c2cc(C(F)(F)F)nn2-c2ccc(S(N)(=O)=O)cc2)cc1")), 6)
1.0
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rdkit import Chem, DataStructs
from rdkit.Chem import Crippen, Descriptors, rdFingerprintGenerator, rdMolDescriptors
from rdkit.Chem.Pharm2D import Generate, Gobbi_Pharm2D

from .base import Reward

__all__ = [
    "Gaussian", "MinGaussian", "MaxGaussian", "Clipped", "ThresholdedLinear", "FINGERPRINTS", "fingerprint",
    "PROPERTIES", "Tanimoto", "Property", "Formula", "Smarts", "Objective", "OBJECTIVES", "PMO_TASKS",
    "GuacaMolReward", "GUACAMOL_REWARDS",
]


# -- modifiers: raw score -> [0, 1] -------------------------------------------------------------------------
@dataclass(frozen=True)
class Gaussian:
    """``exp(-(x - mu)^2 / (2 sigma^2))``: 1 at ``mu``."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        z = (x - self.mu) / self.sigma
        return math.exp(-0.5 * z * z)


@dataclass(frozen=True)
class MinGaussian:
    """1 for ``x <= mu``, a Gaussian tail above it (a property to keep *under* ``mu``)."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        return Gaussian(self.mu, self.sigma)(max(x, self.mu))


@dataclass(frozen=True)
class MaxGaussian:
    """1 for ``x >= mu``, a Gaussian tail below it (a property to keep *over* ``mu``)."""

    mu: float
    sigma: float

    def __call__(self, x: float) -> float:
        return Gaussian(self.mu, self.sigma)(min(x, self.mu))


@dataclass(frozen=True)
class Clipped:
    """The line through ``(lower_x, low)`` and ``(upper_x, high)``, clipped to ``[low, high]``."""

    upper_x: float
    lower_x: float = 0.0
    high: float = 1.0
    low: float = 0.0

    def __call__(self, x: float) -> float:
        slope = (self.high - self.low) / (self.upper_x - self.lower_x)
        y = self.high + slope * (x - self.upper_x)
        return min(max(y, self.low), self.high)


@dataclass(frozen=True)
class ThresholdedLinear:
    """``min(x, threshold) / threshold``."""

    threshold: float

    def __call__(self, x: float) -> float:
        return min(x, self.threshold) / self.threshold


Modifier = Callable[[float], float]


# -- fingerprints ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _generator(kind: str):
    """The RDKit fingerprint generator of a kind (built once per process; generators do not pickle)."""
    if kind == "ECFP4":
        return rdFingerprintGenerator.GetMorganGenerator(radius=2)
    if kind == "ECFP6":
        return rdFingerprintGenerator.GetMorganGenerator(radius=3)
    if kind == "FCFP4":
        return rdFingerprintGenerator.GetMorganGenerator(
            radius=2, atomInvariantsGenerator=rdFingerprintGenerator.GetMorganFeatureAtomInvGen())
    if kind == "AP":
        return rdFingerprintGenerator.GetAtomPairGenerator(maxDistance=10)
    raise KeyError(kind)


#: GuacaMol's fingerprint names -> what they are.
FINGERPRINTS: dict[str, str] = {
    "ECFP4": "Morgan radius 2, unhashed counts",
    "ECFP6": "Morgan radius 3, unhashed counts",
    "FCFP4": "Morgan radius 2 on pharmacophoric feature invariants, unhashed counts",
    "AP": "atom pairs up to 10 bonds apart, counts",
    "PHCO": "Gobbi-Poppinger 2D pharmacophore, sparse bits",
}


def fingerprint(mol: Chem.Mol, kind: str):
    """The fingerprint ``kind`` (a key of :data:`FINGERPRINTS`) of ``mol``."""
    if kind == "PHCO":
        return Generate.Gen2DFingerprint(mol, Gobbi_Pharm2D.factory)
    if kind not in FINGERPRINTS:
        raise ValueError(f"unknown fingerprint {kind!r}; valid: {sorted(FINGERPRINTS)}")
    return _generator(kind).GetSparseCountFingerprint(mol)


@functools.lru_cache(maxsize=None)
def _target_fp(smiles: str, kind: str):
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"target {smiles!r} is not a valid SMILES")
    return fingerprint(mol, kind)


# -- terms ---------------------------------------------------------------------------------------------------
def _identity(x: float) -> float:
    return x


#: Descriptor names used by the objectives -> RDKit function.
PROPERTIES: dict[str, Callable[[Chem.Mol], float]] = {
    "logp": Crippen.MolLogP,
    "tpsa": rdMolDescriptors.CalcTPSA,
    "bertz": Descriptors.BertzCT,
    "num_rings": rdMolDescriptors.CalcNumRings,
    "aromatic_rings": rdMolDescriptors.CalcNumAromaticRings,
    "fluorine": lambda m: sum(1 for a in m.GetAtoms() if a.GetAtomicNum() == 9),
}


@dataclass(frozen=True)
class Tanimoto:
    """``modifier(Tanimoto(fp(mol), fp(target)))``."""

    target: str
    fp: str
    modifier: Modifier = _identity

    def __call__(self, mol: Chem.Mol) -> float:
        sim = DataStructs.TanimotoSimilarity(fingerprint(mol, self.fp), _target_fp(self.target, self.fp))
        return self.modifier(sim)


@dataclass(frozen=True)
class Property:
    """``modifier(PROPERTIES[name](mol))``."""

    name: str
    modifier: Modifier = _identity

    def __call__(self, mol: Chem.Mol) -> float:
        return self.modifier(float(PROPERTIES[self.name](mol)))


@dataclass(frozen=True)
class Smarts:
    """1 if ``mol`` matches ``smarts``, else 0; the reverse with ``unwanted``."""

    smarts: str
    unwanted: bool = False

    def __call__(self, mol: Chem.Mol) -> float:
        hit = mol.HasSubstructMatch(_pattern(self.smarts))
        return float(hit != self.unwanted)


@functools.lru_cache(maxsize=None)
def _pattern(smarts: str) -> Chem.Mol:
    patt = Chem.MolFromSmarts(smarts)
    if patt is None:
        raise ValueError(f"{smarts!r} is not a valid SMARTS")
    return patt


def _mean(values: Sequence[float], kind: str) -> float:
    if kind == "geometric":
        prod = 1.0
        for v in values:
            prod *= v
        return prod ** (1.0 / len(values))
    if kind == "arithmetic":
        return sum(values) / len(values)
    raise ValueError(f"mean must be 'geometric' or 'arithmetic', got {kind!r}")


@dataclass(frozen=True)
class Objective:
    """``mean(term(mol) for term in terms)``.

    Attributes:
        terms: the terms, each ``Mol -> [0, 1]``.
        mean: ``"geometric"`` or ``"arithmetic"``.
        doc: one line for the README's reward table.
    """

    terms: tuple
    mean: str = "geometric"
    doc: str = ""

    def parts(self, mol: Chem.Mol) -> list[float]:
        """Each term's score, in order."""
        return [float(t(mol)) for t in self.terms]

    def __call__(self, mol: Chem.Mol) -> float:
        return _mean(self.parts(mol), self.mean)


@dataclass(frozen=True)
class Formula(Objective):
    """Closeness to a molecular formula such as ``"C9H10N2O2PF2Cl"`` (module docstring); ``terms`` is unused."""

    formula: str = ""
    terms: tuple = ()
    counts: tuple = field(init=False, default=())

    def __post_init__(self):
        found = re.findall(r"([A-Z][a-z]?)(\d*)", self.formula)
        if not found or "".join(e + n for e, n in found) != self.formula:
            raise ValueError(f"not a molecular formula: {self.formula!r}")
        object.__setattr__(self, "counts", tuple((e, int(n) if n else 1) for e, n in found))

    def parts(self, mol: Chem.Mol) -> list[float]:
        """One Gaussian(n, 1) per element of the formula, then the Gaussian(N, 2) of the total atom count."""
        have: dict[str, int] = {}
        for a in mol.GetAtoms():
            have[a.GetSymbol()] = have.get(a.GetSymbol(), 0) + 1
            have["H"] = have.get("H", 0) + a.GetTotalNumHs()
        total = sum(have.values())
        out = [Gaussian(n, 1.0)(have.get(e, 0)) for e, n in self.counts]
        out.append(Gaussian(sum(n for _, n in self.counts), 2.0)(total))
        return out


def _prop(name: str, smiles: str) -> float:
    """A descriptor of a target molecule (the centre of a 'same property as X' term)."""
    return float(PROPERTIES[name](Chem.MolFromSmiles(smiles)))


# -- the objectives ------------------------------------------------------------------------------------------
CELECOXIB = "CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F"
TROGLITAZONE = "Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O"
THIOTHIXENE = "CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1"
ARIPIPRAZOLE = "Clc4cccc(N3CCN(CCCCOc2ccc1c(NC(=O)CC1)c2)CC3)c4Cl"
ALBUTEROL = "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1"
MESTRANOL = "COc1ccc2[C@H]3CC[C@@]4(C)[C@@H](CC[C@@]4(O)C#C)[C@@H]3CCc2c1"
CAMPHOR = "CC1(C)C2CCC1(C)C(=O)C2"
MENTHOL = "CC(C)C1CCC(C)CC1O"
TADALAFIL = "O=C1N(CC(N2C1CC3=C(C2C4=CC5=C(OCO5)C=C4)NC6=C3C=CC=C6)=O)C"
SILDENAFIL = "CCCC1=NN(C2=C1N=C(NC2=O)C3=C(C=CC(=C3)S(=O)(=O)N4CCN(CC4)C)OCC)C"
OSIMERTINIB = "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc2nccc(n2)c3cn(C)c4ccccc34"
FEXOFENADINE = "CC(C)(C(=O)O)c1ccc(cc1)C(O)CCCN2CCC(CC2)C(O)(c3ccccc3)c4ccccc4"
RANOLAZINE = "COc1ccccc1OCC(O)CN2CCN(CC(=O)Nc3c(C)cccc3C)CC2"
PERINDOPRIL = "O=C(OCC)C(NC(C(=O)N1C(C(=O)O)CC2CCCCC12)C)CCC"
AMLODIPINE = "Clc1ccccc1C2C(=C(/N/C(=C2/C(=O)OCC)COCCN)C)\\C(=O)OC"
SITAGLIPTIN = "Fc1cc(c(F)cc1F)CC(N)CC(=O)N3Cc2nnc(n2CC3)C(F)(F)F"
ZALEPLON = "O=C(C)N(CC)C1=CC=CC(C2=CC=NC3=C(C=NN23)C#N)=C1"
HOP_START = "CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C"  # the deco-hop and scaffold-hop start
HOP_SCAFFOLD = "[#7]-c1n[c;h1]nc2[c;h1]c(-[#8])[c;h0][c;h1]c12"


def _rediscovery(target: str, name: str) -> Objective:
    return Objective((Tanimoto(target, "ECFP4", Clipped(1.0)),),
                     doc=f"ECFP4 Tanimoto to {name} (1.0 only for {name} itself)")


def _similarity(target: str, name: str, fp: str) -> Objective:
    return Objective((Tanimoto(target, fp, Clipped(0.75)),), doc=f"{fp} Tanimoto to {name}, full score from 0.75")


#: PMO name -> objective (GuacaMol goal-directed suite v2, plus PMO's ``isomers_c7h8n2o2``).
OBJECTIVES: dict[str, Objective] = {
    "celecoxib_rediscovery": _rediscovery(CELECOXIB, "celecoxib"),
    "troglitazone_rediscovery": _rediscovery(TROGLITAZONE, "troglitazone"),
    "thiothixene_rediscovery": _rediscovery(THIOTHIXENE, "thiothixene"),
    "aripiprazole_similarity": _similarity(ARIPIPRAZOLE, "aripiprazole", "ECFP4"),
    "albuterol_similarity": _similarity(ALBUTEROL, "albuterol", "FCFP4"),
    "mestranol_similarity": _similarity(MESTRANOL, "mestranol", "AP"),
    "isomers_c11h24": Formula(formula="C11H24", doc="isomer of C11H24 (geometric mean over C, H, atom count)"),
    "isomers_c7h8n2o2": Formula(formula="C7H8N2O2", doc="isomer of C7H8N2O2 (geometric mean)"),
    "isomers_c9h10n2o2pf2cl": Formula(formula="C9H10N2O2PF2Cl", doc="isomer of C9H10N2O2PF2Cl (geometric mean)"),
    "median1": Objective((Tanimoto(MENTHOL, "ECFP4"), Tanimoto(CAMPHOR, "ECFP4")),
                         doc="geometric mean of ECFP4 Tanimoto to menthol and to camphor"),
    "median2": Objective((Tanimoto(TADALAFIL, "ECFP6"), Tanimoto(SILDENAFIL, "ECFP6")),
                         doc="geometric mean of ECFP6 Tanimoto to tadalafil and to sildenafil"),
    "osimertinib_mpo": Objective(
        (Tanimoto(OSIMERTINIB, "FCFP4", Clipped(0.8)), Tanimoto(OSIMERTINIB, "ECFP6", MinGaussian(0.85, 0.1)),
         Property("tpsa", MaxGaussian(100.0, 10.0)), Property("logp", MinGaussian(1.0, 1.0))),
        doc="like osimertinib (FCFP4) but not too alike (ECFP6 under 0.85), TPSA over 100, logP under 1"),
    "fexofenadine_mpo": Objective(
        (Tanimoto(FEXOFENADINE, "AP", Clipped(0.8)), Property("tpsa", MaxGaussian(90.0, 10.0)),
         Property("logp", MinGaussian(4.0, 1.0))),
        doc="like fexofenadine (AP), TPSA over 90, logP under 4"),
    "ranolazine_mpo": Objective(
        (Tanimoto(RANOLAZINE, "AP", Clipped(0.7)), Property("logp", MaxGaussian(7.0, 1.0)),
         Property("fluorine", Gaussian(1.0, 1.0)), Property("tpsa", MaxGaussian(95.0, 20.0))),
        doc="like ranolazine (AP), logP over 7, one fluorine, TPSA over 95"),
    "perindopril_mpo": Objective(
        (Tanimoto(PERINDOPRIL, "ECFP4"), Property("aromatic_rings", Gaussian(2.0, 0.5))),
        doc="like perindopril (ECFP4) with two aromatic rings"),
    "amlodipine_mpo": Objective(
        (Tanimoto(AMLODIPINE, "ECFP4"), Property("num_rings", Gaussian(3.0, 0.5))),
        doc="like amlodipine (ECFP4) with three rings"),
    "sitagliptin_mpo": Objective(
        (Tanimoto(SITAGLIPTIN, "ECFP4", Gaussian(0.0, 0.1)),
         Property("logp", Gaussian(_prop("logp", SITAGLIPTIN), 0.2)),
         Property("tpsa", Gaussian(_prop("tpsa", SITAGLIPTIN), 5.0)), Formula(formula="C16H15F6N5O")),
        doc="unlike sitagliptin (ECFP4) with its logP, TPSA and formula C16H15F6N5O"),
    "zaleplon_mpo": Objective((Tanimoto(ZALEPLON, "ECFP4"), Formula(formula="C19H17N3O2")),
                              doc="like zaleplon (ECFP4) with formula C19H17N3O2"),
    "valsartan_smarts": Objective(
        (Smarts("CN(C=O)Cc1ccc(c2ccccc2)cc1"),
         Property("logp", Gaussian(_prop("logp", SITAGLIPTIN), 0.2)),
         Property("tpsa", Gaussian(_prop("tpsa", SITAGLIPTIN), 5.0)),
         Property("bertz", Gaussian(_prop("bertz", SITAGLIPTIN), 30.0))),
        doc="valsartan's SMARTS with sitagliptin's logP, TPSA and Bertz complexity"),
    "deco_hop": Objective(
        (Tanimoto(HOP_START, "PHCO", Clipped(0.85)), Smarts("CS([#6])(=O)=O", unwanted=True),
         Smarts("[#7]-c1ccc2ncsc2c1", unwanted=True), Smarts(HOP_SCAFFOLD)),
        mean="arithmetic",
        doc="keep the quinazoline scaffold and pharmacophore (PHCO) of a kinase inhibitor, change its decorations"),
    "scaffold_hop": Objective(
        (Tanimoto(HOP_START, "PHCO", Clipped(0.75)),
         Smarts("[#6]-[#6]-[#6]-[#8]-[#6]~[#6]~[#6]~[#6]~[#6]-[#7]-c1ccc2ncsc2c1"),
         Smarts(HOP_SCAFFOLD, unwanted=True)),
        mean="arithmetic",
        doc="keep the decorations and pharmacophore (PHCO) of a kinase inhibitor, change its scaffold"),
}

#: The PMO benchmark's 23 tasks that tfftmol has (QED from :mod:`~.descriptors`); ``drd2``, ``jnk3``,
#: ``gsk3b`` are left out.
PMO_TASKS: tuple[str, ...] = (
    "qed", "celecoxib_rediscovery", "troglitazone_rediscovery", "thiothixene_rediscovery",
    "aripiprazole_similarity", "albuterol_similarity", "mestranol_similarity", "isomers_c7h8n2o2",
    "isomers_c9h10n2o2pf2cl", "median1", "median2", "osimertinib_mpo", "fexofenadine_mpo", "ranolazine_mpo",
    "perindopril_mpo", "amlodipine_mpo", "sitagliptin_mpo", "zaleplon_mpo", "valsartan_smarts", "deco_hop",
    "scaffold_hop")


# -- rewards -------------------------------------------------------------------------------------------------
class GuacaMolReward(Reward):
    """A reward that is the objective of :data:`OBJECTIVES` named by the class's ``name``; in [0, 1]."""

    nominal_range = (0.0, 1.0)

    def _score(self, mol: Chem.Mol) -> float:
        return OBJECTIVES[self.name](mol)


def _class_name(name: str) -> str:
    """``osimertinib_mpo`` -> ``OsimertinibMPOReward``, ``isomers_c11h24`` -> ``IsomersC11H24Reward``."""
    obj = OBJECTIVES[name]
    if isinstance(obj, Formula):
        return f"Isomers{obj.formula}Reward"
    return "".join(p.upper() if p == "mpo" else p.capitalize() for p in name.split("_")) + "Reward"


def _reward_class(name: str) -> type[GuacaMolReward]:
    cls_name = _class_name(name)
    return type(cls_name, (GuacaMolReward,), {"name": name, "__doc__": OBJECTIVES[name].doc + ".",
                                               "__module__": __name__, "__qualname__": cls_name})


#: One reward class per objective, in table order.
GUACAMOL_REWARDS: tuple[type[GuacaMolReward], ...] = tuple(_reward_class(n) for n in OBJECTIVES)
# module attributes (CelecoxibRediscoveryReward, ...), so that pickle finds them for the worker processes
globals().update({c.__name__: c for c in GUACAMOL_REWARDS})
