"""Orbax checkpoints of the TrainState and the data iterator: <workdir>/checkpoints/<step>/{state,data,meta}.

A save is written to `<step>.orbax-checkpoint-tmp` and renamed when complete,
so a process killed inside a save leaves no step directory and the next start
restores the previous complete one (`latest_step` never sees the temporary).
The data item is grain's iterator state (one JSON per process); the meta item
records the network version (`vdm.nets.unet.NETWORK_VERSION`), which `restore`
checks: parameters of another version have the same shapes but meant another
function. A workdir's other files (config.json, results.json) are
`vdm.training.workdirs`.
"""

from __future__ import annotations

import errno
import os
import signal

import grain
import jax
import orbax.checkpoint as ocp

from vdm.errors import CheckpointError
from vdm.nets.unet import NETWORK_VERSION


def make_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
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
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave({"network_version": NETWORK_VERSION})}
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


def stored_network_version(manager: ocp.CheckpointManager, step: int) -> int | None:
    """The network version a checkpoint recorded; None for checkpoints written before versions were recorded."""
    if not os.path.isdir(os.path.join(str(manager.directory), str(step), "meta")):
        return None
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return int(meta["network_version"])


def check_network_version(manager: ocp.CheckpointManager, step: int, model, fallback: int | None = None) -> None:
    """CheckpointError if the checkpoint's network version meant another function than `model`'s network.

    fallback: the version to assume where the checkpoint recorded none (its workdir's
    config.json, `vdm.training.workdirs.recorded_network_version`); None: the current one.
    """
    stored = stored_network_version(manager, step)
    stored = stored if stored is not None else (fallback if fallback is not None else NETWORK_VERSION)
    problem = model.network_version_problem(stored)
    if problem:
        raise CheckpointError(f"checkpoint {manager.directory}/{step} does not fit this code: {problem}")


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None, data_iterator=None,
            model=None, fallback_version: int | None = None):
    """Restores a step (default: latest complete) onto the shardings of `abstract_state`.

    `abstract_state` leaves are jax.ShapeDtypeStruct or arrays; their sharding,
    or else replication over all current devices, is the layout restored onto
    (a checkpoint from 8 devices restores on 1 and vice versa). With
    `data_iterator`, its position is restored in place too. With `model` (a VDM), the
    checkpoint's network version is checked against it first (`check_network_version`).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}")
    if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint for step {step} in {manager.directory}; it has {manager.all_steps()}")
    check_compatible(manager, step, abstract_state)
    if model is not None:
        check_network_version(manager, step, model, fallback_version)
    replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("data",)), jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or replicated),
        abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return manager.restore(step, args=ocp.args.Composite(**args))["state"]
