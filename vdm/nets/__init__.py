"""Networks (Flax linen): what predicts the noise, and the classifier that guidance can use.

    unet.py         ScoreUNet, the VDM score network: a U-Net without downsampling
    layers.py       its blocks: ResNet block, attention, GroupNorm groups, Fourier features, embeddings
    ops.py          Ops: how convolutions, norms, attention and dropout run (model.impl, model.dtype)
    cpu/            CPU-tuned forms of those operations (same functions, faster on XLA:CPU)
"""

from vdm.nets.ops import Ops, make_ops
from vdm.nets.unet import ScoreUNet

__all__ = ["Ops", "ScoreUNet", "make_ops"]
