"""Reward benchmark: scoring throughput, cache, surrogate accuracy, property-model MAE.

Measures on QM9 molecules (``tfftmol.chem.data.load_qm9``):

- QED and SA scoring throughput, molecules/s: serial, parallel (``--workers``
  processes), and on a second call served by the canonical-SMILES cache;
  parallel results are checked equal to serial;
- the same (serial and parallel, molecules/s) for every GuacaMol/PMO objective
  (``tfftmol.chem.rewards.guacamol``) on drug-like ZINC250k test molecules,
  with the mean score and whether parallel equals serial (``same_as_serial``);
- the GFN2-xTB gap (``xtb_gap``, needs the optional dxtb) on samples of the
  shipped QM9 flow: molecules/s serial and parallel, and the fraction of
  samples that fail, by reason;
- surrogate fit time and held-out R^2, Spearman and tail precisions (at the
  0.9 and 0.1 quantiles) for QED and logP, on codec-encoded molecules with
  Gaussian noise (std ``--noise``) around the one-hots;
- the same on samples of the shipped QM9 flow (``qm9-graph``), whose
  invalid samples carry the reward's penalty (full run only), plus the true
  reward after a short gradient ascent on the surrogate (does its gradient
  point uphill?) and how well the surrogate ranks the 144 single-slot edits
  of a valid sample, by value and by its gradient;
- the shipped property model's MAE on the scaffold test split (gap in eV,
  mu in Debye).

Writes ``<out>/rewards.csv`` (tidy: group, item, metric, value, unit, n) and
``<out>/rewards.md`` and prints the table.

Usage:
    python benchmarks/rewards.py [--quick] [--out benchmarks/results]
    python benchmarks/rewards.py --only guacamol   # refresh the GuacaMol/PMO rows alone (about 1 minute)
    python benchmarks/rewards.py --only xtb        # refresh the xTB rows alone (about 2 minutes; needs dxtb)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tfftmol.chem import graph  # noqa: E402
from tfftmol.chem.data import HARTREE_TO_EV, load_qm9  # noqa: E402
from tfftmol.chem.rewards import OBJECTIVES, build_reward  # noqa: E402
from tfftmol.chem.selfies.data import load_zinc250k  # noqa: E402
from tfftmol.chem.surrogate import Surrogate  # noqa: E402


def _row(group, item, metric, value, unit="", n=None):
    return {"group": group, "item": item, "metric": metric, "value": float(value), "unit": unit,
            "n": int(n) if n is not None else None}


def bench_throughput(smiles: list[str], workers: int) -> list[dict]:
    rows = []
    for name in ("qed", "sa"):
        serial_r, par_r = build_reward(name), build_reward(name)
        t0 = time.perf_counter()
        serial = serial_r(smiles, n_jobs=1)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        par = par_r(smiles, n_jobs=workers)
        t_par = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = serial_r(smiles, n_jobs=1)
        t_cache = time.perf_counter() - t0
        n = len(smiles)
        same = bool(np.array_equal(serial.values, par.values) and serial.reasons == par.reasons)
        rows += [
            _row("throughput", name, "serial", n / t_serial, "mol/s", n),
            _row("throughput", name, f"parallel_{workers}", n / t_par, "mol/s", n),
            _row("throughput", name, "cache_hit", n / t_cache, "mol/s", n),
            _row("throughput", name, "ms_per_mol_serial", 1e3 * t_serial / n, "ms", n),
            _row("throughput", name, "parallel_equals_serial", same, "bool", n),
            _row("throughput", name, "cache_equals_first", bool(np.array_equal(again.values, serial.values)), "bool", n),
        ]
    return rows


def bench_guacamol(smiles: list[str], workers: int) -> list[dict]:
    """Throughput of every GuacaMol/PMO objective, serial and on ``workers`` processes (fresh caches)."""
    rows = []
    n = len(smiles)
    for name in OBJECTIVES:
        t0 = time.perf_counter()
        serial = build_reward(name)(smiles, n_jobs=1)
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        par = build_reward(name)(smiles, n_jobs=workers)
        t_par = time.perf_counter() - t0
        same = bool(np.array_equal(serial.values, par.values) and serial.reasons == par.reasons)
        rows += [
            _row("throughput", name, "serial", n / t_serial, "mol/s", n),
            _row("throughput", name, f"parallel_{workers}", n / t_par, "mol/s", n),
            _row("throughput", name, "ms_per_mol_serial", 1e3 * t_serial / n, "ms", n),
            _row("throughput", name, "mean_score", float(np.nanmean(serial.raw)), "", int(serial.valid.sum())),
            _row("throughput", name, "same_as_serial", same, "bool", n),
        ]
    return rows


def bench_surrogate(smiles: list[str], noise: float, epochs: dict[str, int], seed: int) -> list[dict]:
    x = graph.encode(smiles)
    x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for name, ep in epochs.items():
        y = build_reward(name)(smiles).values
        sur = Surrogate(seed=seed)
        rep = sur.fit(x, y, epochs=ep, valid_fraction=0.2)
        n = rep.n_valid
        rows += [
            _row("surrogate", name, "fit_seconds", rep.seconds, "s", rep.n_train),
            _row("surrogate", name, "epochs", rep.epochs, "", rep.n_train),
            _row("surrogate", name, "heldout_r2", rep.r2, "", n),
            _row("surrogate", name, "heldout_spearman", rep.spearman, "", n),
            _row("surrogate", name, "precision_q0.9", rep.precision_hi, "", rep.n_pred_hi),
            _row("surrogate", name, "precision_q0.1", rep.precision_lo, "", rep.n_pred_lo),
            _row("surrogate", name, "rank_precision_top10", rep.rank_precision_hi, "", n),
            _row("surrogate", name, "rank_precision_bottom10", rep.rank_precision_lo, "", n),
            _row("surrogate", name, "heldout_mae", rep.mae, "", n),
        ]
        t0 = time.perf_counter()
        sur.grad(x[:256])
        rows.append(_row("surrogate", name, "grad_per_1k", 1e3 * (time.perf_counter() - t0) / 256, "s", 256))
    return rows


def ascend(sur: Surrogate, x: torch.Tensor, length: float, steps: int = 10) -> torch.Tensor:
    """``steps`` normalised gradient-ascent steps on the surrogate, of total L2 length ``length`` per sample."""
    for _ in range(steps):
        _, g = sur.grad(x)
        x = x + (length / steps) * g / (g.norm(dim=1, keepdim=True) + 1e-12)
    return x


def neighbour_ranking(sur: Surrogate, reward, x: torch.Tensor, base: np.ndarray, n: int = 40) -> tuple[float, float, float]:
    """How well the surrogate ranks single-slot edits of ``n`` valid samples.

    For each sample, every graph that differs in one slot (144 of them) is decoded
    and scored.  Returns the mean Spearman correlation between the true reward
    change and (a) the surrogate's change ``s(x') - s(x)``, (b) its first-order
    prediction ``grad s(x) . (x' - x)``, and (c) the mean true change of the edit
    the gradient ranks best.
    """
    from scipy.stats import spearmanr

    rho_s, rho_g, best = [], [], []
    for i in range(min(n, x.shape[0])):
        x0 = x[i:i + 1]
        nc, ec = graph.state_to_classes(x0)
        nbrs = []
        for k in range(graph.N_MAX):
            for c in range(graph.N_NODE_CLASSES):
                if c != int(nc[0, k]):
                    n2 = nc.clone()
                    n2[0, k] = c
                    nbrs.append(graph.classes_to_state(n2, ec))
        for k in range(graph.N_EDGES):
            for c in range(graph.N_EDGE_CLASSES):
                if c != int(ec[0, k]):
                    e2 = ec.clone()
                    e2[0, k] = c
                    nbrs.append(graph.classes_to_state(nc, e2))
        xn = torch.cat(nbrs)
        true = reward(graph.decode(xn)).values - base[i]
        s0, g = sur.grad(x0)
        rho_s.append(spearmanr((sur.predict(xn) - s0).numpy(), true).statistic)
        lin = ((xn - x0) @ g[0]).numpy()
        rho_g.append(spearmanr(lin, true).statistic)
        best.append(true[int(np.argmax(lin))])
    return float(np.nanmean(rho_s)), float(np.nanmean(rho_g)), float(np.mean(best))


def bench_surrogate_on_samples(n: int, epochs: dict[str, int], seed: int, steps: int = 50) -> list[dict]:
    """Surrogate fitted to true rewards of samples of the shipped QM9 flow (invalid ones carry the penalty)."""
    try:
        from tfftmol.core.samplers import sample_ode
        from tfftmol.pretrained import load_pretrained

        model = load_pretrained("qm9-graph")
    except Exception as e:  # noqa: BLE001 - the flow is optional for this benchmark
        print(f"surrogate on flow samples skipped: {e}")
        return []
    t0 = time.perf_counter()
    with torch.no_grad():
        x = sample_ode(model, n, steps=steps, generator=torch.Generator().manual_seed(seed))
    t_sample = time.perf_counter() - t0
    decoded = graph.decode(x)
    perm = np.random.default_rng(seed).permutation(n)
    te, tr = perm[: n // 5], perm[n // 5:]
    rows = [_row("surrogate_flow", "samples", "sampling", n / t_sample, "mol/s", n)]
    for name, ep in epochs.items():
        res = build_reward(name)(decoded)
        y = res.values
        rows.append(_row("surrogate_flow", name, "validity", res.valid.mean(), "", n))
        for kind in ("plain", "hurdle"):
            sur = Surrogate(seed=seed)
            fit = sur.fit(x[tr], y[tr], valid=res.valid[tr] if kind == "hurdle" else None, epochs=ep,
                          valid_fraction=0.0)
            rep = sur.evaluate(x[te], y[te], valid=res.valid[te])
            item = f"{name}_{kind}"
            rows += [
                _row("surrogate_flow", item, "fit_seconds", fit.seconds, "s", len(tr)),
                _row("surrogate_flow", item, "heldout_r2", rep.r2, "", len(te)),
                _row("surrogate_flow", item, "heldout_spearman", rep.spearman, "", len(te)),
                _row("surrogate_flow", item, "precision_q0.9", rep.precision_hi, "", rep.n_pred_hi),
                _row("surrogate_flow", item, "precision_q0.1", rep.precision_lo, "", rep.n_pred_lo),
                _row("surrogate_flow", item, "rank_precision_top10", rep.rank_precision_hi, "", len(te)),
                _row("surrogate_flow", item, "rank_precision_bottom10", rep.rank_precision_lo, "", len(te)),
                _row("surrogate_flow", item, "value_r2_valid_only", rep.r2_valid, "", int(res.valid[te].sum())),
                _row("surrogate_flow", item, "validity_accuracy", rep.validity_accuracy, "", len(te)),
                _row("surrogate_flow", item, "mean_grad_norm", sur.grad(x[te])[1].norm(dim=1).mean(), "", len(te)),
            ]
            # does the surrogate gradient point uphill for the *true* reward?  Move held-out samples a
            # distance 3.4 (about one slot flipped) along it, decode, rescore.
            moved = build_reward(name)(graph.decode(ascend(sur, x[te], 0.25 * math.sqrt(x.shape[1]))))
            ok_te = te[res.valid[te]]
            rho_s, rho_g, best = neighbour_ranking(sur, build_reward(name), x[ok_te], y[ok_te])
            rows += [
                _row("surrogate_flow", item, "neighbour_spearman_values", rho_s, "", 40),
                _row("surrogate_flow", item, "neighbour_spearman_gradient", rho_g, "", 40),
                _row("surrogate_flow", item, "neighbour_best_by_gradient_true_delta", best, "", 40),
                _row("surrogate_flow", item, "ascent_true_mean_before", y[te].mean(), "", len(te)),
                _row("surrogate_flow", item, "ascent_true_mean_after", moved.values.mean(), "", len(te)),
                _row("surrogate_flow", item, "ascent_validity_before", res.valid[te].mean(), "", len(te)),
                _row("surrogate_flow", item, "ascent_validity_after", moved.valid.mean(), "", len(te)),
            ]
    return rows


def bench_property(n_test: int, seed: int) -> list[dict]:
    try:
        from tfftmol.chem.property_model import load_property_model

        t0 = time.perf_counter()
        model = load_property_model()
        t_load = time.perf_counter() - t0
    except FileNotFoundError as e:
        print(f"property model skipped: {e}")
        return []
    test = load_qm9("test")
    if n_test and n_test < len(test):
        test = test.sample(n_test, random_state=seed)
    t0 = time.perf_counter()
    pred = model.predict(test["smiles"].tolist())
    t_pred = time.perf_counter() - t0
    n = len(test)
    card = model.card["metrics"]["test_mae"]
    gap_mae = float(np.mean(np.abs(pred["gap"] - test["gap"].to_numpy() * HARTREE_TO_EV)))
    mu_mae = float(np.mean(np.abs(pred["mu"] - test["mu"].to_numpy())))
    return [
        _row("property", "qm9_gap", "test_mae", gap_mae, "eV", n),
        _row("property", "qm9_gap", "card_test_mae", card["gap"], "eV", model.card["metrics"]["n_test"]),
        _row("property", "qm9_mu", "test_mae", mu_mae, "Debye", n),
        _row("property", "qm9_mu", "card_test_mae", card["mu"], "Debye", model.card["metrics"]["n_test"]),
        _row("property", "model", "load_seconds", t_load, "s"),
        _row("property", "model", "predict", n / t_pred, "mol/s", n),
    ]


def to_markdown(df: pd.DataFrame, title: str) -> str:
    lines = [f"# {title}", "", "| group | item | metric | value | unit | n |", "|---|---|---|---:|---|---:|"]
    for r in df.itertuples():
        v = r.value
        text = ("yes" if v else "no") if r.unit == "bool" else (f"{v:.4g}" if np.isfinite(v) else "nan")
        n = "" if r.n is None or (isinstance(r.n, float) and np.isnan(r.n)) else str(int(r.n))
        lines.append(f"| {r.group} | {r.item} | {r.metric} | {text} | {r.unit} | {n} |")
    return "\n".join(lines) + "\n"


def guacamol_note(n: int, workers: int, seed: int, load: float) -> str:
    return (f"GuacaMol/PMO objectives: {n} ZINC250k test SMILES (seed {seed}), serial and {workers} workers, "
            "fresh caches (a parallel call includes starting its worker processes); mean_score over valid "
            f"molecules; the machine's 1-minute load average was {load:.1f} when they started.\n")


def bench_xtb(n: int, workers: int, seed: int) -> tuple[list[dict], str]:
    """``xtb_gap`` on ``n`` samples of the shipped QM9 flow: mol/s serial and parallel, failures by reason."""
    from tfftmol.chem.rewards import xtb

    if not xtb.available():
        print("xtb skipped: dxtb is not installed (tfftmol/chem/rewards/xtb.py says how)")
        return [], ""
    from tfftmol.core.samplers import sample_ode
    from tfftmol.pretrained import load_pretrained

    load = os.getloadavg()[0]
    with torch.no_grad():
        x = sample_ode(load_pretrained("qm9-graph"), n, steps=50, generator=torch.Generator().manual_seed(seed))
    decoded = graph.decode(x)
    xtb._cached.cache_clear()
    t0 = time.perf_counter()
    par = build_reward("xtb_gap")(decoded, n_jobs=workers)
    t_par = time.perf_counter() - t0
    xtb._cached.cache_clear()
    t0 = time.perf_counter()
    serial = build_reward("xtb_gap")(decoded, n_jobs=1)
    t_serial = time.perf_counter() - t0
    same = bool(np.array_equal(serial.values, par.values) and serial.reasons == par.reasons)
    rows = [
        _row("throughput", "xtb_gap", "serial", n / t_serial, "mol/s", n),
        _row("throughput", "xtb_gap", f"parallel_{workers}", n / t_par, "mol/s", n),
        _row("throughput", "xtb_gap", "same_as_serial", same, "bool", n),
        _row("throughput", "xtb_gap", "mean_score", float(np.nanmean(par.raw)), "eV", int(par.valid.sum())),
        _row("throughput", "xtb_gap", "validity", par.valid.mean(), "", n),
    ]
    for reason, count in par.counts.items():
        if count and reason != "ok":
            rows.append(_row("throughput", "xtb_gap", f"fraction_{reason}", count / n, "", n))
    note = (f"xTB: xtb_gap (GFN2, dxtb) on {n} samples of the shipped qm9-graph flow (ODE, 50 steps, seed {seed}), "
            f"serial and {workers} workers, fresh caches; fraction_<reason>: samples invalid for that "
            "reason (decoder and chemistry failures, then xtb_embed / xtb_forcefield / xtb_scf / xtb_timeout / "
            f"disconnected); the machine's 1-minute load average was {load:.1f} when it started.\n")
    return rows, note


#: ``--only`` parts: the items whose rows they own, and the first words of their note.
PARTS = {"guacamol": (lambda: set(OBJECTIVES), "GuacaMol/PMO objectives:"), "xtb": (lambda: {"xtb_gap"}, "xTB:")}


def measure_part(part: str, args) -> tuple[list[dict], str]:
    if part == "guacamol":
        n_guac = args.n_guacamol or (64 if args.quick else 500)
        zinc = load_zinc250k("test")["smiles"].sample(n_guac, random_state=args.seed).tolist()
        load = os.getloadavg()[0]
        return bench_guacamol(zinc, args.workers), guacamol_note(n_guac, args.workers, args.seed, load)
    return bench_xtb(args.n_xtb or (8 if args.quick else 150), args.workers, args.seed)


def refresh(part: str, args) -> pd.DataFrame:
    """``--only PART``: measure that part's rows and put them in place of its old rows and note in ``<out>``."""
    rows, note = measure_part(part, args)
    items, prefix = PARTS[part][0](), PARTS[part][1]
    new = pd.DataFrame(rows, columns=["group", "item", "metric", "value", "unit", "n"])
    csv, md_path = args.out / "rewards.csv", args.out / "rewards.md"
    old = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=new.columns)
    old["unit"] = old["unit"].fillna("")  # an empty unit reads back as NaN
    old = old[~((old.group == "throughput") & old.item.isin(list(items)))]
    at = int(np.flatnonzero(old.group.to_numpy() == "throughput").max()) + 1 if (old.group == "throughput").any() \
        else 0
    df = pd.concat([old.iloc[:at], new, old.iloc[at:]], ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(csv, index=False)
    notes = []
    if md_path.is_file():  # the notes under the old table, less this part's old note
        lines = md_path.read_text().splitlines()
        last = max((i for i, ln in enumerate(lines) if ln.startswith("|")), default=len(lines) - 1)
        notes = [ln for ln in lines[last + 1:] if ln.strip() and not ln.startswith(prefix)]
    title = md_path.read_text().splitlines()[0][2:] if md_path.is_file() else "Rewards benchmark"
    md = to_markdown(df, title) + "".join("\n" + ln + "\n" for ln in notes + ([note.strip()] if note else []))
    md_path.write_text(md)
    print(md)
    return df


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--n", type=int, default=None, help="molecules for throughput (default 5000, quick 200)")
    ap.add_argument("--n-guacamol", type=int, default=None,
                    help="ZINC250k test molecules for the GuacaMol/PMO objectives (default 500, quick 64)")
    ap.add_argument("--n-xtb", type=int, default=None,
                    help="qm9-graph samples scored by xtb_gap, serial and with --workers (default 150, quick 8); "
                         "skipped without dxtb")
    ap.add_argument("--only", choices=sorted(PARTS), default=None,
                    help="measure only the GuacaMol/PMO objectives or the xTB gap and replace their rows in "
                         "<out>/rewards.csv and rewards.md (the other rows and notes are kept as they were)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--noise", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flow-samples", type=int, default=3000,
                    help="also fit the surrogate on this many samples of the shipped QM9 flow (0 = skip)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.only:
        return refresh(args.only, args)

    n = args.n or (200 if args.quick else 5000)
    train = load_qm9("train")
    smiles = train["smiles"].sample(n, random_state=args.seed).tolist()
    rows = bench_throughput(smiles, args.workers)
    notes = []
    for part in PARTS:
        part_rows, note = measure_part(part, args)
        rows += part_rows
        notes += [note] if note else []
    if args.quick:
        sur_smiles, epochs, n_test = smiles[:300] if len(smiles) >= 300 else smiles, {"qed": 1, "logp": 1}, 300
    else:
        sur_smiles = train["smiles"].sample(6000, random_state=args.seed).tolist()
        epochs, n_test = {"qed": 14, "logp": 3}, 0
    rows += bench_surrogate(sur_smiles, args.noise, epochs, args.seed)
    if not args.quick and args.flow_samples:
        rows += bench_surrogate_on_samples(args.flow_samples, {"qed": 20, "logp": 20}, args.seed)
    rows += bench_property(n_test, args.seed)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "rewards.csv", index=False)
    title = "Rewards benchmark" + (" (quick)" if args.quick else "")
    md = to_markdown(df, title)
    md += (f"\nThroughput on {n} QM9 training SMILES, {args.workers} workers; surrogate on "
           f"{len(sur_smiles)} codec-encoded QM9 molecules + N(0, {args.noise}^2) noise, 20% held out; "
           "surrogate_flow: samples of the shipped qm9-graph flow (50 Euler steps), 20% held out, 20 epochs, "
           "invalid samples carry the reward's penalty; 'plain' regresses the penalised rewards, 'hurdle' "
           "models validity and the reward of valid molecules separately (value_r2_valid_only: its value "
           "head on the valid held-out samples); "
           "property model on the scaffold test split" + (" (seeded subsample)" if n_test else "") + ".\n")
    md += "".join("\n" + note for note in notes)
    (args.out / "rewards.md").write_text(md)
    print(md)
    return df


if __name__ == "__main__":
    main()
