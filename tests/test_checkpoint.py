"""Checkpoints: round trip with the data position, load_run, and the run-time errors around them."""

import os
import subprocess
import sys
import uuid

import jax
import numpy as np
import pytest

from vdm.config.validation import load_config_file
from vdm.data import pipeline as data
from vdm.errors import CheckpointError, WorkdirError
from vdm.training import checkpoint, optim, workdirs
from vdm.training.model import VDM
from vdm.training.steps import create_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(channels=8):
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.model.channels = channels
    model = VDM.from_config(config)
    tx, _ = optim.make_optimizer(config.optim, 10)
    return config, create_train_state(model, tx, jax.random.key(0))


def _iterator():
    return data.TrainIterator(data.train_dataset(data.Source("digits", "train"), 16, seed=0), 17)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_round_trip_restores_state_and_data_position(tmp_path):
    _, state = _state()
    it = _iterator()
    it.next(5)
    manager = checkpoint.make_manager(str(tmp_path))
    checkpoint.save(manager, 5, state, it.iterator)
    expected = it.next(1)
    fresh = _iterator()
    restored = checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state, data_iterator=fresh.iterator)
    for a, b in zip(_leaves(restored), _leaves(state)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fresh.next(1)["images"], expected["images"])


def test_load_run_gives_config_model_and_ema_params(tmp_path):
    config, state = _state()
    os.makedirs(tmp_path, exist_ok=True)
    from vdm.training import outputs

    outputs.write_json(str(tmp_path / "config.json"), {"config": config.to_dict()})
    checkpoint.save(checkpoint.make_manager(str(tmp_path)), 3, state)
    loaded_config, model, params = workdirs.load_run(str(tmp_path))
    assert loaded_config.model.channels == 8 and model.image_shape == (8, 8, 1)
    for a, b in zip(_leaves(params), _leaves(state.ema_params)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="no checkpoint for step 7 .* it has \\[3\\]"):
        workdirs.load_run(str(tmp_path), step=7)


def test_checkpoint_from_an_incompatible_config_names_the_parameter(tmp_path):
    _, state = _state(channels=8)
    checkpoint.save(checkpoint.make_manager(str(tmp_path)), 1, state)
    _, other = _state(channels=16)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(checkpoint.make_manager(str(tmp_path)), other)
    message = str(info.value)
    assert "does not fit this config: parameter net/" in message and "(16,)" in message and "(8,)" in message
    assert "config.json" in message and "\n" not in message


def test_unwritable_workdir_is_reported(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(WorkdirError, match=f"workdir {blocker}/run is not writable .*pass a writable --workdir"):
        workdirs.check_workdir(str(blocker / "run"))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (needs root, as on the CI machine; skipped where mounting is not allowed)."""
    mounts = []

    def make(size_bytes):
        path = tmp_path / f"disk_{uuid.uuid4().hex[:6]}"
        path.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield make
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, small_disk):
    _, state = _state()
    probe = tmp_path / "probe"
    checkpoint.save(checkpoint.make_manager(str(probe)), 1, state)
    one = _du(probe)
    disk = small_disk(int(one * 1.5) + 64 * 1024)
    manager = checkpoint.make_manager(str(disk))
    checkpoint.save(manager, 1, state)
    with pytest.raises(CheckpointError) as info:
        checkpoint.save(manager, 2, state)
    assert "disk full while writing checkpoint 2" in str(info.value) and "(step 1) is intact" in str(info.value)
    restored = checkpoint.restore(checkpoint.make_manager(str(disk)), state)
    assert checkpoint.make_manager(str(disk)).latest_step() == 1
    for a, b in zip(_leaves(restored), _leaves(state)):
        np.testing.assert_array_equal(a, b)


def test_cli_runtime_error_is_one_line_with_exit_code_1(tmp_path):
    args = [sys.executable, "-m", "vdm.main", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}",
            "--config.data.name=cifar10", "--config.data.image_shape=(32, 32, 3)", "--config.data.vocab_size=256",
            f"--config.data.data_dir={tmp_path / 'no_data'}"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("vdm: data error: dataset 'cifar10' is not prepared") and "tfds build cifar10" in lines[-1]
    assert "Traceback" not in proc.stderr
