"""Pre-training of the shipped flows: the one flow-matching loop."""
from .flow_matching import train_flow_matching

__all__ = ["train_flow_matching"]
