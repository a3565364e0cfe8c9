"""Write ``xtb_reference.json``: tblite's GFN-xTB values on the conformers tfftmol's xTB rewards build.

Not part of the test suite.  Run it by hand where tfftmol and ``tblite==0.8.0``
(an independent Fortran implementation of GFN1/GFN2-xTB, with ``cffi``) can be
imported; dxtb is not needed::

    pip install --no-deps tblite==0.8.0 cffi==2.1.1 pycparser==3.12
    python tests/chem/data/make_xtb_reference.py

For each molecule it stores the conformer of
:func:`tfftmol.chem.rewards.xtb.conformer` (seed 0) and tblite's total energy
(Hartree), HOMO-LUMO gap (eV, the smaller of the two spin channels) and dipole
moment (Debye) at that geometry.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase
from tblite.interface import Calculator

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tfftmol.chem.rewards.xtb import (ANGSTROM_TO_BOHR, AU_TO_DEBYE, HARTREE_TO_EV,  # noqa: E402
                                      _frontier_gap, conformer)

#: (SMILES, methods): small molecules, a QM9 cage, a cation and a radical.
MOLECULES = [
    ("O", ("gfn2", "gfn1")),
    ("c1ccccc1", ("gfn2", "gfn1")),
    ("C=O", ("gfn2",)),
    ("CC#N", ("gfn2",)),
    ("OC1C2CC3CC1C3O2", ("gfn2",)),
    ("C[NH3+]", ("gfn2",)),
    ("[CH3]", ("gfn2",)),
]

TBLITE = {"gfn2": "GFN2-xTB", "gfn1": "GFN1-xTB"}


def main() -> None:
    out = []
    for smiles, methods in MOLECULES:
        mol = Chem.MolFromSmiles(smiles)
        canon = Chem.MolToSmiles(mol)
        numbers, positions = conformer(Chem.MolFromSmiles(canon), seed=0)
        charge = Chem.GetFormalCharge(mol)
        unpaired = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
        row = {"smiles": canon, "charge": charge, "unpaired": unpaired, "numbers": numbers.tolist(),
               "positions": positions.tolist(), "heavy_atoms": mol.GetNumHeavyAtoms()}
        for method in methods:
            calc = Calculator(TBLITE[method], numbers, positions * ANGSTROM_TO_BOHR, charge=float(charge),
                              uhf=unpaired)
            calc.set("verbosity", 0)
            calc.set("accuracy", 0.01)  # tight SCF convergence
            res = calc.singlepoint()
            occ = np.asarray(res.get("orbital-occupations"))
            if occ.ndim == 1:  # restricted: 0..2 per orbital -> alpha, beta channels
                occ = np.stack([np.clip(occ, 0, 1), np.clip(occ - 1, 0, 1)])
            row[method] = {
                "energy": float(res.get("energy")),
                "gap": _frontier_gap(np.asarray(res.get("orbital-energies")), occ) * HARTREE_TO_EV,
                "dipole": float(np.linalg.norm(res.get("dipole"))) * AU_TO_DEBYE,
            }
        out.append(row)
    doc = {"about": "tblite 0.8.0 GFN-xTB values on tfftmol's seeded ETKDG+MMFF conformers; written by "
                    "make_xtb_reference.py", "rdkit": rdBase.rdkitVersion, "molecules": out}
    (HERE / "xtb_reference.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps([{k: v for k, v in r.items() if k not in ("numbers", "positions")} for r in out], indent=1))


if __name__ == "__main__":
    main()
