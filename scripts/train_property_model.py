"""Train the shipped QM9 property model (HOMO-LUMO gap in eV and dipole mu in Debye).

A deepchem ``MultitaskRegressor`` on ECFP4 counts (``CircularFingerprint``,
radius 2, 2048 hashed counts; ``--bits`` for bits), both targets standardised
on the training split, trained on the scaffold split of
:func:`tfftmol.chem.data.load_qm9`; the epoch with the lowest validation MAE on
the gap is kept.  Writes

    tfftmol/chem/weights/qm9-property.safetensors   (torch state dict, no pickle)
    tfftmol/chem/weights/qm9-property.card.json     (featuriser, tasks, split, budget, MAEs)

Usage:
    python scripts/train_property_model.py [--epochs 20] [--max-train 0] [--seed 0] [--out DIR]
    python scripts/train_property_model.py --evaluate-only     # refresh the card's test metrics
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rdkit import rdBase

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem.data import HARTREE_TO_EV, load_qm9  # noqa: E402
from tfftmol.chem.property_model import PropertyModel, build_regressor, import_deepchem  # noqa: E402

SUBSAMPLE_N, SUBSAMPLE_SEED = 1000, 0
TASKS = [  # name, column in load_qm9, factor to the card's units, units
    ("gap", "gap", HARTREE_TO_EV, "eV"),
    ("mu", "mu", 1.0, "Debye"),
]


def targets(df) -> np.ndarray:
    return np.stack([df[col].to_numpy(np.float64) * f for _, col, f, _ in TASKS], axis=1)  # (n, n_tasks)


def subsample_metrics(model: PropertyModel, test, n: int = SUBSAMPLE_N, seed: int = SUBSAMPLE_SEED) -> dict:
    """MAE on a seeded subsample of the test split (what the test suite re-checks quickly)."""
    sub = test.sample(min(n, len(test)), random_state=seed)
    pred = model.predict(sub["smiles"].tolist())
    y = targets(sub)
    out = {"n": int(len(sub)), "seed": seed, "sampling": "pandas DataFrame.sample(n, random_state=seed)"}
    out["mae"] = {name: float(np.mean(np.abs(pred[name] - y[:, k]))) for k, (name, *_rest) in enumerate(TASKS)}
    return out


def evaluate_only(out: Path) -> int:
    """Recompute the card's test metrics for already trained weights (no training)."""
    from tfftmol.chem.property_model import load_property_model

    model = load_property_model(weights_dir=out, cache=False)
    test = load_qm9("test")
    pred = model.predict(test["smiles"].tolist())
    y = targets(test)
    card = model.card
    card["metrics"]["test_mae"] = {name: float(np.mean(np.abs(pred[name] - y[:, k])))
                                   for k, (name, *_rest) in enumerate(TASKS)}
    card["metrics"]["n_test"] = int(len(test))
    card["metrics"]["test_subsample"] = subsample_metrics(model, test)
    (out / "qm9-property.card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card["metrics"], indent=2))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-train", type=int, default=0, help="subsample the training split (0 = all)")
    ap.add_argument("--layers", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--bits", action="store_true", help="ECFP bits instead of counts")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "tfftmol" / "chem" / "weights")
    ap.add_argument("--evaluate-only", action="store_true", help="recompute the card's test metrics of --out")
    args = ap.parse_args(argv)
    if args.evaluate_only:
        return evaluate_only(args.out)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    dc = import_deepchem()
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    t_start = time.perf_counter()

    card = {
        "name": "qm9-property",
        "description": "HOMO-LUMO gap and dipole moment of small organic molecules (QM9 chemical space: "
                       "<= 9 heavy atoms C/N/O/F); outside that space predictions are extrapolations",
        "model": "deepchem.models.MultitaskRegressor (torch)",
        "featurizer": {"type": "deepchem.feat.CircularFingerprint", "radius": 2, "size": 2048,
                       "chiral": False, "bonds": True, "features": False, "is_counts_based": not args.bits},
        "architecture": {"layer_sizes": list(args.layers), "dropouts": args.dropout, "activation": "relu",
                         "residual": False, "batch_size": args.batch_size, "learning_rate": args.lr,
                         "weight_decay": 0.0},
        "tasks": [],
        "data": {"source": "QM9 (Ramakrishnan et al., Sci. Data 2014) via qm9pack 1.0.3 (MIT), "
                           "processed by scripts/prepare_qm9.py",
                 "split": "scaffold (deepchem ScaffoldSplitter 80/10/10), tfftmol.chem.data.load_qm9"},
    }
    splits = {s: load_qm9(s) for s in ("train", "valid", "test")}
    if args.max_train and args.max_train < len(splits["train"]):
        splits["train"] = splits["train"].sample(args.max_train, random_state=args.seed).reset_index(drop=True)
    fz = dc.feat.CircularFingerprint(size=2048, radius=2, chiral=False, bonds=True, features=False,
                                     is_counts_based=not args.bits)
    feats, ys = {}, {}
    for s, df in splits.items():
        t0 = time.perf_counter()
        with rdBase.BlockLogs():
            feats[s] = np.asarray(fz.featurize(df["smiles"].tolist()), dtype=np.float32)
        ys[s] = targets(df)
        print(f"featurised {s}: {feats[s].shape} in {time.perf_counter() - t0:.1f} s", flush=True)
    mean, std = ys["train"].mean(0), ys["train"].std(0)
    for k, (name, col, f, units) in enumerate(TASKS):
        card["tasks"].append({"name": name, "column": col, "factor_to_units": f, "units": units,
                              "mean": float(mean[k]), "std": float(std[k])})

    reg = build_regressor(card)
    train = dc.data.NumpyDataset(feats["train"], (ys["train"] - mean) / std)
    model = PropertyModel(reg, card)
    best, best_state, history = np.inf, None, []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        reg.fit(train, nb_epoch=1)
        reg.model.eval()
        pred = model.predict_features(feats["valid"])
        mae = np.abs(pred - ys["valid"]).mean(0)
        history.append({"epoch": epoch, "valid_mae": {t[0]: float(m) for t, m in zip(TASKS, mae)},
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"epoch {epoch}: valid MAE gap {mae[0]:.4f} eV, mu {mae[1]:.4f} D "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if mae[0] < best:
            best = float(mae[0])
            best_state = {k: v.detach().clone().contiguous() for k, v in reg.model.state_dict().items()}
    reg.model.load_state_dict(best_state)
    reg.model.eval()
    test_pred = model.predict_features(feats["test"])
    test_mae = np.abs(test_pred - ys["test"]).mean(0)
    valid_mae = np.abs(model.predict_features(feats["valid"]) - ys["valid"]).mean(0)
    baseline = np.abs(ys["test"] - mean).mean(0)  # predicting the training mean
    card["metrics"] = {
        "test_mae": {t[0]: float(m) for t, m in zip(TASKS, test_mae)},
        "valid_mae": {t[0]: float(m) for t, m in zip(TASKS, valid_mae)},
        "test_mae_of_train_mean": {t[0]: float(m) for t, m in zip(TASKS, baseline)},
        "n_test": int(len(ys["test"])),
        "test_subsample": subsample_metrics(model, splits["test"]),
    }
    card["training"] = {"n_train": int(len(ys["train"])), "n_valid": int(len(ys["valid"])),
                        "epochs": args.epochs, "best_epoch": int(np.argmin([h["valid_mae"]["gap"] for h in history]) + 1),
                        "history": history, "seed": args.seed, "threads": args.threads,
                        "wall_seconds": round(time.perf_counter() - t_start, 1),
                        "hardware": f"CPU ({platform.machine()})",
                        "versions": {"torch": torch.__version__, "deepchem": dc.__version__}}

    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    w_path, c_path = args.out / "qm9-property.safetensors", args.out / "qm9-property.card.json"
    save_file({k: v.contiguous() for k, v in reg.model.state_dict().items()}, str(w_path))
    c_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"test MAE: gap {test_mae[0]:.4f} eV (train-mean baseline {baseline[0]:.4f}), "
          f"mu {test_mae[1]:.4f} D (baseline {baseline[1]:.4f})")
    print(f"wrote {w_path.name} ({w_path.stat().st_size / 1e6:.1f} MB) and {c_path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
