"""Data parallelism: 4 local devices and 2 jax.distributed processes reproduce the 1-device numbers.

Relative errors are ||a - b|| / ||b|| over the whole tree (see
tests/helpers/four_devices.py for why not elementwise): the all-reduce sums
in a different order, so bitwise equality is not expected.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdm.training import workdirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_four_local_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "tests/helpers/four_devices.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["batch_devices"] == 4 and res["params_sharding_replicated"]
    assert res["loss_rel"] <= 1e-5 and res["grad_rel"] <= 1e-5, res
    assert res["params_rel"] <= 1e-5 and res["ema_rel"] <= 1e-5, res
    assert "'training.batch_size' = 18 is not divisible by the 4 devices" in res["batch_error"]
    assert res["samples_equal"] and res["sample_devices"] == 4, res
    # the adaptive ODE solver picks its steps from float32 error estimates, which the device split rounds
    # differently: agreement within the solver's tolerance (measured 2.6e-4), not bitwise
    assert res["ode_bpd_rel"] <= 2e-3 and res["ode_devices"] == 4, res


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


THREE_STEPS = ["--config=configs/tiny.py", "--config.training.num_steps=3", "--config.training.steps_per_call=1",
               "--config.training.log_every=1", "--config.training.eval_every=3", "--config.checkpoint.every_steps=3",
               "--config.eval.num_repeats=1", "--config.eval.num_samples=4", "--config.eval.sampler_steps=2"]


def _cli(workdir, *extra):
    return [sys.executable, "-m", "vdm.main", f"--workdir={workdir}", *THREE_STEPS, *extra]


def _params(workdir):
    _, _, params = workdirs.load_run(str(workdir), ema=False)
    _, _, ema = workdirs.load_run(str(workdir), ema=True)
    return params, ema


def _rel(a, b):
    diff = sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return (diff / sum(float(np.sum(np.asarray(y, np.float64) ** 2)) for y in jax.tree.leaves(b))) ** 0.5


@pytest.mark.slow
def test_two_processes_train_to_the_one_process_parameters(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    single = subprocess.Popen(_cli(tmp_path / "single"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    port = _free_port()
    procs = [
        subprocess.Popen(_cli(tmp_path / "multi", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                              f"--process_id={i}"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in [single, *procs]]
    for p, (out, err) in zip([single, *procs], outs):
        assert p.returncode == 0, err[-3000:]
    assert "on 2 cpu device(s) in 2 process(es)" in outs[1][0]
    assert "test_bpd=" in outs[1][0] and "test_bpd=" not in outs[2][0] and "vdm:" not in outs[2][0]  # process 0 reports
    assert json.loads((tmp_path / "multi" / "results.json").read_text())["step"] == 3
    rows = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows if json.loads(r)["split"] == "train"] == [1, 2, 3]
    (p1, e1), (p2, e2) = _params(tmp_path / "single"), _params(tmp_path / "multi")
    assert _rel(p2, p1) <= 1e-5 and _rel(e2, e1) <= 1e-5, (_rel(p2, p1), _rel(e2, e1))
    r1 = json.loads((tmp_path / "single" / "results.json").read_text())
    r2 = json.loads((tmp_path / "multi" / "results.json").read_text())
    assert abs(r1["test_bpd"] - r2["test_bpd"]) <= 1e-4 * r1["test_bpd"], (r1["test_bpd"], r2["test_bpd"])
