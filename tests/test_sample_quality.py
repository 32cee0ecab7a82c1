"""--mode=sample_quality on a finished tiny run: the table, sample_quality.json, and its errors."""

import json
import os

import pytest

from conftest import ROOT, copy_of_tiny_run, main_in_process
from vdm.errors import ConfigError

TINY = os.path.join(ROOT, "configs", "tiny.py")


def test_sample_quality_mode_prints_the_table_and_writes_json(finished_tiny_run, tmp_path, capsys):
    workdir = str(copy_of_tiny_run(finished_tiny_run, tmp_path))  # the mode writes sample_quality.json there
    out = main_in_process([f"--config={TINY}", f"--workdir={workdir}", "--mode=sample_quality",
                            "--sampler=dpm_solver_pp_2m,ode", "--steps=4,1"], capsys)
    assert "| sampler | NFE | FD | KID ± s.e. | digit-check ratio | seconds |" in out, out
    assert "| ode | 1 | skipped" in out, out  # one Heun step is 2 evaluations
    result = json.loads(open(os.path.join(workdir, "sample_quality.json")).read())
    rows = {(r["sampler"], r["nfe"]): r for r in result["rows"]}
    assert set(rows) == {("real", None), ("dpm_solver_pp_2m", 4), ("dpm_solver_pp_2m", 1), ("ode", 4)}, rows
    assert rows[("ode", 4)]["steps"] == 2 and rows[("dpm_solver_pp_2m", 4)]["steps"] == 4
    assert result["num_samples"] == 16 and result["reference"] == "297 test digits"
    for r in result["rows"]:
        assert r["fd"] >= 0 and 0 <= r["ratio"] <= 1 / 0.5, r  # (KID's s.e.: test_feature_distances' jackknife)
    # an 8-step model's samples are far from digits; real training digits are close to the test digits
    assert rows[("ode", 4)]["fd"] > 5 * rows[("real", None)]["fd"], rows
    assert "sample_quality=" in out.strip().splitlines()[-1]


@pytest.mark.parametrize("args, message", [(["--sampler=euler"], "--sampler=euler"),
                                           (["--steps=10,x"], "--steps=10,x: expected positive integers")])
def test_sample_quality_mode_rejects_unknown_samplers_and_bad_steps(finished_tiny_run, capsys, args, message):
    _, workdir = finished_tiny_run
    with pytest.raises(ConfigError, match=message):
        main_in_process([f"--config={TINY}", f"--workdir={workdir}", "--mode=sample_quality", *args], capsys)
