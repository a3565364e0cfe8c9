"""The drug-like model: a SELFIES VAE trained on ZINC250k (its MOSES view) and a flow in its latent space.

``load_zinc_selfies()`` (also ``tfftmol.load_pretrained("zinc-selfies")``)
returns a :class:`ZincSelfiesFlow`, a :class:`~tfftmol.core.flow.FlowModel`
whose ``decode`` maps final latents to molecules (never raising).
"""
from .codec import REASONS, SelfiesVocab, decode_selfies
from .data import load_zinc250k, moses_view
from .latent_flow import ZincSelfiesFlow
from .loader import CARD_PATH, WEIGHTS_PATH, load_zinc_selfies, save_zinc_selfies

__all__ = ["REASONS", "SelfiesVocab", "decode_selfies", "load_zinc250k", "moses_view", "ZincSelfiesFlow",
           "load_zinc_selfies", "save_zinc_selfies", "WEIGHTS_PATH", "CARD_PATH"]
