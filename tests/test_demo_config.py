"""The demo is deterministic: a fixed number of steps, no wall-clock cap, the same parameters for the same seed."""

import os

import jax
import numpy as np
import pytest

from conftest import ROOT

from vdm.config.validation import apply_overrides, load_config_file
from vdm.training import loop, workdirs
from vdm.training.run import Run


def _demo(**overrides):
    return apply_overrides(load_config_file(os.path.join(ROOT, "configs", "digits.py")), overrides)


def test_demo_config_has_no_time_cap_and_a_fixed_step_count():
    config = _demo()
    assert config.training.max_seconds == 0.0  # a busy or slow machine trains the same steps, only slower
    assert config.training.num_steps > 0 and config.training.num_steps % config.training.eval_every == 0
    assert config.eval.num_samples >= 1000  # the sample check's error is ~0.02 at 1000 samples


@pytest.mark.slow  # two short runs of the demo network (~40 s on 2 cores)
def test_two_short_runs_with_one_seed_give_identical_parameters(tmp_path):
    # in this process JAX runs 1 CPU device (the demo's 2 need `python -m vdm.main`); the sampler is irrelevant here
    short = {"training.num_steps": 3, "training.eval_every": 3, "training.log_every": 1, "checkpoint.every_steps": 3,
             "model.channels": 16, "model.num_blocks": 1, "eval.num_repeats": 1, "eval.num_samples": 2,
             "eval.sampler": "ancestral", "eval.sampler_steps": 1, "cpu.devices": 0}
    leaves = []
    for name in ("a", "b"):
        loop.train_and_evaluate(_demo(**short), str(tmp_path / name))
        _, _, params = workdirs.load_run(str(tmp_path / name), ema=False)
        leaves.append([np.asarray(x) for x in jax.tree.leaves(params)])
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(a, b)
    _, _, initial = workdirs.load_run(str(tmp_path / "a"), ema=False)  # not vacuous: training moved them
    fresh = Run(_demo(**short), str(tmp_path / "c")).fresh_state().params
    assert any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(initial),
                                                                                   jax.tree.leaves(fresh)))


def test_a_device_count_jax_did_not_start_with_stops_the_run_naming_the_key(tmp_path):
    from vdm.errors import ConfigError

    assert jax.local_device_count() == 1
    with pytest.raises(ConfigError, match="'cpu.devices' = 2, but JAX has started already with 1 CPU device"):
        Run(_demo(), str(tmp_path))
