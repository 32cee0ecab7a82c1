"""An official VDM checkpoint written as a vdm run workdir, and its command line `python -m vdm.import_official`.

`vdm.training.official_params` reads the checkpoint and maps its parameters;
`write_workdir` writes a normal run workdir (config.json with `imported_from`, an
orbax checkpoint at the official step, a fresh optimizer state); `cli` is
`python -m vdm.import_official`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

from vdm.errors import ConfigError, VdmError, WorkdirError
from vdm.training.official_params import ImportedRun, import_checkpoint


# ------------------------------------------------------------------------------------------- workdir


def write_workdir(imported: ImportedRun, workdir: str) -> str:
    """Writes `workdir` as a run at the official step: config.json (with imported_from) and an orbax checkpoint.

    The workdir must be new or empty. Everything is written to a sibling directory
    first and renamed into place, so a failure leaves `workdir` as it was.
    """
    import grain
    import jax
    import jax.numpy as jnp

    from vdm.training import checkpoint, outputs
    from vdm.training.optim import make_optimizer
    from vdm.training.steps import TrainState
    from vdm.training.workdirs import write_config

    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise WorkdirError(f"{workdir} exists and is not empty; import into a new --workdir")
    parent = os.path.dirname(workdir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"cannot create {parent} ({e.strerror or e}); pass a writable --workdir") from None
    staging = f"{workdir}.importing-{os.getpid()}"
    ckpt = imported.checkpoint
    try:
        os.makedirs(staging)
        write_config(imported.config, staging)
        config_path = os.path.join(staging, "config.json")
        with open(config_path) as f:
            stored = json.load(f)
        stored["imported_from"] = {
            "checkpoint": os.path.abspath(ckpt.file),
            "official_step": ckpt.step,
            "code": "google-research/vdm (model_vdm.py)",
            "from_checkpoint": {k: list(v) if isinstance(v, tuple) else v for k, v in imported.from_checkpoint.items()},
            "optimizer_state": "not imported: a fresh optimizer state (the official AdamW moments are dropped)",
        }
        outputs.write_json(config_path, stored)
        tx, _ = make_optimizer(imported.config.optim, imported.config.training.num_steps)
        params = jax.tree.map(jnp.asarray, imported.params)
        state = TrainState(step=jnp.asarray(ckpt.step, jnp.int32), params=params,
                           ema_params=jax.tree.map(jnp.asarray, imported.ema_params), opt_state=tx.init(params))
        # the data position of a run that has read no batch yet: fine-tuning starts the data stream afresh
        fresh_position = iter(grain.MapDataset.range(1).to_iter_dataset())
        manager = checkpoint.make_manager(staging)
        checkpoint.save(manager, ckpt.step, state, fresh_position)
        manager.close()
        if os.path.isdir(workdir):
            os.rmdir(workdir)
        os.rename(staging, workdir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return workdir


# ------------------------------------------------------------------------------------------ command line

USAGE = ("python -m vdm.import_official --checkpoint=PATH --workdir=DIR [--config=configs/cifar10.py] "
         "[--config.KEY=VALUE ...] [--verbose]")


def default_config_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs",
                        "cifar10.py")


def parse_args(argv) -> dict:
    """{checkpoint, workdir, config, overrides [(key, text)], verbose} of the command line; ConfigError if malformed."""
    out = {"checkpoint": None, "workdir": None, "config": None, "overrides": [], "verbose": False}
    for a in argv:
        name, sep, value = a.partition("=")
        if a in ("-h", "--help", "--helpshort"):
            raise ConfigError(f"usage: {USAGE}")
        if a == "--verbose":
            out["verbose"] = True
        elif name.startswith("--config."):
            if not sep:
                raise ConfigError(f"config override '{a}' needs the form {name}=VALUE")
            out["overrides"].append((name[len("--config."):], value))
        elif name in ("--checkpoint", "--workdir", "--config") and sep and value:
            out[name[2:]] = value
        else:
            raise ConfigError(f"unexpected argument {a!r}; usage: {USAGE}")
    for name in ("checkpoint", "workdir"):
        if not out[name]:
            raise ConfigError(f"--{name} is required; usage: {USAGE}")
    return out


def load_import_config(config_arg: str | None, overrides):
    """The config file (default configs/cifar10.py) with the --config.KEY=VALUE overrides applied."""
    from vdm.config.validation import load_config_file, parse_override

    path, _, variant = (config_arg or default_config_path()).partition(":")
    config = load_config_file(path, variant or None)
    for key, text in overrides:
        parse_override(config, key, text)
    return config


def main(argv) -> str:
    """Imports per the command line (without the program name); returns the workdir written."""
    args = parse_args(argv)
    if not args["verbose"]:
        from vdm import console

        console.quiet()
    config = load_import_config(args["config"], args["overrides"])
    imported = import_checkpoint(args["checkpoint"], config, explicit={k for k, _ in args["overrides"]})
    workdir = write_workdir(imported, args["workdir"])
    print(describe(imported), flush=True)
    print(f"workdir={workdir}", flush=True)
    return workdir


def describe(imported: ImportedRun) -> str:
    import jax
    import jax.numpy as jnp

    c, ckpt = imported.config, imported.checkpoint
    m = c.model
    n = sum(int(np.size(x)) for x in jax.tree.leaves(imported.ema_params))
    gamma = imported.model.gamma_fn(imported.ema_params)

    g0, g1 = (float(g) for g in gamma(jnp.array([0.0, 1.0])))
    return (f"vdm: imported {ckpt.file} (official step {ckpt.step}): {n:,} parameters; {m.channels} channels, "
            f"{m.num_blocks} blocks, attention per block {m.attention_per_block}, Fourier features {m.fourier_features}, "
            f"cond_dim {m.cond_dim}, {c.data.image_shape[-1]} image channels; schedule {c.schedule.name}, EMA "
            f"gamma(0) = {g0:.4f}, gamma(1) = {g1:.4f}; params and ema_params imported, optimizer state "
            f"{'dropped (fresh AdamW state)' if ckpt.has_opt_state else 'absent'}")


def cli() -> None:
    """`python -m vdm.import_official`: one line `vdm: <kind>: <message>` and its exit code on an error."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        main(sys.argv[1:])
    except VdmError as e:
        print(f"vdm: {e.kind}: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


__all__ = ["cli", "describe", "load_import_config", "main", "parse_args", "write_workdir"]

