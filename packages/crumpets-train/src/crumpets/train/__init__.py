"""crumpets-train: Trainer, losses, metrics, LR policies, snapshots."""

from ._version import __version__

__all__ = ["__version__"]
