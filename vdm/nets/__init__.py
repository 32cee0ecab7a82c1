"""Networks (Flax linen): what predicts the noise, and the classifier that guidance can use.

    unet.py         ScoreUNet, the VDM score network: a U-Net without downsampling
    layers.py       its blocks: ResNet block, attention, GroupNorm, Fourier features, embeddings
    cpu/            CPU-tuned forms of some of those operations (same functions, faster on XLA:CPU)
"""

from vdm.nets.unet import ScoreUNet

__all__ = ["ScoreUNet"]
