"""Optuna studies over beta and alpha: what tuning buys over the default config, and what it costs.

Three parts, each a real ``tfftmol tune`` study:

* **2D** (``configs/tune_toy2d.yaml``): exact GMM flow, ``r(x) = x_1``; maximise the
  right-CVaR_0.9 subject to ``KL <= 0.5``.  Trial 0 is the default config
  (``beta = 0.9``, ``alpha = 1``); the table compares the best feasible trial with it.
* **Molecules** (``configs/tune_qed_right.yaml`` with a short budget): QED, maximise
  the right-CVaR_0.9 of the true reward subject to validity >= 0.85; trial 0 is
  ``configs/qed_right.yaml``'s own ``beta = 0.9``, ``alpha = 0.1``.  The best trial's and the
  default's parameters are then re-run on further seeds (``--confirm-seeds``, default 2), so
  that the gain is measured against the seed spread, not on the one seed the study chose on.
* **Workers**: the same 2D study (random sampler, a fixed number of trials) run by one
  ``tfftmol tune`` process and by two processes sharing one SQLite storage, alternating
  (1, 2, 1, 2) so that both settings see the same drift in a shared machine's load; wall
  time from launch to the last worker's exit, and trial throughput between the first
  trial's start and the last trial's end (start-up excluded).  The offline batch is cached
  beforehand so that both runs do the same work.

Writes ``tuning.csv`` and ``tuning.md`` to ``--out`` (``benchmarks/results``).

Usage::

    python benchmarks/tuning.py            # ~30 minutes on 2 cores
    python benchmarks/tuning.py --quick    # tiny budgets, ~1 minute (used by the tests)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import optuna
import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tfftmol.core.config import load_yaml, merge  # noqa: E402
from tfftmol.tuning import run_study  # noqa: E402
from tfftmol.tables import markdown_table  # noqa: E402

COLUMNS = ["part", "study", "workers", "trials", "objective", "constraint", "default_beta", "default_alpha",
           "default_value", "best_trial", "best_beta", "best_alpha", "best_value", "gain", "best_constraint_metric",
           "wall_s", "wall_per_trial_s", "trial_s_median", "trial_cpu_s_median", "cpu_share", "trials_per_min",
           "speedup", "wall_speedup", "load_avg_1min", "confirm_seeds", "default_mean", "default_std", "best_mean",
           "best_std", "confirmed_gain", "confirm_spread", "confirm_verdict"]

# budgets: (2D patch, 2D trials, molecular patch, molecular trials, worker-study trials)
TOY_QUICK = {"base": {"eval_samples": 2000, "eval_steps": 20, "kl_samples": 300,
                      "tfft": {"offline_samples": 3000, "offline_steps": 20,
                               "am": {"steps": 40, "batch_size": 64, "time_steps": 20, "loss_time_steps": 6}}},
             "eval_every": 20, "intermediate_samples": 500, "n_startup_trials": 2}
MOL_QUICK = {"budget": {"tfft": {"offline_samples": 150, "refine_samples": 100,
                                 "am": {"steps": 4, "batch_size": 8, "time_steps": 15, "loss_time_steps": 4}},
                        "surrogate": {"epochs": 2, "patience": 0, "refit_epochs": 1, "hidden": 32, "heads": 2,
                                      "layers": 2},
                        "refit_every": 2, "eval_samples": 100, "eval_steps": 15, "kl_samples": 0, "grid_size": 4},
             "eval_every": 2, "intermediate_samples": 50, "constraints": [{"metric": "validity", "min": 0.5}]}
MOL_FULL = {"budget": {"tfft": {"offline_samples": 1000, "refine_samples": 300,
                                "am": {"steps": 100, "batch_size": 16, "time_steps": 30, "loss_time_steps": 8,
                                       "lr": 0.001}},
                       "surrogate": {"epochs": 10, "patience": 3, "refit_epochs": 2},
                       "refit_every": 25, "eval_samples": 500, "kl_samples": 100},
            "eval_every": 25, "intermediate_samples": 200, "n_startup_trials": 3, "prune_warmup_steps": 50}


def _study_config(path: Path, patch: dict) -> dict:
    data = load_yaml(path)
    data["source_dir"] = str(path.parent)
    # "constraints" and "budget" are replaced whole, the base merged section by section
    return merge(data, patch, opaque=("reward", "constraints", "budget"))


def _default_trial(study: optuna.Study) -> Optional[optuna.trial.FrozenTrial]:
    """The study's enqueued default trial (trial 0 of a new study), if it completed."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return next((t for t in done if t.user_attrs.get("default")), None)


def _row(part: str, res, cfg_data: dict, workers: int = 1) -> dict:
    st = res.study
    done = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    default = _default_trial(st)
    best = next((t for t in done if res.best_params is not None and t.params == res.best_params), None)
    cons = cfg_data.get("constraints") or []
    cmetric = cons[0]["metric"] if cons else ""
    walls = [t.user_attrs["wall_seconds"] for t in st.trials if "wall_seconds" in t.user_attrs]
    finished = [t for t in st.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    o = cfg_data.get("objectives", [{"metric": "cvar"}])[0]
    c = cons[0] if cons else {}
    return {
        "part": part, "study": st.study_name, "workers": workers, "trials": len(finished),
        "objective": f"{o.get('direction', 'maximize')} {o['metric']} ({cfg_data.get('eval_tail', 'right')}-CVaR_"
                     f"{cfg_data.get('eval_beta', 0.9):g})",
        "constraint": (f"{cmetric} >= {c['min']:g}" if c.get("min") is not None else f"{cmetric} <= {c['max']:g}")
        if c else "",
        "default_beta": default.params.get("beta") if default else None,
        "default_alpha": default.params.get("alpha") if default else None,
        "default_value": default.value if default else None,
        "best_trial": best.number if best else None,
        "best_beta": best.params.get("beta") if best else None,
        "best_alpha": best.params.get("alpha") if best else None,
        "best_value": best.value if best else None,
        "gain": (best.value - default.value) if best and default else None,
        "best_constraint_metric": best.user_attrs.get(cmetric) if best and cmetric else None,
        "wall_s": res.wall_seconds, "wall_per_trial_s": res.wall_seconds / max(1, res.trials_run),
        "trial_s_median": statistics.median(walls) if walls else None,
        "trials_per_min": None, "speedup": None,
    }


def confirm(cfg_data: dict, res, n_seeds: int, work: Path, log) -> dict:
    """Re-run the default and the best trial's parameters at other seeds: does the gain exceed the seed spread?

    A study picks its best trial on one seed's evaluation, so part of any gain is that seed's noise.
    Each of ``n_seeds`` further run seeds (the base config's seed + 1, + 2, ...) re-runs the whole fine-tune
    (offline batch, training, evaluation) for both parameter sets; the base seed's values are the study's
    trials themselves.  ``confirmed_gain`` is the difference of the means over all seeds; ``confirm_spread``
    the root sum of squares of the two seed std's; the verdict says whether the gain is larger than the
    spread and whether every re-run of the best parameters meets the study's constraints.
    """
    from tfftmol.tuning.config import load_tune_config
    from tfftmol.tuning.trials import make_runner

    tc = load_tune_config(cfg_data)
    st = res.study
    default = _default_trial(st)
    if default is None or res.best_params is None or n_seeds < 1:
        return {}
    metric = tc.objectives[0].metric
    runner = make_runner(tc, work / f"{st.study_name}-confirm", log=lambda s: None)
    base_seed = int(runner.data.get("seed", 0))
    seeds = [base_seed + 1 + k for k in range(n_seeds)]
    vals = {"default": [float(default.value)], "best": [float(res.best_values[0])]}
    feasible = True
    for s in seeds:
        for label, params in (("default", default.params), ("best", res.best_params)):
            if label == "best" and params == default.params:  # the same run: not repeated
                vals["best"].append(vals["default"][-1])
                continue
            m = runner.run_once(params, f"{label}-seed{s}", [], seed=s)
            vals[label].append(float(m[metric]))
            if label == "best":
                feasible &= all(c.violation(float(m[c.metric])) <= 0 for c in tc.constraints)
            log(f"confirm {st.study_name} seed {s}: {label} {params} -> {metric} {m[metric]:.4f}")
    d, b = vals["default"], vals["best"]
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    sb = statistics.stdev(b) if len(b) > 1 else 0.0
    gain, spread = statistics.mean(b) - statistics.mean(d), (sd ** 2 + sb ** 2) ** 0.5
    if res.best_params == default.params:
        verdict = "best is the default"
    else:
        verdict = ("beats the default beyond the spread" if gain > spread else
                   "within the spread" if gain > -spread else "below the default")
        if not feasible:
            verdict += "; a re-run of the best violates a constraint"
    return {"confirm_seeds": len(d), "default_mean": statistics.mean(d), "default_std": sd,
            "best_mean": statistics.mean(b), "best_std": sb, "confirmed_gain": gain, "confirm_spread": spread,
            "confirm_verdict": verdict}


def _span(storage: str, name: str) -> tuple[float, int]:
    st = optuna.load_study(study_name=name, storage=storage)
    ts = [t for t in st.trials if t.datetime_complete is not None and t.state == optuna.trial.TrialState.COMPLETE]
    t0 = min(t.datetime_start for t in ts)
    t1 = max(t.datetime_complete for t in ts)
    return (t1 - t0).total_seconds(), len(ts)


def worker_speedup(cfg_data: dict, n_trials: int, out: Path, log, repeats: int = 2) -> list[dict]:
    """The same study run by 1 and by 2 ``tfftmol tune`` processes, alternating (1, 2, 1, 2, ...).

    The machine is shared, so its load drifts; alternating the two settings exposes both to the
    same drift.  Each 2-worker row's ``speedup`` is its throughput over the 1-worker run just before.
    """
    cfg = dict(cfg_data, sampler="random", pruner="none", enqueue_default=False, cache_dir=str(out / "cache"))
    path = out / "workers.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # warm the shared offline-batch cache so that neither run pays for it
    run_study(dict(cfg, source_dir=cfg_data.get("source_dir", "")), "warm", n_trials=1, out_dir=out, plots=False,
              log=lambda s: None)
    rows = []
    for rep in range(repeats):
        for k in (1, 2):
            name = f"workers{k}-{rep}"
            storage = f"sqlite:///{(out / f'{name}.db').resolve()}"
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            cmd = [sys.executable, "-m", "tfftmol.cli", "tune", "--config", str(path), "--study", name, "--storage",
                   storage, "--n-trials", str(n_trials), "--out", str(out), "--no-plots", "--quiet"]
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            logs = [open(out / f"{name}-{i}.log", "w") for i in range(k)]
            procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs]
            for p, f in zip(procs, logs):
                p.wait()
                f.close()
                if p.returncode != 0:
                    raise RuntimeError(f"worker failed: {Path(f.name).read_text()[-2000:]}")
            wall = time.perf_counter() - t0
            span, n = _span(storage, name)
            st = optuna.load_study(study_name=name, storage=storage)
            durs = [t.duration.total_seconds() for t in st.trials if t.duration is not None]
            cpus = [t.user_attrs["cpu_seconds"] for t in st.trials if "cpu_seconds" in t.user_attrs]
            shares = [t.user_attrs["cpu_seconds"] / t.user_attrs["wall_seconds"] for t in st.trials
                      if "cpu_seconds" in t.user_attrs and t.user_attrs.get("wall_seconds")]
            tput = 60.0 * n / span
            log(f"{k} worker(s), repeat {rep}: {n} trials, wall {wall:.1f} s, {tput:.2f} trials/min "
                f"(first start to last end), median trial {statistics.median(durs):.2f} s "
                f"({statistics.median(cpus):.2f} s CPU), load {load:.1f}")
            row = {"part": "workers", "study": name, "workers": k, "trials": n, "wall_s": wall,
                   "wall_per_trial_s": wall / n, "trial_s_median": statistics.median(durs), "trials_per_min": tput,
                   "trial_cpu_s_median": statistics.median(cpus), "cpu_share": statistics.median(shares),
                   "load_avg_1min": load}
            if k == 2:
                prev = rows[-1]
                row["speedup"] = tput / prev["trials_per_min"]  # start-up excluded
                row["wall_speedup"] = prev["wall_s"] / wall  # launch to last exit
            rows.append(row)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (the tests run this)")
    p.add_argument("--out", default=str(HERE / "results"), help="where tuning.csv / tuning.md go")
    p.add_argument("--work", default=None, help="where the studies live (default: <out>/tuning_runs, removed after)")
    p.add_argument("--toy-trials", type=int, default=None)
    p.add_argument("--mol-trials", type=int, default=None)
    p.add_argument("--worker-trials", type=int, default=None)
    p.add_argument("--skip-mol", action="store_true")
    p.add_argument("--confirm-seeds", type=int, default=None,
                   help="extra seeds on which the molecular study's best and default are re-run (default 2; quick 1)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    import shutil
    import torch

    torch.set_num_threads(1)
    log = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work) if a.work else out / "tuning_runs"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    q = a.quick
    toy_n = a.toy_trials or (4 if q else 20)
    mol_n = a.mol_trials or (2 if q else 20)
    work_n = a.worker_trials or (3 if q else 8)
    rows = []

    toy = _study_config(ROOT / "configs" / "tune_toy2d.yaml", TOY_QUICK if q else {})
    log(f"== 2D study: {toy_n} trials")
    res = run_study(toy, "toy2d", n_trials=toy_n, out_dir=work, log=log)
    rows.append(_row("2D (gmm-exact, r = x_1)", res, toy))

    if not a.skip_mol:
        mol = _study_config(ROOT / "configs" / "tune_qed_right.yaml", MOL_QUICK if q else MOL_FULL)
        mol["run_seeds"] = 1  # one run seed per trial: confirm() re-runs the best and the default on further seeds
        log(f"== molecular study (QED, right tail): {mol_n} trials")
        res = run_study(mol, "qed", n_trials=mol_n, out_dir=work, log=log)
        row = _row("molecules (qm9-graph, QED)", res, mol)
        n_confirm = a.confirm_seeds if a.confirm_seeds is not None else (1 if q else 2)
        log(f"== confirming the molecular study's best against its default on {n_confirm} more seed(s)")
        row.update(confirm(mol, res, n_confirm, work, log))
        rows.append(row)

    log(f"== 1 vs 2 workers on the 2D study: {work_n} trials each")
    wk = dict(toy)
    wk.pop("constraints", None)
    rows += worker_speedup(wk, work_n, work, log, repeats=1 if q else 2)

    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    df.to_csv(out / "tuning.csv", index=False)
    studies = df[df["part"] != "workers"].dropna(axis=1, how="all").drop(
        columns=["trials_per_min", "speedup", "wall_speedup", "load_avg_1min", "trial_cpu_s_median", "cpu_share"],
        errors="ignore")
    workers = df[df["part"] == "workers"][["study", "workers", "trials", "wall_s", "trial_s_median",
                                           "trial_cpu_s_median", "cpu_share", "trials_per_min", "speedup",
                                           "wall_speedup", "load_avg_1min"]]
    sp = workers["speedup"].dropna()
    md = ["# Tuning with Optuna (`benchmarks/tuning.py" + (" --quick" if q else "") + "`)", "",
          "Best feasible trial against the default config (trial 0 of each study), on the study's objective; "
          "wall times on a 2-core CPU shared with other jobs.", "", markdown_table(studies), "",
          "A study picks its best trial on one seed, so the molecular study's best and default parameters are "
          "re-run on further run seeds (the whole fine-tune: offline batch, training, evaluation): "
          "`default_mean`/`best_mean` (± `_std`) are over `confirm_seeds` seeds, the study's own included; "
          "`confirmed_gain` is their difference and `confirm_spread` the root sum of squares of the two std's.", "",
          "One worker against two `tfftmol tune` processes sharing one SQLite study "
          "(`speedup`: trial throughput between the first trial's start and the last trial's end; `wall_speedup`: "
          "from launch to the last worker's exit, process start-up included; the settings alternate so that both "
          "see the same drift in the machine's load):", "",
          markdown_table(workers), "",
          f"Mean speed-up from 2 workers: {sp.mean():.2f} (throughput), "
          f"{workers['wall_speedup'].dropna().mean():.2f} (wall time). `cpu_share` is a trial's CPU time over its "
          "wall time in its worker (1 = a core of its own); `load_avg_1min` is the machine's load when the "
          "run started.", ""]
    (out / "tuning.md").write_text("\n".join(md))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    log("\n".join(md))
    return df


if __name__ == "__main__":
    main()
