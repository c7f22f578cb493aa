"""medseg analysis tools: how the losses behave on synthetic predictions (see ``docs/loss_landscape.md``)."""

from .landscape import Exploration, drift_sequence, explore, is_monotone, write_outputs

__all__ = ["Exploration", "drift_sequence", "explore", "is_monotone", "write_outputs"]
