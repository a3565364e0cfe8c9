"""tfftmol: tail-aware flow fine-tuning (TFFT) for molecules and beyond.

Fine-tune a pre-trained flow model so that a tail of the reward distribution
moves: right-CVaR (discovery: the best ``1-beta`` of samples) or left-CVaR
(reliability: the worst ``beta``).  Importing ``tfftmol`` loads only the
domain-free core; chemistry (RDKit) is imported by ``tfftmol.chem`` on demand.
"""
from .core import (AMConfig, DifferentiableReward, FlowModel, PseudoReward, TFFTConfig, TFFTResult,
                   ThresholdResult, TfftWarning, cvar, run_tfft, sample_ode, sample_sde, solve_threshold, var)
from .pretrained import available_models, load_pretrained, model_card


def finetune(config, **kwargs):
    """Molecular TFFT end to end (``tfftmol.chem.finetune.finetune``); imports the chemistry stack on demand.

    ``config`` is a ``MolFinetuneConfig``, a dict or a YAML path; see ``tfftmol finetune --help``.
    An image config (``model: digits-flow``) runs ``tfftmol.image2d.digits_finetune.finetune`` instead.
    """
    from .image2d.digits_finetune import is_digits_config

    if is_digits_config(config):  # an image config (model: digits-flow): tfftmol.image2d.digits_finetune.finetune
        from .image2d.digits_finetune import finetune as _digits_finetune

        return _digits_finetune(config, **kwargs)
    from .chem.finetune import finetune as _finetune

    return _finetune(config, **kwargs)

__version__ = "0.1.0"

__all__ = [
    "AMConfig", "DifferentiableReward", "FlowModel", "PseudoReward", "TFFTConfig", "TFFTResult",
    "ThresholdResult", "TfftWarning", "cvar", "run_tfft", "sample_ode", "sample_sde", "solve_threshold", "var",
    "available_models", "load_pretrained", "model_card", "finetune", "__version__",
]
