"""The domain-free core of tfftmol: tensors and callables only (no chemistry).

Risk measures, the exact stage-1 threshold solver, pseudo-rewards, the flow-model
interface, ODE/SDE samplers, Adjoint Matching with the lean adjoint, and the
TFFT two-stage driver.
"""
from .adjoint import AMConfig, AdjointMatching, IdentityTransform, ResidualFlow, estimate_kl, lean_adjoint
from .config import ConfigError, from_dict, load_yaml, to_dict
from .flow import FlowModel, VelocityModule, gaussian_prior
from .pseudo import ExpectedReward, PseudoReward, TerminalTransform
from .reward import DifferentiableReward, RewardBatch, TerminalReward
from .risk import cvar, var
from .samplers import Trajectory, sample_ode, sample_sde, sigma_memoryless
from .threshold import ThresholdResult, TfftWarning, objective, solve_eta, solve_threshold
from .tfft import Stage, TFFTConfig, TFFTResult, offline_batch, plan_stages, run_tfft

__all__ = [
    "AMConfig", "AdjointMatching", "IdentityTransform", "ResidualFlow", "estimate_kl", "lean_adjoint",
    "ConfigError", "from_dict", "load_yaml", "to_dict",
    "FlowModel", "VelocityModule", "gaussian_prior",
    "ExpectedReward", "PseudoReward", "TerminalTransform",
    "DifferentiableReward", "RewardBatch", "TerminalReward",
    "cvar", "var",
    "Trajectory", "sample_ode", "sample_sde", "sigma_memoryless",
    "ThresholdResult", "TfftWarning", "objective", "solve_eta", "solve_threshold",
    "Stage", "TFFTConfig", "TFFTResult", "offline_batch", "plan_stages", "run_tfft",
]
