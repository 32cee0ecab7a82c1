"""Downsampled ImageNet 32x32 (tfds `downsampled_imagenet/32x32`), paper size.

The paper reports 3.72 test bits/dim. Its appendix describes a wider model for
ImageNet than for CIFAR-10; this config uses the CIFAR-10 architecture at 256
channels and 32 blocks, batch 512, a documented approximation of it.

Run (accelerators, data prepared with tfds):
  python -m vdm.main --config=configs/imagenet32.py --workdir=runs/imagenet32
"""

import os

from vdm.config.validation import load_config_file

VARIANTS = (None,)  # the values get_config(arg) accepts


def get_config(arg=None):
    c = load_config_file(os.path.join(os.path.dirname(__file__), "cifar10.py"))
    c.data.name = "imagenet32"  # vdm.data.datasets: tfds downsampled_imagenet/32x32
    c.data.num_classes = 0
    c.model.channels = 256
    c.model.dropout = 0.0
    c.training.batch_size = 512
    c.training.num_steps = 2_000_000
    return c
