"""Score networks (Flax linen)."""

from vdm.nets.unet import ScoreUNet

__all__ = ["ScoreUNet"]
