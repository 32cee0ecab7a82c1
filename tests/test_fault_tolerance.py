"""A run survives kill -9, a kill inside a checkpoint save, SIGTERM and NaNs, and ends where an uninterrupted one does.

Every subprocess runs the tiny config with a checkpoint every 2 steps (one
compiled call of 2 steps), so kills land between, inside and after saves.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import LIGHT_EVAL  # what these tests check happens in training: the cheapest final evaluation

from vdm.config.validation import apply_overrides, load_config_file
from vdm.data import pipeline as data
from vdm.errors import NonFiniteLoss, PREEMPTED_EXIT_CODE
from vdm.training import loop, workdirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.checkpoint.every_steps=2", "--config.checkpoint.max_to_keep=10",
             *[f"--config.{k}={v}" for k, v in LIGHT_EVAL.items()]]


MULAN = ("--config.schedule.name=mulan", "--config.eval.time_density=schedule")  # one gamma per dimension, per image


def _command(workdir, extra=()):
    return [sys.executable, "-m", "vdm.main", "--config=configs/tiny.py", f"--workdir={workdir}", *OVERRIDES, *extra]


def _start(workdir, extra=(), **env):
    return subprocess.Popen(_command(workdir, extra), cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(workdir, extra=(), **env):
    proc = _start(workdir, extra, **env)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _final_state(workdir):
    _, _, params = workdirs.load_run(str(workdir), ema=False)
    _, _, ema = workdirs.load_run(str(workdir), ema=True)
    return [np.asarray(x) for x in jax.tree.leaves((params, ema))]


def _steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait_for(predicate, timeout=300, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its final parameters and EMA parameters."""
    workdir = tmp_path_factory.mktemp("reference")
    code, _, err = _run(workdir)
    assert code == 0, err[-3000:]
    return _final_state(workdir)


def _assert_same(state, reference):
    # Bitwise: restored arrays are the saved bytes, batches and keys are functions of the step.
    for a, b in zip(state, reference):
        np.testing.assert_array_equal(a, b)


def _kill_9_at_step_4_then_rerun(workdir, extra=()):
    proc = _start(workdir, extra)
    _wait_for(lambda: 4 in _steps(workdir) or proc.poll() is not None, what="checkpoint 4")
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (workdir / "results.json").exists()
    code, out, err = _run(workdir, extra)
    assert code == 0, err[-3000:]
    assert "resumed from step" in out


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_parameters(tmp_path, reference):
    _kill_9_at_step_4_then_rerun(tmp_path / "run")
    _assert_same(_final_state(tmp_path / "run"), reference)


@pytest.mark.slow
@pytest.mark.parametrize("latent", ["topk", "gaussian"])
def test_a_mulan_run_killed_mid_run_resumes_to_the_uninterrupted_parameters(tmp_path, latent):
    """The same with one gamma per dimension of each image (schedule.name=mulan with its top-k latent, MuLAN's, or
    the Gaussian one): the learned schedule, the encoder and the latent draws resume bitwise too."""
    extra = (*MULAN, f"--config.schedule.latent={latent}")
    code, _, err = _run(tmp_path / "reference", extra)
    assert code == 0, err[-3000:]
    _kill_9_at_step_4_then_rerun(tmp_path / "run", extra)
    reference = _final_state(tmp_path / "reference")
    assert any(leaf.ndim == 3 for leaf in reference)  # the per-dimension coefficients [8, 8, 1] are in the state
    _assert_same(_final_state(tmp_path / "run"), reference)


@pytest.mark.slow
def test_kill_inside_a_save_never_restores_the_half_written_checkpoint(tmp_path, reference):
    workdir = tmp_path / "run"
    code, _, _ = _run(workdir, VDM_TEST_KILL_IN_SAVE="4")
    assert code == -signal.SIGKILL
    leftovers = os.listdir(workdir / "checkpoints")
    assert any("tmp" in n for n in leftovers), leftovers  # the save really was cut short
    assert _steps(workdir) == [2]
    code, out, err = _run(workdir)
    assert code == 0, err[-3000:]
    assert "resumed from step 2" in out
    _assert_same(_final_state(workdir), reference)


@pytest.mark.slow
def test_kill_inside_a_save_then_a_garbled_newest_step_resumes_from_the_step_before(tmp_path, reference):
    """A save killed at step 6 leaves 2 and 4; step 4's array data is then garbled (half a file's bytes flipped, as
    an interrupted copy leaves it). The rerun names step 4 as damaged, moves it aside, resumes from 2, and ends with
    the uninterrupted run's parameters bitwise."""
    workdir = tmp_path / "run"
    code, _, _ = _run(workdir, VDM_TEST_KILL_IN_SAVE="6")
    assert code == -signal.SIGKILL and _steps(workdir) == [2, 4]
    (data_file,) = (workdir / "checkpoints" / "4" / "state" / "d").iterdir()
    damaged = bytearray(data_file.read_bytes())
    for i in range(len(damaged) // 2, len(damaged)):
        damaged[i] ^= 0x5A
    data_file.write_bytes(bytes(damaged))
    code, out, err = _run(workdir)
    assert code == 0, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("vdm:")]
    assert len(lines) == 1 and f"{workdir}/checkpoints/4 is damaged" in lines[0], err[-3000:]
    assert lines[0].endswith("resuming from step 2"), lines
    assert "resumed from step 2" in out
    assert (workdir / "damaged_checkpoints" / "4" / "state" / "d" / data_file.name).read_bytes() == bytes(damaged)
    _assert_same(_final_state(workdir), reference)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_75_then_the_rerun_finishes(tmp_path, reference):
    workdir = tmp_path / "run"
    proc = _start(workdir)
    _wait_for(lambda: 2 in _steps(workdir) or proc.poll() is not None, what="checkpoint 2")
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert time.time() - sent < 60
    assert "vdm: preempted: SIGTERM at step" in err and err.strip().splitlines()[-1].startswith("vdm: preempted")
    stopped_at = int(err.split("SIGTERM at step ")[1].split(":")[0])
    assert _steps(workdir)[-1] == stopped_at and not (workdir / "results.json").exists()
    code, out, err = _run(workdir)
    assert code == 0, err[-3000:]
    assert (workdir / "results.json").exists()
    _assert_same(_final_state(workdir), reference)
    code, out, _ = _run(workdir)  # finished: a third start only reports
    assert code == 0 and "already finished" in out


def _nan_at_step(monkeypatch, bad_step):
    """Feeds a NaN conditioning input in the batch of `bad_step` (steps_per_call = 2)."""
    original = data.TrainIterator.next

    def next_with_nan(self, num=1):
        batches = original(self, num)
        first = self.get_state()["next_index"] - num
        cond = np.zeros((num, batches["images"].shape[1], 1), np.float32)
        if first <= bad_step < first + num:
            cond[bad_step - first] = np.nan
        return {**batches, "cond": cond}

    monkeypatch.setattr(data.TrainIterator, "next", next_with_nan)


def _tiny(on_nonfinite):
    config = apply_overrides(load_config_file(os.path.join(ROOT, "configs", "tiny.py")), LIGHT_EVAL)
    config.checkpoint.every_steps = 2
    config.training.on_nonfinite = on_nonfinite
    return config


def test_nan_step_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 2)
    with pytest.raises(NonFiniteLoss, match="step 2 gave a non-finite loss") as info:
        loop.train_and_evaluate(_tiny("stop"), str(tmp_path))
    assert "Last good checkpoint: step 2" in str(info.value) and "\n" not in str(info.value)
    assert _steps(tmp_path) == [2]
    _, _, params = workdirs.load_run(str(tmp_path), ema=False)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow  # a second tiny training run (~20 s); the NaN-stops-the-run test stays fast
def test_nan_step_is_skipped_when_configured(tmp_path, monkeypatch):
    _nan_at_step(monkeypatch, 5)
    results = loop.train_and_evaluate(_tiny("skip"), str(tmp_path))
    assert np.isfinite(results["test_bpd"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rejected = {r["step"]: r["rejected_steps"] for r in rows if r["split"] == "train"}
    assert rejected == {2: 0, 4: 0, 6: 1, 8: 0}
    assert all(np.isfinite(r["bpd"]) for r in rows if r["split"] == "train")
