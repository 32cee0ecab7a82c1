"""A run's workdir as files: which config it trained, whether it is finished, and loading it back.

    <workdir>/config.json    the config the run trains, with package versions and the git commit
    <workdir>/results.json   written when the run is finished (`vdm.training.evaluation`)
    <workdir>/checkpoints/   train states and data positions (`vdm.training.checkpoint`)

A workdir answers only for the config it was trained with: `check_same_config`
stops a rerun of another config, and `stored_config` makes --mode=eval|sample|likelihood
evaluate the model the workdir trained. `load_run(workdir)` gives notebooks and
scripts the config, the model and its (EMA) parameters.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple

import jax
import ml_collections

from vdm.config import migrations
from vdm.config.validation import flatten
from vdm.errors import CheckpointError, WorkdirError
from vdm.model import VDM
from vdm.training import checkpoint, distributed, outputs
from vdm.training.optim import make_optimizer
from vdm.training.steps import create_train_state


def check_workdir(workdir: str) -> None:
    """WorkdirError unless workdir can be created and written."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror or e}); pass a writable --workdir") from None


CONFIG_JSON_REMEDY = ("it records the config this workdir was trained with: restore it from a copy of the workdir, "
                      "or start a new --workdir (nothing was changed)")


def recorded_network_version(workdir: str) -> int | None:
    """The network version of a workdir's run (`vdm.config.migrations.NETWORK_VERSIONS`); None without a config.json.

    config.json records it since 2026-12-02; an older one is dated (`vdm.config.migrations.network_version_of`).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    return migrations.network_version_of(outputs.read_json(path, CONFIG_JSON_REMEDY))


def recorded_objective_version(workdir: str) -> int | None:
    """The objective version of a workdir's run (`vdm.config.migrations.OBJECTIVE_VERSIONS`); None without a
    config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    return migrations.objective_version_of(outputs.read_json(path, CONFIG_JSON_REMEDY))


def check_training_resumes(config, workdir: str, step: int) -> int:
    """The objective version a run resumed at `step` goes on with; WorkdirError (one line) if its training, not
    finished at `step`, would continue under another loss (`vdm.config.migrations.objective_problem`)."""
    stored = recorded_objective_version(workdir)
    if stored is None:
        return migrations.OBJECTIVE_VERSION
    problem = migrations.objective_problem(stored, config.loss.weighting)
    if problem and step < config.training.num_steps:
        raise WorkdirError(f"{workdir} (step {step} of {config.training.num_steps}): {problem}")
    return stored


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config in <workdir>/config.json on today's schema; CheckpointError if there is none.

    Keys removed from the schema are dropped, keys that moved are mapped, keys added since take their
    defaults, and a version-1 run gets that version's model.norm_groups (`vdm.config.migrations.config_of_record`).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{path} not found: is {workdir} a vdm workdir?")
    record = outputs.read_json(path, CONFIG_JSON_REMEDY)
    if not isinstance(record.get("config"), dict):
        raise WorkdirError(f"{path} is damaged: it has no 'config' object; {CONFIG_JSON_REMEDY}")
    return migrations.config_of_record(record)


# Keys that may differ between runs of one workdir: they change neither what a run trains nor its checkpoints. The
# eval estimator's keys change only how the final ELBO is estimated: a finished run reports the results.json it wrote
# (which records its estimator), and `--mode=eval` evaluates again with the new ones.
RERUN_FREE_KEYS = frozenset({
    "training.max_seconds", "training.log_every", "training.donate_state", "eval.batch_size",
    "eval.num_repeats", "eval.points_per_example", "eval.time_density",
    "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.max_to_keep", "data.data_dir",
})


def config_differences(config, stored) -> list[tuple[str, object, object]]:
    """[(key, value in `config`, value in `stored`)] for every key that changes what a run computes.

    Both are ConfigDicts (`stored` typically `load_config(workdir)`); keys in
    RERUN_FREE_KEYS are not compared.
    """
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


def write_config(config, workdir: str, objective_version: int = migrations.OBJECTIVE_VERSION) -> None:
    """<workdir>/config.json: the config, the package versions, the git commit, the network version and the
    objective version of the training loss the run trained with (a resumed run keeps the one it had).

    An `imported_from` record already there (a run imported by `python -m vdm.import_official`) is kept.
    """
    path = os.path.join(workdir, "config.json")
    kept = {}
    if os.path.exists(path):
        kept = {k: v for k, v in outputs.read_json(path, CONFIG_JSON_REMEDY).items() if k == "imported_from"}
    outputs.write_json(path, {"config": config.to_dict(), **outputs.run_metadata(),
                              "network_version": migrations.NETWORK_VERSION, "objective_version": objective_version,
                              **kept})


def check_same_config(config, workdir: str) -> None:
    """WorkdirError if `workdir` holds a run of a config that computes something else than `config`.

    Keys in `RERUN_FREE_KEYS` (wall-clock cap, logging, checkpoint
    cadence, eval batch size) may differ. Nothing is written.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    differences = config_differences(config, load_config(workdir))
    if differences:
        raise WorkdirError(
            f"{workdir} holds a run of another config: {describe_differences(differences)}; nothing "
            f"was changed. Use a new --workdir, or the config in {os.path.join(workdir, 'config.json')}")


def stored_config(config, workdir: str):
    """For --mode=eval|sample|likelihood: the workdir's own config (the model it trained), with `config`'s eval keys.

    Without a config.json in the workdir, `config` itself.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return config
    stored = load_config(workdir)
    stored.eval = config.eval
    differences = [d for d in config_differences(config, stored) if not d[0].startswith("eval.")]
    if differences and distributed.is_main_process():
        print(f"vdm: using the model of {workdir}/config.json; --config differs in "
              f"{describe_differences(differences)}", file=sys.stderr, flush=True)
    return stored


def read_results(workdir: str) -> dict | None:
    """results.json of a finished run, None while it is not finished."""
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    return outputs.read_json(path, f"it is rebuilt from the checkpoint: run --mode=eval with this --workdir (which "
                                   f"writes it again), or move it away and rerun the same command")


def result_line(results: dict, path: str) -> str:
    """The last line a run prints: `test_bpd=<v> test_bpd_stderr=<s.e.> results=<path>` (test_bpd_conditional=
    where only that exists; results.json says what each name means)."""
    name = "test_bpd" if "test_bpd" in results else "test_bpd_conditional"
    stderr = f" {name}_stderr={results[name + '_stderr']:.4f}" if name + "_stderr" in results else ""
    return f"{name}={results[name]:.4f}{stderr} results={os.path.abspath(path)}"


def abstract_train_state(model: VDM, tx, sharding=None):
    """The train state's shapes and dtypes for `model` and the optimizer `tx`: what a checkpoint restores onto.

    sharding: the layout to restore onto (`Run` replicates over its mesh); None: `checkpoint.restore`'s default,
    replicated over every device.
    """
    shapes = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0)))
    if sharding is None:
        return shapes
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_train_state(workdir: str, model: VDM, abstract_state, step: int | None = None, data_iterator=None,
                        manager=None):
    """The train state of a checkpoint of `workdir` (default: the latest complete one) onto `abstract_state`; the
    data position too if `data_iterator` is given. The one restore path of `Run.restore` and `load_run`.

    The checkpoint's network version is checked against `model` (config.json's where the checkpoint
    records none: `recorded_network_version`). Raises what `checkpoint.restore` raises (CheckpointError;
    DamagedCheckpoint, one of them, for a step that is not intact).
    """
    manager = manager or checkpoint.make_manager(workdir)
    return checkpoint.restore(manager, abstract_state, step, data_iterator, model=model,
                              fallback_version=recorded_network_version(workdir))


class LoadedRun(NamedTuple):
    """A trained run: its config, the VDM it builds, and the parameters of one checkpoint."""

    config: ml_collections.ConfigDict
    model: VDM
    params: dict


def load_run(workdir: str, step: int | None = None, ema: bool = True) -> LoadedRun:
    """(config, model, params) of a run: its config.json, the VDM it builds, the EMA (or raw) parameters.

    step: a checkpoint step (default: the latest complete one).
    """
    config = load_config(workdir)
    model = VDM.from_config(config)
    tx, _ = make_optimizer(config.optim, config.training.num_steps)
    state = restore_train_state(workdir, model, abstract_train_state(model, tx), step)
    return LoadedRun(config, model, state.ema_params if ema else state.params)
