"""The training loop: `train_and_evaluate(config, workdir)`, behind `python -m vdm.main` (--mode=train).

Started again with the same command, an unfinished run resumes from its latest
complete checkpoint (state + data position) and reaches the same parameters as
an uninterrupted run; a finished one just prints its result. Each compiled call
runs `training.steps_per_call` optimizer steps; after it the periodic actions
fall due by `every(n, step)`: a log line every `training.log_every` steps, an
evaluation with pictures and a checkpoint every `training.eval_every`, a
checkpoint every `checkpoint.every_steps` (or `checkpoint.every_minutes`).
SIGTERM / SIGINT finish the current call, write a checkpoint and exit with
code 75 (`vdm.errors.PREEMPTED_EXIT_CODE`).
"""

from __future__ import annotations

import math
import os
import sys
import time

import jax
import numpy as np

from vdm.config import migrations
from vdm.data import pipeline
from vdm.errors import NonFiniteLoss
from vdm.training import checkpoint, distributed, outputs, workdirs
from vdm.training.evaluation import final_evaluation, test_elbo
from vdm.training.generation import write_pictures
from vdm.training.preemption import PreemptionGuard
from vdm.training.run import Run, num_parameters
from vdm.training.steps import make_train_step
from vdm.training.workdirs import check_same_config, check_workdir, read_results, result_line, write_config


def every(n: int, step: int) -> bool:
    """True when `step` is a multiple of `n`: when a periodic action falls due (never for n <= 0)."""
    return n > 0 and step % n == 0


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming if the workdir has a checkpoint), evaluates the EMA parameters, writes results.json.

    Returns results.json's contents. The last line printed is `test_bpd=<value> test_bpd_stderr=<s.e.> results=<path>`.
    """
    check_workdir(workdir)
    check_same_config(config, workdir)
    finished = read_results(workdir)
    if finished is not None:
        print(f"vdm: {workdir} already finished (--mode=eval evaluates it again)\n"
              + result_line(finished, os.path.join(workdir, "results.json")), flush=True)
        return finished
    t = config.training
    training = _Training(Run(config, workdir))
    with PreemptionGuard() as guard:
        while training.step < t.num_steps:
            training.train_call()
            out_of_time, stop, save_due = training.flags(guard)
            last = training.step == t.num_steps
            log_due = every(t.log_every, training.step) or last or out_of_time
            eval_due = every(t.eval_every, training.step) and not last and not out_of_time
            if log_due or eval_due or save_due or stop:
                training.check_finite()  # nothing is logged or saved after a bad step
            if log_due:
                training.log()
            if eval_due:
                training.evaluate()
                training.save()
            elif save_due:
                training.save()
            if stop:
                training.preempted(guard)
            if out_of_time:
                training.bar.write(f"training.max_seconds={t.max_seconds:g} reached at step {training.step}; evaluating")
                break
        train_seconds = training.finish()
        guard.checkpointed = True  # from here on a signal stops at once: the final state is saved
        results, path = final_evaluation(training.run, training.state, training.test, train_seconds)
    training.writer.write(training.step, "test", {k: v for k, v in results.items() if k.startswith("test_")})
    training.writer.close()
    if training.run.main:
        print(result_line(results, path), flush=True)
    return results


class _Training:
    """The loop's state: train state, data position, checkpoints, metrics file, progress bar and clocks."""

    def __init__(self, run: Run):
        config = run.config
        self.run, self.t, self.c = run, config.training, config.checkpoint
        self.iterator = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
        self.test = run.test_split()
        self.manager = run.manager()
        self.state, resumed = run.resume(self.iterator.iterator, self.manager)
        if self.state is None:  # a fresh start (a damaged step may have moved the iterator: start it again)
            self.iterator = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
            self.state = run.fresh_state()
        self.step = int(distributed.to_host(self.state.step))
        objective_version = (migrations.OBJECTIVE_VERSION if resumed is None
                             else workdirs.check_training_resumes(config, run.workdir, self.step))
        self.writer = outputs.MetricsWriter(run.workdir, enabled=run.main)
        if run.main:
            self.writer.rewind(self.step)  # reads metrics.jsonl first: a damaged one stops the run before any write
            write_config(config, run.workdir, objective_version)
            print(_header(run, self.state, resumed), flush=True)
        self.train_step = make_train_step(run.model, run.tx, run.lr_schedule, config.optim.ema_decay, run.mesh,
                                          donate=self.t.donate_state)
        from tqdm.auto import tqdm

        interactive = sys.stderr.isatty()  # in a log file, redraw every 30 s instead of every 2 s
        self.bar = tqdm(total=self.t.num_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                        mininterval=2.0 if interactive else 30.0, disable=not run.main)
        now = time.time()
        self.start = now - self.writer.last_value("train", "train_seconds", 0.0)  # max_seconds counts across resumes
        self.pending = []  # the metrics of every call since the last log line, on the devices
        self.fetched = {}  # the same, on the host: fetched once, when a log, eval or checkpoint needs them
        self.last_log_step, self.last_log_time = self.step, now
        self.last_saved, self.last_save_time = self.step, now

    def train_call(self) -> None:
        """Dispatches one compiled call of `steps_per_call` steps; its metrics stay on the devices.

        Nothing here waits for the devices: the host prepares the next batches while
        they compute, and the metrics reach the host once per log line (`host_metrics`).
        """
        k = self.t.steps_per_call
        batches = distributed.global_batch(self.iterator.next(k), self.run.mesh, leading_axes=1)
        self.state, metrics = self.train_step(self.state, batches, self.run.keys["train"])
        self.step += k
        self.pending.append(metrics)
        self.bar.update(k)

    def host_metrics(self) -> dict:
        """The metrics of every step since the last log line, [steps] per name, on the host (one fetch)."""
        count = sum(len(m["nonfinite"]) for m in self.pending)
        if self.pending and len(self.fetched.get("nonfinite", ())) != count:
            stacked = jax.tree.map(lambda *leaves: jax.numpy.concatenate(leaves), *self.pending)
            self.fetched = {k: distributed.to_host(v) for k, v in stacked.items()}
        return self.fetched

    def flags(self, guard) -> tuple[bool, bool, bool]:
        """(out of time, stop requested, checkpoint due), the same on every process."""
        now = time.time()
        minutes = self.c.every_minutes and now - self.last_save_time >= 60 * self.c.every_minutes
        out_of_time, stop, save_due = distributed.any_process(
            self.t.max_seconds and now - self.start >= self.t.max_seconds, guard.requested,
            every(self.c.every_steps, self.step) or minutes)
        return out_of_time, stop, save_due

    def check_finite(self) -> None:
        """NonFiniteLoss naming the step if a step since the last log line was rejected and training.on_nonfinite = 'stop'."""
        if not self.pending:
            return
        rejected = self.host_metrics()["nonfinite"]
        first = self.step - len(rejected)
        if rejected.any() and self.t.on_nonfinite == "stop":
            raise NonFiniteLoss(
                f"step {first + int(np.argmax(rejected))} gave a non-finite loss or gradient; its update was rejected "
                f"and the run stopped. Last good checkpoint: step {self.manager.latest_step()} in "
                f"{self.manager.directory}. Lower optim.learning_rate, or set --config.training.on_nonfinite=skip "
                "to skip such steps")

    def log(self) -> None:
        """A metrics.jsonl row of the means since the last one, and the progress bar's figures."""
        means = _mean_metrics(dict(self.host_metrics()))
        now = time.time()
        means["steps_per_sec"] = (self.step - self.last_log_step) / (now - self.last_log_time)
        means["train_seconds"] = now - self.start
        self.last_log_step, self.last_log_time, self.pending, self.fetched = self.step, now, [], {}
        self.writer.write(self.step, "train", means)
        if math.isfinite(means["bpd"]):
            self.bar.set_postfix(bpd=f"{means['bpd']:.3f}", g0=f"{means['gamma_0']:.2f}", g1=f"{means['gamma_1']:.2f}")

    def evaluate(self) -> None:
        """Test bits/dim with the EMA parameters, one repeat of the estimator (metrics.jsonl, a line), and a grid."""
        run, params = self.run, self.state.ema_params
        res = test_elbo(run, params, self.test, jax.random.fold_in(run.keys["eval"], self.step), repeats=1)
        self.writer.write(self.step, "eval", res)
        write_pictures(run, params, f"step{self.step}", run.keys["sample"],
                       min(outputs.GRID_MAX_IMAGES, run.config.eval.num_samples))
        name = "bpd" if "bpd" in res else "bpd_conditional"
        self.bar.write(f"step {self.step}: test {name} {res[name]:.4f} ± {res[name + '_stderr']:.4f} (EMA, 1 repeat)")

    def save(self) -> None:
        checkpoint.save(self.manager, self.step, self.state, self.iterator.iterator)
        self.last_saved, self.last_save_time = self.step, time.time()

    def preempted(self, guard) -> None:
        """SIGTERM / SIGINT: a checkpoint of this step, then `Preempted` (exit 75)."""
        if self.last_saved != self.step:
            self.save()
        self.bar.close()
        guard.exit(f"{guard.signal_name or 'signal on another process'} at step {self.step}: checkpoint written to "
                   f"{self.manager.directory}; run the same command to resume")

    def finish(self) -> float:
        """Closes the bar, checkpoints the final state; returns the training seconds (across resumes)."""
        self.bar.close()
        train_seconds = time.time() - self.start
        if self.manager.latest_step() != self.step:
            self.save()
        return train_seconds


def _header(run: Run, state, resumed) -> str:
    c, t = run.config, run.config.training
    return (f"vdm: {c.data.name} {tuple(c.data.image_shape)} V={c.data.vocab_size}, "
            f"U-Net {c.model.channels} ch x {c.model.num_blocks} blocks, "
            f"{num_parameters(state.params):,} parameters, {t.num_steps} steps of batch {t.batch_size} "
            f"on {run.mesh.devices.size} {jax.default_backend()} device(s) in {jax.process_count()} process(es)"
            + (f"; resumed from step {resumed}" if resumed is not None else ""))


def _mean_metrics(cat: dict) -> dict:
    """Means over the finite values of each metric ({name: [steps]}), plus the number of rejected steps."""
    ok = cat.pop("nonfinite") == 0
    means = {k: float(np.mean(v[ok])) if ok.any() else float("nan") for k, v in cat.items()}
    means["rejected_steps"] = float((~ok).sum())
    return means
