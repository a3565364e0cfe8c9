"""The ``tfftmol`` command line.

    tfftmol toy2d   [--alpha 1.0] [--steps 600] [--reward linear] [--out runs/toy2d]
    tfftmol sample  --model qm9-graph|<run dir>|<weights.safetensors> -n 1000 -o out.csv [--steps 30]
                    [--sampler sde|ode|heun] [--batch-size 250] [--fast | --precision bf16 --compile --workers 2]
    tfftmol models
    tfftmol demo
    tfftmol plan     --config configs/<name>.yaml [--alphas 0.05,0.1,1] [--betas 0.8,0.9] [--kl-budget 0.5] [--ceiling]
    tfftmol run      --config configs/<name>.yaml [--resume | --overwrite] [--force] [--out runs] [--name N] [--check]
    tfftmol finetune ...                      (the same as `run`, the name of earlier releases)
    tfftmol demo-mol [--out runs] [--config configs/qed_right.yaml]
                     (default: right-CVaR of osimertinib MPO on the drug-like zinc-selfies, about 2-4 minutes;
                      with configs/qed_right.yaml: QED right-CVaR on qm9-graph, about 12 minutes)
    tfftmol tune --config configs/tune_<name>.yaml --study NAME [--storage URL] [--n-trials N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _toy2d(a) -> int:
    import pandas as pd
    import torch

    from .core.adjoint import AMConfig
    from .core.config import from_dict, load_yaml
    from .core.tfft import TFFTConfig
    from .toy2d.experiment import Toy2DConfig, run_toy2d

    torch.set_num_threads(a.threads)
    if a.config:
        cfg = from_dict(Toy2DConfig, load_yaml(a.config))
    else:
        reward = {"name": a.reward} if a.reward != "linear" else {"name": "linear", "w": [1.0, 0.0]}
        cfg = Toy2DConfig(model=a.model, reward=reward, alpha=a.alpha, seed=a.seed, eval_samples=a.eval_samples,
                          tfft=TFFTConfig(am=AMConfig(steps=a.steps, batch_size=a.batch_size, seed=a.seed,
                                                      grad_clip=0.0, ema=0.99)))
    table, _ = run_toy2d(cfg, out_dir=a.out, progress=not a.quiet)
    keep = ["method", "mean", "cvar_right_0.9", "cvar_left_0.1", "kl", "wall_s", "eta", "mass_beyond_eta",
            "target_mean", "target_cvar_right_0.9", "target_cvar_left_0.1", "target_mass_beyond_eta", "gap_cut"]
    cols = [c for c in keep if c in table.columns]
    print("\nbefore (pretrained) and after fine-tuning, with each method's exact target (target_*); "
          "gap_cut = share of the gap to the target closed in the method's own tail:")
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print(table[cols].to_string(index=False))
    print(f"\nwrote {Path(a.out) / 'toy2d.csv'} and {Path(a.out) / 'toy2d.png'}")
    return 0


def _fast_preset(a, model):
    """Resolve ``--fast`` (the measured preset) on the parsed arguments ``a``, in place; returns ``a``.

    Every core a one-thread worker, compiled, bfloat16 where the CPU has it natively, and the fast time grid for
    the SDE of an argmax-decoded flow; an explicit ``--workers``, ``--precision bf16`` or ``--grid`` is kept.
    """
    if a.fast:
        import os

        from .chem.fast_sampling import bf16_native
        a.compile = True
        a.workers = a.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                                  (os.cpu_count() or 1))
        if a.precision == "fp32" and bf16_native():
            a.precision = "bf16"
        if a.grid is None and a.sampler == "sde" and getattr(model, "argmax_decoded", False):
            a.grid = "fast"
    a.grid = a.grid or "uniform"
    return a


def _sample(a) -> int:
    import torch

    from .chem.qm9_model import sample_to_csv
    from .pretrained import load_pretrained

    torch.set_num_threads(a.threads)
    if a.batch_size < 1:
        raise SystemExit(f"tfftmol sample: --batch-size {a.batch_size} must be >= 1")
    try:
        model = load_pretrained(a.model)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"tfftmol sample: {e}") from None
    if not hasattr(model, "decode"):
        raise SystemExit(f"tfftmol sample: --model {a.model!r} is not a molecular flow (qm9-graph, zinc-selfies, "
                         "or a molecular run directory / .safetensors file)")
    if a.workers is not None and a.workers < 1:
        raise SystemExit(f"tfftmol sample: --workers {a.workers} must be >= 1")
    _fast_preset(a, model)
    try:
        df = sample_to_csv(model, a.n, a.output, steps=a.steps, sampler=a.sampler, seed=a.seed,
                           batch_size=a.batch_size, precision=a.precision, compile=a.compile, workers=a.workers,
                           grid=a.grid)
    except ValueError as e:
        raise SystemExit(f"tfftmol sample: {e}") from None
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


def _print_table(table) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        # "-": not defined for that row (e.g. the realisation of the pre-trained model)
        print(table.to_string(index=False, na_rep="-"))


def _run_finetune(cfg, resume: bool, quiet: bool, overwrite: bool = False) -> int:
    """Run any task's fine-tune through the one pipeline and print its before/after table."""
    from .pipeline import RunDirError, run
    from .core.checkpoint import CheckpointError
    from .core.config import ConfigError
    from .core.reward import RewardFailureError
    from .core.threshold import DegenerateTailError
    from .core.tracking import ThresholdGuardError
    from .core.reward_check import RewardCheckError
    from .core.validate import FlowModelError

    from .pipeline.console import log_without, warnings_once

    shown = warnings_once(restore=False, plain=True).__enter__()   # for the whole command
    try:
        res = run(cfg, resume=resume, overwrite=overwrite, progress=not quiet, log=log_without(shown))
    except KeyboardInterrupt as e:
        msg = str(e) or ("interrupted before stage 2 (the offline batch is cached only once complete, so a "
                         "resumed run draws it again)")
        print(f"\n{msg}; continue with --resume", file=sys.stderr)
        return 130
    except DegenerateTailError as e:
        print(f"tfftmol: stopped before stage 2: {e}\n(`tfftmol plan --config ...` shows every alpha and beta "
              "without training; `--force --overwrite` or `degenerate_tail: train` trains anyway)", file=sys.stderr)
        return 3
    except ThresholdGuardError as e:
        where = Path(cfg.out_dir) / cfg.name
        print(f"tfftmol: {e}\n(the checkpoint up to the stop is in {where}; `tfftmol plan --config ...` shows what "
              "stage 1 predicts at each alpha without training, and its log names the alpha from which the stage-1 "
              "threshold can be trusted)", file=sys.stderr)
        return 4
    except (RunDirError, CheckpointError, ConfigError, RewardFailureError, FlowModelError, RewardCheckError) as e:
        raise SystemExit(f"tfftmol: {e}") from None
    print()
    _print_table(res.table())  # the report's path was logged by the run
    return 0


def _floats(text: str, name: str) -> list:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"tfftmol plan: --{name} {text!r} must be comma-separated numbers, e.g. 0.05,0.1,1") from None


def _plan(a) -> int:
    import torch

    from .core.config import ConfigError
    from .pipeline.plan import plan

    torch.set_num_threads(a.threads)
    try:
        res = plan(a.config, alphas=_floats(a.alphas, "alphas") if a.alphas else None,
                   betas=_floats(a.betas, "betas") if a.betas else None, kl_budget=a.kl_budget,
                   out=a.output, progress=not a.quiet, ceiling=a.ceiling, out_dir=a.out)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"tfftmol plan: {e}") from None
    print(res.summary())
    print(f"\nwrote {res.files['table']}" + (f" and {res.files['plot']}" if "plot" in res.files else "")
          + f" ({res.seconds:.1f} s)")
    return 0


def _finetune(a) -> int:
    import torch

    from .core.config import ConfigError
    from .pipeline import load_run_config

    torch.set_num_threads(a.threads)
    overrides = {"out_dir": a.out, "name": a.name, "degenerate_tail": "train" if a.force else None}
    try:
        cfg = load_run_config(a.config, **overrides)
    except ConfigError as e:
        raise SystemExit(f"tfftmol {a.cmd}: bad config {a.config}: {e}") from None
    if a.check:
        from .core.config import dump_yaml

        print(dump_yaml(cfg), end="")
        print(f"# config OK; the report would go to {cfg.run_dir}")
        return 0
    return _run_finetune(cfg, a.resume, a.quiet, a.overwrite)


# default of `tfftmol demo-mol` (what `make demo` runs): the drug-like discovery config, as written (nested dialect)
DEMO_MOL_CONFIG = "zinc_osimertinib_mpo_right.yaml"

# budget of `tfftmol demo-mol` on a flat qm9-graph config (configs/qed_right.yaml): about 12 minutes on 2 busy CPU
# cores (the time the README measured end to end);
# per phase, measured with the shipped qm9-graph on one thread under load: offline batch ~40 s, surrogate fit
# ~13 s, ~2 s per Adjoint Matching step, evaluation ~25 s
DEMO_MOL_BUDGET = {
    "tfft": {"offline_samples": 2000, "offline_steps": 30, "offline_sampler": "sde", "bootstrap": 50,
             "refine_samples": 500, "am": {"steps": 150, "batch_size": 32, "time_steps": 30, "loss_time_steps": 8}},
    "surrogate": {"epochs": 15, "patience": 4, "refit_epochs": 2},
    "refit_every": 25, "eval_samples": 1000, "eval_steps": 30, "kl_samples": 200, "checkpoint_every": 25,
}


def _merge(base: dict, patch: dict) -> dict:
    """Budget patches merge into a config section by section; the reward spec is replaced whole."""
    from tfftmol.core.config import merge

    return merge(base, patch, opaque=("reward",))


def demo_mol_config(config: str | None = None, out: str = "runs"):
    """The run config of ``tfftmol demo-mol``: ``(path, RunConfig, budget note)``.

    Default: ``configs/zinc_osimertinib_mpo_right.yaml`` as written (a nested config already sized for a
    demo).  A flat ``qm9-graph`` config such as ``configs/qed_right.yaml`` gets the small
    ``DEMO_MOL_BUDGET``.  The run is named ``demo-mol`` and written under ``out``.
    """
    from .core.config import load_yaml
    from .pipeline import load_run_config

    path = Path(config) if config else _find_config(DEMO_MOL_CONFIG)
    data = load_yaml(path)
    nested = "task" in data
    if not nested:
        data = _merge(data, DEMO_MOL_BUDGET)
    data.update(name="demo-mol", out_dir=out)
    cfg = load_run_config(data)
    note = "the config as written" if nested else "a ~12-minute budget"
    return path, cfg, note


def _demo_mol(a) -> int:
    import torch

    torch.set_num_threads(a.threads)
    path, cfg, note = demo_mol_config(a.config, a.out)
    print(f"demo: {path.name} with {note} ({cfg.tfft.am.steps} steps, "
          f"{cfg.tfft.offline_samples} offline molecules, {cfg.eval.samples} evaluation molecules)")
    return _run_finetune(cfg, a.resume, a.quiet, overwrite=not a.resume)


def _find_config(name: str) -> Path:
    for d in (Path.cwd() / "configs", Path(__file__).resolve().parents[1] / "configs"):
        if (d / name).is_file():
            return d / name
    raise SystemExit(f"configs/{name} not found (run from the repository root or pass --config)")


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

    s = sub.add_parser("sample", help="sample molecules from a pre-trained or fine-tuned model to CSV")
    s.add_argument("--model", default="qm9-graph",
                   help="a shipped model (qm9-graph, zinc-selfies), a run directory of `tfftmol run`, "
                        "or a .safetensors file")
    s.add_argument("-n", type=int, default=1000)
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--steps", type=int, default=30, help="integration steps (default 30, the model card's setting)")
    s.add_argument("--sampler", choices=["ode", "heun", "sde"], default="sde",
                   help="memoryless SDE (default: the most valid at 30 steps), Euler ODE or Heun ODE")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=250,
                   help="molecules per sampling batch (default 250; on CPU it changes the time by ~10%%, README)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="network arithmetic (bf16: faster on CPUs with native bfloat16, same validity; README)")
    s.add_argument("--grid", choices=["uniform", "fast"], default=None,
                   help="SDE time grid: uniform (default) or fast (qm9-graph: 17 network calls instead of 29 at "
                        "30 steps, coarse below t=1/4 and the posterior-mean jump near t=5/6; the default of --fast "
                        "where it applies; README)")
    s.add_argument("--compile", action="store_true",
                   help="torch.compile the sampling step (15-60 s once; pays from a few thousand molecules)")
    s.add_argument("--fast", action="store_true",
                   help="--compile, one worker per core, bfloat16 where the CPU has it natively, --grid fast for "
                        "an argmax-decoded flow (same validity within 0.5 points; README)")
    s.add_argument("--workers", type=int, default=None,
                   help="one-thread worker processes sharing the batches (2 on a 2-core machine); any of "
                        "--precision bf16, --compile, --workers, --grid fast draws one seeded generator per batch")
    s.set_defaults(fn=_sample)

    pl = sub.add_parser("plan", help="stage 1 only for a grid of alpha: predicted CVaR and KL per alpha, in seconds, "
                                     "before paying for a run")
    pl.add_argument("--config", required=True, help="YAML file of a run config, e.g. configs/qed_right.yaml")
    pl.add_argument("--alphas", default=None, help="comma-separated KL weights (default 0.01,...,10 and the config's)")
    pl.add_argument("--betas", default=None, help="comma-separated tail levels (default: the config's beta)")
    pl.add_argument("--kl-budget", type=float, default=None, help="KL budget in nats: recommends an alpha")
    pl.add_argument("--out", default=None, help="out_dir of the config (where the offline batch cache lives)")
    pl.add_argument("-o", "--output", default=None,
                    help="directory of plan.csv/plan.png (default <out_dir>/<name>-plan)")
    pl.add_argument("--ceiling", action="store_true",
                    help="add the information ceiling: what a run driven by its surrogate can reach at each alpha "
                         "(two more surrogate fits on the offline batch)")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    pl.add_argument("--threads", type=int, default=1)
    pl.set_defaults(fn=_plan)

    m = sub.add_parser("models", help="list the shipped pre-trained models")
    m.set_defaults(fn=_models)

    d = sub.add_parser("demo", help="the main demo")
    d.add_argument("--steps", type=int, default=800)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--threads", type=int, default=1)
    d.set_defaults(fn=_demo)

    for cmd, help_ in (("run", "fine-tune any task (molecule, digits, toy2d) from a YAML config, with a report"),
                       ("finetune", "the same as `run` (the name of earlier releases)")):
        f = sub.add_parser(cmd, help=help_)
        f.add_argument("--config", required=True, help="YAML file of a run config, e.g. configs/qed_right.yaml")
        f.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
        f.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
        f.add_argument("--out", default=None, help="parent directory of the report (overrides out_dir)")
        f.add_argument("--name", default=None, help="run name (overrides name)")
        f.add_argument("--check", action="store_true", help="validate the config, print it in full and exit")
        f.add_argument("--force", action="store_true",
                       help="train even when stage 1 finds the tail saturated (degenerate_tail: train)")
        f.add_argument("--quiet", action="store_true", help="no progress bars")
        f.add_argument("--threads", type=int, default=1)
        f.set_defaults(fn=_finetune, cmd=cmd)

    dm = sub.add_parser("demo-mol", help="drug-like discovery (right-CVaR of osimertinib MPO on zinc-selfies) in "
                                         "about 2-4 minutes; prints stage 1's prediction, before/after, realisation")
    dm.add_argument("--config", default=None,
                    help=f"default: configs/{DEMO_MOL_CONFIG}; configs/qed_right.yaml runs the qm9-graph QED demo")
    dm.add_argument("--out", default="runs")
    dm.add_argument("--resume", action="store_true")
    dm.add_argument("--quiet", action="store_true")
    dm.add_argument("--threads", type=int, default=1)
    dm.set_defaults(fn=_demo_mol)

    from .tuning.cli import add_parser as _add_tune_parser  # argparse only; the study code loads on use

    _add_tune_parser(sub)

    a = p.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
