"""A 4-point sweep of configs/tiny.py made as short as possible: for tests/test_sweeps.py."""

import os

from vdm.config.validation import load_config_file


def get_config(arg=None):
    c = load_config_file(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny.py"))
    c.training.num_steps = 2
    c.training.log_every = 2
    c.training.eval_every = 2
    c.eval.num_samples = 4
    c.eval.sampler_steps = 2
    return c


def get_sweep(arg=None):
    return [{"training.seed": seed, "eval.num_repeats": repeats} for seed in (0, 1) for repeats in (1, 2)]
