"""The drug-like ``zinc-selfies`` model: data, codec, decoding robustness, card figures, benchmark, metrics.

Real RDKit, real selfies, the shipped weights; CPU only.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tfftmol.chem import moses_metrics as mm
from tfftmol.chem.selfies import REASONS, SelfiesVocab, decode_selfies, load_zinc250k, load_zinc_selfies
from tfftmol.chem.selfies.loader import CARD_PATH, WEIGHTS_PATH, training_view
from tfftmol.core.flow import FlowModel

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_zinc_selfies()


@pytest.fixture(scope="module")
def card():
    return json.loads(CARD_PATH.read_text())


def test_processed_data_shape_split_and_licence():
    df = load_zinc250k()
    meta = json.loads((ROOT / "tfftmol/chem/data/zinc250k_alphabet.json").read_text())
    assert len(df) == meta["n_molecules"] and 240_000 < len(df) <= 249_455
    frac = df["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.8) < 0.01 and abs(frac["valid"] - 0.1) < 0.01 and abs(frac["test"] - 0.1) < 0.01
    assert df["smiles"].is_unique
    assert not set(df.loc[df.split == "train", "smiles"]) & set(df.loc[df.split == "test", "smiles"])
    lic = (ROOT / "tfftmol/chem/data/LICENSE-zinc250k.txt").read_text()
    assert "MIT" in lic and "mol_opt" in lic
    with pytest.raises(ValueError, match="split"):
        load_zinc250k("training")


def test_selfies_round_trip_on_processed_data():
    """Every sampled shipped SELFIES decodes back to its canonical SMILES, and through the vocabulary unchanged."""
    df = load_zinc250k().sample(1500, random_state=0)
    vocab = SelfiesVocab.load()
    tok = vocab.encode(df["selfies"].tolist())
    assert tok.shape == (1500, vocab.max_len + 1)
    assert vocab.to_selfies(tok) == df["selfies"].tolist()
    dec = [decode_selfies(s) for s in df["selfies"]]
    assert all(d.reason == "ok" for d in dec)
    assert [d.smiles for d in dec] == df["smiles"].tolist()


def test_moses_view_neutralises_filters_and_keeps_the_split():
    """Known answers: protonated amines and carboxylates come back neutral, nitro keeps its charges
    (and so fails the charge rule), an aldehyde fails MCF, an 8-ring fails the ring rule; what is kept
    re-encodes to a SELFIES that decodes to the neutral SMILES."""
    from tfftmol.chem.selfies.data import moses_view, neutralise

    assert neutralise("CC[NH+](C)C") == "CCN(C)C"
    assert neutralise("O=C([O-])c1ccccc1") == "O=C(O)c1ccccc1"
    assert neutralise("C[N+](=O)[O-]") == "C[N+](=O)[O-]"
    assert neutralise("not a smiles") is None
    import pandas as pd
    df = pd.DataFrame({"smiles": ["CC[NH+](C)C", "O=C([O-])c1ccccc1", "O=[N+]([O-])c1ccccc1", "CC=O",
                                  "C1CCCCCCC1", "CC(=O)Nc1ccc(O)cc1"],
                       "selfies": [""] * 6, "split": ["train", "train", "train", "valid", "test", "test"]})
    view = moses_view(df)
    assert view["smiles"].tolist() == ["CCN(C)C", "O=C(O)c1ccccc1", "CC(=O)Nc1ccc(O)cc1"]
    assert view["split"].tolist() == ["train", "train", "test"]
    assert [decode_selfies(s).smiles for s in view["selfies"]] == view["smiles"].tolist()
    assert all(mm.passes_filters(s) for s in view["smiles"])


def test_vocab_errors_name_the_bad_value():
    vocab = SelfiesVocab.load()
    with pytest.raises(ValueError, match=r"\[Xx\]"):
        vocab.encode(["[C][Xx]"])
    with pytest.raises(ValueError, match="longer"):
        vocab.encode(["[C]" * (vocab.max_len + 1)])


def test_decode_selfies_classifies_failures():
    assert decode_selfies("").reason == "empty"
    assert decode_selfies(None).reason == "empty"
    assert decode_selfies("[C][O]").smiles == "CO"
    assert decode_selfies("[Branch1]").reason == "empty"      # decodes to no atom
    assert decode_selfies("[C].[O]").reason == "disconnected"
    assert decode_selfies("[C][Xyz123").reason == "selfies_error"
    assert set(REASONS) >= {"ok", "nonfinite_latent", "empty", "selfies_error", "sanitization", "disconnected"}


def test_model_is_a_flow_model_with_differentiable_velocity(model):
    assert isinstance(model, FlowModel)
    d = model.state_shape[0]
    x = torch.randn(5, d, requires_grad=True)
    v = model.velocity(x, torch.full((5,), 0.3))
    assert v.shape == (5, d) and torch.isfinite(v).all()
    (g,) = torch.autograd.grad(v.pow(2).sum(), x)
    assert g.shape == x.shape and g.abs().sum() > 0
    assert model.sample_prior(3).shape == (3, d)


def test_greedy_generate_matches_nn_gru_reference(model):
    """The hand-written, batch-shrinking decoder against ``nn.GRU`` itself, one position at a time
    (``decode_logits`` on the prefix decoded so far, argmax of the last position)."""
    from tfftmol.chem.selfies.codec import BOS, EOS, PAD
    vae = model.vae.eval()
    z = torch.randn(12, vae.config.latent_dim, generator=torch.Generator().manual_seed(3)) * 1.5
    L = 24
    fast = vae.generate(z, max_len=L - 1)
    ref = torch.full((12, L), PAD, dtype=torch.long)
    with torch.no_grad():
        for b in range(12):
            seq = []
            for i in range(L):
                if i == L - 1:
                    nxt = EOS
                else:
                    logits = vae.decode_logits(z[b:b + 1], torch.tensor([seq + [PAD]]))[0, -1]
                    logits[PAD] = logits[BOS] = -float("inf")
                    nxt = int(logits.argmax())
                seq.append(nxt)
                if nxt == EOS:
                    break
            ref[b, :len(seq)] = torch.tensor(seq)
    lengths = (ref != PAD).sum(1)
    assert lengths.min() < lengths.max()      # rows end at different positions: the batch did shrink
    assert torch.equal(fast, ref)


def _seq_logprob(vae, z, seq):
    """Sum of token log-probabilities of ``seq`` (ending with <eos>) given ``z``, <pad>/<bos> excluded."""
    from tfftmol.chem.selfies.codec import BOS, PAD
    with torch.no_grad():
        lp = vae.decode_logits(z.unsqueeze(0), torch.tensor([seq]))[0]
        lp[:, PAD] = lp[:, BOS] = -float("inf")
        lp = torch.log_softmax(lp, -1)
    return float(sum(lp[i, t] for i, t in enumerate(seq)))


def test_beam_search_is_exact_when_the_beam_holds_every_string_and_greedy_at_one_beam():
    """A tiny random decoder (2 symbols + <eos>, at most 2 symbols): brute force over all 7 strings
    gives the most likely one; a beam of 9 >= 7 must find it, and a beam of 1 is greedy decoding."""
    import itertools
    from tfftmol.chem.selfies.autoencoder import SelfiesVAE, VAEConfig
    from tfftmol.chem.selfies.codec import EOS, PAD
    torch.manual_seed(0)
    vae = SelfiesVAE(VAEConfig(vocab_size=5, max_len=2, emb_dim=4, enc_hidden=4, dec_hidden=8, latent_dim=3)).eval()
    with torch.no_grad():
        vae.out.weight.mul_(8.0)                     # peaked token distributions: greedy is often not exact
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(1)) * 2
    strings = [list(s) + [EOS] for n in range(3) for s in itertools.product((3, 4), repeat=n)]
    assert len(strings) == 7
    beam = vae.generate(z, beam=9)
    greedy = vae.generate(z)
    assert torch.equal(vae.beam_search(z, 1), greedy)
    n_better = 0
    for b in range(40):
        scores = [_seq_logprob(vae, z[b], s) for s in strings]
        best = strings[int(np.argmax(scores))]
        got = [int(t) for t in beam[b] if int(t) != PAD]
        assert got == best, (b, got, best, scores)
        g = [int(t) for t in greedy[b] if int(t) != PAD]
        n_better += _seq_logprob(vae, z[b], got) > _seq_logprob(vae, z[b], g) + 1e-6
    assert n_better > 0                              # the beam finds strings greedy decoding misses
    with pytest.raises(ValueError, match="beam"):
        vae.generate(z, beam=0)
    with pytest.raises(ValueError, match="temperature"):
        vae.generate(z, beam=2, temperature=1.0)


def test_decode_beam_is_part_of_the_model_identity_and_its_weights_file(model, tmp_path):
    from tfftmol.chem.selfies import save_zinc_selfies
    from tfftmol.core.offline import model_fingerprint
    import tfftmol
    assert model.decode_beam == 1 and model.fingerprint_extra is None
    beam4 = load_zinc_selfies(decode_beam=4)
    assert model_fingerprint(beam4) != model_fingerprint(model)
    assert model_fingerprint(load_zinc_selfies()) == model_fingerprint(model)
    x = model.sample_latents(64, steps=10, sampler="sde", seed=0)
    d1, d4 = model.decode(x), beam4.decode(x)
    assert all(d.reason == "ok" for d in d4)
    assert sum(a.smiles != b.smiles for a, b in zip(d1, d4)) > 0   # the beam changes some molecules
    path = save_zinc_selfies(beam4, tmp_path / "beam4.safetensors")
    assert load_zinc_selfies(path=path).decode_beam == 4          # the file records its decoding
    assert load_zinc_selfies(path=path, decode_beam=1).decode_beam == 1
    assert tfftmol.load_pretrained(str(path)).decode_beam == 4
    assert tfftmol.load_pretrained("zinc-selfies", decode_beam=2).decode_beam == 2
    with pytest.raises(ValueError, match="decode_beam"):
        load_zinc_selfies(decode_beam=0)


def test_decoding_never_raises_on_nan_inf_or_huge_latents(model):
    d = model.state_shape[0]
    x = torch.randn(6, d)
    x[0, 0] = float("nan")
    x[1] = float("inf")
    x[2, 3] = -float("inf")
    x[3] = 1e30
    x[4] = -1e6
    dec = model.decode(x)
    assert [r.reason for r in dec[:3]] == ["nonfinite_latent"] * 3
    assert all(r.reason in REASONS for r in dec)
    for r in dec:
        assert (r.reason == "ok") == (r.smiles is not None) == (r.mol is not None)
    assert dec[5].reason == "ok"          # an ordinary latent decodes (SELFIES: always a molecule)
    assert model.decode(torch.zeros(0, d)) == []


def test_decode_maps_encoded_training_molecules_near_themselves(model):
    """Encode -> greedy decode keeps a molecule's identity: each reconstruction is more similar (Morgan
    Tanimoto) to its own source than to the other sources, on average by a clear margin."""
    df = load_zinc250k("train").sample(60, random_state=1)
    x = model.encode_selfies(df["selfies"].tolist())
    dec = model.decode(x)
    assert all(r.reason == "ok" for r in dec)
    a = mm.fingerprints(df["smiles"].tolist()).astype(float)
    b = mm.fingerprints([r.smiles for r in dec]).astype(float)
    inter = a @ b.T
    sim = inter / (a.sum(1)[:, None] + b.sum(1)[None, :] - inter)
    own, other = np.diag(sim).mean(), sim[~np.eye(len(sim), dtype=bool)].mean()
    assert own > other + 0.1, (own, other)


def test_card_validity_and_uniqueness_reproduced_on_500(model, card):
    m5 = card["metrics_500"]
    res = model.sample(500, steps=m5["steps"], sampler=m5["sampler"], seed=m5["seed"])
    ok = [s for s, v in zip(res.smiles, res.valid) if v]
    assert len(res) == 500
    assert abs(res.validity - m5["validity"]) <= 0.01
    assert abs(len(set(ok)) / len(ok) - m5["unique"]) <= 0.01
    assert res.validity >= 0.99                           # SELFIES: every non-empty string is a molecule


def test_loader_registry_and_errors(tmp_path):
    import tfftmol
    assert "zinc-selfies" in tfftmol.available_models()
    assert tfftmol.model_card("zinc-selfies")["name"] == "zinc-selfies"
    assert WEIGHTS_PATH.stat().st_size <= 20 * 1024 * 1024
    with pytest.raises(FileNotFoundError, match="pretrain_zinc"):
        load_zinc_selfies(path=tmp_path / "none.safetensors")
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata={"format": "other"})
    with pytest.raises(ValueError, match="not a zinc-selfies"):
        load_zinc_selfies(path=tmp_path / "x.safetensors")


def test_moses_metrics_known_answers():
    a = ["CCO", "CCO", "c1ccccc1", "CCN", None]
    assert mm.unique_at([s for s in a if s], 4) == 0.75
    assert math.isnan(mm.unique_at(["CCO"], 2))
    assert mm.novelty(["CCO", "CCN"], {"CCO"}) == 0.5
    fps = mm.fingerprints(["CCO", "CCO"])
    assert mm.internal_diversity(fps) == pytest.approx(0.0)
    fps2 = mm.fingerprints(["CCO", "c1ccccc1"])
    assert mm.internal_diversity(fps2) == pytest.approx(0.5)   # disjoint bits: (0 + 0 + 1 + 1) / 4 off-diagonal
    assert mm.snn(mm.fingerprints(["CCO"]), fps2) == pytest.approx(1.0)
    from collections import Counter
    assert mm.cosine_counts(Counter(a=1), Counter(a=2)) == pytest.approx(1.0)
    assert mm.cosine_counts(Counter(a=1), Counter(b=2)) == pytest.approx(0.0)
    assert mm.passes_filters("CC(=O)Nc1ccc(O)cc1")
    assert not mm.passes_filters("C[NH+](C)C") and mm.passes_filters("C[NH+](C)C", charge_rule=False)
    assert not mm.passes_filters("C1CCCCCCC1")                 # ring of 8
    assert not mm.passes_filters("CC=O")                       # MCF7 aldehyde
    assert not mm.passes_filters("CP(C)C")                     # phosphorus not allowed


def test_fcd_matches_the_fcd_package_and_is_zero_on_itself():
    fcd = pytest.importorskip("fcd")
    a = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1"] * 4
    b = ["CCCO", "c1ccccc1N", "CC(=O)Oc1ccccc1C(=O)O", "CCOCC", "Cc1ccccc1"] * 4
    ours = mm.fcd(a, b)
    ref = fcd.get_fcd(a, b, model=mm.load_chemnet(), device="cpu")
    assert ours == pytest.approx(ref, rel=1e-4)
    assert ours > 1.0
    assert abs(mm.fcd(a, a)) < 1e-3


@pytest.mark.slow
def test_quick_benchmark_runs(tmp_path):
    """The quick mode against the shipped model's training view (``--reference auto``, the MOSES view: see
    :func:`test_benchmark_reference_follows_the_data_the_card_names`): the data row is the MOSES view of the
    training split, so it passes every filter and is not novel against the neutral training forms; the
    random row is far from both."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.zinc_model import main
    out = main(["--quick", "--out-dir", str(tmp_path), "--threads", "1", "--cache-dir", str(tmp_path / "cache")])
    import pandas as pd
    df = pd.read_csv(tmp_path / "zinc_model_quick.csv")
    assert list(df["model"]) == ["zinc-selfies", "random-selfies", "data (train)"]
    rows = df.set_index("model")
    assert rows.loc["data (train)", "filters"] == 1.0 and rows.loc["random-selfies", "novelty"] == 1.0
    assert rows.loc["data (train)", "snn"] > rows.loc["random-selfies", "snn"]
    assert "MOSES view" in (tmp_path / "zinc_model_quick.md").read_text()
    assert rows.loc["zinc-selfies", "validity"] >= 0.99
    assert rows.loc["data (train)", "novelty"] == 0.0
    assert rows.loc["data (train)", "fcd"] < rows.loc["random-selfies", "fcd"]
    assert rows.loc["zinc-selfies", "fcd"] < rows.loc["random-selfies", "fcd"]
    assert out["extra"]["mol_per_s_1thread"] > 0
    # the decoder's share of the FCD: reconstructions of test molecules lie between those same molecules (the
    # sample-size floor) and random SELFIES (measured at 5,000 vs 5,000: 0.57 originals, 3.3 reconstructions)
    ex = out["extra"]
    assert ex["recon_originals_fcd"] < ex["recon_fcd"] < rows.loc["random-selfies", "fcd"], ex
    assert (tmp_path / "zinc_model_quick.md").read_text().startswith("# zinc-selfies benchmark")
    sm = pd.DataFrame(ex["decoder_smoothness"])
    assert sorted(set(sm["latents"])) == ["encoded test molecules", "model samples"]
    for _, d in sm.groupby("latents"):  # a larger move keeps fewer molecules
        assert d.sort_values("scale")["same"].is_monotonic_decreasing, d


def test_benchmark_reference_follows_the_data_the_card_names(tmp_path):
    """``--reference auto`` (zinc_model and latent_gap) measures a model against the data it was trained on, as
    its card says (:func:`training_view`)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.latent_gap import parse as gap_parse
    from benchmarks.zinc_model import parse
    moses, plain = tmp_path / "m.card.json", tmp_path / "p.card.json"
    moses.write_text(json.dumps({"data": {"training_data": "the MOSES view of the training split (...)"}}))
    plain.write_text(json.dumps({"data": {"training_data": "the training split"}}))
    assert training_view(moses) == "moses"
    assert training_view(plain) == training_view(tmp_path / "none.json") == "zinc250k"
    for p in (parse, gap_parse):
        assert p(["--weights", str(tmp_path / "m.safetensors")]).reference == "moses"
        assert p(["--weights", str(tmp_path / "p.safetensors")]).reference == "zinc250k"
        assert p(["--weights", str(tmp_path / "m.safetensors"), "--reference", "zinc250k"]).reference == "zinc250k"
        assert p([]).reference == training_view(CARD_PATH) == "moses"  # the shipped model: the MOSES view


def test_pretrain_script_moses_view_init_from_and_export(tmp_path):
    """The training script on a tiny MOSES view: ``--init-from`` carries the shipped VAE over (its active
    latent dimensions and posterior standard deviations those of the shipped card's last evaluation, where a
    fresh VAE after the same 3 steps uses a few dimensions at sigma near 1), a different VAE size is refused,
    a run with neither a step count nor a budget is refused, and the exported file loads, samples, names its
    data and lists the shipped VAE's training as its earlier stages (with the total wall time)."""
    import pandas as pd
    sys.path.insert(0, str(ROOT / "scripts"))
    import pretrain_zinc
    from tfftmol.chem.selfies.data import moses_view
    view = moses_view(pd.concat([load_zinc250k(s).head(60) for s in ("train", "valid", "test")]))
    for name in ("warm", "fresh", "bad"):
        (tmp_path / name).mkdir()
        view.to_csv(tmp_path / name / "moses.csv.gz", index=False, compression="gzip")
    common = ["--data", "moses", "--steps", "3", "--warmup", "1", "--beta-warmup", "0", "--eval-n", "40"]
    pretrain_zinc.main(["ae", "--run-dir", str(tmp_path / "warm"), "--init-from", str(WEIGHTS_PATH), *common])
    pretrain_zinc.main(["ae", "--run-dir", str(tmp_path / "fresh"), *common])
    ev = {k: torch.load(tmp_path / k / "ae_ckpt.pt", weights_only=True)["state"]["history"][-1]
          for k in ("warm", "fresh")}
    shipped_card = json.loads(CARD_PATH.read_text())
    shipped = shipped_card["training"]["ae"]["history"][-1]
    assert abs(ev["warm"]["active_dims"] - shipped["active_dims"]) <= 4 and ev["fresh"]["active_dims"] < 20, ev
    assert abs(ev["warm"]["mean_sigma"] - shipped["mean_sigma"]) <= 0.05 and ev["fresh"]["mean_sigma"] > 0.9, ev
    with pytest.raises(SystemExit, match="differs"):
        pretrain_zinc.main(["ae", "--run-dir", str(tmp_path / "bad"), "--init-from", str(WEIGHTS_PATH),
                            "--latent-dim", "32", *common])
    out, card = tmp_path / "warm" / "w.safetensors", tmp_path / "warm" / "card.json"
    pretrain_zinc.main(["flow", "--run-dir", str(tmp_path / "warm"), "--data", "moses", "--steps", "3",
                        "--batch-size", "32", "--x1", "mean", "--eval-n", "8", "--out", str(out), "--card", str(card)])
    # a later export (other arguments) describes the flow by its own checkpoint's arguments
    pretrain_zinc.main(["export", "--run-dir", str(tmp_path / "warm"), "--out", str(out), "--card", str(card)])
    assert load_zinc_selfies(path=out).sample(4, seed=0).validity == 1.0
    c = json.loads(card.read_text())
    assert "MOSES view" in c["data"]["training_data"] and c["data"]["n_train"] == int((pd.read_csv(
        tmp_path / "warm" / "moses.csv.gz")["split"] == "train").sum())
    ae, before = c["training"]["ae"], shipped_card["training"]["ae"]
    stages = ae["earlier_stages"]
    assert stages[-1]["weights"] == WEIGHTS_PATH.relative_to(ROOT).as_posix()
    assert len(stages) == len(before.get("earlier_stages", [])) + 1
    assert stages[-1]["steps"] == before["steps"] and "history" not in stages[-1]
    assert ae["total_wall_minutes"] == pytest.approx(sum(st["wall_minutes"] for st in stages) + ae["wall_minutes"],
                                                     abs=0.1)
    assert c["training"]["flow"]["batch_size"] == 32 and c["training"]["flow"]["x1"].startswith("posterior mean")
    assert ae["steps"] == 3 and ae["lr"] == 1e-3 and ae["beta"] == 0.2 and ae["training_data"] == "moses"
    with pytest.raises(SystemExit, match="prepare"):
        pretrain_zinc.main(["ae", "--run-dir", str(tmp_path / "none"), *common])
    with pytest.raises(SystemExit, match="--steps or --budget-minutes"):
        pretrain_zinc.main(["ae", "--run-dir", str(tmp_path / "fresh"), "--data", "moses"])
