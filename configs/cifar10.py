"""CIFAR-10, the paper's configuration (Kingma et al. 2021, Table / appendix B).

No downsampling: 32 ResNet blocks of 128 channels down, 33 up, 2 middle around
one attention layer; Fourier features 2^6, 2^7; dropout 0.1; learned-endpoint
log-SNR-linear schedule starting at [-13.3, 5]; AdamW lr 2e-4, betas (0.9, 0.99),
weight decay 0.01; EMA 0.9999; batch 128; 10M steps. 30,578,181 parameters
(network + 2 schedule parameters), the official implementation's count.

Run (accelerators, data prepared with tfds):
  python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10
Should reproduce the paper's 2.65 test bits/dim (no augmentation; the official
checkpoint re-evaluates to 2.637) after 10M steps.
"""

from vdm.config.schema import base_config

VARIANTS = (None,)  # the values get_config(arg) accepts


def get_config(arg=None):
    c = base_config()
    c.data.name = "cifar10"
    c.data.image_shape = (32, 32, 3)
    c.data.vocab_size = 256
    c.data.num_classes = 10
    c.model.channels = 128
    c.model.num_blocks = 32
    c.training.batch_size = 128
    c.training.num_steps = 10_000_000
    c.training.log_every = 1000
    c.training.eval_every = 50_000
    c.eval.batch_size = 500
    c.eval.num_samples = 64
    return c
