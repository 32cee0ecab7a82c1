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
from vdm.model import VDM
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


def _distinct_state():
    """A tiny state whose parameters, EMA and Adam moments all differ (a fresh one has params = EMA, moments 0)."""
    config, state = _state()
    tx, _ = optim.make_optimizer(config.optim, 10)
    count = iter(range(10**6))
    noise = lambda tree, scale: jax.tree.map(
        lambda x: x + scale * jax.random.normal(jax.random.fold_in(jax.random.key(1), next(count)), x.shape), tree)
    opt_state = state.opt_state
    for _ in range(2):  # two updates with random gradients: first and second moments away from 0 and apart
        _, opt_state = tx.update(noise(jax.tree.map(np.zeros_like, state.params), 1.0), opt_state, state.params)
    return config, state.replace(params=noise(state.params, 0.1), ema_params=noise(state.params, 0.2),
                                 opt_state=opt_state)


def test_load_run_gives_config_model_and_ema_params(tmp_path):
    config, state = _distinct_state()
    os.makedirs(tmp_path, exist_ok=True)
    from vdm.training import outputs

    outputs.write_json(str(tmp_path / "config.json"), {"config": config.to_dict()})
    checkpoint.save(checkpoint.make_manager(str(tmp_path)), 3, state)
    loaded_config, model, params = workdirs.load_run(str(tmp_path))
    assert loaded_config.model.channels == 8 and model.image_shape == (8, 8, 1)
    for a, b, raw in zip(_leaves(params), _leaves(state.ema_params), _leaves(state.params)):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, raw)
    for a, b in zip(_leaves(workdirs.load_run(str(tmp_path), ema=False).params), _leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    restored = checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state)
    moments = _leaves(state.opt_state)
    assert sum(np.any(m != 0) for m in moments) > len(moments) // 2  # the moments are not all zeros
    for a, b in zip(_leaves(restored.opt_state), moments):
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
    """Bytes a directory takes on a tmpfs: every file rounded up to whole 4 KiB pages, plus a page per directory."""
    page = 4096
    return sum(page * (1 + sum(-(-os.path.getsize(os.path.join(d, f)) // page) for f in files))
               for d, _, files in os.walk(path))


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, small_disk):
    _, state = _state()
    probe = tmp_path / "probe"
    checkpoint.save(checkpoint.make_manager(str(probe)), 1, state)
    one = _du(probe)
    # A disk that holds one checkpoint but not two. How much a save needs while it writes varies a little
    # (temporary files), so try a few sizes below two checkpoints until the first save fits.
    for factor in (1.4, 1.6, 1.8):
        disk = small_disk(int(one * factor) + 64 * 1024)
        manager = checkpoint.make_manager(str(disk))
        try:
            checkpoint.save(manager, 1, state)
            break
        except CheckpointError:
            continue
    else:
        pytest.fail(f"no disk below 1.8 checkpoints ({one} bytes each) held one checkpoint")
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


def _set_meta_version(workdir, step, version):
    import json

    path = os.path.join(str(workdir), "checkpoints", str(step), "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    assert set(meta) == {"network_version", "crc32"}
    with open(path, "w") as f:
        json.dump({**meta, "network_version": version}, f)


def test_a_checkpoint_of_another_network_version_stops_with_one_line(tmp_path):
    """Same parameter shapes, another function: version 1 (gcd(32, C) GroupNorm groups) into this code's
    version 2 stops naming both versions and the fix, unless model.norm_groups = 32 at a width that 32 divides
    (the documented migration); at width 8 nothing migrates; a newer version than the code's stops too."""
    config, state = _state(channels=32)
    checkpoint.save(checkpoint.make_manager(str(tmp_path)), 4, state)
    model = VDM.from_config(config)
    assert checkpoint.stored_network_version(checkpoint.make_manager(str(tmp_path)), 4) == 2  # what save records
    checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state, model=model)  # same version: fine
    _set_meta_version(tmp_path, 4, 1)
    with pytest.raises(CheckpointError) as info:
        checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state, model=model)
    message = str(info.value)
    assert "written by network version 1" in message and "this code builds version 2" in message
    assert "--config.model.norm_groups=32" in message and "\n" not in message
    config.model.norm_groups = 32
    checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state, model=VDM.from_config(config))
    _set_meta_version(tmp_path, 4, 3)
    with pytest.raises(CheckpointError, match="network version 3, newer than this code's 2"):
        checkpoint.restore(checkpoint.make_manager(str(tmp_path)), state, model=VDM.from_config(config))
    narrow_config, narrow = _state(channels=8)
    checkpoint.save(checkpoint.make_manager(str(tmp_path / "narrow")), 1, narrow)
    _set_meta_version(tmp_path / "narrow", 1, 1)
    with pytest.raises(CheckpointError, match="no setting of this code computes version 1's function at width 8"):
        checkpoint.restore(checkpoint.make_manager(str(tmp_path / "narrow")), narrow,
                           model=VDM.from_config(narrow_config))


def test_workdirs_without_a_recorded_version_are_dated(tmp_path):
    """config.json before versions were recorded: version 1 before the GroupNorm change (loaded with
    norm_groups = 32, its function), else 2; config.json written today records the version."""
    from vdm.training import outputs

    config, state = _state(channels=32)
    saved = config.to_dict()
    del saved["model"]["norm_groups"]  # a key these workdirs predate
    for time, version, groups in (("2026-11-20T10:00:00+0000", 1, 32), ("2026-12-01T23:43:36+0000", 2, 0)):
        workdir = tmp_path / str(version)
        os.makedirs(workdir)
        outputs.write_json(str(workdir / "config.json"), {"config": saved, "time": time})
        assert workdirs.recorded_network_version(str(workdir)) == version
        assert workdirs.load_config(str(workdir)).model.norm_groups == groups
        checkpoint.save(checkpoint.make_manager(str(workdir)), 2, state)
        # a checkpoint written without a meta item: its workdir's version decides
        import shutil

        shutil.rmtree(workdir / "checkpoints" / "2" / "meta")
        loaded = workdirs.load_run(str(workdir))
        assert loaded.model.net.norm_groups == groups
    workdirs.write_config(config, str(tmp_path))
    assert workdirs.recorded_network_version(str(tmp_path)) == 2


def test_old_config_json_with_removed_speed_keys_loads(tmp_path):
    from vdm.training import outputs

    config, _ = _state()
    saved = config.to_dict()
    saved["model"].update(fast_attention=True, fast_norm=False, fast_dropout_rng=True, loop_friendly_conv=False)
    outputs.write_json(str(tmp_path / "config.json"), {"config": saved})
    loaded = workdirs.load_config(str(tmp_path))
    assert "fast_norm" not in loaded.model and loaded.model.impl == "auto"


def test_training_of_a_run_from_before_the_bits_per_dim_loss_does_not_resume_under_another_weighting(tmp_path):
    """config.json without `objective_version` (written before every weighting trained in bits/dim): an eps_mse run
    stops with one line while steps remain, a finished one and any elbo run (the same loss in both versions) go
    on; what is written today records the version."""
    from vdm.config import migrations
    from vdm.training import outputs

    config, _ = _state()
    record = {"config": config.to_dict(), "network_version": 2}
    outputs.write_json(str(tmp_path / "config.json"), record)
    assert workdirs.recorded_objective_version(str(tmp_path)) == 1
    assert workdirs.check_training_resumes(config, str(tmp_path), 4) == 1  # tiny's elbo: resumes, keeps version 1
    config.loss.weighting = "eps_mse"
    with pytest.raises(WorkdirError) as info:
        workdirs.check_training_resumes(config, str(tmp_path), 4)
    message = str(info.value)
    assert "objective version 1" in message and "'eps_mse'" in message and "new --workdir" in message
    assert "\n" not in message
    assert workdirs.check_training_resumes(config, str(tmp_path), config.training.num_steps) == 1  # finished
    workdirs.write_config(config, str(tmp_path))
    assert workdirs.recorded_objective_version(str(tmp_path)) == migrations.OBJECTIVE_VERSION
    assert workdirs.check_training_resumes(config, str(tmp_path), 4) == migrations.OBJECTIVE_VERSION
