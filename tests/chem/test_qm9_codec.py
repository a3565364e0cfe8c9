"""The QM9 graph codec: layout, round trip over a large training sample, decoding of garbage."""
from __future__ import annotations

import pytest
import torch

from tfftmol.chem import graph as g
from tfftmol.chem.data import load_qm9


@pytest.fixture(scope="module")
def train_smiles() -> list[str]:
    df = load_qm9("train")
    return df["smiles"].sample(n=20_000, random_state=0).tolist()


def test_data_table():
    df = load_qm9()
    assert len(df) == 130_251
    assert {"smiles", "split", "homo", "lumo", "gap", "mu"} <= set(df.columns)
    counts = df["split"].value_counts().to_dict()
    assert counts == {"train": 104_200, "valid": 13_025, "test": 13_026}
    # a scaffold split never puts one molecule in two splits
    assert df.groupby("smiles")["split"].nunique().max() == 1
    with pytest.raises(ValueError, match="split="):
        load_qm9("validation")


def test_layout_constants():
    assert (g.N_MAX, g.N_NODE_CLASSES, g.N_EDGE_CLASSES, g.N_EDGES, g.STATE_DIM) == (9, 5, 4, 36, 189)
    assert g.NODE_CLASSES[g.ABSENT] == "absent" and g.BOND_TYPES[0] == "none"
    assert torch.equal(g.triu_pairs(), torch.triu_indices(9, 9, offset=1))
    ei = g.edge_index_full()
    assert ei.shape == (2, 72) and torch.equal(ei[:, 36:], ei[:, :36].flip(0))


def test_encode_values_and_split_join():
    x = g.encode(["CCO", "c1ccccc1", "C#N"])
    assert x.shape == (3, 189)
    assert set(x.unique().tolist()) == {-g.SCALE, g.SCALE}
    nodes, edges = g.split_state(x)
    assert nodes.shape == (3, 9, 5) and edges.shape == (3, 36, 4)
    assert torch.equal(g.join_state(nodes, edges), x)
    # exactly one hot class per slot
    assert torch.all((nodes > 0).sum(-1) == 1) and torch.all((edges > 0).sum(-1) == 1)
    # ethanol: atoms C, C, O then six absent slots; bonds (0,1) and (1,2) single
    nc, ec = g.state_to_classes(x)
    assert nc[0].tolist() == [0, 0, 2, 4, 4, 4, 4, 4, 4]
    pairs = g.triu_pairs().T.tolist()
    assert {tuple(pairs[k]) for k in torch.nonzero(ec[0]).flatten().tolist()} == {(0, 1), (1, 2)}
    # benzene is kekulized: three single and three double bonds
    assert sorted(ec[1][ec[1] > 0].tolist()) == [1, 1, 1, 2, 2, 2]


@pytest.mark.slow  # 25 s: round trip of a large training sample
def test_round_trip_training_sample(train_smiles):
    """20,000 training molecules encode and decode to the same canonical SMILES."""
    nodes, edges = g.encode_classes(train_smiles)
    dec = g.decode_classes(nodes, edges)
    mismatches = [(s, d.smiles, d.reason) for s, d in zip(train_smiles, dec) if d.smiles != s]
    assert not mismatches, mismatches[:5]
    assert all(d.reason == "ok" and d.mol is not None for d in dec)


def test_round_trip_through_state_and_permutation():
    smi = ["OC1=CC=CC=C1", "CC1=CN=CN1", "FC(F)(F)C#C", "O=C1CC2CC(O2)C1=O"]
    canon = [d.smiles for d in g.decode(g.encode(smi))]
    assert all(c is not None for c in canon)
    # permuting the node slots (and the pairs with them) decodes to the same molecules
    x = g.encode(smi)
    nodes, edges = g.state_to_classes(x)
    perm = torch.tensor([3, 7, 0, 8, 1, 5, 2, 6, 4])
    inv = torch.argsort(perm)
    dense = torch.zeros(len(smi), 9, 9, dtype=torch.long)
    ii, jj = g.triu_pairs()
    dense[:, ii, jj] = edges
    dense[:, jj, ii] = edges
    dense_p = dense[:, perm][:, :, perm]
    dec = g.decode_classes(nodes[:, perm], dense_p[:, ii, jj])
    assert [d.smiles for d in dec] == canon
    assert torch.equal(inv[perm], torch.arange(9))


@pytest.mark.parametrize("bad, match", [("[NH4+]", "charge"), ("CCCCCCCCCC", "heavy atoms"),
                                        ("CCS", "element"), ("not a smiles", "parse")])
def test_encode_rejects_unrepresentable(bad, match):
    with pytest.raises(ValueError, match=match):
        g.encode([bad])


def _state(node_cls, bonds):
    """State from a node class list and a dict {(i, j): bond class}."""
    nodes = torch.full((1, 9), g.ABSENT, dtype=torch.long)
    nodes[0, :len(node_cls)] = torch.tensor(node_cls)
    edges = torch.zeros(1, 36, dtype=torch.long)
    pairs = [tuple(p) for p in g.triu_pairs().T.tolist()]
    for (i, j), b in bonds.items():
        edges[0, pairs.index((min(i, j), max(i, j)))] = b
    return g.classes_to_state(nodes, edges)


@pytest.mark.parametrize("node_cls, bonds, reason", [
    ([], {}, "empty"),
    ([0] * 6, {(0, k): 1 for k in range(1, 6)}, "valence"),      # carbon with five single bonds
    ([3, 0], {(0, 1): 2}, "valence"),                              # F=C
    ([2, 0, 0], {(0, 1): 1, (0, 2): 2}, "valence"),                # O with three bond orders
    ([0, 0], {}, "disconnected"),                                  # two methanes
    ([0, 0, 2, 1], {(0, 1): 1, (2, 3): 1}, "disconnected"),
    ([0, 0, 2], {(0, 1): 1, (1, 2): 1}, "ok"),                     # ethanol
    ([0, 0, 0, 0, 0, 0], {(0, 1): 2, (1, 2): 1, (2, 3): 2, (3, 4): 1, (4, 5): 2, (5, 0): 1}, "ok"),
])
def test_decode_reasons_hand_built(node_cls, bonds, reason):
    (res,) = g.decode(_state(node_cls, bonds))
    assert res.reason == reason
    assert (res.mol is not None) == (reason == "ok") and (res.smiles is not None) == (reason == "ok")


def test_bond_to_absent_slot_is_ignored():
    # C-C plus a "bond" from atom 0 to an absent slot: still ethane
    x = _state([0, 0], {(0, 1): 1, (0, 5): 3})
    assert g.decode(x)[0].smiles == "CC"


@pytest.mark.parametrize("kind", ["randn", "large", "nan", "inf", "all_absent", "zeros"])
def test_decode_garbage_never_raises(kind):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 189, generator=gen)
    if kind == "large":
        x = x * 1e6
    elif kind == "nan":
        x[::2] = float("nan")
        x[1::2, ::3] = float("nan")
    elif kind == "inf":
        x[:, ::5] = float("inf")
        x[:, 1::5] = -float("inf")
    elif kind == "all_absent":
        nodes, edges = g.split_state(x.clone())
        nodes[:] = -1.0
        nodes[..., g.ABSENT] = 1.0
        x = g.join_state(nodes, edges)
    elif kind == "zeros":
        x = torch.zeros(300, 189)
    res = g.decode(x)
    assert len(res) == 300
    assert all(r.reason in g.REASONS for r in res)
    assert all((r.reason == "ok") == (r.smiles is not None) for r in res)
    if kind == "all_absent":
        assert all(r.reason == "empty" for r in res)
    if kind == "randn":  # random states are mostly over-bonded or fragmented, and classified as such
        reasons = {r.reason for r in res}
        assert reasons & {"valence", "disconnected"}


def test_decode_wrong_width_raises():
    with pytest.raises(ValueError, match="189"):
        g.decode(torch.zeros(2, 188))


def test_decoded_molecules_are_connected_and_sanitised():
    gen = torch.Generator().manual_seed(1)
    res = g.decode(torch.randn(2000, 189, generator=gen))
    from rdkit import Chem
    for r in res:
        if r.reason == "ok":
            assert len(Chem.GetMolFrags(r.mol)) == 1
            assert Chem.MolToSmiles(Chem.MolFromSmiles(r.smiles), isomericSmiles=False) == r.smiles
