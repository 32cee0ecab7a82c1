"""Orbax checkpoints of the TrainState and the data iterator: <workdir>/checkpoints/<step>/{state,data,meta}.

A save is written to `<step>.orbax-checkpoint-tmp` and renamed when complete,
so a process killed inside a save leaves no step directory and the next start
restores the previous complete one (`latest_step` never sees the temporary).
The data item is grain's iterator state (one JSON per process); the meta item
records the network version (`vdm.config.migrations.NETWORK_VERSION`), which `restore`
checks: parameters of another version have the same shapes but meant another
function, and a CRC-32 of every array of the state as it was saved.

A checkpoint is *intact* when orbax finalised it (the step directory exists: a
killed save leaves only a temporary), every item restores without error, and
every restored array has the CRC-32 recorded at save time (orbax itself does
not notice garbled array bytes: the values would silently change). `restore`
raises `DamagedCheckpoint` for any other; training resumes from the newest
intact step (`restore_newest_intact`), moving damaged ones to
`<workdir>/damaged_checkpoints/`. A workdir's other files (config.json,
results.json) are `vdm.training.workdirs`.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
import zlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vdm.config.migrations import NETWORK_VERSION, checkpoint_network_version
from vdm.errors import CheckpointError


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


class DamagedCheckpoint(CheckpointError):
    """A checkpoint step that orbax cannot restore, or whose arrays do not match the CRC-32 recorded at save time."""

    def __init__(self, directory, step: int, reason: str):
        self.step, self.reason = int(step), reason
        super().__init__(f"checkpoint {directory}/{step} is damaged ({reason})")


def _path_name(path) -> str:
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    return "/".join(name(k) for k in path)


def _host_bytes(x) -> bytes | None:
    """The bytes of an array as the host sees it (None for one no process holds whole, e.g. sharded over hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if not x.is_fully_replicated:
            return None
        x = x.addressable_data(0)
    return np.ascontiguousarray(np.asarray(x)).tobytes()


def checksums(state) -> dict:
    """{leaf path: CRC-32 of its bytes, 8 hex digits} for every array of `state` the host holds whole."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        data = _host_bytes(leaf)
        if data is not None:
            out[_path_name(path)] = f"{zlib.crc32(data):08x}"
    return out


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator=None, wait: bool = True) -> None:
    """Saves state (and the grain iterator's position) at `step`, with the CRC-32 of every array in the meta item;
    CheckpointError if the disk is full."""
    meta = {"network_version": NETWORK_VERSION, "crc32": checksums(state)}
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
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
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): tuple(leaf.shape) for path, leaf in leaves}


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


def _meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The meta item of a step ({} for checkpoints written before it existed, `vdm.config.migrations`);
    DamagedCheckpoint if unreadable."""
    if not os.path.isdir(os.path.join(str(manager.directory), str(step), "meta")):
        return {}
    try:
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        int(meta["network_version"])
    except Exception as e:  # noqa: BLE001  (orbax / json errors of a half-written or garbled file)
        raise DamagedCheckpoint(manager.directory, step, f"its meta item: {_one_line(e)}") from None
    return meta


def _one_line(e: BaseException) -> str:
    """The innermost cause of an orbax / tensorstore error, on one line (their messages carry whole specs)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = " ".join(str(e).split()).split(" [tensorstore_spec")[0].split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text[:240]}{'...' if len(text) > 240 else ''}"


def stored_network_version(manager: ocp.CheckpointManager, step: int) -> int | None:
    """The network version a checkpoint recorded; None for checkpoints written before versions were recorded."""
    meta = _meta(manager, step)
    return int(meta["network_version"]) if meta else None


def check_network_version(manager: ocp.CheckpointManager, step: int, model, fallback: int | None = None) -> None:
    """CheckpointError if the checkpoint's network version meant another function than `model`'s network.

    fallback: the version to assume where the checkpoint recorded none (its workdir's
    config.json, `vdm.training.workdirs.recorded_network_version`); None: the current one
    (`vdm.config.migrations.checkpoint_network_version`).
    """
    stored = checkpoint_network_version(stored_network_version(manager, step), fallback)
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
    DamagedCheckpoint if the step is not intact (see the module docstring).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {manager.directory}")
    if step not in manager.all_steps():
        raise CheckpointError(f"no checkpoint for step {step} in {manager.directory}; it has {manager.all_steps()}")
    try:
        check_compatible(manager, step, abstract_state)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  (the array metadata cannot be read)
        raise DamagedCheckpoint(manager.directory, step, f"its array metadata: {_one_line(e)}") from None
    meta = _meta(manager, step)
    if model is not None:
        check_network_version(manager, step, model, fallback_version)
    replicated = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("data",)), jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or replicated),
        abstract_state)
    args = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        state = manager.restore(step, args=ocp.args.Composite(**args))["state"]
    except Exception as e:  # noqa: BLE001  (orbax, tensorstore and json errors of missing, cut or garbled files)
        raise DamagedCheckpoint(manager.directory, step, _one_line(e)) from None
    recorded = meta.get("crc32", {})  # none in checkpoints written before the checksums (`vdm.config.migrations`)
    for name, crc in checksums(state).items():
        if name in recorded and recorded[name] != crc:
            raise DamagedCheckpoint(manager.directory, step, f"array {name} does not match the CRC-32 recorded "
                                                             f"when it was saved")
    return state


def intact_steps(manager: ocp.CheckpointManager, abstract_state, skip=()) -> list[int]:
    """The steps (other than `skip`) that restore and match their checksums: each is read in full."""
    steps = []
    for step in manager.all_steps():
        if step in skip:
            continue
        try:
            restore(manager, abstract_state, step)
        except DamagedCheckpoint:
            continue
        steps.append(int(step))
    return sorted(steps)


def restore_newest_intact(manager: ocp.CheckpointManager, abstract_state, data_iterator=None, model=None,
                          fallback_version: int | None = None):
    """(state, step) of the newest intact checkpoint, (None, None) if there is none; for resuming training.

    Each damaged newer step is moved to <workdir>/damaged_checkpoints/<step> (not deleted: the run will write that
    step again) and named in one line on stderr.
    """
    while True:
        step = manager.latest_step()
        if step is None:
            return None, None
        try:
            return restore(manager, abstract_state, step, data_iterator, model, fallback_version), step
        except DamagedCheckpoint as e:
            moved = _move_aside(manager, step)
            older = [s for s in manager.all_steps() if s < step]
            then = f"resuming from step {max(older)}" if older else "no older checkpoint: training starts again"
            if jax.process_index() == 0:
                print(f"vdm: {e}; moved to {moved}; {then}", file=sys.stderr, flush=True)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Moves a damaged step out of the checkpoint directory (process 0; the others wait) and returns where."""
    directory = str(manager.directory)
    target = os.path.join(os.path.dirname(directory), "damaged_checkpoints", str(step))
    suffix = 1
    while os.path.exists(target):
        target = os.path.join(os.path.dirname(directory), "damaged_checkpoints", f"{step}.{suffix}")
        suffix += 1
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(directory, str(step)), target)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"vdm_move_damaged_{step}")
    manager.reload()
    return target
