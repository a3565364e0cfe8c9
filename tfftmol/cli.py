"""The ``tfftmol`` command line.

    tfftmol toy2d   [--alpha 1.0] [--steps 600] [--reward linear] [--out runs/toy2d]
    tfftmol sample  --model qm9-graph -n 1000 -o out.csv [--steps 50] [--sampler ode|sde]
    tfftmol models
    tfftmol demo
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _toy2d(a) -> int:
    import pandas as pd
    import torch

    from .core.adjoint import AMConfig
    from .core.config import from_dict, load_yaml
    from .core.tfft import TFFTConfig
    from .image2d.experiment import Toy2DConfig, run_toy2d

    torch.set_num_threads(a.threads)
    if a.config:
        cfg = from_dict(Toy2DConfig, load_yaml(a.config))
    else:
        reward = {"name": a.reward} if a.reward != "linear" else {"name": "linear", "w": [1.0, 0.0]}
        cfg = Toy2DConfig(model=a.model, reward=reward, alpha=a.alpha, seed=a.seed, eval_samples=a.eval_samples,
                          tfft=TFFTConfig(am=AMConfig(steps=a.steps, batch_size=a.batch_size, seed=a.seed,
                                                      grad_clip=0.0, ema=0.99)))
    table, _ = run_toy2d(cfg, out_dir=a.out, progress=not a.quiet)
    cols = [c for c in table.columns if c not in ("target_from",)]
    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print(table[cols].to_string(index=False))
    print(f"\nwrote {Path(a.out) / 'toy2d.csv'} and {Path(a.out) / 'toy2d.png'}")
    return 0


def _sample(a) -> int:
    import torch

    from .chem.qm9_model import sample_to_csv
    from .pretrained import load_pretrained

    torch.set_num_threads(a.threads)
    model = load_pretrained(a.model)
    df = sample_to_csv(model, a.n, a.output, steps=a.steps, sampler=a.sampler, seed=a.seed)
    valid = float(df["valid"].mean()) if len(df) else 0.0
    print(f"wrote {len(df)} molecules to {a.output}; valid {valid:.1%}")
    return 0


def _models(a) -> int:
    from .pretrained import available_models, model_card

    for name in available_models():
        try:
            card = model_card(name)
            desc = card.get("description", "")
        except FileNotFoundError:
            desc = "(weights not built)"
        print(f"{name:14s} {desc}")
    return 0


def _demo(a) -> int:
    """The main job: until the molecular pipeline lands, the 2D comparison on the exact GMM."""
    ns = argparse.Namespace(config=None, model="gmm-exact", reward="linear", alpha=1.0, steps=a.steps,
                            batch_size=256, seed=0, eval_samples=20000, out=a.out, quiet=False, threads=a.threads)
    return _toy2d(ns)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tfftmol", description="Tail-aware flow fine-tuning (TFFT).")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("toy2d", help="2D comparison: pre-trained vs expected-FT vs TFFT-right vs TFFT-left")
    t.add_argument("--config", help="YAML file of a Toy2DConfig (overrides the flags below)")
    t.add_argument("--model", default="gmm-exact", help="gmm-exact or toy2d-{gmm,moons,ring}")
    t.add_argument("--reward", default="linear", help="linear or multimodal")
    t.add_argument("--alpha", type=float, default=1.0)
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-samples", type=int, default=20000)
    t.add_argument("--out", default="runs/toy2d")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(fn=_toy2d)

    s = sub.add_parser("sample", help="sample molecules from a pre-trained model to CSV")
    s.add_argument("--model", default="qm9-graph")
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--sampler", choices=["ode", "sde"], default="ode")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=_sample)

    m = sub.add_parser("models", help="list the shipped pre-trained models")
    m.set_defaults(fn=_models)

    d = sub.add_parser("demo", help="the main demo")
    d.add_argument("--steps", type=int, default=800)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--threads", type=int, default=1)
    d.set_defaults(fn=_demo)

    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
