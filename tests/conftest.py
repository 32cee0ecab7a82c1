"""Shared test setup: float32 JAX on CPU with the persistent compilation cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile thousands of small programs and run most of them for milliseconds, so the suite's time is XLA:CPU
# compiling. Two flags make that cheaper and compute the same functions (to float32 rounding); subprocesses inherit
# them; benchmarks and real runs keep XLA's defaults. LLVM at -O0 compiles ~3x faster (the tiny CLI run: 33 s
# instead of 55 s). Without the MLIR fusion emitters a small program compiles in ~38 ms instead of ~74 ms (600
# eager ops: 22.8 s vs 44.6 s) and the tiny train step in 7.5 s instead of 8.8 s: the fast suite on an empty
# compile cache took 7 min 9 s instead of 10 min 27 s (2-core AMD EPYC, 2026-12-02).
_FAST_COMPILE = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
for _flag, _value in _FAST_COMPILE.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --{_flag}={_value}").strip()
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
def finished_tiny_run(tmp_path_factory, worker_id):
    """(config, workdir) of a finished tiny run (8 steps), trained once per test session: under pytest-xdist the
    first worker that needs it trains it while holding a lock in the session's directory (xdist gives each worker
    a base temp dir inside it) and the others read it. Read it only; a test that writes into a run (a mode, a
    rerun) works on `copy_of_tiny_run`. Its compiled programs are those of the CLI run in
    tests/test_config_and_cli.py, which the compilation cache holds."""
    import fcntl

    from vdm.training import loop

    config = tiny_config()
    if worker_id == "master":  # one process
        workdir = str(tmp_path_factory.mktemp("finished_tiny_run"))
        loop.train_and_evaluate(config, workdir)
        return config, workdir
    shared = tmp_path_factory.getbasetemp().parent  # this session's directory, above every worker's own
    workdir, done = shared / "finished_tiny_run", shared / "finished_tiny_run.done"
    with open(shared / "finished_tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():  # a run that stopped early is resumed
            loop.train_and_evaluate(config, str(workdir))
            done.touch()
    return config, str(workdir)


def copy_of_tiny_run(finished_tiny_run, tmp_path):
    """A copy of finished_tiny_run's workdir (the Path tmp_path / "run"), for a test that writes into it."""
    import shutil

    return shutil.copytree(finished_tiny_run[1], tmp_path / "run")


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
