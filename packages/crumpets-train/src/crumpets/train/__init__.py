"""crumpets-train: Trainer, losses, metrics, LR policies, snapshots and models."""

from ._version import __version__
from .trainer import EVENTS, Trainer

__all__ = ["EVENTS", "Trainer", "__version__"]
