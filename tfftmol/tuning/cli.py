"""``tfftmol tune``: one worker of an Optuna study over ``beta`` and ``alpha``.

    tfftmol tune --config configs/tune_qed_right.yaml --study qed1 [--storage URL] [--n-trials 20]

Start the same command in several shells (or on several machines, with one
``postgresql://`` URL) to share the study between workers.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "main"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand to an ``argparse`` subparsers object."""
    t = sub.add_parser("tune", help="Optuna study over beta and alpha (one worker; run several to share a study)",
                       description="Run, join or resume an Optuna study over TFFT's beta and alpha.")
    t.add_argument("--config", required=True, help="study YAML, e.g. configs/tune_qed_right.yaml")
    t.add_argument("--study", required=True, help="study name; outputs go to <out>/<study>/")
    t.add_argument("--storage", default=None,
                   help="SQLAlchemy URL (default: sqlite:///<out>/<study>/study.db); workers sharing one "
                        "postgresql:// URL share the study")
    t.add_argument("--n-trials", type=int, default=20,
                   help="the study's total of finished trials (earlier runs and other workers count)")
    t.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    t.add_argument("--out", default="runs", help="parent directory of the study directory")
    t.add_argument("--no-plots", action="store_true", help="skip the plots")
    t.add_argument("--verbose", action="store_true", help="show each run's own log lines")
    t.add_argument("--quiet", action="store_true", help="print only the final summary")
    t.add_argument("--threads", type=int, default=1)
    t.set_defaults(fn=main)
    return t


def main(a: argparse.Namespace) -> int:
    import torch

    from tfftmol.core.config import ConfigError

    from .study import run_study

    torch.set_num_threads(a.threads)
    log = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    try:
        res = run_study(a.config, a.study, storage=a.storage, n_trials=a.n_trials, out_dir=a.out,
                        timeout=a.timeout, plots=not a.no_plots, log=log, verbose=a.verbose)
    except ConfigError as e:
        print(f"tfftmol tune: {e}", file=sys.stderr)
        return 2
    print(res.files["summary"].read_text())
    print(f"storage: {res.storage_url}")
    if "best" in res.files:
        print(f"best config: {res.files['best']}")
    return 0
