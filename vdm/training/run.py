"""What every mode of `python -m vdm.main` needs: a `Run` of a config in a workdir.

A run lives in its workdir and is finished when `results.json` exists. `Run`
holds the validated config, the model, the optimizer, the device mesh, the
run's random keys and the test split, and makes its train state: fresh from the
init key, or restored from a checkpoint. The training loop is
`vdm.training.loop`; evaluation and sampling of a run are
`vdm.training.evaluation` and `vdm.training.generation`.
"""

from __future__ import annotations

import functools

import jax

from vdm.config.validation import validate
from vdm.data import pipeline
from vdm.data.datasets import Source
from vdm.errors import CheckpointError
from vdm.model import VDM
from vdm.training import checkpoint, distributed, workdirs
from vdm.training.optim import make_optimizer
from vdm.core.elbo_estimator import ElboEstimator
from vdm.training.steps import create_train_state, make_eval_step

KEY_NAMES = ("init", "train", "eval", "sample", "final")


def run_keys(seed: int) -> dict:
    """The run's independent keys {'init', 'train', 'eval', 'sample', 'final'}: fold_in(key(seed), i)."""
    k = jax.random.key(seed)
    return {name: jax.random.fold_in(k, i) for i, name in enumerate(KEY_NAMES)}


def num_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


class Run:
    """A config in a workdir: model, optimizer, mesh, keys, test split, train states."""

    def __init__(self, config, workdir: str):
        validate(config)
        pipeline.check_config(config)
        self.config, self.workdir = config, workdir
        distributed.check_cpu_devices(config.cpu.devices)
        self.mesh = distributed.data_mesh()
        distributed.check_batch_size(config.training.batch_size, self.mesh)
        distributed.check_batch_size(config.eval.batch_size, self.mesh, "eval.batch_size")
        distributed.check_batch_size(config.eval.num_samples, self.mesh, "eval.num_samples")
        self.model = VDM.from_config(config)
        self.tx, self.lr_schedule = make_optimizer(
            config.optim, config.training.num_steps,
            clip_interior_apart=config.schedule.interior_objective == "variance")
        self.keys = run_keys(config.training.seed)
        self.main = distributed.is_main_process()
        self.repl = distributed.replicated(self.mesh)

    @functools.cached_property
    def eval_step(self):
        return make_eval_step(self.model, self.mesh, self.config.eval.matmul_precision, self.estimator)

    @property
    def estimator(self) -> ElboEstimator:
        """How test bits/dim are estimated (the config's eval.points_per_example, time_density, num_repeats)."""
        return ElboEstimator.from_config(self.config.eval)

    def test_split(self) -> pipeline.Split:
        d = self.config.data
        arrays = Source(d.name, "test", d.data_dir or None).to_numpy()
        pipeline.check_values(arrays["images"], d.vocab_size, f"{d.name} test split")
        return pipeline.Split(arrays["images"], arrays["labels"])

    def abstract_state(self):
        """The train state's shapes and dtypes, replicated over the mesh (what a checkpoint restores onto)."""
        return workdirs.abstract_train_state(self.model, self.tx, self.repl)

    def fresh_state(self):
        init = jax.jit(lambda k: create_train_state(self.model, self.tx, k), out_shardings=self.repl)
        return init(self.keys["init"])

    def manager(self):
        return checkpoint.make_manager(self.workdir, self.config.checkpoint.max_to_keep)

    def restore(self, step=None, data_iterator=None, manager=None):
        """The train state of a checkpoint (default: the latest complete one); the data position too if given.

        `workdirs.restore_train_state`, as `vdm.load_run`; CheckpointError naming the intact steps if this one
        is damaged (`checkpoint.DamagedCheckpoint`).
        """
        manager = manager or self.manager()
        try:
            return workdirs.restore_train_state(self.workdir, self.model, self.abstract_state(), step, data_iterator,
                                                manager)
        except checkpoint.DamagedCheckpoint as e:
            intact = checkpoint.intact_steps(manager, self.abstract_state(), skip=(e.step,))
            hint = (f"intact steps: {', '.join(map(str, intact))} (--step=N uses one; rerunning training resumes "
                    f"from the newest)" if intact else "no other intact checkpoint")
            raise CheckpointError(f"{e}; {hint}") from None

    def resume(self, data_iterator, manager):
        """(state, step) of the newest intact checkpoint, moving damaged newer ones aside; (None, None) if none."""
        return checkpoint.restore_newest_intact(manager, self.abstract_state(), data_iterator, model=self.model,
                                                fallback_version=workdirs.recorded_network_version(self.workdir))
