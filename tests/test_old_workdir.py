"""A workdir written before the package layout changed still loads and evaluates to its own test bits/dim.

`tests/fixtures/workdir_before_layout/` holds config.json, results.json and the
step-8 checkpoint of a tiny run made by the code before the move (its README
says how). Evaluating it again (`--mode=eval`: the stored config, its eval keys,
the same evaluation key) must give the numbers that today's ELBO estimator gave
it when it was introduced (`results_elbo_estimator.json`; the fixture's own
results.json came from the estimator before, one shared time offset per batch,
and must agree with it within their standard errors). The tolerance, 1e-5
relative, is float32 rounding of the per-example terms (a different CPU may
vectorise XLA's reductions differently); anything a move could break
(parameter tree, schedule endpoints, keys, the ELBO terms) moves the bits/dim
by far more than that.
"""

import json
import math
import os
import shutil

import pytest

from conftest import ROOT

from vdm.training import evaluation, workdirs

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_before_layout")


@pytest.fixture
def old_workdir(tmp_path):
    """A copy of the fixture (evaluation writes results.json and samples into its workdir)."""
    workdir = str(tmp_path / "old_run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def test_a_workdir_of_the_old_layout_evaluates_to_its_stored_test_bits_per_dim(old_workdir):
    with open(os.path.join(FIXTURE, "results.json")) as f:
        stored = json.load(f)
    with open(os.path.join(FIXTURE, "results_elbo_estimator.json")) as f:
        recorded = json.load(f)
    config = workdirs.load_config(old_workdir)
    results = evaluation.evaluate_run(config, old_workdir)
    names = [k for k in recorded if k.startswith("test_")]
    assert "test_bpd" in names and len(names) == 8  # bpd, its three terms, and their standard errors
    for name in names:
        assert results[name] == pytest.approx(recorded[name], rel=1e-5), name
    assert results["estimator"] == recorded["estimator"]
    gap = abs(results["test_bpd"] - stored["test_bpd"])
    assert gap < 2 * math.hypot(results["test_bpd_stderr"], stored["test_bpd_stderr"]), (gap, results, stored)
    for name in ("step", "num_parameters", "num_test_examples"):
        assert results[name] == stored[name], name
    assert results["gamma_0"] == pytest.approx(stored["gamma_0"], rel=1e-6)
    assert results["gamma_1"] == pytest.approx(stored["gamma_1"], rel=1e-6)
