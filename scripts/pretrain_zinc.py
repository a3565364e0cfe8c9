"""Pre-train the drug-like ``zinc-selfies`` model: a SELFIES VAE, then a flow in its latent space.

    python scripts/pretrain_zinc.py ae   --run-dir runs/zinc --budget-minutes 70
    python scripts/pretrain_zinc.py flow --run-dir runs/zinc --budget-minutes 12
    python scripts/pretrain_zinc.py export --run-dir runs/zinc     # (flow does this at its end too)

The shipped weights came from three VAE stages, each continuing the last (``--init-from``),
then a flow on the posterior means of the MOSES view of the data (neutral forms, MOSES
filters passed; what MOSES itself trains on):

    python scripts/pretrain_zinc.py ae --run-dir runs/zinc --budget-minutes 60 --lr 0.002
    python scripts/pretrain_zinc.py flow --run-dir runs/zinc --budget-minutes 11 --n-encode 60000 \
        --out runs/zinc/zinc-selfies.safetensors --card runs/zinc/zinc-selfies.card.json
    python scripts/pretrain_zinc.py prepare --run-dir runs/zinc-moses            # ~9.5 min on 2 processes
    python scripts/pretrain_zinc.py ae --run-dir runs/zinc-moses --data moses \
        --init-from runs/zinc/zinc-selfies.safetensors --beta-warmup 0 --budget-minutes 105
    python scripts/pretrain_zinc.py flow --run-dir runs/zinc-moses --data moses --budget-minutes 9 \
        --out runs/zinc-moses/zinc-selfies.safetensors --card runs/zinc-moses/zinc-selfies.card.json
    mkdir -p runs/zinc-b06 && cp runs/zinc-moses/moses.csv.gz runs/zinc-b06/
    python scripts/pretrain_zinc.py ae --run-dir runs/zinc-b06 --data moses \
        --init-from runs/zinc-moses/zinc-selfies.safetensors --beta 0.6 --beta-warmup 0 --budget-minutes 85
    python scripts/pretrain_zinc.py flow --run-dir runs/zinc-b06 --data moses --x1 mean --budget-minutes 11

A stage's card (``--card``, beside its weights) is what the next stage's export reads to
list the earlier stages under ``training.ae.earlier_stages``.

``ae``: the VAE of :mod:`tfftmol.chem.selfies.autoencoder` on the training split
of the processed ZINC250k copy (teacher forcing, summed token cross-entropy +
``beta * KL``, beta warmed up linearly over the first ``--beta-warmup`` of the
run), Adam with linear warm-up then cosine decay, EMA of the weights,
gradient clipping, one CPU thread.  The schedule's progress is
``max(step / steps, elapsed / budget)``, so a wall-clock budget ends the run on
time with the learning rate decayed.

``flow``: encodes the training split with the EMA VAE, normalises the latents
per dimension, and trains :class:`~tfftmol.chem.selfies.latent_flow.LatentVelocityMLP`
by flow matching on ``x_t = t x_1 + (1 - t) x_0`` (t = 1 data), where ``x_1`` is a
fresh posterior draw ``mu + sigma * eps`` each time; EMA, cosine schedule.
Then ``export`` writes ``tfftmol/chem/weights/zinc-selfies.safetensors`` (VAE +
flow + normalisation, configs in the metadata; no pickle) and the training part
of the model card.

Resumable: ``<run-dir>/{ae,flow}_ckpt.pt`` (model, EMA, optimizer, step, elapsed
time, data order, RNG) is written atomically every ``--ckpt-minutes``; rerunning
the same command continues from it.  Progress goes to ``<run-dir>/{ae,flow}.log``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem.selfies.autoencoder import SelfiesVAE, VAEConfig, vae_loss  # noqa: E402
from tfftmol.chem.selfies.codec import PAD, SelfiesVocab, decode_selfies  # noqa: E402
from tfftmol.chem.selfies.data import load_zinc250k  # noqa: E402
from tfftmol.chem.selfies.latent_flow import FlowConfig, LatentVelocityMLP, ZincSelfiesFlow  # noqa: E402
from tfftmol.chem.selfies.loader import (CARD_PATH, WEIGHTS_PATH, card_beside, save_zinc_selfies,  # noqa: E402
                                         training_view)


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["prepare", "ae", "flow", "export"])
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "zinc")
    ap.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    ap.add_argument("--card", type=Path, default=CARD_PATH)
    ap.add_argument("--budget-minutes", type=float, default=0.0, help="wall-clock budget of this stage (0 = steps)")
    ap.add_argument("--steps", type=int, default=0, help="maximum optimizer steps (0 = from the budget only)")
    ap.add_argument("--batch-size", type=int, default=0, help="0 = 128 (ae) / 256 (flow)")
    ap.add_argument("--lr", type=float, default=0.0, help="0 = 1e-3 (ae) / 1e-3 (flow)")
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-minutes", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1)
    # VAE
    ap.add_argument("--emb-dim", type=int, default=64)
    ap.add_argument("--enc-hidden", type=int, default=128)
    ap.add_argument("--dec-hidden", type=int, default=256)
    ap.add_argument("--latent-dim", type=int, default=64)
    ap.add_argument("--beta", type=float, default=0.2, help="KL weight (on the summed token cross-entropy)")
    ap.add_argument("--beta-warmup", type=float, default=0.25, help="fraction of the run to ramp beta from 0")
    ap.add_argument("--eval-n", type=int, default=400)
    ap.add_argument("--data", choices=["zinc250k", "moses"], default="zinc250k",
                    help="training data: the processed ZINC250k copy as it ships, or its MOSES view (neutral forms, "
                         "MOSES filters passed; tfftmol.chem.selfies.data.moses_view), built by the prepare stage")
    ap.add_argument("--init-from", type=Path, default=None,
                    help="ae: start the VAE from the one in this zinc-selfies safetensors file (a fresh optimizer "
                         "and schedule); ignored when a checkpoint is resumed")
    ap.add_argument("--processes", type=int, default=2, help="prepare: worker processes of the filter scan")
    # flow
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--n-encode", type=int, default=0, help="training molecules encoded for the flow (0 = all)")
    ap.add_argument("--x1", choices=["posterior", "mean"], default="posterior",
                    help="flow data: a fresh posterior draw mu + sigma * eps (default) or the posterior mean mu")
    return ap.parse_args(argv)


def log(run_dir: Path, name: str, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(run_dir / f"{name}.log", "a") as fh:
        fh.write(line + "\n")


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, progress: float, lr: float, warmup: int, min_frac: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)


def prepare(args) -> None:
    """Build ``<run-dir>/moses.csv.gz``, the MOSES view of every split (once; about 9.5 minutes on 2 processes)."""
    from tfftmol.chem.selfies.data import moses_view

    path = args.run_dir / "moses.csv.gz"
    if path.exists():
        print(f"{path} exists")
        return
    t0 = time.time()
    raw = load_zinc250k()
    view = moses_view(raw, processes=args.processes)
    tmp = path.with_name(path.name + ".tmp")
    view.to_csv(tmp, index=False, compression="gzip")
    os.replace(tmp, path)
    sizes = view["split"].value_counts().to_dict()
    log(args.run_dir, "prepare", f"MOSES view: {len(view)} of {len(raw)} molecules kept ({len(view) / len(raw):.3f}); "
        f"splits {sizes}; {time.time() - t0:.0f} s")


def frame_for(run_dir: Path, split: str, data: str):
    """The training frame of one split: the shipped copy, or the MOSES view built by ``prepare``."""
    if data == "zinc250k":
        return load_zinc250k(split)
    import pandas as pd

    path = run_dir / "moses.csv.gz"
    if not path.exists():
        raise SystemExit(f"{path} not found: run the prepare stage first (scripts/pretrain_zinc.py prepare "
                         f"--run-dir {run_dir})")
    df = pd.read_csv(path, dtype={"smiles": str, "selfies": str, "split": str}, keep_default_na=False)
    return df[df["split"] == split].reset_index(drop=True)


def tokens_for(run_dir: Path, vocab: SelfiesVocab, split: str, data: str = "zinc250k") -> torch.Tensor:
    path = run_dir / f"tokens_{split}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    tok = vocab.encode(frame_for(run_dir, split, data)["selfies"].tolist()).to(torch.uint8 if len(vocab) < 256 else torch.long)
    save_atomic(tok, path)
    return tok


def trim(tok: torch.Tensor) -> torch.Tensor:
    """Drop the all-pad tail columns of a batch."""
    L = int((tok != PAD).sum(1).max().item())
    return tok[:, :max(L, 1)]


@torch.no_grad()
def eval_ae(vae: SelfiesVAE, vocab: SelfiesVocab, tok: torch.Tensor, smiles: list[str], n_prior: int = 200,
            seed: int = 1234) -> dict:
    """Greedy reconstruction from the posterior mean (exact canonical SMILES match, token accuracy) and
    the validity/uniqueness of decoded prior draws z ~ N(0, I)."""
    vae.eval()
    mu, logvar = vae.encode(tok.long())
    gen = vae.generate(mu)
    dec = [decode_selfies(s) for s in vocab.to_selfies(gen)]
    exact = float(np.mean([d.smiles == s for d, s in zip(dec, smiles)]))
    L = min(gen.shape[1], tok.shape[1])
    mask = tok[:, :L].long() != PAD
    tok_acc = float(((gen[:, :L] == tok[:, :L].long()) & mask).sum() / mask.sum())
    g = torch.Generator().manual_seed(seed)
    zp = torch.randn((n_prior, mu.shape[1]), generator=g)
    dp = [decode_selfies(s) for s in vocab.to_selfies(vae.generate(zp))]
    ok = [d.smiles for d in dp if d.reason == "ok"]
    sig = torch.exp(0.5 * logvar)
    active = int(((mu.var(0)) > 0.01).sum())
    return {"recon_exact": round(exact, 4), "recon_tok_acc": round(tok_acc, 4),
            "prior_validity": round(len(ok) / n_prior, 4),
            "prior_unique": round(len(set(ok)) / max(1, len(ok)), 4),
            "active_dims": active, "mean_sigma": round(float(sig.mean()), 4)}


def train_ae(args) -> None:
    run = args.run_dir
    vocab = SelfiesVocab.load()
    cfg = VAEConfig(vocab_size=len(vocab), max_len=vocab.max_len, emb_dim=args.emb_dim, enc_hidden=args.enc_hidden,
                    dec_hidden=args.dec_hidden, latent_dim=args.latent_dim)
    tok = tokens_for(run, vocab, "train", args.data)
    valid = frame_for(run, "valid", args.data)
    g_eval = np.random.default_rng(0).choice(len(valid), size=min(args.eval_n, len(valid)), replace=False)
    vtok = vocab.encode(valid["selfies"].iloc[g_eval].tolist())
    vsmi = valid["smiles"].iloc[g_eval].tolist()
    bs = args.batch_size or 128
    lr = args.lr or 1e-3
    torch.manual_seed(args.seed)
    model = SelfiesVAE(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ckpt_path = run / "ae_ckpt.pt"
    state = {"step": 0, "elapsed": 0.0, "epoch": 0, "pos": 0, "history": []}
    gen = torch.Generator().manual_seed(args.seed)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["rng"])
        log(run, "ae", f"resumed at step {state['step']} ({state['elapsed'] / 60:.1f} min)")
    else:
        if args.init_from is not None:
            from tfftmol.chem.selfies.loader import load_zinc_selfies

            start = load_zinc_selfies(path=args.init_from).vae
            if start.config.to_dict() != cfg.to_dict():
                raise SystemExit(f"--init-from {args.init_from}: VAE config {start.config.to_dict()} differs "
                                 f"from {cfg.to_dict()}")
            model.load_state_dict(start.state_dict())
            ema.load_state_dict(start.state_dict())
            log(run, "ae", f"VAE initialised from {args.init_from}")
        n_par = sum(p.numel() for p in model.parameters())
        log(run, "ae", f"VAE {cfg.to_dict()} parameters={n_par} data={args.data} train={len(tok)} batch={bs} "
            f"lr={lr} beta={args.beta}")
    perm = torch.randperm(len(tok), generator=torch.Generator().manual_seed(args.seed + state["epoch"]))
    budget = args.budget_minutes * 60
    t_start = time.time() - state["elapsed"]
    last_ckpt = time.time()
    agg = {"ce": 0.0, "kl": 0.0, "tok_acc": 0.0, "n": 0}

    def progress() -> float:
        p = []
        if args.steps:
            p.append(state["step"] / args.steps)
        if budget:
            p.append((time.time() - t_start) / budget)
        return max(p) if p else 0.0

    def checkpoint(final: bool = False) -> None:
        state["elapsed"] = time.time() - t_start
        ev = eval_ae(ema, vocab, vtok, vsmi)
        ev.update(step=state["step"], minutes=round(state["elapsed"] / 60, 2), epoch=state["epoch"])
        state["history"].append(ev)
        save_atomic({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "state": state, "gen": gen.get_state(), "rng": torch.get_rng_state(),
                     "config": cfg.to_dict(), "args": {k: str(v) for k, v in vars(args).items()}}, ckpt_path)
        log(run, "ae", ("FINAL " if final else "") + "eval(EMA) " + json.dumps(ev))

    model.train()
    while progress() < 1.0:
        if state["pos"] + bs > len(tok):
            state["epoch"] += 1
            state["pos"] = 0
            perm = torch.randperm(len(tok), generator=torch.Generator().manual_seed(args.seed + state["epoch"]))
        idx = perm[state["pos"]:state["pos"] + bs]
        state["pos"] += bs
        batch = trim(tok[idx].long())
        p = progress()
        for grp in opt.param_groups:
            grp["lr"] = lr_at(state["step"], p, lr, args.warmup, args.min_lr_frac)
        beta = args.beta * min(1.0, p / args.beta_warmup) if args.beta_warmup > 0 else args.beta
        loss, parts = vae_loss(model, batch, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        ema_update(ema, model, args.ema if state["step"] > args.warmup else 0.0)
        state["step"] += 1
        for k in ("ce", "kl", "tok_acc"):
            agg[k] += parts[k]
        agg["n"] += 1
        if state["step"] % 200 == 0:
            el = time.time() - t_start
            log(run, "ae", f"step {state['step']} ep {state['epoch']} p {p:.3f} ce {agg['ce'] / agg['n']:.3f} "
                f"kl {agg['kl'] / agg['n']:.2f} acc {agg['tok_acc'] / agg['n']:.4f} beta {beta:.3f} "
                f"lr {opt.param_groups[0]['lr']:.2e} mol/s {state['step'] * bs / el:.0f}")
            agg = {"ce": 0.0, "kl": 0.0, "tok_acc": 0.0, "n": 0}
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint(final=True)


@torch.no_grad()
def encode_train(run: Path, vae: SelfiesVAE, vocab: SelfiesVocab, n_encode: int = 0,
                 data: str = "zinc250k") -> tuple[torch.Tensor, torch.Tensor]:
    path = run / "latents_train.pt"
    if path.exists():
        d = torch.load(path, weights_only=True)
        return d["mu"], d["logvar"]
    tok = tokens_for(run, vocab, "train", data)
    if n_encode and n_encode < len(tok):
        tok = tok[torch.randperm(len(tok), generator=torch.Generator().manual_seed(0))[:n_encode]]
    mus, lvs = [], []
    vae.eval()
    for s in range(0, len(tok), 4096):
        mu, lv = vae.encode(trim(tok[s:s + 4096].long()))
        mus.append(mu)
        lvs.append(lv)
    mu, lv = torch.cat(mus), torch.cat(lvs)
    save_atomic({"mu": mu, "logvar": lv}, path)
    return mu, lv


def load_vae(run: Path) -> tuple[SelfiesVAE, SelfiesVocab, dict]:
    ck = torch.load(run / "ae_ckpt.pt", weights_only=True)
    vae = SelfiesVAE(VAEConfig(**ck["config"]))
    vae.load_state_dict(ck["ema"])
    return vae.eval().requires_grad_(False), SelfiesVocab.load(), ck["state"]


def train_flow(args) -> None:
    run = args.run_dir
    vae, vocab, ae_state = load_vae(run)
    t_enc = time.time()
    mu, logvar = encode_train(run, vae, vocab, args.n_encode, args.data)
    sig = torch.exp(0.5 * logvar)
    if args.x1 == "mean":  # the flow learns the posterior means only (decoded latents sit on the data's codes)
        sig = torch.zeros_like(sig)
    # normalisation: moments of the aggregated posterior mu + sigma * eps (of mu alone with --x1 mean)
    z_mean = mu.mean(0)
    z_std = torch.sqrt(mu.var(0) + (sig ** 2).mean(0)).clamp(min=1e-3)
    log(run, "flow", f"encoded {len(mu)} training molecules in {time.time() - t_enc:.0f} s; "
        f"z_std range {float(z_std.min()):.3f}..{float(z_std.max()):.3f}")
    cfg = FlowConfig(dim=mu.shape[1], width=args.width, depth=args.depth)
    bs = args.batch_size or 256
    lr = args.lr or 1e-3
    torch.manual_seed(args.seed)
    net = LatentVelocityMLP(cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ckpt_path = run / "flow_ckpt.pt"
    state = {"step": 0, "elapsed": 0.0, "history": []}
    gen = torch.Generator().manual_seed(args.seed + 1)
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        gen.set_state(ck["gen"])
        log(run, "flow", f"resumed at step {state['step']}")
    else:
        log(run, "flow", f"flow {cfg.to_dict()} parameters={sum(p.numel() for p in net.parameters())} batch={bs}")
    budget = args.budget_minutes * 60
    t_start = time.time() - state["elapsed"]
    last_ckpt = time.time()
    train_smiles = set(frame_for(run, "train", args.data)["smiles"])

    def progress() -> float:
        p = []
        if args.steps:
            p.append(state["step"] / args.steps)
        if budget:
            p.append((time.time() - t_start) / budget)
        return max(p) if p else 0.0

    def checkpoint(final: bool = False) -> None:
        state["elapsed"] = time.time() - t_start
        model = ZincSelfiesFlow(vae, ema, vocab, z_mean, z_std)
        res = model.sample(args.eval_n, steps=30, sampler="ode", seed=1234)
        ok = [s for s, v in zip(res.smiles, res.valid) if v]
        ev = {"step": state["step"], "minutes": round(state["elapsed"] / 60, 2), "validity": round(res.validity, 4),
              "unique": round(len(set(ok)) / max(1, len(ok)), 4),
              "novelty": round(float(np.mean([s not in train_smiles for s in set(ok)])) if ok else 0.0, 4)}
        state["history"].append(ev)
        save_atomic({"model": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "state": state,
                     "gen": gen.get_state(), "config": cfg.to_dict(), "z_mean": z_mean, "z_std": z_std,
                     "args": {k: str(v) for k, v in vars(args).items()}}, ckpt_path)
        log(run, "flow", ("FINAL " if final else "") + "eval(EMA, 30 Euler steps) " + json.dumps(ev))

    net.train()
    n = len(mu)
    agg, cnt = 0.0, 0
    while progress() < 1.0:
        idx = torch.randint(0, n, (bs,), generator=gen)
        x1 = (mu[idx] + sig[idx] * torch.randn(bs, mu.shape[1], generator=gen) - z_mean) / z_std
        x0 = torch.randn(bs, mu.shape[1], generator=gen)
        t = torch.rand(bs, generator=gen)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
        p = progress()
        for grp in opt.param_groups:
            grp["lr"] = lr_at(state["step"], p, lr, args.warmup, args.min_lr_frac)
        loss = (net(xt, t) - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
        ema_update(ema, net, args.ema if state["step"] > args.warmup else 0.0)
        state["step"] += 1
        agg += float(loss.detach())
        cnt += 1
        if state["step"] % 500 == 0:
            el = time.time() - t_start
            log(run, "flow", f"step {state['step']} p {p:.3f} loss {agg / cnt:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} samples/s {state['step'] * bs / el:.0f}")
            agg, cnt = 0.0, 0
        if time.time() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.time()
    checkpoint(final=True)
    export(args)


def _number(v):
    """A checkpoint's stored argument (a string) as a number, or None."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def earlier_ae_stages(init_from: Path) -> list[dict]:
    """The VAE training behind ``--init-from``, oldest stage first, from the card beside that weights file.

    Each stage is that card's ``training.ae`` without its history; a card that is missing gives one stage
    that says so, so an exported card never claims a shorter training than the weights had."""
    card_path = card_beside(init_from)
    if not card_path.exists():
        return [{"weights": init_from.name, "note": f"no model card beside it ({card_path.name}); training unknown"}]
    ae = json.loads(card_path.read_text()).get("training", {}).get("ae", {})
    numeric = ("lr", "beta", "beta_warmup", "budget_minutes", "ema")  # stored as strings by older exports
    stage = {k: (_number(v) if k in numeric and isinstance(v, str) else v)
             for k, v in ae.items() if k not in ("history", "earlier_stages", "init_from", "total_wall_minutes")}
    stage.setdefault("training_data", training_view(card_path))  # cards written before stages named their data
    try:  # the project-relative path when inside the project, else the file name (no machine path in a card)
        shown = init_from.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        shown = init_from.name
    return list(ae.get("earlier_stages", [])) + [{"weights": shown, **stage}]


def export(args) -> None:
    run = args.run_dir
    vae, vocab, ae_state = load_vae(run)
    ck = torch.load(run / "flow_ckpt.pt", weights_only=True)
    net = LatentVelocityMLP(FlowConfig(**ck["config"]))
    net.load_state_dict(ck["ema"])
    model = ZincSelfiesFlow(vae, net, vocab, ck["z_mean"], ck["z_std"]).eval()
    ae_ck = torch.load(run / "ae_ckpt.pt", weights_only=True)
    path = save_zinc_selfies(model, args.out)
    card = json.loads(args.card.read_text()) if args.card.exists() else {}
    ae_args = ae_ck.get("args", {})
    data = ae_args.get("data", "zinc250k")
    # the flow's own arguments (checkpoints before they were stored: this command's)
    flow_args = ck.get("args") or {k: str(v) for k, v in vars(args).items()}
    init_from = ae_args.get("init_from") if ae_args.get("init_from") not in (None, "None") else None
    earlier = earlier_ae_stages(Path(init_from)) if init_from else []
    n_train = len(tokens_for(run, vocab, "train", data))
    data_note = ({"training_data": "the MOSES view of the training split (tfftmol.chem.selfies.data.moses_view: "
                                   "RDKit Uncharger neutral forms, MOSES filters passed; built by the prepare stage)",
                  "n_train": n_train} if data == "moses" else {"training_data": "the training split", "n_train": n_train})
    card.update({
        "name": "zinc-selfies",
        "description": "Drug-like molecular flow: a SELFIES VAE (bi-GRU encoder, GRU decoder, greedy decoding) "
                       "trained on ZINC250k, and a flow-matching MLP in its normalised latent space "
                       "(x_t = t x1 + (1 - t) x0, t = 1 data). Every decoded latent is a SELFIES, hence a molecule.",
        "data": {"source": "ZINC250k (249,455 SMILES; PMO benchmark copy, MIT), processed by "
                           "scripts/prepare_zinc.py into tfftmol/chem/data/zinc250k.csv.gz",
                 **{k: v for k, v in json.loads((ROOT / "tfftmol/chem/data/zinc250k_alphabet.json").read_text()).items()
                    if k != "alphabet"},
                 "vocab_size": len(vocab), "split": "deepchem ScaffoldSplitter 80/10/10",
                 "smiles": "canonical, non-isomeric (stereochemistry removed)", **data_note},
        "model": {"vae": vae.config.to_dict(), "flow": net.config.to_dict(),
                  "parameters_vae": sum(p.numel() for p in vae.parameters()),
                  "parameters_flow": sum(p.numel() for p in net.parameters()),
                  "weights": path.name, "weights_format": "safetensors (EMA weights; configs in the metadata)",
                  "decoding": "greedy (argmax), deterministic"},
        "training": {
            "ae": {"steps": ae_ck["state"]["step"],
                   "epochs": round(ae_ck["state"]["step"] * (int(ae_args.get("batch_size") or 0) or 128) / n_train, 2),
                   **({"init_from": "the VAE of the zinc-selfies file " + Path(ae_args["init_from"]).name
                                    + " (its training is the list `earlier_stages`, oldest first)",
                       "earlier_stages": earlier} if init_from else {}),
                   "wall_minutes": round(ae_ck["state"]["elapsed"] / 60, 1),
                   **({"total_wall_minutes": round(sum(st.get("wall_minutes") or 0.0 for st in earlier)
                                                   + ae_ck["state"]["elapsed"] / 60, 1)} if init_from else {}),
                   "batch_size": int(_number(ae_args.get("batch_size")) or 128),
                   "lr": _number(ae_args.get("lr")) or 1e-3, "beta": _number(ae_args.get("beta")),
                   "beta_warmup": _number(ae_args.get("beta_warmup")),
                   "budget_minutes": _number(ae_args.get("budget_minutes")), "ema": _number(ae_args.get("ema")),
                   "threads": 1, "device": "cpu", "training_data": data,
                   "history": ae_ck["state"]["history"]},
            "flow": {"steps": ck["state"]["step"], "wall_minutes": round(ck["state"]["elapsed"] / 60, 1),
                     "batch_size": int(_number(flow_args.get("batch_size")) or 256),
                     "lr": _number(flow_args.get("lr")) or 1e-3, "threads": 1,
                     "x1": ("posterior mean mu of a training molecule, normalised" if flow_args.get("x1") == "mean"
                            else "fresh posterior draw mu + sigma * eps of a training molecule, normalised"),
                     "history": ck["state"]["history"]},
        },
    })
    args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {path} ({path.stat().st_size / 1e6:.2f} MB) and {args.card}")


def main(argv=None) -> None:
    args = parse(argv)
    if args.stage in ("ae", "flow") and not (args.steps > 0 or args.budget_minutes > 0):
        raise SystemExit(f"{args.stage}: give --steps or --budget-minutes (> 0; got {args.steps} and "
                         f"{args.budget_minutes}), or the stage would never end")
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    from rdkit import RDLogger
    RDLogger.DisableLog("rdApp.*")
    {"prepare": prepare, "ae": train_ae, "flow": train_flow, "export": export}[args.stage](args)


if __name__ == "__main__":
    main()
