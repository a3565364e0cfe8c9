from rdkit.Chem import rdMolDescriptors


def fsp3(mol):
    """Fraction of sp3 carbons, in [0, 1]."""
    return rdMolDescriptors.CalcFractionCSP3(mol)
