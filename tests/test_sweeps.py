"""python -m experiments.sweep: runs a config's get_sweep() points, skips finished ones, writes the table and a SLURM script."""

import csv
import os
import subprocess
import sys

import pytest

from experiments import sweep
from vdm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "tests/helpers/sweep_config.py"


def _sweep(*args):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={CONFIG}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_four_point_sweep_runs_skips_finished_points_and_writes_the_table(tmp_path):
    root = str(tmp_path / "sweep")
    first = _sweep(f"--root={root}", "--parallel=2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 points, 0 already finished, 4 to run" in first.stdout
    names = ["seed=0,num_repeats=1", "seed=0,num_repeats=2", "seed=1,num_repeats=1", "seed=1,num_repeats=2"]
    for name in names:
        assert os.path.exists(os.path.join(root, name, "results.json")), name
    mtimes = [os.path.getmtime(os.path.join(root, n, "results.json")) for n in names]

    second = _sweep(f"--root={root}")
    assert second.returncode == 0 and "4 already finished, 0 to run" in second.stdout
    assert mtimes == [os.path.getmtime(os.path.join(root, n, "results.json")) for n in names]

    with open(os.path.join(root, "sweep.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [(r["training.seed"], r["eval.num_repeats"]) for r in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    bpd = [float(r["test_bpd"]) for r in rows]
    assert all(1.0 < b < 12.0 for b in bpd)  # 2 steps from initialisation: well above the trained ~2
    assert bpd[0] != bpd[2]  # the seed reaches the run
    md = open(os.path.join(root, "sweep.md")).read()
    assert md.count("\n| ") == 5 and "test_bpd" in md


def test_slurm_script_has_one_task_per_point(tmp_path):
    out = _sweep(f"--root={tmp_path}", f"--slurm={tmp_path}/sweep.sbatch", "--sbatch=--gres=gpu:1")
    assert out.returncode == 0, out.stderr
    text = open(tmp_path / "sweep.sbatch").read()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --gres=gpu:1" in text
    assert text.count("vdm.main") == 4 and "--config.training.seed=1 --config.eval.num_repeats=2" in text
    assert subprocess.run(["bash", "-n", str(tmp_path / "sweep.sbatch")]).returncode == 0


def test_bad_sweep_points_fail_naming_the_key(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    tiny = os.path.join(ROOT, "configs", "tiny.py")
    bad.write_text("from vdm.config.validation import load_config_file\n"
                   f"def get_config(arg=None):\n    return load_config_file({tiny!r})\n"
                   "def get_sweep(arg=None):\n    return [{'training.sed': 1}]\n")
    with pytest.raises(ConfigError, match="training.sed"):
        sweep.load_sweep(str(bad))
    with pytest.raises(ConfigError, match="get_sweep"):
        sweep.load_sweep(os.path.join(ROOT, "configs", "tiny.py"))


def test_point_names_and_stderr():
    assert sweep.point_name({"loss.num_steps": 10, "training.seed": 2}) == "num_steps=10,seed=2"
    assert sweep.point_name({"a.seed": 1, "b.seed": 2}) == "a.seed=1,b.seed=2"
    mean, se = sweep.mean_and_stderr([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(se - 1 / 3**0.5) < 1e-12


def test_a_point_whose_workdir_holds_another_config_is_reported_not_skipped(tmp_path):
    """Same rule as a rerun: a finished point counts only if its config.json is the point's config."""
    from vdm.training import outputs

    config_arg = os.path.join(ROOT, CONFIG)
    points = sweep.load_sweep(config_arg)[:2]
    for i, point in enumerate(points):
        workdir = tmp_path / sweep.point_name(point)
        workdir.mkdir()
        config = sweep.point_config(config_arg, point)
        if i == 1:
            config.model.channels = 16  # the workdir was trained with another config
        outputs.write_json(str(workdir / "config.json"), {"config": config.to_dict()})
        outputs.write_json(str(workdir / "results.json"), {"test_bpd": 3.0 + i})
    lines = []
    codes = sweep.run_points(config_arg, points, str(tmp_path), log=lines.append)
    stale = sweep.point_name(points[1])
    assert codes == {stale: 1}  # nothing was started: point 0 is finished, point 1 is stale
    assert any(f"{stale} NOT RUN" in line and "model.channels = 8 here, 16 in the workdir" in line for line in lines)
    assert "1 already finished, 0 to run, 1 at a time, 1 stale (not run)" in lines[-1]
    rows = sweep.collect(str(tmp_path), points, config_arg=config_arg)
    assert [r["test_bpd"] for r in rows] == [3.0, None]
