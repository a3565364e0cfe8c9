"""What a chemist looks at after a run: per-molecule properties, top/bottom tables, SDF, a property panel.

* :func:`molecule_properties`: canonical SMILES -> QED, SA, logP, MW, ring counts (all,
  aromatic, 3- and 4-membered), heavy atoms and a novelty flag against a reference set;
* :func:`top_table`: the top and bottom ``k`` distinct valid molecules of each model's
  evaluation samples, with the reward and those properties (``top.csv``);
* :func:`write_sdf` / :func:`read_sdf`: the same rows as an SD file with every column as
  an SD tag (``top.sdf``), and back;
* :func:`property_shift`: the distribution shift of each property between two sample sets
  (mean, median, and the share of molecules with two or more 3/4-membered rings or none);
* :func:`plot_property_panel`: histograms of QED, SA, logP, MW and ring-size counts, one
  panel per property, the models overlaid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd

__all__ = ["PROPERTIES", "molecule_properties", "top_table", "write_sdf", "read_sdf", "property_shift",
           "plot_property_panel"]

#: Property columns of :func:`molecule_properties`, in order.
PROPERTIES = ("qed", "sa", "logp", "mw", "heavy_atoms", "rings", "aromatic_rings", "rings_3", "rings_4",
              "small_rings")


def _props(mol) -> dict:
    from rdkit.Chem import QED, Crippen, Descriptors, rdMolDescriptors

    from .rewards.sa import sa_score

    sizes = [len(r) for r in mol.GetRingInfo().AtomRings()]
    r3, r4 = sum(s == 3 for s in sizes), sum(s == 4 for s in sizes)
    return {"qed": float(QED.qed(mol)), "sa": float(sa_score(mol)), "logp": float(Crippen.MolLogP(mol)),
            "mw": float(Descriptors.MolWt(mol)), "heavy_atoms": int(mol.GetNumHeavyAtoms()),
            "rings": int(rdMolDescriptors.CalcNumRings(mol)),
            "aromatic_rings": int(rdMolDescriptors.CalcNumAromaticRings(mol)),
            "rings_3": int(r3), "rings_4": int(r4), "small_rings": int(r3 + r4)}


def molecule_properties(smiles: Iterable[str], reference: Optional[set] = None) -> pd.DataFrame:
    """Properties of molecules given as SMILES (one row each, in order).

    Columns: ``smiles`` (canonical, no stereo; empty if it does not parse), :data:`PROPERTIES`
    (NaN where the SMILES does not parse) and ``novel`` (not in ``reference``, a set of canonical
    SMILES; NaN without a reference).
    """
    from rdkit import Chem, rdBase

    rows = []
    with rdBase.BlockLogs():
        for s in smiles:
            mol = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
            if mol is None:
                rows.append({"smiles": "", **{p: np.nan for p in PROPERTIES}, "novel": np.nan})
                continue
            can = Chem.MolToSmiles(mol, isomericSmiles=False)
            rows.append({"smiles": can, **_props(mol),
                         "novel": np.nan if reference is None else bool(can not in reference)})
    return pd.DataFrame(rows, columns=["smiles", *PROPERTIES, "novel"])


def top_table(samples: Mapping[str, pd.DataFrame], k: int = 50, reference: Optional[set] = None,
              reward_name: str = "reward") -> pd.DataFrame:
    """The top and bottom ``k`` distinct valid molecules of each model's samples, with their properties.

    Args:
        samples: ``label -> per-sample table`` (columns ``smiles``, ``reward``, ``valid``), e.g.
            ``{"pretrained": ..., "tfft": ...}``.
        k: molecules per end (fewer when a model has fewer distinct valid molecules).
        reference: canonical SMILES of the training set (the ``novel`` flag).
        reward_name: what the ``reward`` column scores (kept in the ``reward_name`` column).

    Returns:
        Columns ``model``, ``end`` (``top``/``bottom``), ``rank`` (1 = best for ``top``, worst for
        ``bottom``), ``smiles``, ``reward``, ``reward_name``, ``count`` (how often the molecule was
        sampled), :data:`PROPERTIES`, ``novel``, and per model ``invalid_fraction`` (of all its samples;
        invalid molecules have no structure to list).
    """
    if int(k) < 1:
        raise ValueError(f"k={k!r} must be an integer >= 1")
    parts = []
    for label, df in samples.items():
        n = len(df)
        valid = df[df["valid"].astype(bool) & (df["smiles"].astype(str) != "")]
        counts = valid.groupby("smiles").size()
        uniq = valid.drop_duplicates("smiles").sort_values("reward", ascending=False, kind="stable")
        for end, part in (("top", uniq.head(k)), ("bottom", uniq.iloc[::-1].head(k))):
            if not len(part):
                continue
            props = molecule_properties(part["smiles"], reference)
            t = pd.DataFrame({"model": label, "end": end, "rank": np.arange(1, len(part) + 1),
                              "smiles": props["smiles"].to_numpy(), "reward": part["reward"].to_numpy(float),
                              "reward_name": reward_name,
                              "count": counts.reindex(part["smiles"]).to_numpy(int)})
            for c in (*PROPERTIES, "novel"):
                t[c] = props[c].to_numpy()
            t["invalid_fraction"] = 1.0 - len(valid) / n if n else np.nan
            parts.append(t)
    cols = ["model", "end", "rank", "smiles", "reward", "reward_name", "count", *PROPERTIES, "novel",
            "invalid_fraction"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def write_sdf(table: pd.DataFrame, path: str | Path) -> int:
    """Write the rows of ``table`` (a ``smiles`` column) as an SD file; every other column is an SD tag.

    Coordinates are 2D (RDKit's depiction); the molecule's title is ``<model>_<end>_<rank>`` when
    those columns exist.  Returns the number of molecules written (rows whose SMILES does not
    parse are skipped).
    """
    from rdkit import Chem
    from rdkit.Chem import AllChem

    n = 0
    with Chem.SDWriter(str(path)) as w:
        for _, row in table.iterrows():
            mol = Chem.MolFromSmiles(str(row["smiles"])) if row["smiles"] else None
            if mol is None:
                continue
            AllChem.Compute2DCoords(mol)
            if {"model", "end", "rank"} <= set(row.index):
                mol.SetProp("_Name", f"{row['model']}_{row['end']}_{row['rank']}")
            for col, v in row.items():
                if isinstance(v, (bool, np.bool_)):
                    mol.SetProp(col, "1" if v else "0")
                elif isinstance(v, (float, np.floating)):
                    mol.SetProp(col, "" if not np.isfinite(v) else repr(float(v)))
                else:
                    mol.SetProp(col, str(v))
            w.write(mol)
            n += 1
    return n


def read_sdf(path: str | Path) -> pd.DataFrame:
    """Read an SD file written by :func:`write_sdf` back to a table (tags as strings; ``smiles``
    re-canonicalised from the molecule block; ``mol`` the RDKit molecule)."""
    from rdkit import Chem

    rows = []
    for mol in Chem.SDMolSupplier(str(path)):
        if mol is None:
            continue
        d = mol.GetPropsAsDict(includePrivate=False, includeComputed=False)
        d = {k: str(v) for k, v in d.items()}
        d["structure_smiles"] = Chem.MolToSmiles(mol, isomericSmiles=False)
        d["mol"] = mol
        rows.append(d)
    return pd.DataFrame(rows)


def property_shift(props: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per model: mean (and median) of each property over its valid molecules, and the shares
    of molecules with no ring (``acyclic``) and with two or more 3/4-membered rings (``strained_2+``)."""
    rows = []
    for label, p in props.items():
        p = p[p["smiles"] != ""]
        row = {"model": label, "n_valid": len(p)}
        for c in ("qed", "sa", "logp", "mw", "rings", "small_rings"):
            row[f"{c}_mean"] = float(p[c].mean()) if len(p) else np.nan
        row["sa_median"] = float(p["sa"].median()) if len(p) else np.nan
        row["acyclic"] = float((p["rings"] == 0).mean()) if len(p) else np.nan
        row["strained_2+"] = float((p["small_rings"] >= 2).mean()) if len(p) else np.nan
        if "novel" in p and p["novel"].notna().any():
            row["novel"] = float(p["novel"].astype(float).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_property_panel(props: Mapping[str, pd.DataFrame], path: str | Path, title: str = "") -> None:
    """Histograms of QED, SA, logP, MW and the ring-size counts of each model's valid molecules."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.2))
    for ax, col in zip(axes[:4], ("qed", "sa", "logp", "mw")):
        vals = [p.loc[p["smiles"] != "", col].dropna().to_numpy(float) for p in props.values()]
        both = np.concatenate(vals) if vals else np.zeros(0)
        bins = np.linspace(both.min(), both.max() + 1e-9, 30) if both.size and both.max() > both.min() else 10
        for (label, _), v in zip(props.items(), vals):
            if v.size:
                ax.hist(v, bins=bins, alpha=0.5, density=True, label=label)
        ax.set_title(col)
    ax = axes[4]
    width = 0.8 / max(1, len(props))
    for j, (label, p) in enumerate(props.items()):
        p = p[p["smiles"] != ""]
        shares = [float((p["rings"] == 0).mean()), float((p["rings_3"] > 0).mean()), float((p["rings_4"] > 0).mean()),
                  float((p["small_rings"] >= 2).mean())] if len(p) else [0.0] * 4
        ax.bar(np.arange(4) + j * width, shares, width=width, label=label, alpha=0.7)
    ax.set_xticks(np.arange(4) + 0.4 - width / 2)
    ax.set_xticklabels(["acyclic", "3-ring", "4-ring", "2+ 3/4-rings"], fontsize=8)
    ax.set_title("share of molecules")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
