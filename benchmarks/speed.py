"""Speed of the hot loops, each against the same figure on a `before` commit, in the same run.

Figures (one thread unless ``--threads``):

* ``qm9_sample_mol_per_s``: ``load_qm9_graph().sample(n, steps=30, sampler="sde", seed=0)``, sampling
  **and** decoding, molecules/s; ``qm9_validity`` of the same samples (must stay equal).
* ``zinc_sample_mol_per_s``: the same for ``zinc-selfies`` (its default ODE sampler, 30 steps).
* ``qm9_sample_fast_mol_per_s``, ``qm9_validity_fast``, ``qm9_compile_s``: 10,000 molecules through the fast
  path (:func:`measure_fast`: two one-thread workers, ``torch.compile``, bfloat16 where native) against the
  `before` tree's default sampling on one thread; the validity of each (must stay within 0.5 points).
  ``qm9_sample_fast24_mol_per_s``, ``qm9_validity_fast24``: the same fast path at 24 SDE steps (``fast_steps``),
  against the same `before` figure (30 steps, the default path).  ``qm9_sample_fastgrid_mol_per_s``,
  ``qm9_validity_fastgrid``: the same fast path on the fast time grid (``grid="fast"`` at ``fastgrid_steps``:
  coarse below ``t = 1/4``, the posterior-mean jump from ``t = 5/6``), against the same `before` figure.
* ``qm9_forward_mol_steps_per_s``: the network's forward pass alone (batch 250, ``inference_mode``),
  next to its FLOP-bound limit ``qm9_forward_flop_limit_mol_steps_per_s`` = (measured one-thread
  SGEMM FLOP/s) / (FLOPs of one molecule-step, counted by ``torch.utils.flop_counter``), and
  ``qm9_sample_flop_limit_mol_per_s`` = that limit / 29 network calls (SDE, 30 steps).
* ``*_per_sgemm_gflop``: the same throughputs divided by the one-thread SGEMM FLOP/s measured in the same
  process just before and after (the machine's speed at that moment): on a machine whose load changes within
  minutes these load-normalised ratios are the steadier before/after comparison.
* ``am_step_per_s_qm9`` (TFFT: exact hinge on the offline batch's 0.9 quantile) and
  ``am_step_per_s_qm9_expected`` (identity transform): Adjoint Matching steps/s on ``qm9-graph`` with the
  QED surrogate of ``configs/qed_right.yaml`` (batch 64, 30 time steps, 10 loss times, terminal time 0.5,
  surrogate fitted once on a small offline batch, no refit), and ``tfft_over_expected_qm9`` = time per
  TFFT step / time per expected step at equal steps (stage 1 and the refinement are not in it);
  ``am_first_loss_qm9`` is the first TFFT step's loss (must stay equal).  ``am_step_per_s_qm9_bf16``: the TFFT
  step with ``am.precision = "bf16"`` (where the CPU has bfloat16 natively, else fp32) on the same threads;
  ``am_step_per_s_qm9_2threads``: the float32 step on 2 threads (``torch.set_num_threads(2)``, after 3 warm-up
  steps; on 2 threads bfloat16 was measured slower than float32 at these batch sizes); on the `before` tree
  both are its plain one-thread step, what a user had.
* ``am_step_per_s_zinc``, ``am_step_per_s_zinc_expected``, ``tfft_over_expected_zinc``,
  ``am_first_loss_zinc``: the same on ``zinc-selfies`` with the latent QED surrogate of
  ``configs/zinc_qed_right.yaml`` (exact latent Adjoint Matching, terminal time 1; part ``am_zinc``).

Every figure is measured in a fresh process per tree; the trees alternate (before, after, before, after, ...)
so the machine's load hits both alike, and the median over ``--reps`` is kept.  The `before` tree is a
``git worktree`` of ``--before`` in a temporary directory, put first on ``PYTHONPATH``.

    python benchmarks/speed.py                   # -> benchmarks/results/speed.csv and speed.md
    python benchmarks/speed.py --before HEAD~3 --reps 3
    python benchmarks/speed.py --quick           # seconds: this tree only, before = NaN (the test)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: the commit before the first speed change; ``--before`` overrides it
DEFAULT_BEFORE = "0c34ad2"

#: (figure, unit, higher is better)
FIGURES = [
    ("qm9_sample_mol_per_s", "molecules/s", True),
    ("qm9_validity", "fraction", None),
    ("zinc_sample_mol_per_s", "molecules/s", True),
    ("zinc_validity", "fraction", None),
    ("qm9_sample_fast_mol_per_s", "molecules/s", True),
    ("qm9_validity_fast", "fraction", None),
    ("qm9_compile_s", "s", None),
    ("qm9_sample_fast24_mol_per_s", "molecules/s", True),
    ("qm9_validity_fast24", "fraction", None),
    ("qm9_sample_fastgrid_mol_per_s", "molecules/s", True),
    ("qm9_validity_fastgrid", "fraction", None),
    ("qm9_forward_mol_steps_per_s", "molecule-steps/s", True),
    ("qm9_sample_mol_per_s_per_sgemm_gflop", "molecules/s per SGEMM GFLOP/s", True),
    ("qm9_forward_mol_steps_per_s_per_sgemm_gflop", "molecule-steps/s per SGEMM GFLOP/s", True),
    ("qm9_forward_flop_limit_mol_steps_per_s", "molecule-steps/s", True),
    ("qm9_sample_flop_limit_mol_per_s", "molecules/s", True),
    ("qm9_flops_per_mol_step", "FLOP", None),
    ("sgemm_gflop_per_s", "GFLOP/s", True),
    ("am_step_per_s_qm9", "steps/s", True),
    ("am_step_per_s_qm9_expected", "steps/s", True),
    ("am_step_per_s_qm9_bf16", "steps/s", True),
    ("am_step_per_s_qm9_2threads", "steps/s", True),
    ("tfft_over_expected_qm9", "time ratio", False),
    ("am_first_loss_qm9", "loss", None),
    ("am_step_per_s_zinc", "steps/s", True),
    ("am_step_per_s_zinc_expected", "steps/s", True),
    ("tfft_over_expected_zinc", "time ratio", False),
    ("am_first_loss_zinc", "loss", None),
]

#: sizes of one measurement; each part runs in its own process (under 2 minutes on a loaded 2-core machine)
FULL = dict(qm9_n=300, qm9_batch=150, zinc_n=300, steps=30, fwd_batch=250, fwd_reps=6,
            fast_n=10000, fast_batch=500, fast_compile=True, fast_steps=24, fastgrid_steps=30,
            am_batch=64, am_time_steps=30, am_loss_times=10, am_steps=4, offline_n=128, surrogate_epochs=2,
            zinc_am_steps=12)
QUICK = dict(qm9_n=24, qm9_batch=24, zinc_n=16, steps=4, fwd_batch=16, fwd_reps=2,
             fast_n=40, fast_batch=20, fast_compile=False, fast_steps=3, fastgrid_steps=6,
             am_batch=8, am_time_steps=6, am_loss_times=2, am_steps=1, offline_n=32, surrogate_epochs=1,
             zinc_am_steps=1)


# ----------------------------------------------------------------------------------------------------------------
# the worker: runs inside the tree under test (its tfftmol first on sys.path)

def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure_sampling(p: dict) -> dict:
    import torch
    from tfftmol.chem.qm9_model import load_qm9_graph
    out = {}
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 512, generator=g), torch.randn(512, 512, generator=g)

    def sgemm() -> float:  # one-thread FLOP/s now: the machine's speed at this moment, to normalise by
        a @ b
        _, dt = _timed(lambda: [a @ b for _ in range(20)])
        return 20 * 2 * 512 ** 3 / dt

    peak0 = sgemm()
    m = load_qm9_graph()
    m.sample(4, steps=2, seed=1)  # warm-up (allocator, first-call paths)
    res, dt = _timed(lambda: m.sample(p["qm9_n"], steps=p["steps"], sampler="sde", seed=0, batch_size=p["qm9_batch"]))
    out["qm9_sample_mol_per_s"] = p["qm9_n"] / dt
    out["qm9_validity"] = float(res.validity)
    # the forward pass alone, and its FLOP-bound limit
    from torch.utils.flop_counter import FlopCounterMode
    xb, tb = torch.randn(p["fwd_batch"], 189, generator=g), torch.rand(p["fwd_batch"], generator=g)
    with torch.no_grad():
        fc = FlopCounterMode(display=False)
        with fc:
            m(xb, tb)
        flops = fc.get_total_flops() / p["fwd_batch"]
        m(xb, tb)
        _, dt = _timed(lambda: [m(xb, tb) for _ in range(p["fwd_reps"])])
    out["qm9_forward_mol_steps_per_s"] = p["fwd_reps"] * p["fwd_batch"] / dt
    peak = 0.5 * (peak0 + sgemm())  # before and after the two measurements
    out["sgemm_gflop_per_s"] = peak / 1e9
    out["qm9_sample_mol_per_s_per_sgemm_gflop"] = out["qm9_sample_mol_per_s"] / (peak / 1e9)
    out["qm9_forward_mol_steps_per_s_per_sgemm_gflop"] = out["qm9_forward_mol_steps_per_s"] / (peak / 1e9)
    out["qm9_flops_per_mol_step"] = flops
    out["qm9_forward_flop_limit_mol_steps_per_s"] = peak / flops
    out["qm9_sample_flop_limit_mol_per_s"] = peak / flops / (p["steps"] - 1)
    del m
    # zinc-selfies
    from tfftmol.chem.selfies import load_zinc_selfies
    z = load_zinc_selfies()
    z.sample(4, steps=2, seed=1)
    res, dt = _timed(lambda: z.sample(p["zinc_n"], steps=p["steps"], seed=0))
    out["zinc_sample_mol_per_s"] = p["zinc_n"] / dt
    out["zinc_validity"] = float(res.validity)
    return out


def measure_fast(p: dict) -> dict:
    """``qm9_sample_fast_mol_per_s``: ``fast_n`` molecules (SDE, 30 steps) through
    :func:`tfftmol.chem.fast_sampling.sample_fast` on 2 one-thread workers, compiled, in bfloat16 where the CPU has
    it natively (the compile is timed apart, ``qm9_compile_s``, on a first call of the same shape); on a tree
    without that module (the `before` commit) the same figure is the default ``model.sample`` on one thread, which
    is what a user had.  ``qm9_validity_fast``: the validity of those ``fast_n`` molecules."""
    from tfftmol.chem.qm9_model import load_qm9_graph
    m = load_qm9_graph()
    n, rows = p["fast_n"], p["fast_batch"]
    try:
        from tfftmol.chem.fast_sampling import bf16_native, sample_fast
    except ImportError:
        m.sample(4, steps=2, seed=1)
        res, dt = _timed(lambda: m.sample(n, steps=p["steps"], sampler="sde", seed=0, batch_size=rows))
        return {"qm9_sample_fast_mol_per_s": n / dt, "qm9_validity_fast": float(res.validity),
                "qm9_sample_fast24_mol_per_s": n / dt, "qm9_validity_fast24": float(res.validity),
                "qm9_sample_fastgrid_mol_per_s": n / dt, "qm9_validity_fastgrid": float(res.validity)}
    kw = dict(steps=p["steps"], sampler="sde", batch_size=rows, compile=p["fast_compile"],
              precision="bf16" if bf16_native() else "fp32")
    _, compile_s = _timed(lambda: sample_fast(m, rows, seed=1, workers=1, **kw))  # compiles this shape
    res, dt = _timed(lambda: sample_fast(m, n, seed=0, workers=2, **kw))
    kw["steps"] = p["fast_steps"]
    res2, dt2 = _timed(lambda: sample_fast(m, n, seed=0, workers=2, **kw))
    out = {"qm9_sample_fast_mol_per_s": n / dt, "qm9_validity_fast": float(res.validity),
           "qm9_compile_s": compile_s, "qm9_sample_fast24_mol_per_s": n / dt2,
           "qm9_validity_fast24": float(res2.validity)}
    try:  # a tree with the fast time grid
        from tfftmol.chem.fast_sampling import fast_grid  # noqa: F401
    except ImportError:
        return out
    kw.update(steps=p["fastgrid_steps"], grid="fast")
    res3, dt3 = _timed(lambda: sample_fast(m, n, seed=0, workers=2, **kw))
    return {**out, "qm9_sample_fastgrid_mol_per_s": n / dt3, "qm9_validity_fastgrid": float(res3.validity)}


def _qm9_config(p: dict, method: str) -> dict:
    return {
        "name": f"speed_{method}", "model": "qm9-graph", "reward": {"name": "qed"},
        "tfft": {"method": method, "tail": "right", "beta": 0.9, "alpha": 0.1,
                 "am": {"steps": 10, "batch_size": p["am_batch"], "time_steps": p["am_time_steps"],
                        "loss_time_steps": p["am_loss_times"], "lr": 3e-4, "terminal_time": 0.5}},
        "surrogate": {"epochs": p["surrogate_epochs"], "patience": 5, "refit_epochs": 1},
        "refit_every": 0, "seed": 0,
    }


def _zinc_config(p: dict, method: str) -> dict:
    return {
        "task": "molecule", "name": f"speed_zinc_{method}", "seed": 0,
        "tfft": {"method": method, "tail": "right", "beta": 0.9, "alpha": 0.1,
                 "am": {"steps": 10, "batch_size": p["am_batch"], "time_steps": p["am_time_steps"],
                        "loss_time_steps": p["am_loss_times"], "lr": 3e-4, "terminal_time": 1.0}},
        "options": {"model": "zinc-selfies", "reward": {"name": "qed"}, "refit_every": 0,
                    "surrogate": {"hidden": 256, "layers": 3, "epochs": p["surrogate_epochs"], "patience": 5,
                                  "refit_epochs": 1}},
    }


def measure_am(p: dict, model: str = "qm9") -> dict:
    import numpy as np
    import torch
    from tfftmol.core.adjoint import AdjointMatching, IdentityTransform
    from tfftmol.core.pseudo import PseudoReward
    from tfftmol.core.sampling import sample
    from tfftmol.pipeline.config import load_run_config
    from tfftmol.pipeline.registry import get_task

    out = {}
    cfg = load_run_config((_qm9_config if model == "qm9" else _zinc_config)(p, "tfft"))
    task = get_task(cfg.task)
    base = task.load_base(cfg, "cpu")
    reward = task.build_reward(cfg, base, "cpu", lambda s: None)
    x = sample(base, p["offline_n"], method="sde", steps=p["am_time_steps"],
               generator=torch.Generator().manual_seed(0)).x
    rb = reward.evaluate(x)
    reward.fit_offline(x, rb.values, rb.valid)
    eta = float(np.quantile(rb.values.numpy(), 0.9))
    trainers = {}
    for method in ("tfft", "expected"):
        torch.manual_seed(0)
        tr = PseudoReward("right", 0.9, eta) if method == "tfft" else IdentityTransform()
        trainers[method] = AdjointMatching(base, reward, tr, 1.0 / 0.1, cfg.tfft.am, device="cpu")
        first = trainers[method].step()  # warm-up; the trust-step measurement happens here
        if method == "tfft":
            out[f"am_first_loss_{model}"] = first.loss
    spent = {"tfft": 0.0, "expected": 0.0}
    n = p["am_steps"] if model == "qm9" else p["zinc_am_steps"]
    for i in range(n):  # the two methods' steps alternate, so the load hits both alike
        for method in ("tfft", "expected") if i % 2 == 0 else ("expected", "tfft"):
            _, dt = _timed(trainers[method].step)
            spent[method] += dt
    rates = {k: n / v for k, v in spent.items()}
    out[f"am_step_per_s_{model}"] = rates["tfft"]
    out[f"am_step_per_s_{model}_expected"] = rates["expected"]
    out[f"tfft_over_expected_{model}"] = rates["expected"] / rates["tfft"]
    if model == "qm9":
        out.update(_am_levers(p, base, reward, eta, cfg, out["am_step_per_s_qm9"]))
    return out


def _am_levers(p: dict, base, reward, eta: float, cfg, plain: float) -> dict:
    """``am_step_per_s_qm9_bf16`` and ``_2threads`` (see the module docstring); a tree without
    ``AMConfig.precision`` gives its plain step for both."""
    import dataclasses

    import torch
    from tfftmol.core.adjoint import AdjointMatching
    from tfftmol.core.pseudo import PseudoReward
    if "precision" not in {f.name for f in dataclasses.fields(cfg.tfft.am)}:
        return {"am_step_per_s_qm9_bf16": plain, "am_step_per_s_qm9_2threads": plain}
    from tfftmol.core.precision import bf16_native
    am_cfg = dataclasses.replace(cfg.tfft.am, precision="bf16" if bf16_native() else "fp32")
    trainers = []
    for c in (am_cfg, cfg.tfft.am):
        torch.manual_seed(0)
        trainers.append(AdjointMatching(base, reward, PseudoReward("right", 0.9, eta), 1.0 / 0.1, c, device="cpu"))
    bf16, fp32 = trainers
    bf16.step()
    n = p["am_steps"]
    spent = sum(_timed(bf16.step)[1] for _ in range(n))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in range(3):  # the first steps on a new thread count start the thread pool
            fp32.step()
        spent2 = sum(_timed(fp32.step)[1] for _ in range(n))
    finally:
        torch.set_num_threads(threads)
    return {"am_step_per_s_qm9_bf16": n / spent, "am_step_per_s_qm9_2threads": n / spent2}


def measure_am_zinc(p: dict) -> dict:
    """``measure_am`` on ``zinc-selfies``; NaN figures on a tree whose pipeline cannot run it."""
    try:
        return measure_am(p, "zinc")
    except Exception as e:  # noqa: BLE001  (an older tree without the latent task)
        print(f"am_zinc: {type(e).__name__}: {e}", file=sys.stderr)
        return {}


def worker(params: dict) -> dict:
    import torch
    import tfftmol
    torch.set_num_threads(params.get("threads", 1))
    out = {"tfftmol_path": str(Path(tfftmol.__file__).resolve().parent.parent)}
    for part in params["parts"]:
        out.update({"sampling": measure_sampling, "fast": measure_fast, "am": measure_am,
                    "am_zinc": measure_am_zinc}[part](params))
    return out


# ----------------------------------------------------------------------------------------------------------------
# the driver

def run_in(tree: Path, params: dict, timeout: float = 300) -> dict:
    """Run :func:`worker` in a fresh process whose ``tfftmol`` is the one of ``tree``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", str(params.get("threads", 1)))
    env.setdefault("MKL_NUM_THREADS", str(params.get("threads", 1)))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(params)],
                       cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"worker in {tree.name} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if Path(res["tfftmol_path"]).resolve() != tree.resolve():
        raise RuntimeError(f"worker imported tfftmol from {res['tfftmol_path']}, not from the tree under test")
    return res


def add_worktree(rev: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix="tfftmol-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(d / "tree"), rev], check=True,
                   capture_output=True)
    return d / "tree"


def remove_worktree(tree: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def table(before: dict, after: dict) -> list[dict]:
    rows = []
    for fig, unit, higher in FIGURES:
        b, a = before.get(fig, math.nan), after.get(fig, math.nan)
        if higher is False:  # a cost (time ratio): the ratio reads as a speed-up too
            ratio = b / a if a else math.nan
        else:
            ratio = a / b if b else math.nan
        rows.append({"figure": fig, "unit": unit, "before": b, "after": a, "ratio": ratio})
    return rows


def write(rows: list[dict], meta: dict, out_dir: Path, name: str = "speed") -> None:
    import pandas as pd
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=["figure", "unit", "before", "after", "ratio"])
    df.to_csv(out_dir / f"{name}.csv", index=False, float_format="%.6g")
    lines = [f"# Speed: before ({meta['before']}) against after ({meta['after']})", "",
             f"{meta['reps']} interleaved run(s) per tree (median), {meta['threads']} thread(s), "
             f"load average {meta['load']} at the start; parameters {json.dumps(meta['params'])}.", "",
             "ratio = after / before for throughputs; for `tfft_over_expected_qm9` (a time ratio) before / after;",
             "for validity, the first loss and the FLOP counts it checks equality (1 = same).", "",
             "| figure | unit | before | after | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['figure']} | {r['unit']} | {r['before']:.4g} | {r['after']:.4g} | {r['ratio']:.3g} |")
    lines += ["", "Every repetition (after, before):", ""]
    for k, v in meta["runs"].items():
        lines.append(f"* {k}: " + "; ".join(f"{f}={[round(x, 4) for x in v.get(f, [])]}" for f, _, _ in FIGURES
                                             if v.get(f)))
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision to compare against")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", default="sampling,fast,am,am_zinc")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, this tree only (before = NaN)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return []
    params = dict(QUICK if args.quick else FULL, threads=args.threads, parts=args.parts.split(","))
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else math.nan
    runs = {"after": {}, "before": {}}
    if args.quick:
        res = worker(params)
        for k, v in res.items():
            if isinstance(v, float):
                runs["after"].setdefault(k, []).append(v)
        before_rev = "none (quick)"
    else:
        import signal
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed driver still removes its worktree
        tree = add_worktree(args.before)
        try:
            for rep in range(args.reps):
                for part in params["parts"]:  # one process per (part, tree), the trees alternating
                    for label, root in (("before", tree), ("after", ROOT)) if rep % 2 == 0 else \
                            (("after", ROOT), ("before", tree)):
                        res = run_in(root, dict(params, parts=[part]))
                        print(f"rep {rep} {part} {label}: " + ", ".join(f"{k}={v:.4g}" for k, v in res.items()
                                                                       if isinstance(v, float)), flush=True)
                        for k, v in res.items():
                            if isinstance(v, float):
                                runs[label].setdefault(k, []).append(v)
        finally:
            remove_worktree(tree)
            try:
                tree.parent.rmdir()
            except OSError:
                pass
        before_rev = args.before
    med = {lab: {k: statistics.median(v) for k, v in d.items()} for lab, d in runs.items()}
    rows = table(med["before"], med["after"])
    after_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                               text=True).stdout.strip() + " + working tree"
    if not args.quick or args.out != str(RESULTS):
        write(rows, {"before": before_rev, "after": after_rev, "reps": args.reps, "threads": args.threads,
                     "load": load, "params": params, "runs": runs}, Path(args.out))
    for r in rows:
        print(f"{r['figure']:42s} {r['before']:12.4g} {r['after']:12.4g} {r['ratio']:8.3g}")
    return rows


if __name__ == "__main__":
    main()
