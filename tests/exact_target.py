"""A values-only TFFT run on the exact 2D GMM, with samples of its exact target (shared by the stage-2 tests).

``r(x) = x_1`` is given to the trainer as values only (``ValuesOnly``); right-CVaR_0.9 at alpha 1,
M = 20,000 offline samples, no bootstrap.  Returns ``(result, log lines, pre-trained x_1, fine-tuned
x_1, exact-target x_1)``, each sampled from fixed seeds.
"""
import warnings

import torch

from tfftmol.core.settings import AMConfig, TFFTConfig
from tfftmol.core.threshold import TfftWarning
from tfftmol.core.tfft import run_tfft
from tfftmol.core.samplers import sample_sde
from tfftmol.core.value import ValuesOnly
from tfftmol.toy2d.flows import linear_reward
from tfftmol.toy2d.gmm import circle_gmm, population_threshold

W = [1.0, 0.0]


def exact_right_tail_run(am: dict):
    g = circle_gmm()
    logs = []
    cfg = TFFTConfig(tail="right", beta=0.9, alpha=1.0, offline_samples=20000, bootstrap=0, am=AMConfig(**am))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TfftWarning)
        res = run_tfft(g, ValuesOnly(linear_reward(W)), cfg, progress=False, log=logs.append)
    gen = lambda: torch.Generator().manual_seed(1)
    x = sample_sde(res.model, 10000, 50, generator=gen())[:, 0].double().numpy()
    x0 = sample_sde(g, 10000, 50, generator=gen())[:, 0].double().numpy()
    eta, _ = population_threshold(g, W, 1.0, 0.9, "right")
    xt = g.sample_tilted_hinge(40000, W, eta, 1.0, 0.9, "right", seed=2)[:, 0].double().numpy()
    return res, logs, x0, x, xt
