"""Config validation errors name the key; a CLI run of the tiny config writes every output."""

import json
import os
import subprocess
import sys

import pytest

from conftest import LIGHT_EVAL, copy_of_tiny_run, main_in_process
from vdm.config.validation import ConfigError, apply_overrides, load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Every configs/*.py file, variant and sweep point is loaded, validated and traced in tests/test_configs.py.
@pytest.mark.parametrize("variant", ["steps", "schedule", "fourier", "prediction"])
def test_every_reproduction_sweep_is_valid_at_paper_size(variant):
    """experiments/repro_common.py --size=paper runs each configs/repro.py sweep on configs/cifar10.py."""
    from experiments import sweep

    base = load_config_file(os.path.join(ROOT, "configs", "cifar10.py"))
    for point in sweep.load_sweep(os.path.join(ROOT, f"configs/repro.py:{variant}")):
        apply_overrides(base.copy_and_resolve_references(), point)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"model.chanels": 3}, "unknown config key 'model.chanels' (not in vdm/config/schema.py)"),
        ({"training.batch_size": "big"}, "'training.batch_size'"),
        ({"training.batch_size": 2.5}, "'training.batch_size' must be int"),
        ({"schedule.gamma_min": 6.0}, "'schedule.gamma_min' = 6.0 must be < 'schedule.gamma_max'"),
        ({"schedule.gamma_min": 5.0}, "'schedule.gamma_min' = 5.0 must be < 'schedule.gamma_max'"),  # = gamma_max
        ({"schedule.name": "quadratic"}, "'schedule.name'"),
        ({"model.prediction": "noise"}, "'model.prediction'"),
        ({"training.num_steps": 0}, "'training.num_steps' must be > 0"),
        ({"model.dropout": 1.5}, "'model.dropout' must be in [0, 1)"),
        ({"optim.ema_decay": 1.0}, "'optim.ema_decay' must be in [0, 1)"),
        ({"data.image_shape": (8, 8)}, "'data.image_shape'"),
        ({"optim.decay": "linear"}, "'optim.decay'"),
    ],
)
def test_invalid_values_fail_naming_the_key(overrides, message):
    config = load_config_file(os.path.join(ROOT, "configs", "digits.py"))
    with pytest.raises(ConfigError) as info:
        apply_overrides(config, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="unknown variant .huge.; its variants: .long., .conditional."):
        load_config_file(os.path.join(ROOT, "configs", "digits.py"), "huge")


def _run_cli(args, cwd=ROOT, timeout=600, **env_vars):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_vars)
    return subprocess.run([sys.executable, "-m", "vdm.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_config_error_is_one_line():
    proc = _run_cli(["--config=configs/tiny.py", "--workdir=/tmp/unused", "--config.schedule.gamma_min=9.0"])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "'schedule.gamma_min'" in proc.stderr
    proc = _run_cli(["--config=configs/tiny.py", "--workdir=/tmp/unused", "--config.model.nope=1"])
    assert proc.returncode == 2 and "unknown config key 'model.nope'" in proc.stderr




def test_cli_tiny_run_writes_every_output(tmp_path, capsys):
    workdir = tmp_path / "run"
    # finished_tiny_run's compiled evaluation (LIGHT_EVAL's sample count and steps), at step 4 too and repeated
    # twice (the Monte-Carlo error of results.json): the same programs, which the compilation cache then holds
    light = [f"--config.{k}={v}" for k, v in LIGHT_EVAL.items() if k in ("eval.num_samples", "eval.sampler_steps")]
    # a fresh data dir: the bundled digits are built first, which must not show on the console
    proc = _run_cli(["--config=configs/tiny.py", f"--workdir={workdir}", "--config.training.seed=3", *light],
                    TFDS_DATA_DIR=str(tmp_path / "tfds"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isdir(tmp_path / "tfds" / "vdm_digits")
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("vdm: digits (8, 8, 1) V=17") and "8 steps of batch 16 on 1 cpu device(s)" in lines[0]
    assert [line.split(":")[0] for line in lines[1:-1]] == ["step 4"], lines  # the one eval line
    last = lines[-1]
    assert last.startswith("test_bpd=") and f"results={workdir}/results.json" in last
    progress = [p for p in proc.stderr.replace("\r", "\n").splitlines() if p.strip()]
    assert progress and all(p.startswith("train:") for p in progress), proc.stderr  # only the progress bar
    names = set(os.listdir(workdir))
    for expected in ("config.json", "metrics.jsonl", "results.json", "samples_final.png", "log_snr_final.png",
                     "samples_step4.png", "log_snr_step4.png", "samples.npz", "checkpoints", "tensorboard"):
        assert expected in names, (expected, names)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    cfg = json.loads((workdir / "config.json").read_text())
    assert cfg["config"]["training"]["seed"] == 3 and cfg["packages"]["jax"] and "git_commit" in cfg
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    for key in ("bpd", "bpd_prior", "bpd_reconstruction", "bpd_diffusion", "learning_rate", "grad_norm",
                "steps_per_sec", "gamma_0", "gamma_1"):
        assert key in train_rows[0], key
    assert any(r["split"] == "eval" for r in rows)
    res = json.loads((workdir / "results.json").read_text())
    assert "EMA" in res["parameters"]
    # the console's last line reports what results.json holds (to its printed 4 decimals)
    printed = dict(item.split("=", 1) for item in last.split())
    assert float(printed["test_bpd"]) == pytest.approx(res["test_bpd"], abs=5e-5)
    assert float(printed["test_bpd_stderr"]) == pytest.approx(res["test_bpd_stderr"], abs=5e-5)


# The eval, sample and likelihood modes restore a finished run's checkpoint. They run in this process: the CLI
# path itself (exit codes, console) is what the subprocess above covers.
def test_eval_and_sample_modes_restore_the_checkpoint(finished_tiny_run, tmp_path, capsys):
    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    tiny = os.path.join(ROOT, "configs", "tiny.py")
    out = main_in_process([f"--config={tiny}", f"--workdir={workdir}", "--mode=eval"], capsys)
    assert out.strip().splitlines()[-1].startswith("test_bpd="), out
    out = main_in_process([f"--config={tiny}", f"--workdir={workdir}", "--mode=sample", "--sampler=ddim", "--steps=4"],
                           capsys)
    assert "DDIM, eta = 0 (deterministic), T = 4: 16 samples" in out
    samples = __import__("numpy").load(workdir / "samples_ddim.npz")["samples"]
    assert samples.shape == (16, 8, 8, 1) and samples.min() >= 0 and samples.max() <= 16


@pytest.mark.slow  # compiles the ODE likelihood of a network with its divergence (~40 s on 2 cores)
def test_likelihood_mode_restores_the_checkpoint(finished_tiny_run, tmp_path, capsys):
    workdir = copy_of_tiny_run(finished_tiny_run, tmp_path)
    tiny = os.path.join(ROOT, "configs", "tiny.py")
    out = main_in_process([f"--config={tiny}", f"--workdir={workdir}", "--mode=likelihood", "--max_examples=8"], capsys)
    assert "ELBO" in out and all(f"ODE, {deq:<16} dequant." in out for deq in ("variational", "uniform", "truncated_normal"))
    lik = json.loads((workdir / "likelihood.json").read_text())
    assert lik["num_examples"] == 8 and lik["ode_bpd_variational"] > 0 and lik["ode_bpd_uniform_stderr"] > 0
    assert lik["ode_bpd_truncated_normal"] > 0 and lik["ode_bpd_truncated_normal_stderr"] > 0
    assert "log q(z_0|x)" in lik["ode_variational_dequantization"] and "2/V" in lik["ode_uniform_dequantization"]
    assert "alpha_0 times x's bin" in lik["ode_truncated_normal_dequantization"]


def test_keys_that_name_a_registered_thing_are_checked_against_that_registry():
    """Validation reads the registries the code reads: an unknown name fails listing every registered one."""
    from vdm.config.validation import registries, validate
    from vdm.core import schedules
    from vdm.sampling import SAMPLERS

    tables = registries()
    assert tables["schedule.name"] is schedules.SCHEDULES and tables["eval.sampler"] is SAMPLERS
    assert {"data.name", "data.augmentation", "model.prediction", "loss.weighting"} <= set(tables)
    for key, registry in tables.items():
        config = load_config_file(os.path.join(ROOT, "configs", "digits.py"))
        section, name = key.split(".")
        config[section][name] = "no_such_name"
        with pytest.raises(ConfigError) as info:
            validate(config)
        message = str(info.value)
        assert f"'{key}' = 'no_such_name'" in message and all(repr(k) in message for k in registry), message
