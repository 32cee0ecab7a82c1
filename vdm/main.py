"""Command line: python -m vdm.main --config=configs/digits.py[:variant] --workdir=DIR
                 [--mode=train|eval|sample] [--config.some.key=value ...]

Thin: the work is in `vdm.run` (train_and_evaluate, evaluate_run, sample_run).
A bad config key or value stops with one line naming it (exit code 2).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from vdm.config_validation import ConfigError, load_config_file, parse_override, validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally path:variant.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, pictures and results.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"], "What to do.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval / sample (default: latest).")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed for --mode=sample.")


def precheck(argv) -> None:
    """Validates --config and every --config.key=value before absl sees them, with one-line errors."""
    config_arg, overrides = None, []
    args = list(argv[1:])
    for i, a in enumerate(args):
        if a.startswith("--config="):
            config_arg = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(args):
            config_arg = args[i + 1]
        elif a.startswith("--config."):
            key, sep, value = a[len("--config."):].partition("=")
            if not sep:
                raise ConfigError(f"config override '{a}' needs the form --config.{key}=VALUE")
            overrides.append((key, value))
    if config_arg is None:
        raise ConfigError("missing --config=configs/NAME.py")
    path, _, variant = config_arg.partition(":")
    config = load_config_file(path, variant or None)
    for key, value in overrides:
        parse_override(config, key, value)
    validate(config)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from vdm import run

    config = _CONFIG.value
    validate(config)
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _MODE.value == "train":
        run.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == "eval":
        run.evaluate_run(config, _WORKDIR.value, _STEP.value)
    else:
        run.sample_run(config, _WORKDIR.value, _STEP.value, _SEED.value)


def cli():
    try:
        precheck(sys.argv)
    except ConfigError as e:
        print(f"vdm: config error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        app.run(main)
    except ConfigError as e:  # raised again inside the run (e.g. data not matching the config)
        print(f"vdm: config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
