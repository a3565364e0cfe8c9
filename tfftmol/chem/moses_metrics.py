"""MOSES-style distribution metrics of generated molecules, computed with RDKit and a pinned FCD.

Definitions follow MOSES (Polykovskiy et al., "Molecular Sets (MOSES)", 2020):

- ``validity``: valid samples / all samples (a sample is given as a canonical
  SMILES, or ``None`` when it is not a valid molecule).
- ``unique@k``: distinct SMILES among the first ``k`` valid samples / ``k``
  (``nan`` with fewer than ``k`` valid samples).
- ``novelty``: distinct valid SMILES not in the training set / distinct valid SMILES.
- ``int_div``: ``1 - mean Tanimoto`` over all ordered pairs (self pairs included,
  as in MOSES IntDiv1) of Morgan fingerprints (radius 2, 1024 bits) of the
  valid samples.
- ``snn``: mean over valid samples of the largest Tanimoto similarity to a
  reference (test) molecule.
- ``frag`` / ``scaf``: cosine similarity of BRICS-fragment / Bemis-Murcko
  scaffold count vectors of the valid samples and the reference.
- ``fcd``: Frechet ChemNet Distance (Preuer et al. 2018) with the ChemNet of the
  pinned ``fcd==1.2.2`` wheel.  Its weights file is a torch zip archive of
  plain tensors, dicts and lists: it is loaded with ``torch.load(...,
  weights_only=True)``, which refuses any pickled code.
- ``filters``: fraction of valid samples passing the MOSES medicinal-chemistry
  filters: no ring of 8 or more atoms, atoms only C N S O F Cl Br H, no formal
  charge, none of the 22 MOSES MCF SMARTS (below, from the MOSES repository,
  MIT, Copyright 2018 Insilico Medicine) and no PAINS match (RDKit's
  FilterCatalog PAINS A/B/C, the same Baell & Holloway set MOSES ships as
  ``wehi_pains.csv``).  ``filters_no_charge_rule`` drops only the formal-charge
  rule: ZINC250k keeps protonated amines and carboxylates, so the strict rule
  rejects a good part of the data itself.
- ``<prop>_w1``: 1-D Wasserstein distance of QED, logP (Crippen), SA (Ertl,
  RDKit Contrib) and MW between valid samples and the reference.

All functions take plain lists of SMILES; :class:`Reference` holds the
statistics of a reference set so they are computed once.
"""
from __future__ import annotations

import io
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
from rdkit import Chem, DataStructs, RDConfig, RDLogger, rdBase
from rdkit.Chem import QED, BRICS, Crippen, Descriptors, rdFingerprintGenerator
from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams
from rdkit.Chem.Scaffolds import MurckoScaffold

__all__ = ["MCF_SMARTS", "fingerprints", "unique_at", "novelty", "internal_diversity", "snn", "frag_counts",
           "scaffold_counts", "cosine_counts", "filter_flags", "passes_filters", "filter_pass_rate", "properties",
           "load_chemnet", "chemnet_activations", "frechet_distance", "fcd", "Reference", "moses_metrics",
           "sa_score"]

RDLogger.DisableLog("rdApp.*")

# MOSES moses/metrics/mcf.csv (molsets 0.3.1, MIT, Copyright 2018 Insilico Medicine)
MCF_SMARTS = (
    "[#6]=&!@[#6]-[#6]#[#7]", "[#6]=&!@[#6]-[#16](=[#8])=[#8]", "[#6]=&!@[#6&!H0]-&!@[#6](=[#8])-&!@[#7]",
    "[H]C([H])([#6])[F,Cl,Br,I]", "[#6]1-[#8]-[#6]-1", "[#6]-[#7]=[#6]=[#8]", "[#6&!H0]=[#8]",
    "[#6](=&!@[#7&!H0])-&!@[#6,#7,#8,#16]", "[#6]1-[#7]-[#6]-1", "[#6]~&!@[#7]~&!@[#7]~&!@[#6]", "[#7]=&!@[#7]",
    "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#8]-1", "[H][#6]-1=[#6]([H])-[#6]=[#6](-*)-[#16]-1",
    "[#17,#35,#53]-c(:*):[!#1!#6]:*", "[H][#7]([H])-[#6]-1=[#6]-[#6]=[#6]-[#6]=[#6]-1", "[#16]~[#16]",
    "[#7]~&!@[#7]~&!@[#7]", "[#7]-&!@[#6&!H0&!H1]-&!@[#7]", "[#6&!H0](-&!@[#8])-&!@[#8]", "[#35].[#35].[#35]",
    "[#17].[#17].[#17].[#17]", "[#9].[#9].[#9].[#9].[#9].[#9].[#9]",
)
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
FP_BITS = 1024


def _mol(smi: Optional[str]) -> Optional[Chem.Mol]:
    if not smi:
        return None
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smi)


# -- fingerprints and similarity ------------------------------------------------------------------
@lru_cache(maxsize=1)
def _fpgen():
    return rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=FP_BITS)


def fingerprints(smiles: Sequence[str]) -> np.ndarray:
    """Morgan (radius 2, 1024 bits) fingerprints as a ``(N, 1024)`` uint8 0/1 array (zeros if unparsable)."""
    out = np.zeros((len(smiles), FP_BITS), dtype=np.uint8)
    gen = _fpgen()
    for i, s in enumerate(smiles):
        m = _mol(s)
        if m is not None:
            DataStructs.ConvertToNumpyArray(gen.GetFingerprint(m), out[i])
    return out


def _tanimoto_blocks(a: np.ndarray, b: np.ndarray, block: int = 2048):
    """Yield ``(start, T)`` with ``T`` the Tanimoto matrix of rows ``start:start+block`` of ``a`` against ``b``."""
    bf = b.astype(np.float32)
    nb = bf.sum(1)
    for s in range(0, len(a), block):
        af = a[s:s + block].astype(np.float32)
        inter = af @ bf.T
        union = af.sum(1)[:, None] + nb[None, :] - inter
        yield s, np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def internal_diversity(fps: np.ndarray) -> float:
    """MOSES IntDiv1: ``1 - mean`` Tanimoto over all ordered pairs (self pairs included)."""
    if len(fps) == 0:
        return float("nan")
    tot = 0.0
    for _, t in _tanimoto_blocks(fps, fps):
        tot += float(t.sum())
    return 1.0 - tot / (len(fps) ** 2)


def snn(fps: np.ndarray, ref_fps: np.ndarray) -> float:
    """Mean nearest-neighbour Tanimoto similarity of ``fps`` to ``ref_fps``."""
    if len(fps) == 0 or len(ref_fps) == 0:
        return float("nan")
    best = np.empty(len(fps))
    for s, t in _tanimoto_blocks(fps, ref_fps):
        best[s:s + len(t)] = t.max(1)
    return float(best.mean())


# -- uniqueness / novelty -------------------------------------------------------------------------
def unique_at(valid_smiles: Sequence[str], k: int) -> float:
    """Distinct SMILES among the first ``k`` valid samples / ``k``; ``nan`` if fewer than ``k``."""
    if len(valid_smiles) < k:
        return float("nan")
    return len(set(valid_smiles[:k])) / k


def novelty(valid_smiles: Sequence[str], train: set) -> float:
    u = set(valid_smiles)
    return float(np.mean([s not in train for s in u])) if u else float("nan")


# -- fragments / scaffolds ------------------------------------------------------------------------
def frag_counts(smiles: Sequence[str]) -> Counter:
    c: Counter = Counter()
    for s in smiles:
        m = _mol(s)
        if m is not None:
            try:
                c.update(BRICS.BRICSDecompose(m))
            except Exception:  # noqa: BLE001
                pass
    return c


def scaffold_counts(smiles: Sequence[str]) -> Counter:
    c: Counter = Counter()
    for s in smiles:
        m = _mol(s)
        if m is None:
            continue
        try:
            sc = Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(m))
        except Exception:  # noqa: BLE001
            continue
        if sc:
            c[sc] += 1
    return c


def cosine_counts(a: Counter, b: Counter) -> float:
    """Cosine similarity of two count vectors over the union of their keys."""
    if not a and not b:
        return float("nan")
    if not a or not b:
        return 0.0
    keys = list(set(a) | set(b))
    va = np.array([a.get(k, 0) for k in keys], dtype=float)
    vb = np.array([b.get(k, 0) for k in keys], dtype=float)
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb)))


# -- filters --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _filters():
    params = FilterCatalogParams()
    params.AddCatalog(FilterCatalogParams.FilterCatalogs.PAINS)
    return [Chem.MolFromSmarts(s) for s in MCF_SMARTS], FilterCatalog(params)


def filter_flags(smiles: str) -> tuple[bool, bool]:
    """``(passes the MOSES filters, passes them without the formal-charge rule)`` in one pass."""
    m = _mol(smiles)
    if m is None:
        return False, False
    if any(len(r) >= 8 for r in m.GetRingInfo().AtomRings()):
        return False, False
    if any(a.GetSymbol() not in ALLOWED_ATOMS for a in m.GetAtoms()):
        return False, False
    mcf, pains = _filters()
    h = Chem.AddHs(m)
    if any(h.HasSubstructMatch(p) for p in mcf) or pains.HasMatch(h):
        return False, False
    return not any(a.GetFormalCharge() != 0 for a in m.GetAtoms()), True


def passes_filters(smiles: str, charge_rule: bool = True) -> bool:
    """MOSES ``mol_passes_filters`` (MCF + PAINS + ring size < 8 + allowed atoms + neutral atoms)."""
    strict, relaxed = filter_flags(smiles)
    return strict if charge_rule else relaxed


def filter_pass_rate(smiles: Sequence[str], charge_rule: bool = True) -> float:
    return float(np.mean([passes_filters(s, charge_rule) for s in smiles])) if len(smiles) else float("nan")


# -- properties -----------------------------------------------------------------------------------
_SASCORER = None


def sa_score(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009) from RDKit's Contrib ``SA_Score``."""
    global _SASCORER
    if _SASCORER is None:
        path = os.path.join(RDConfig.RDContribDir, "SA_Score")
        if path not in sys.path:
            sys.path.append(path)
        import sascorer  # type: ignore[import-not-found]
        _SASCORER = sascorer
    return float(_SASCORER.calculateScore(mol))


PROPERTIES = {"qed": QED.qed, "logp": Crippen.MolLogP, "sa": sa_score, "mw": Descriptors.MolWt}


def properties(smiles: Sequence[str]) -> dict[str, np.ndarray]:
    """QED, logP, SA, MW of each parsable SMILES (unparsable ones are skipped)."""
    out: dict[str, list] = {k: [] for k in PROPERTIES}
    for s in smiles:
        m = _mol(s)
        if m is None:
            continue
        for k, f in PROPERTIES.items():
            try:
                out[k].append(float(f(m)))
            except Exception:  # noqa: BLE001
                out[k].append(float("nan"))
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


# -- FCD ------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def load_chemnet():
    """ChemNet of the pinned ``fcd`` wheel, loaded with ``weights_only=True`` (no pickled code runs).

    Raises:
        ImportError: if the ``fcd`` package is not installed.
    """
    import importlib.resources

    import torch
    from fcd.utils import load_imported_model

    data = importlib.resources.files("fcd").joinpath("ChemNet_v0.13_pretrained.pt").read_bytes()
    config = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    model = load_imported_model(config)
    return model.eval()


def chemnet_activations(smiles: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """ChemNet penultimate activations ``(N, 512)`` (one-hot SMILES padded to 350, as in ``fcd``)."""
    import torch
    from fcd.utils import get_one_hot

    model = load_chemnet()
    out = []
    with torch.no_grad():
        for s in range(0, len(smiles), batch_size):
            chunk = smiles[s:s + batch_size]
            pad = max(350, max(len(x) for x in chunk) + 1)
            x = np.stack([get_one_hot(x, pad_len=pad) / 35.0 for x in chunk]).astype(np.float32)
            out.append(model(torch.from_numpy(x).transpose(1, 2)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 512), dtype=np.float32)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    from fcd.utils import calculate_frechet_distance
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def _moments(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return act.mean(0), np.cov(act.T)


def fcd(smiles: Sequence[str], reference: Sequence[str]) -> float:
    """Frechet ChemNet Distance between two SMILES lists (lower is closer)."""
    if len(smiles) < 2 or len(reference) < 2:
        return float("nan")
    m1, s1 = _moments(chemnet_activations(list(smiles)))
    m2, s2 = _moments(chemnet_activations(list(reference)))
    return frechet_distance(m1, s1, m2, s2)


# -- all together ---------------------------------------------------------------------------------
@dataclass
class Reference:
    """Statistics of a reference (test) set, computed once: fingerprints, fragment and scaffold counts,
    ChemNet moments (if ``fcd`` is installed), properties."""

    smiles: list
    fps: np.ndarray = field(repr=False)
    frags: Counter = field(repr=False)
    scafs: Counter = field(repr=False)
    props: dict = field(repr=False)
    fcd_mu: Optional[np.ndarray] = field(default=None, repr=False)
    fcd_sigma: Optional[np.ndarray] = field(default=None, repr=False)

    @classmethod
    def build(cls, smiles: Sequence[str], with_fcd: bool = True) -> "Reference":
        smiles = list(smiles)
        mu = sig = None
        if with_fcd:
            mu, sig = _moments(chemnet_activations(smiles))
        return cls(smiles, fingerprints(smiles), frag_counts(smiles), scaffold_counts(smiles), properties(smiles),
                   mu, sig)

    def fcd(self, smiles: Sequence[str]) -> float:
        """FCD of ``smiles`` against this reference's ChemNet moments (nan without moments or with < 2 molecules)."""
        smiles = list(smiles)
        if self.fcd_mu is None or len(smiles) < 2:
            return float("nan")
        m, s = _moments(chemnet_activations(smiles))
        return frechet_distance(m, s, self.fcd_mu, self.fcd_sigma)


def moses_metrics(samples: Sequence[Optional[str]], train: set, ref: Reference,
                  ks: Sequence[int] = (1000, 10000), with_fcd: bool = True) -> dict:
    """All metrics of ``samples`` (canonical SMILES, ``None`` = invalid) against ``ref`` (novelty vs ``train``)."""
    from scipy.stats import wasserstein_distance
    valid = [s for s in samples if s]
    row: dict = {"n": len(samples), "validity": len(valid) / len(samples) if len(samples) else float("nan")}
    for k in ks:
        row[f"unique@{_kname(k)}"] = unique_at(valid, k)
    row["unique"] = len(set(valid)) / len(valid) if valid else float("nan")
    row["novelty"] = novelty(valid, train)
    fps = fingerprints(valid)
    row["int_div"] = internal_diversity(fps)
    row["snn"] = snn(fps, ref.fps)
    row["frag"] = cosine_counts(frag_counts(valid), ref.frags)
    row["scaf"] = cosine_counts(scaffold_counts(valid), ref.scafs)
    flags = np.array([filter_flags(s) for s in valid], dtype=bool).reshape(-1, 2)
    row["filters"] = float(flags[:, 0].mean()) if len(valid) else float("nan")
    row["filters_no_charge_rule"] = float(flags[:, 1].mean()) if len(valid) else float("nan")
    row["fcd"] = ref.fcd(valid) if with_fcd else float("nan")
    props = properties(valid)
    for k, v in props.items():
        r = ref.props[k]
        v, r = v[np.isfinite(v)], r[np.isfinite(r)]
        row[f"{k}_mean"] = float(v.mean()) if len(v) else float("nan")
        row[f"{k}_w1"] = float(wasserstein_distance(v, r)) if len(v) and len(r) else float("nan")
    return row


def _kname(k: int) -> str:
    return f"{k // 1000}k" if k % 1000 == 0 else str(k)
