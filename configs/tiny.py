"""A 1-block, 8-channel digits model for tests and smoke runs (seconds per step on a CPU).

Run:
  python -m vdm.main --config=configs/tiny.py --workdir=/tmp/vdm_tiny
Reaches no particular bpd: it exists to exercise every code path quickly.
"""

import os

from vdm.config.validation import load_config_file

VARIANTS = (None,)  # the values get_config(arg) accepts


def get_config(arg=None):
    c = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
    c.model.channels = 8
    c.model.num_blocks = 1
    c.model.dropout = 0.0
    c.model.attention_per_block = True  # attention inside every block: the code path of the paper's network
    c.cpu.devices = 0  # whatever devices JAX has (tests run it in-process, on 1 or 4 devices)
    c.schedule.name = "learned_linear"  # exercise the ELBO path with learned endpoints
    c.loss.weighting = "elbo"
    c.training.batch_size = 16
    c.training.num_steps = 8
    c.training.steps_per_call = 2
    c.training.log_every = 2
    c.training.eval_every = 4
    c.training.max_seconds = 0.0
    c.optim.warmup_steps = 2
    c.eval.batch_size = 100
    c.eval.num_repeats = 2
    c.eval.num_samples = 16
    c.eval.sampler_steps = 8
    return c
