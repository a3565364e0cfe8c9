"""tfftmol: tail-aware flow fine-tuning (TFFT) for molecules and beyond.

Fine-tune a pre-trained flow model so that a tail of the reward distribution
moves: right-CVaR (discovery: the best ``1-beta`` of samples) or left-CVaR
(reliability: the worst ``beta``).  Importing ``tfftmol`` loads nothing heavy: the
domain-free core (torch) loads on the first use of one of its names (``tfftmol.run_tfft``,
``from tfftmol import TFFTConfig``), so ``tfftmol models`` and ``--help`` answer at once;
chemistry (RDKit) is imported by ``tfftmol.chem`` on demand.
"""
from .pretrained import available_models, load_pretrained, model_card

_CORE = ("AMConfig", "DifferentiableReward", "FlowModel", "FlowModelError", "PseudoReward", "TFFTConfig", "TFFTResult",
         "ThresholdResult", "TfftWarning", "VelocityModule", "check_flow_model", "cvar", "estimate_kl", "run_tfft",
         "sample", "sample_ode", "sample_sde", "solve_threshold", "var")


def __getattr__(name: str):
    """The core's names on first use (PEP 562), so that importing the package does not import torch."""
    if name in _CORE or name == "check_flow":
        from . import core

        value = getattr(core, "check_flow_model" if name == "check_flow" else name)  # check_flow: the short name
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfftmol' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CORE) | {"check_flow"})


def run(config, **kwargs):
    """Fine-tune any task end to end (:func:`tfftmol.pipeline.run`): one config in, a report directory out.

    ``config`` is a :class:`~tfftmol.pipeline.RunConfig`, a mapping or a YAML path with a
    ``task`` kind (``molecule``, ``digits``, ``toy2d``); flat configs of earlier releases load too.
    """
    from .pipeline import run as _run

    return _run(config, **kwargs)


def plan(config, **kwargs):
    """Stage 1 only for a grid of alpha on the config's cached offline batch (:func:`tfftmol.pipeline.plan.plan`):
    predicted CVaR, KL, active fraction, ESS and ``eta*`` per alpha, and an alpha for a KL budget."""
    from .pipeline.plan import plan as _plan

    return _plan(config, **kwargs)


def finetune(config, **kwargs):
    """Alias of :func:`run` (the name of earlier releases)."""
    return run(config, **kwargs)


__version__ = "0.1.0"

__all__ = [
    "AMConfig", "DifferentiableReward", "FlowModel", "PseudoReward", "TFFTConfig", "TFFTResult",
    "ThresholdResult", "TfftWarning", "cvar", "run_tfft", "sample_ode", "sample_sde", "solve_threshold", "var",
    "FlowModelError", "VelocityModule", "check_flow", "check_flow_model", "estimate_kl", "sample",
    "available_models", "load_pretrained", "model_card", "run", "plan", "finetune", "__version__",
]
