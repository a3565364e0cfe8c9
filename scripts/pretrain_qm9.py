"""Pre-train the QM9 graph flow (``qm9-graph``) and export it as safetensors + model card.

    python scripts/pretrain_qm9.py --run-dir runs/qm9-graph --budget-minutes 70

Training: x1-prediction with cross-entropy on the interpolant
``x_t = t x_1 + (1 - t) x_0`` (t = 1 data), Adam, linear warm-up then cosine
decay of the learning rate, EMA of the weights (the EMA is what is exported and
evaluated), gradient clipping, one CPU thread.  The schedule's progress is
``max(step / steps, elapsed / budget)``, so a wall-clock budget ends the run on
time with the learning rate fully decayed.

Resumable: ``<run-dir>/ckpt.pt`` (model, EMA, optimizer, step, elapsed time,
RNG) is written atomically (tmp file + ``os.replace``) every ``--ckpt-every``
steps; rerunning the same command continues from it.  Every ``--eval-every``
steps the EMA model samples ``--eval-n`` molecules and the validity,
uniqueness and failure reasons go to ``<run-dir>/train.log``; the EMA weights
are exported to ``--out`` at each evaluation and at the end (``--export-only``
exports from the checkpoint without training).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem.data import load_qm9  # noqa: E402
from tfftmol.chem.graph import encode_classes  # noqa: E402
from tfftmol.chem.model import GraphTransformerConfig  # noqa: E402
from tfftmol.chem.qm9_model import CARD_PATH, WEIGHTS_PATH, QM9GraphFlow, save_qm9_graph  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "qm9-graph")
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="exported safetensors path")
    ap.add_argument("--card", type=Path, default=CARD_PATH, help="exported model card path")
    ap.add_argument("--steps", type=int, default=100_000, help="maximum optimizer steps")
    ap.add_argument("--budget-minutes", type=float, default=0.0, help="wall-clock budget (0 = steps only)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.02, help="final lr = lr * min_lr_frac")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--edge-weight", type=float, default=2.0, help="weight of the pair cross-entropy")
    ap.add_argument("--t-high-frac", type=float, default=0.5,
                    help="fraction of each batch with t = sqrt(u) (density 2t, towards data); the rest t = u")
    ap.add_argument("--d-node", type=int, default=80)
    ap.add_argument("--d-edge", type=int, default=32)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--eval-steps", type=int, default=30)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N training molecules (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-export", action="store_true", help="do not write --out/--card")
    ap.add_argument("--export-only", action="store_true", help="export the checkpoint's EMA weights and exit")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def get_logger(run_dir: Path) -> logging.Logger:
    log = logging.getLogger("pretrain_qm9")
    log.setLevel(logging.INFO)
    if not log.handlers:
        fh = logging.FileHandler(run_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(fh)
    return log


def train_classes(run_dir: Path, max_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Node/pair classes of the training split, cached in the run directory as .npz."""
    cache = run_dir / f"train_classes_{max_train}.npz"
    if cache.exists():
        z = np.load(cache)
        return torch.from_numpy(z["nodes"]), torch.from_numpy(z["edges"])
    smiles = load_qm9("train")["smiles"].tolist()
    if max_train:
        smiles = smiles[:max_train]
    n, e = encode_classes(smiles)
    tmp = run_dir / "train_classes.tmp.npz"
    np.savez(tmp, nodes=n.numpy().astype(np.int64), edges=e.numpy().astype(np.int64))
    os.replace(tmp, cache)
    return n, e


def lr_at(args, step: int, progress: float) -> float:
    warm = min(1.0, (step + 1) / max(args.warmup, 1))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return args.lr * warm * (args.min_lr_frac + (1.0 - args.min_lr_frac) * cos)


def evaluate(model: QM9GraphFlow, n: int, steps: int, seed: int) -> dict:
    t0 = time.time()
    res = model.sample(n, steps=steps, sampler="ode", seed=seed, batch_size=500)
    dt = time.time() - t0
    valid = [s for s, v in zip(res.smiles, res.valid) if v]
    reasons = Counter(res.reasons)
    return {"validity": res.validity, "uniqueness": len(set(valid)) / max(len(valid), 1),
            "mol_per_s": n / dt, **{f"frac_{k}": reasons.get(k, 0) / n for k in
                                    ("valence", "disconnected", "sanitization", "empty")}}


def export(args, ema: QM9GraphFlow, state: dict, last_eval: dict) -> None:
    if args.no_export:
        return
    save_qm9_graph(ema, args.out, extra_metadata={"step": state["step"]})
    cfg = ema.config.to_dict()
    card = json.loads(args.card.read_text()) if args.card.exists() else {}
    card.update({
        "name": "qm9-graph",
        "description": ("Flow-matching model over heavy-atom kekulized QM9 graphs (<= 9 atoms C/N/O/F, "
                        "189-dim ±1 one-hot state); dense graph transformer predicting the clean graph "
                        "(cross-entropy), velocity (x1_hat - x)/(1 - t)."),
        "data": {"source": "QM9 via PyPI qm9pack 1.0.3 (MIT), processed by scripts/prepare_qm9.py",
                 "molecules_kept": 130251, "molecules_total": 130831,
                 "dropped": {"formal_charge": 580},
                 "split": "deepchem ScaffoldSplitter 80/10/10", "train_size": int(state["n_train"])},
        "model": {"architecture": "GraphTransformerFlow", "config": cfg,
                  "parameters": int(sum(p.numel() for p in ema.parameters())),
                  "weights": args.out.name, "weights_format": "safetensors (EMA of the training weights)"},
        "training": {"steps": int(state["step"]), "batch_size": args.batch_size, "lr": args.lr,
                     "schedule": f"linear warm-up {args.warmup} steps, cosine to {args.min_lr_frac} x lr",
                     "ema": args.ema, "edge_weight": args.edge_weight, "t_high_frac": args.t_high_frac,
                     "budget_minutes": args.budget_minutes, "wall_minutes": round(state["elapsed"] / 60, 1),
                     "threads": args.threads, "device": "cpu", "seed": args.seed},
        "training_eval": last_eval,
    })
    tmp = args.card.with_name(args.card.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, args.card)


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log = get_logger(args.run_dir)
    torch.manual_seed(args.seed)
    cfg = GraphTransformerConfig(d_node=args.d_node, d_edge=args.d_edge, n_layers=args.n_layers, n_heads=args.n_heads)
    model, ema = QM9GraphFlow(cfg), QM9GraphFlow(cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    state = {"step": 0, "elapsed": 0.0, "n_train": 0, "last_eval": {}}

    ckpt = args.run_dir / "ckpt.pt"
    if ckpt.exists():
        ck = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"])
        state.update(ck["state"])
        log.info(f"resumed from {ckpt} at step {state['step']}")
    if args.export_only:
        export(args, ema, state, state["last_eval"])
        print(f"exported step {state['step']} to {args.out}")
        return

    nodes, edges = train_classes(args.run_dir, args.max_train)
    state["n_train"] = len(nodes)
    nparam = sum(p.numel() for p in model.parameters())
    log.info(f"start: {len(nodes)} training graphs, {nparam} parameters, config {cfg.to_dict()}, args {vars(args)}")

    def save_ckpt():
        tmp = args.run_dir / "ckpt.tmp.pt"
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "state": state}, tmp)
        os.replace(tmp, ckpt)

    budget = args.budget_minutes * 60.0
    progress = lambda: max(state["step"] / args.steps, state["elapsed"] / budget if budget > 0 else 0.0)  # noqa: E731
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, initial=state["step"], desc="pretrain qm9-graph", dynamic_ncols=True)
    t_last = time.time()
    run_loss = None
    model.train()
    while progress() < 1.0:
        step = state["step"]
        lr = lr_at(args, step, progress())
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(nodes), (args.batch_size,), generator=gen)
        u = torch.rand(args.batch_size, generator=gen)
        high = torch.rand(args.batch_size, generator=gen) < args.t_high_frac
        t = torch.where(high, u.sqrt(), u)
        out = model.loss(nodes[idx], edges[idx], t=t, generator=gen, edge_weight=args.edge_weight)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        with torch.no_grad():
            d = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        loss = float(out["loss"].detach())
        run_loss = loss if run_loss is None else 0.98 * run_loss + 0.02 * loss
        now = time.time()
        state["elapsed"] += now - t_last
        t_last = now
        state["step"] = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{run_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
        if state["step"] % 100 == 0:
            log.info(f"step {state['step']} loss {run_loss:.4f} node_ce {out['node_ce']:.4f} "
                     f"edge_ce {out['edge_ce']:.4f} lr {lr:.2e} elapsed {state['elapsed'] / 60:.1f} min")
        done = progress() >= 1.0
        if state["step"] % args.eval_every == 0 or done:
            te = time.time()
            ev = evaluate(ema, args.eval_n, args.eval_steps, seed=1234)
            ev["step"] = state["step"]
            state["last_eval"] = ev
            log.info("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in ev.items()))
            export(args, ema, state, ev)
            t_last += time.time() - te        # evaluation time does not count towards the budget
        if state["step"] % args.ckpt_every == 0 or done:
            save_ckpt()
    if bar is not None:
        bar.close()
    log.info(f"done at step {state['step']}, {state['elapsed'] / 60:.1f} min")


if __name__ == "__main__":
    main()
