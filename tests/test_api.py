"""The public API: the names a researcher reaches for are one import away, and the README's notebook example runs."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

# name in `vdm` -> (home module, attribute; None: the module itself)
HOMES = {
    "diffusion": ("vdm.core.diffusion", None),
    "losses": ("vdm.core.losses", None),
    "schedules": ("vdm.core.schedules", None),
    "sampling": ("vdm.sampling", None),
    "likelihood": ("vdm.sampling.likelihood", None),
    "guidance": ("vdm.sampling.guidance", None),
    "VDM": ("vdm.model", "VDM"),
    "load_run": ("vdm.training.workdirs", "load_run"),
    "sample": ("vdm.training.generation", "sample"),
    "elbo_bits_per_dim": ("vdm.training.evaluation", "elbo_bits_per_dim"),
    "elbo_terms": ("vdm.core.losses", "elbo_terms"),
    "SCHEDULES": ("vdm.core.schedules", "SCHEDULES"),
    "SAMPLERS": ("vdm.sampling", "SAMPLERS"),
    "get_sampler": ("vdm.sampling", "get_sampler"),
}


def test_the_math_modules_import_as_written_and_are_their_homes():
    from vdm import diffusion, guidance, likelihood, losses, sampling, schedules  # the line of the README

    import vdm.core.diffusion
    import vdm.core.losses
    import vdm.core.schedules
    import vdm.sampling.guidance
    import vdm.sampling.likelihood

    assert diffusion is vdm.core.diffusion and losses is vdm.core.losses and schedules is vdm.core.schedules
    assert likelihood is vdm.sampling.likelihood and guidance is vdm.sampling.guidance
    assert sampling is sys.modules["vdm.sampling"]


@pytest.mark.parametrize("name", list(HOMES))
def test_each_public_name_is_the_object_of_its_home(name):
    import importlib

    import vdm

    module, attribute = HOMES[name]
    home = importlib.import_module(module)
    assert getattr(vdm, name) is (home if attribute is None else getattr(home, attribute))


def test_get_sampler_and_the_registries_are_reached_from_the_package():
    import vdm
    import vdm.sampling

    assert vdm.sampling.get_sampler("ode") is vdm.sampling.sde.ode_sample_heun
    assert vdm.get_sampler("pc") is vdm.sampling.SAMPLERS["pc"].fn
    assert set(vdm.SCHEDULES) == {"fixed_linear", "learned_linear", "monotone_net", "beta_linear", "alpha_cosine",
                                 "official_nnet", "mulan"}
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        vdm.not_a_name  # noqa: B018


def test_import_vdm_and_the_cli_module_import_no_jax():
    """`import vdm` is lazy, and `python -m vdm.main` starts without jax until a config is checked."""
    code = "import sys, vdm, vdm.main; print(sorted(m for m in ('jax', 'numpy', 'vdm.core', 'vdm.training') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def _notebook_example() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("### In a notebook"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_notebook_example_runs_on_a_trained_workdir(tmp_path, capsys):
    """Loads a tiny trained workdir, samples 16 images with two samplers, computes the test bits/dim."""
    workdir = str(tmp_path / "run")
    shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "workdir_before_layout"), workdir)
    code = _notebook_example()
    assert code.count('"runs/demo"') == 1 and len(code.strip().splitlines()) <= 12
    namespace = {}
    exec(compile(code.replace('"runs/demo"', repr(workdir)), "README.md", "exec"), namespace)
    vocab = namespace["run"].config.data.vocab_size
    for name in ("ancestral", "ddim"):
        images = np.asarray(namespace[name])
        assert images.shape == (16, 8, 8, 1) and images.min() >= 0 and images.max() < vocab, name
    assert not np.array_equal(namespace["ancestral"], namespace["ddim"])
    stored = json.load(open(os.path.join(workdir, "results.json")))
    bpd = namespace["bpd"]
    assert abs(bpd["bpd"] - stored["test_bpd"]) < 4 * stored["test_bpd_stderr"], (bpd["bpd"], stored["test_bpd"])
    assert f"test bits/dim {bpd['bpd']:.3f}" in capsys.readouterr().out
