"""Orbax checkpoints of the TrainState and the data iterator: <workdir>/checkpoints/<step>/{state,data}.

A save is written to `<step>.orbax-checkpoint-tmp` and renamed when complete,
so a process killed inside a save leaves no step directory and the next start
restores the previous complete one (`latest_step` never sees the temporary).
The data item is grain's iterator state (one JSON per process).

`load_run(workdir)` gives scripts and notebooks (config, model, EMA params).
"""

from __future__ import annotations

import errno
import json
import os
import signal

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from vdm.errors import CheckpointError


def make_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
    )


def _is_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None, wait: bool = True) -> None:
    """Saves state (and the grain iterator's position) at `step`; CheckpointError if the disk is full."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    previous = manager.latest_step()
    try:
        manager.save(int(step), args=ocp.args.Composite(**args), force=True)
        if os.environ.get("VDM_TEST_KILL_IN_SAVE") == str(int(step)):  # tests: die with the save half-written
            os.kill(os.getpid(), signal.SIGKILL)
        if wait:
            manager.wait_until_finished()
    except Exception as e:
        if _is_disk_full(e):
            raise CheckpointError(
                f"disk full while writing checkpoint {step} to {manager.directory}; the previous checkpoint "
                f"(step {previous}) is intact: free space, then run the same command to resume from it"
            ) from None
        raise


def _shapes(tree) -> dict:
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
    """CheckpointError if the checkpoint's parameter shapes differ from those the config builds."""
    stored = _shapes(manager.item_metadata(step)["state"]["params"])
    wanted = _shapes(abstract_state.params)
    where = f"checkpoint {manager.directory}/{step}"
    fix = "use the config it was trained with (its workdir's config.json) or a new --workdir"
    for path in sorted(set(stored) | set(wanted)):
        if stored.get(path) != wanted.get(path):
            raise CheckpointError(f"{where} does not fit this config: parameter {path} has shape "
                                  f"{stored.get(path, 'absent')} there and {wanted.get(path, 'absent')} here; {fix}")


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None, data_iterator=None):
    """Restores a step (default: latest complete) onto the shardings of `abstract_state`.

    `abstract_state` leaves are jax.ShapeDtypeStruct or arrays; their sharding,
    or else replication over all current devices, is the layout restored onto
    (a checkpoint from 8 devices restores on 1 and vice versa). With
    `data_iterator`, its position is restored in place too.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}")
    if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint for step {step} in {manager.directory}; it has {manager.all_steps()}")
    check_compatible(manager, step, abstract_state)
    replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("data",)), jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or replicated),
        abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**args))["state"]


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} not found: is {workdir} a vdm workdir?")
    with open(path) as f:
        saved = json.load(f)["config"]
    from vdm.config.schema import base_config

    config = base_config()  # keys added to vdm/config/schema.py after the run started take their defaults
    for section, values in saved.items():
        if section in config and isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    config.data.image_shape = tuple(config.data.image_shape)
    return config


# Keys that change when or how a run is observed, not what it computes: a rerun may change them freely.
RERUN_FREE_KEYS = frozenset({
    "training.max_seconds", "training.log_every", "training.donate_state", "eval.batch_size",
    "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.max_to_keep", "data.data_dir",
})


def config_differences(config, stored) -> list[tuple[str, object, object]]:
    """[(key, value in `config`, value in `stored`)] for every key that changes what a run computes.

    Both are ConfigDicts (`stored` typically `load_config(workdir)`); keys in
    RERUN_FREE_KEYS are not compared.
    """
    from vdm.config.validation import flatten

    def flat(c):  # tuples as lists: a config read back from config.json has lists
        return {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(c).items()}

    new, old = flat(config), flat(stored)
    return [(k, new.get(k), old.get(k)) for k in sorted(set(new) | set(old))
            if k not in RERUN_FREE_KEYS and new.get(k) != old.get(k)]


def describe_differences(differences, limit: int = 3) -> str:
    """'model.channels = 16 here, 8 in the workdir; ...' for the first `limit` differences."""
    shown = "; ".join(f"{k} = {new!r} here, {old!r} in the workdir" for k, new, old in differences[:limit])
    more = len(differences) - limit
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_run(workdir: str, step: int | None = None, ema: bool = True):
    """(config, model, params) of a run: its config.json, the VDM it builds, and the (EMA) parameters."""
    from vdm.training.model import VDM
    from vdm.training.optim import make_optimizer
    from vdm.training.steps import create_train_state

    config = load_config(workdir)
    model = VDM.from_config(config)
    tx, _ = make_optimizer(config.optim, config.training.num_steps)
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0)))
    state = restore(make_manager(workdir), abstract, step)
    return config, model, state.ema_params if ema else state.params
