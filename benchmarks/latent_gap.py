"""Where a latent model's samples lose their quality: in the latent flow, or in the decoder?

A latent model (``zinc-selfies``) makes a molecule in two parts: the flow draws a latent, the decoder
turns it into a SELFIES string.  Its samples' FCD mixes the two.  This benchmark separates them by
decoding five sets of latents of the same size and scoring each the same way:

* ``train codes``: posterior means of ``--n`` training molecules (what a mean-trained flow learns);
* ``train posterior draws``: ``mu + sigma * eps`` of the same molecules (what a draw-trained flow learns);
* ``held-out codes``: posterior means of test molecules outside the FCD reference (the encoder on unseen data);
* ``flow <sampler><steps>``: the model's own samples;
* ``prior N(0, I)``: the decoder on the flow's noise, without the flow.

For each set: the MOSES metrics of the decoded molecules against the test reference (FCD, filters,
property Wasserstein distances; :func:`tfftmol.chem.moses_metrics.moses_metrics`), and two measures of
how close the *latents* are to the training codes, without decoding:

* ``c2st_codes_logreg`` / ``c2st_codes_mlp``: a classifier two-sample test, the 3-fold cross-validated
  ROC AUC of a logistic regression / a 2x256 MLP telling the set from the training codes (0.5: the
  classifier cannot tell them apart; 1: fully separable); ``c2st_draws_*`` the same against the
  posterior draws (the reference of a flow trained on draws, the shipped model's ``--x1 posterior``);
* ``nn_width_median``: median distance from a latent to its nearest code among ``--pool`` *other*
  training molecules (none of the rows' own), each dimension measured in its median posterior width
  (the scale the decoder was trained to tolerate).

If the flow's samples are as close to the training codes as held-out codes are (by C2ST and nearest-code
distance) but decode far worse, the decoder, not the flow, limits the samples.

    python benchmarks/latent_gap.py                                   # the shipped model
    python benchmarks/latent_gap.py --weights W.safetensors --reference moses --name latent_gap_candidate
    python benchmarks/latent_gap.py --quick                           # seconds: the test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import tfftmol.chem.moses_metrics as mm  # noqa: E402
from tfftmol.chem.selfies.loader import load_zinc_selfies  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402

COLUMNS = ["latents", "n", "c2st_codes_logreg", "c2st_codes_mlp", "c2st_draws_logreg", "c2st_draws_mlp",
           "nn_width_median", "latent_std", "fcd", "filters",
           "validity", "unique", "novelty", "snn", "frag", "qed_w1", "logp_w1", "sa_w1", "mw_w1", "sa_mean"]


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None, help="a zinc-selfies safetensors file (default: shipped)")
    ap.add_argument("--reference", choices=["auto", "zinc250k", "moses"], default="auto",
                    help="the data the model was trained on (as in benchmarks/zinc_model.py; auto: from its card)")
    ap.add_argument("--n", type=int, default=3000, help="latents per set")
    ap.add_argument("--n-ref", type=int, default=3000, help="test molecules of the FCD reference")
    ap.add_argument("--pool", type=int, default=20000,
                    help="other training molecules whose codes are the nearest-code pool")
    ap.add_argument("--samplers", nargs="+", default=["ode:10", "heun:20"],
                    help="the flow's samplers as sampler:steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "cache")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="latent_gap")
    ap.add_argument("--quick", action="store_true", help="150 latents per set, one sampler")
    args = ap.parse_args(argv)
    if args.reference == "auto":
        from tfftmol.chem.selfies.loader import card_beside, training_view
        args.reference = training_view(card_beside(args.weights))
    if args.quick:
        args.n, args.n_ref, args.pool, args.samplers = 150, 150, 300, ["ode:5"]
        if args.name == "latent_gap":
            args.name = "latent_gap_quick"
    for s in args.samplers:
        name, _, steps = s.partition(":")
        if name not in ("ode", "heun", "sde") or not steps.isdigit() or int(steps) < 1:
            ap.error(f"--samplers {s!r}: expected sampler:steps with sampler in ode, heun, sde and steps >= 1")
    return args


def c2st_auc(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """3-fold cross-validated ROC AUC of a logistic regression and of a 2x256 MLP telling ``b`` from ``a``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neural_network import MLPClassifier

    x = np.concatenate([a, b])
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    folds = StratifiedKFold(3, shuffle=True, random_state=seed)
    out = []
    for clf in (LogisticRegression(max_iter=2000),
                MLPClassifier((256, 256), max_iter=300, early_stopping=True, random_state=seed)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings of the small quick sets
            out.append(float(cross_val_score(clf, x, y, cv=folds, scoring="roc_auc").mean()))
    return out[0], out[1]


def nearest_code_distance(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """Distance of each row of ``x`` to its nearest row of ``codes``, each dimension divided by ``scale``."""
    xs, cs = (x / scale).double(), (codes / scale).double()
    best = torch.full((len(xs),), float("inf"), dtype=torch.float64)
    for i in range(0, len(cs), block):
        best = torch.minimum(best, torch.cdist(xs, cs[i:i + block]).min(1).values)
    return best


def _shown(path: Path) -> str:
    """``path`` relative to the project when it lies inside it, else its file name."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def main(argv=None) -> pd.DataFrame:
    args = parse(argv)
    torch.set_num_threads(1)
    t_all = time.time()
    import zinc_model  # the benchmark's reference data (the test split or its MOSES view, the training rows)

    rng = np.random.default_rng(args.seed)
    ref_args = argparse.Namespace(reference=args.reference, quick=args.quick, n_ref=args.n_ref, n_recon=args.n,
                                  n_baseline=args.n + args.pool, cache_dir=args.cache_dir)
    train, test, train_set = zinc_model.reference_data(ref_args, rng)
    ref_idx = rng.choice(len(test), size=min(args.n_ref, len(test)), replace=False)
    ref_smiles = test["smiles"].iloc[ref_idx].tolist()
    held = test.drop(test.index[ref_idx])
    held = held.iloc[rng.choice(len(held), size=min(args.n, len(held)), replace=False)]
    pick = train.iloc[rng.choice(len(train), size=min(args.n + args.pool, len(train)), replace=False)]
    tr, pool = pick.iloc[:args.n], pick.iloc[args.n:]
    print(f"reference: {len(ref_smiles)} test molecules; {len(tr)} training molecules, {len(held)} held-out ones, "
          f"{len(pool)} other training molecules as the nearest-code pool", flush=True)
    ref = mm.Reference.build(ref_smiles)

    model = load_zinc_selfies(path=args.weights).eval()
    gen = torch.Generator().manual_seed(args.seed)

    def encode(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised posterior means and widths of a frame's molecules."""
        mus, sigs = [], []
        with torch.no_grad():
            for i in range(0, len(frame), 4096):
                mu, logvar = model.vae.encode(model.vocab.encode(frame["selfies"].iloc[i:i + 4096].tolist()))
                mus.append((mu - model.z_mean) / model.z_std)
                sigs.append(torch.exp(0.5 * logvar) / model.z_std)
        return torch.cat(mus), torch.cat(sigs)

    codes, sig = encode(tr)
    pool_codes, pool_sig = encode(pool)
    width = pool_sig.median(0).values  # the posterior width of each dimension: the decoder's own scale
    sets = {"train codes": codes,
            "train posterior draws": codes + sig * torch.randn(codes.shape, generator=gen),
            "held-out codes": model.encode_selfies(held["selfies"].tolist())}
    for s in args.samplers:
        name, _, steps = s.partition(":")
        sets[f"flow {name}{steps}"] = model.sample_latents(args.n, steps=int(steps), sampler=name, seed=args.seed)
    sets["prior N(0, I)"] = torch.randn(args.n, codes.shape[1], generator=gen)

    rows = []
    for name, x in sets.items():
        t = time.time()
        dec = model.decode(x)
        samples = [d.smiles if d.reason == "ok" else None for d in dec]
        met = mm.moses_metrics(samples, train_set, ref, ks=())
        c2st = {}
        for ref_name, ref_x in (("codes", sets["train codes"]), ("draws", sets["train posterior draws"])):
            same = ref_x is x
            lr_, mlp_ = (float("nan"), float("nan")) if same else c2st_auc(ref_x.numpy(), x.numpy(), args.seed)
            c2st.update({f"c2st_{ref_name}_logreg": lr_, f"c2st_{ref_name}_mlp": mlp_})
        nn_d = nearest_code_distance(x, pool_codes, width)
        rows.append({"latents": name, "n": len(x), **c2st, "nn_width_median": float(nn_d.median()),
                     "latent_std": float(x.std(0).mean()),
                     **{k: met[k] for k in COLUMNS if k in met}})
        print(f"{name}: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()})} "
              f"({time.time() - t:.0f} s)", flush=True)
    df = pd.DataFrame(rows)[COLUMNS]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out_dir / f"{args.name}.csv", index=False)
    which = "the shipped zinc-selfies" if args.weights is None else _shown(args.weights)
    command = " ".join(["python benchmarks/latent_gap.py", *(sys.argv[1:] if argv is None else argv)])
    head = (f"# Latent gap: flow or decoder ({which})\n\n"
            f"{args.n} latents per set, seed {args.seed}; FCD and the other MOSES metrics against {len(ref_smiles)} "
            f"test molecules ({args.reference} reference); C2ST AUC against the training codes and against their "
            f"posterior draws (0.5 = indistinguishable); nn_width_median: median distance to the nearest of "
            f"{len(pool)} other training codes, each dimension in units of its median posterior width.  "
            f"`{command}` ({time.time() - t_all:.0f} s).\n\n")
    (args.out_dir / f"{args.name}.md").write_text(head + markdown_table(df) + "\n")
    print(markdown_table(df))
    return df


if __name__ == "__main__":
    main()
