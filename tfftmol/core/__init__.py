"""The domain-free core of tfftmol: tensors and callables only (no chemistry).

One concern per module:

* :mod:`~tfftmol.core.risk`, :mod:`~tfftmol.core.threshold`, :mod:`~tfftmol.core.pseudo`:
  CVaR, the exact stage-1 threshold solver, pseudo-rewards;
* :mod:`~tfftmol.core.mean_tilt`: the exact expected-reward optimum at a given KL (the tail margin);
* :mod:`~tfftmol.core.flow`, :mod:`~tfftmol.core.reward`: the model and reward protocols;
* :mod:`~tfftmol.core.sde`: the memoryless-SDE maths (sigma, drift, control, one EM step);
* :mod:`~tfftmol.core.sampling`: the one sampler (ODE/Heun/SDE);
* :mod:`~tfftmol.core.adjoint`: lean adjoint and the Adjoint Matching trainer;
* :mod:`~tfftmol.core.estimators`: KL estimate and Girsanov importance weights;
* :mod:`~tfftmol.core.offline`, :mod:`~tfftmol.core.continuation`: the offline batch, stage planning, refinement;
* :mod:`~tfftmol.core.settings`: AMConfig, TFFTConfig;
* :mod:`~tfftmol.core.tfft`: ``run_tfft``, the loop;
* :mod:`~tfftmol.core.validate`: ``check_flow_model``, the flow-model interface checked at the door.
"""
from .adjoint import AdjointMatching, IdentityTransform, ResidualFlow, lean_adjoint
from .config import ConfigError, from_dict, load_yaml, to_dict
from .estimators import estimate_kl, sample_importance
from .mean_tilt import MeanTilt, mean_tilt, mean_tilt_at_kl, tail_margin
from .flow import FlowModel, VelocityModule, gaussian_prior, time_features
from .pseudo import AdaptiveHinge, ExpectedReward, PseudoReward, TerminalTransform
from .reward import DifferentiableReward, RewardBatch, TerminalReward
from .risk import cvar, var
from .samplers import sample_ode, sample_sde
from .sampling import Samples, Trajectory, sample
from .sde import sigma_memoryless
from .settings import AMConfig, TFFTConfig
from .threshold import (DegenerateTailError, TailDegeneracy, ThresholdResult, TfftWarning, objective, solve_eta,
                        solve_threshold, tail_degeneracy)
from .tfft import Stage, TFFTResult, offline_batch, plan_stages, run_tfft
from .validate import FlowInterfaceError, FlowModelError, check_flow_model, model_dtype

__all__ = [
    "AMConfig", "AdjointMatching", "IdentityTransform", "ResidualFlow", "estimate_kl", "lean_adjoint",
    "sample_importance",
    "ConfigError", "from_dict", "load_yaml", "to_dict",
    "FlowModel", "VelocityModule", "gaussian_prior", "time_features",
    "AdaptiveHinge", "ExpectedReward", "PseudoReward", "TerminalTransform",
    "DifferentiableReward", "RewardBatch", "TerminalReward",
    "cvar", "var", "MeanTilt", "mean_tilt", "mean_tilt_at_kl", "tail_margin",
    "Samples", "Trajectory", "sample", "sample_ode", "sample_sde", "sigma_memoryless",
    "ThresholdResult", "TfftWarning", "objective", "solve_eta", "solve_threshold",
    "DegenerateTailError", "TailDegeneracy", "tail_degeneracy",
    "Stage", "TFFTConfig", "TFFTResult", "offline_batch", "plan_stages", "run_tfft",
    "FlowInterfaceError", "FlowModelError", "check_flow_model", "model_dtype",
]
