"""Shared test setup: float32 JAX on CPU with the persistent compilation cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile hundreds of small programs and run most of them for milliseconds: LLVM at -O0 compiles XLA:CPU
# programs ~3x faster (the tiny CLI run: 33 s instead of 55 s) and computes the same functions. Subprocesses inherit it.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "tensorflow_datasets"))

import jax  # noqa: E402

_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _cache:
    jax.config.update("jax_compilation_cache_dir", _cache)


import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny config with the cheapest final evaluation: for tests about runs, not about numbers.
LIGHT_EVAL = {"training.eval_every": 8, "eval.num_repeats": 1, "eval.num_samples": 4, "eval.sampler_steps": 2}


def tiny_config(**overrides):
    """configs/tiny.py with LIGHT_EVAL and `overrides` ({"model.channels": 16} as model__channels=16)."""
    from vdm.config.validation import apply_overrides, load_config_file

    extra = {k.replace("__", "."): v for k, v in overrides.items()}
    return apply_overrides(load_config_file(os.path.join(ROOT, "configs", "tiny.py")), {**LIGHT_EVAL, **extra})


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory):
    """(config, workdir) of a finished tiny run (8 steps), trained once per test process."""
    from vdm.training import loop

    workdir = str(tmp_path_factory.mktemp("finished_tiny_run"))
    config = tiny_config()
    loop.train_and_evaluate(config, workdir)
    return config, workdir


def main_in_process(args, capsys) -> str:
    """`python -m vdm.main ARGS` inside this test process (no interpreter start-up; warm caches): its stdout."""
    from absl import flags

    from vdm import main as cli

    argv = ["vdm.main", *args]
    cli.precheck(argv)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(argv)
    capsys.readouterr()
    cli.main(argv)
    return capsys.readouterr().out
