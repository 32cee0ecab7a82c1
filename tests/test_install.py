"""`pip install .` (a wheel, not editable) gives a working `python -m vdm.main` outside the checkout.

The wheel is built offline from a copy of the package sources (so the
checkout gets no build/ or egg-info), installed into a fresh venv without
dependencies; the dependencies already installed in this venv are then made
visible to it by a plain path line in a .pth file, which does not run the
editable-install hooks of this venv (so the checkout's vdm stays invisible).
A copy of configs/digits.py, placed outside the checkout, then trains, evaluates
and samples a tiny model from another directory.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {  # configs/digits.py made as small as a run gets
    "model.channels": 8, "model.num_blocks": 1, "training.batch_size": 16, "training.num_steps": 2,
    "training.steps_per_call": 1, "training.log_every": 1, "training.eval_every": 2, "checkpoint.every_steps": 1,
    "eval.num_samples": 4, "eval.sampler_steps": 2, "eval.num_repeats": 1, "eval.batch_size": 100,
    "training.max_seconds": 0.0,
}


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _build_wheel(tmp_path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *map(os.path.basename, glob.glob(os.path.join(ROOT, "LICENSE*")))):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "vdm"), src / "vdm", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(tmp_path / "dist"), str(src)])
    (wheel,) = glob.glob(str(tmp_path / "dist" / "vdm-*.whl"))
    return wheel


def _venv_with_wheel(tmp_path, wheel) -> str:
    """A fresh venv holding the wheel; this venv's installed dependencies visible after it, read-only."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    # Installed before the .pth below exists: pip sees no other vdm.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    with open(os.path.join(site, "_vdm_test_outer_site_packages.pth"), "w") as f:
        f.writelines(p + "\n" for p in outer)  # path lines: the .pth hooks in them (editable vdm) do not run
    return python


@pytest.mark.slow  # builds a wheel and a venv: in make test-all and .ci/run
def test_wheel_in_a_fresh_venv_runs_a_config_file_outside_the_checkout(tmp_path):
    python = _venv_with_wheel(tmp_path, _build_wheel(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    configs = tmp_path / "my_configs"
    configs.mkdir()
    shutil.copy(os.path.join(ROOT, "configs", "digits.py"), configs / "digits.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # no path settings of this process
    env.update(JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds"), PYTHONUNBUFFERED="1")

    probe = _run([python, "-c", "import vdm, vdm.data.datasets as d; print(vdm.__file__); print(d.prepare_command('cifar10', '/d'))"],
                 cwd=elsewhere, env=env).stdout.splitlines()
    assert probe[0].startswith(str(tmp_path / "venv")), probe  # the wheel's vdm, not the checkout's
    assert probe[1].startswith("pip install 'tensorflow>=2.16' && tfds build cifar10"), probe  # no checkout to install from

    workdir = tmp_path / "run"
    overrides = [f"--config.{k}={v}" for k, v in TINY.items()]
    proc = _run([python, "-m", "vdm.main", f"--config={configs / 'digits.py'}", f"--workdir={workdir}", *overrides],
                cwd=elsewhere, env=env)
    assert proc.stdout.strip().splitlines()[-1].startswith("test_bpd="), proc.stdout[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["test_bpd"] > 0 and results["step"] == 2
    assert not os.listdir(elsewhere)  # nothing written to the working directory
