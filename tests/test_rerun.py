"""No silent wrong or stale answers: a workdir answers only for the config it was trained with."""

import json
import os
import subprocess
import sys

from conftest import LIGHT_EVAL, ROOT, copy_of_tiny_run, tiny_config

from vdm.training import loop, workdirs


def _cli(workdir, *extra):
    overrides = [f"--config.{k}={v}" for k, v in LIGHT_EVAL.items()]
    return subprocess.run([sys.executable, "-m", "vdm.main", "--config=configs/tiny.py", f"--workdir={workdir}",
                           *overrides, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _snapshot(workdir):
    return {name: open(os.path.join(workdir, name), "rb").read() for name in ("config.json", "results.json")}


def test_rerun_with_another_channel_count_exits_1_naming_the_key_and_writes_nothing(finished_tiny_run, tmp_path):
    workdir = str(copy_of_tiny_run(finished_tiny_run, tmp_path))  # a rerun checks that it can write there
    before = _snapshot(workdir)
    proc = _cli(workdir, "--config.model.channels=16")
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vdm: workdir error:"), proc.stderr
    assert "model.channels = 16 here, 8 in the workdir" in lines[0]
    assert "test_bpd=" not in proc.stdout
    assert _snapshot(workdir) == before


def test_rerun_with_the_same_config_reports_the_stored_result(finished_tiny_run, tmp_path, capsys):
    config, workdir = finished_tiny_run[0], str(copy_of_tiny_run(finished_tiny_run, tmp_path))
    stored = json.load(open(os.path.join(workdir, "results.json")))
    again = config.copy_and_resolve_references()
    again.training.max_seconds = 123.0  # keys that do not change what is computed may differ
    again.eval.batch_size = 50
    assert loop.train_and_evaluate(again, workdir) == stored
    out = capsys.readouterr().out
    assert "already finished" in out and f"test_bpd={stored['test_bpd']:.4f}" in out


def test_config_differences_name_only_keys_that_change_the_computation():
    a, b = tiny_config(), tiny_config(training__max_seconds=5.0, checkpoint__every_steps=4, model__dropout=0.1,
                                      training__seed=7)
    assert [d[0] for d in workdirs.config_differences(b, a)] == ["model.dropout", "training.seed"]
    assert workdirs.describe_differences(workdirs.config_differences(b, a), limit=1) == \
        "model.dropout = 0.1 here, 0.0 in the workdir (and 1 more)"


def test_eval_modes_use_the_stored_model_with_the_given_eval_keys(finished_tiny_run):
    _, workdir = finished_tiny_run
    other = tiny_config(model__channels=16, eval__num_samples=2)
    config = workdirs.stored_config(other, workdir)
    assert config.model.channels == 8 and config.eval.num_samples == 2
