"""Medicinal-chemistry filters: RDKit FilterCatalog (PAINS, Brenk, NIH), ring strain and an SA ceiling.

A run turns them on with one config line (``options.filters``)::

    filters: {catalogs: [pains, brenk, nih], max_small_rings: 1, sa_max: 4.5, mode: penalty}

* ``catalogs``: RDKit FilterCatalog sets a molecule must not match (``pains``, ``brenk``,
  ``nih``, ``zinc``, ``chembl``; ``[]`` for none);
* ``max_small_rings``: most 3- and 4-membered rings allowed (``null`` = no limit);
* ``sa_max``: highest synthetic-accessibility score allowed (1 easy .. 10 hard; ``null`` = none);
* ``mode``: ``penalty`` (a failing molecule scores below every passing one, above the
  invalid penalty: a hard constraint) or ``term`` (the reward minus ``weight`` per failed filter group);
* ``weight``: the ``term`` mode's cost per failed group (> 0).

:class:`FilteredReward` wraps any molecular reward with them (its identity includes the
filters, so cached offline batches of the unfiltered reward are not reused); the run report
shows the share of valid molecules passing them before and after fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from rdkit import Chem

from tfftmol.core.config import ConfigError, check_choice, check_number

from .rewards.base import Reward

__all__ = ["FilterConfig", "MedChemFilters", "FilteredReward", "CATALOGS", "DEFAULT_FILTERS"]

CATALOGS = {"pains": "PAINS", "brenk": "BRENK", "nih": "NIH", "zinc": "ZINC", "chembl": "CHEMBL"}


@dataclass
class FilterConfig:
    """Medicinal-chemistry filters (module docstring); ``options.filters`` of a molecular run."""

    catalogs: list = field(default_factory=lambda: ["pains", "brenk", "nih"])
    max_small_rings: Optional[int] = 1
    sa_max: Optional[float] = None
    mode: str = "penalty"
    weight: float = 1.0

    def __post_init__(self):
        if isinstance(self.catalogs, str):
            self.catalogs = [self.catalogs]
        if not isinstance(self.catalogs, (list, tuple)):
            raise ConfigError(f"filters.catalogs={self.catalogs!r} must be a list of {sorted(CATALOGS)}")
        bad = [c for c in self.catalogs if str(c).lower() not in CATALOGS]
        if bad:
            raise ConfigError(f"filters.catalogs={self.catalogs!r}: {bad} unknown; choose from {sorted(CATALOGS)}")
        self.catalogs = [str(c).lower() for c in self.catalogs]
        if self.max_small_rings is not None and (not isinstance(self.max_small_rings, int)
                                                 or isinstance(self.max_small_rings, bool) or self.max_small_rings < 0):
            raise ConfigError(f"filters.max_small_rings={self.max_small_rings!r} must be an integer >= 0 or null")
        if self.sa_max is not None:
            check_number(self, "sa_max", 1, 10)
        check_choice(self, "mode", ("penalty", "term"))
        check_number(self, "weight", 0, None, low_open=True)


#: The filters the report's pass rate uses when a run sets none.
DEFAULT_FILTERS = FilterConfig(catalogs=["pains", "brenk", "nih"], max_small_rings=1, sa_max=None)


class MedChemFilters:
    """Check molecules against a :class:`FilterConfig`: ``failures(mol)`` names the failed groups."""

    def __init__(self, config: FilterConfig | dict | None = None):
        if config is None:
            config = DEFAULT_FILTERS
        if isinstance(config, dict):
            config = FilterConfig(**config)
        self.config = config
        self._catalog = None

    def _cat(self):
        if self._catalog is None and self.config.catalogs:
            from rdkit.Chem.FilterCatalog import FilterCatalog, FilterCatalogParams

            params = FilterCatalogParams()
            for c in self.config.catalogs:
                params.AddCatalog(getattr(FilterCatalogParams.FilterCatalogs, CATALOGS[c]))
            self._catalog = FilterCatalog(params)
        return self._catalog

    def failures(self, mol: Chem.Mol) -> list[str]:
        """Names of the failed groups: a catalog name (``pains``, ...), ``small_rings`` or ``sa``."""
        out = []
        cat = self._cat()
        if cat is not None:
            for entry in cat.GetMatches(mol):
                src = str(entry.GetProp("FilterSet")).lower() if "FilterSet" in list(entry.GetPropList()) else "catalog"
                name = next((k for k in self.config.catalogs if src.startswith(k)), src)
                if name not in out:
                    out.append(name)
        c = self.config
        if c.max_small_rings is not None:
            n = sum(len(r) in (3, 4) for r in mol.GetRingInfo().AtomRings())
            if n > c.max_small_rings:
                out.append("small_rings")
        if c.sa_max is not None:
            from .rewards.sa import sa_score

            if sa_score(mol) > c.sa_max:
                out.append("sa")
        return out

    def passes(self, mol: Chem.Mol) -> bool:
        return not self.failures(mol)

    def pass_rate(self, smiles: Sequence[str]) -> float:
        """Share of the parseable SMILES that pass (NaN if none parses)."""
        from rdkit import rdBase

        ok = n = 0
        with rdBase.BlockLogs():
            for s in smiles:
                m = Chem.MolFromSmiles(s) if s else None
                if m is None:
                    continue
                n += 1
                ok += self.passes(m)
        return ok / n if n else float("nan")

    def describe(self) -> str:
        c = self.config
        parts = [", ".join(x.upper() for x in c.catalogs) or "no catalog"]
        if c.max_small_rings is not None:
            parts.append(f"<= {c.max_small_rings} 3/4-membered ring(s)")
        if c.sa_max is not None:
            parts.append(f"SA <= {c.sa_max:g}")
        return "; ".join(parts)

    def __getstate__(self):
        return {"config": self.config, "_catalog": None}  # FilterCatalog is rebuilt in a worker


class FilteredReward(Reward):
    """A molecular reward with medicinal-chemistry filters applied (module docstring).

    ``penalty`` mode: a failing molecule scores ``lo - 0.25 (hi - lo)`` for the inner reward's
    nominal range ``[lo, hi]``: below every passing molecule, above the invalid penalty
    (``lo - 0.5 (hi - lo)``), so stage 1 and the report can tell the two apart.
    ``term`` mode: ``inner - weight * (number of failed groups)``.
    """

    name = "filtered"

    def __init__(self, inner: Reward, filters: FilterConfig | dict, **kw: Any):
        super().__init__(**kw)
        self.inner = inner
        self.filters = MedChemFilters(filters if isinstance(filters, FilterConfig) else FilterConfig(**filters))
        self.label = getattr(inner, "label", inner.name)

    def base_range(self):
        lo, hi = self.inner.range
        if self.filters.config.mode == "term":
            n = len(self.filters.config.catalogs) + (self.filters.config.max_small_rings is not None) + \
                (self.filters.config.sa_max is not None)
            lo = lo - self.filters.config.weight * n
        return (lo, hi)

    @property
    def penalty(self) -> float:  # type: ignore[override]
        if self._penalty is not None:
            return self._penalty
        if self.filters.config.mode == "penalty":
            return self.inner.penalty
        lo, hi = self.range
        return lo - 0.5 * (hi - lo)

    @penalty.setter
    def penalty(self, value):
        self._penalty = None if value is None else float(value)

    @property
    def filtered_value(self) -> float:
        """What a failing molecule scores in ``penalty`` mode: ``lo - 0.25 (hi - lo)`` (class docstring)."""
        lo, hi = self.inner.range
        return float(lo - (0.25 * (hi - lo) if hi > lo else 0.5))

    def score_mol(self, mol: Chem.Mol) -> float:
        v = self.inner.score_mol(mol)
        fails = self.filters.failures(mol)
        if not fails:
            return self._apply_transforms(v)
        if self.filters.config.mode == "penalty":
            return self.filtered_value
        return self._apply_transforms(v - self.filters.config.weight * len(fails))

    def _score(self, mol):  # pragma: no cover - score_mol is overridden
        return self.score_mol(mol)

    def params(self) -> dict:
        from dataclasses import asdict

        return {"reward": self.inner.to_config(), "filters": asdict(self.filters.config)}

    def sources(self) -> dict[str, str]:
        return self.inner.sources()
