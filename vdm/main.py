"""Command line: python -m vdm.main [--config=configs/digits.py[:variant]] --workdir=DIR
                 [--mode=train|eval|sample|likelihood|sample_quality] [--config.some.key=value ...]
                 [--sampler=ancestral|ddim|ode|ode_adaptive|reverse_sde|pc|annealed_langevin|dpm_solver_pp_2m|...
                  --steps=N --guidance=W --label=K]
                 [--mode=sample_quality --sampler=NAME[,NAME...] --steps=NFE[,NFE...] --metric=inception --samples=N]
                 [--distributed | --coordinator_address=HOST:PORT --num_processes=N --process_id=I]
                 [--verbose]

Thin: the work is in `vdm.training`: loop.train_and_evaluate, evaluation.evaluate_run /
likelihood_run, generation.sample_run, sample_quality.sample_quality_run.
Training resumes from the workdir's latest checkpoint when there is one; a workdir
that holds a run of another config stops with one line naming the differing keys
(exit 1). eval / sample / likelihood evaluate the model the workdir trained (its
config.json), with --config's eval keys. Without --config, the workdir's config.json
is the config (with any --config.key=value applied): every mode of an existing
workdir, an imported one (`python -m vdm.import_official`) included, runs from
--workdir alone. The console shows vdm's own lines only;
--verbose brings back the libraries' logs.
Errors print one line `vdm: <kind>: <message>`; exit codes are listed in
`vdm.errors` (0 done, 1 error, 2 config error, 75 preempted and resumable). Anything
unexpected prints `vdm: internal error: <type>: <message>` and appends the traceback to
<workdir>/error.log (a temporary file without a workdir); --verbose prints it too.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

from vdm.config.validation import ConfigError, load_config_file, parse_override, validate
from vdm.errors import VdmError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally path:variant.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, pictures and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "likelihood", "sample_quality"], "What to do.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval / sample (default: latest).")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed for --mode=sample / likelihood.")
_SAMPLER = flags.DEFINE_string("sampler", "ancestral", "--mode=sample: one of vdm.sampling.SAMPLERS.")
_STEPS = flags.DEFINE_list("steps", None, "--mode=sample: sampler steps (default: eval.sampler_steps); "
                          "--mode=sample_quality: network evaluations (NFE), a comma list, e.g. 10,20,50,100.")
_GUIDANCE = flags.DEFINE_float("guidance", 0.0, "--mode=sample: classifier-free guidance weight w.")
_LABEL = flags.DEFINE_integer("label", -1, "--mode=sample: class of every sample; -1 = all classes in turn.")
_METRIC = flags.DEFINE_enum("metric", "auto", ["auto", "digits", "inception"],
                            "--mode=sample_quality: FD-digits (digits' default) or Inception FID / KID / IS / "
                            "precision-recall (the others' default; needs the converted weights, docs/sampling.md).")
_SAMPLES = flags.DEFINE_integer("samples", None, "--mode=sample_quality: samples per sampler and NFE "
                                "(default: eval.num_samples for digits, 50000 for inception).")
_REFERENCE_IMAGES = flags.DEFINE_integer("reference_images", 50_000, "--metric=inception: train images in the "
                                         "reference statistics (a seeded subset of larger splits; cached).")
_PROBE = flags.DEFINE_enum("probe", "rademacher", ["rademacher", "gaussian"], "--mode=likelihood: Hutchinson probe.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 0, "--mode=likelihood: first N test examples (0 = all).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() with the cluster auto-detected.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show every library log line (absl, tfds, orbax, XLA).")


# Without --config: the --config.key=value overrides that precheck found, applied by main to the workdir's config.
_WORKDIR_OVERRIDES = []


def _flag_value(args, name):
    """The value of --name=V or --name V among args, else None."""
    for i, a in enumerate(args):
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
        if a == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
    return None


def workdir_config(workdir, overrides):
    """What --config is when none is given: <workdir>/config.json with the overrides; ConfigError if it has none."""
    if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
        where = f": {workdir} has no config.json to take the config from" if workdir else " (or a --workdir with a config.json)"
        raise ConfigError(f"missing --config=configs/NAME.py{where}")
    from vdm.training import workdirs

    config = workdirs.load_config(workdir)
    for key, value in overrides:
        parse_override(config, key, value)
    return config


def precheck(argv) -> None:
    """Validates --config (or the workdir's config.json) and every --config.key=value before absl sees them.

    One-line errors. Without --config, remembers the overrides for `main` (absl knows
    --config.key flags only with a --config file; `cli` hands them to main instead).
    """
    overrides = []
    args = list(argv[1:])
    config_arg = _flag_value(args, "config")
    for a in args:
        if a.startswith("--config."):
            key, sep, value = a[len("--config."):].partition("=")
            if not sep:
                raise ConfigError(f"config override '{a}' needs the form --config.{key}=VALUE")
            overrides.append((key, value))
    if config_arg is None:
        config = workdir_config(_flag_value(args, "workdir"), overrides)
        _WORKDIR_OVERRIDES[:] = overrides
    else:
        path, _, variant = config_arg.partition(":")
        config = load_config_file(path, variant or None)
        for key, value in overrides:
            parse_override(config, key, value)
    validate(config)


def _steps(single: bool = False):
    """--steps as positive ints (None if not given); single: exactly one value, as an int."""
    if not _STEPS.value:
        return None
    try:
        steps = [int(v) for v in _STEPS.value]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1 or (single and len(steps) != 1):
        expected = "a positive integer" if single else "positive integers, comma-separated"
        raise ConfigError(f"--steps={','.join(_STEPS.value)}: expected {expected}")
    return steps[0] if single else steps


def main(argv):
    del argv
    if not _VERBOSE.value:
        from vdm import console

        console.quiet()
    from vdm.training import distributed, evaluation, generation, loop, workdirs

    config = _CONFIG.value
    if config is None:  # no --config: the workdir's own (precheck made sure it has one)
        config = workdir_config(_WORKDIR.value, _WORKDIR_OVERRIDES)
    validate(config)
    distributed.use_cpu_devices(config.cpu.devices)  # before anything starts JAX's backends
    if _DISTRIBUTED.value or _COORDINATOR.value:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _MODE.value == "train":
        loop.train_and_evaluate(config, _WORKDIR.value)
        return
    config = workdirs.stored_config(config, _WORKDIR.value)  # the other modes evaluate the model the workdir trained
    if _MODE.value == "eval":
        evaluation.evaluate_run(config, _WORKDIR.value, _STEP.value)
    elif _MODE.value == "sample":
        generation.sample_run(config, _WORKDIR.value, _STEP.value, _SEED.value, _SAMPLER.value, _steps(single=True),
                              _GUIDANCE.value, _LABEL.value)
    elif _MODE.value == "sample_quality":
        from vdm.training import sample_quality

        sample_quality.sample_quality_run(config, _WORKDIR.value, _SAMPLER.value.split(","), _steps() or [10, 20, 50, 100],
                                          _STEP.value, _SEED.value, _GUIDANCE.value, _METRIC.value, _SAMPLES.value,
                                          _REFERENCE_IMAGES.value)
    else:
        evaluation.likelihood_run(config, _WORKDIR.value, _STEP.value, _PROBE.value, _MAX_EXAMPLES.value, _SEED.value)


def _error_log(argv) -> str:
    """Where a traceback goes: <workdir>/error.log if the workdir exists and is writable, else a temporary file."""
    workdir = _flag_value(list(argv[1:]), "workdir")
    if workdir and os.path.isdir(workdir) and os.access(workdir, os.W_OK):
        return os.path.join(workdir, "error.log")
    import tempfile

    fd, path = tempfile.mkstemp(prefix="vdm-error-", suffix=".log")
    os.close(fd)
    return path


def report_internal_error(error: BaseException, argv, verbose: bool) -> int:
    """One line `vdm: internal error: <type>: <message> (traceback in <file>)`, the traceback appended to that file
    (and printed with --verbose); exit code 1."""
    import datetime
    import traceback

    text = "".join(traceback.format_exception(error))
    path = _error_log(argv)
    try:
        with open(path, "a") as f:
            f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}: "
                    f"{' '.join(argv)}\n{text}\n")
        where = f"traceback in {path}"
    except OSError:
        where = "traceback not saved: rerun with --verbose"
    if verbose:
        print(text, file=sys.stderr, end="")
    message = " ".join(str(error).split())
    print(f"vdm: internal error: {type(error).__name__}: {message[:300]} ({where})", file=sys.stderr, flush=True)
    return 1


def guarded(fn, argv) -> int:
    """Runs fn(); the exit code: 0, a VdmError's (its one line printed), or 1 for anything unexpected (one line,
    traceback to a file). SystemExit (absl's usage errors, a finished app.run) passes through."""
    try:
        fn()
        return 0
    except VdmError as e:  # config, data, checkpoint, workdir, non-finite loss, preemption: one line, no traceback
        print(f"vdm: {e.kind}: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001
        return report_internal_error(e, argv, "--verbose" in argv)


def cli():
    if "--verbose" not in sys.argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before jax is imported: XLA's C++ INFO / WARNING lines
    code = guarded(lambda: precheck(sys.argv), sys.argv)
    if code:
        sys.exit(code)
    argv = sys.argv
    if _flag_value(argv[1:], "config") is None:  # the overrides go to the workdir's config, not to absl
        argv = [a for a in argv if not a.startswith("--config.")]
    sys.exit(guarded(lambda: app.run(main, argv=argv), sys.argv))


if __name__ == "__main__":
    cli()
