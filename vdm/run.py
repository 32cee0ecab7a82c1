"""The training loop and the eval / sample entry points behind `python -m vdm.main`.

A run lives in its workdir and is finished when `results.json` exists. Started
again with the same command, an unfinished run resumes from its latest complete
checkpoint (state + data position) and reaches the same parameters as an
uninterrupted run; a finished one just prints its result. SIGTERM / SIGINT
finish the current call, write a checkpoint and exit with code 75
(`vdm.errors.PREEMPTED_EXIT_CODE`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checkpoint, data, distributed, outputs
from vdm.config_validation import validate
from vdm.datasets import Source
from vdm.errors import ConfigError, NonFiniteLoss, WorkdirError
from vdm.model import VDM
from vdm.optim import make_optimizer
from vdm.preemption import PreemptionGuard
from vdm.train import MC_STDERR_NOTE, STDERR_NOTE, create_train_state, evaluate, generate, make_eval_step, make_train_step


def _keys(seed: int):
    k = jax.random.key(seed)
    return {name: jax.random.fold_in(k, i) for i, name in enumerate(("init", "train", "eval", "sample", "final"))}


def num_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


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


class _Run:
    """What every mode needs: validated config, model, optimizer, mesh, test split."""

    def __init__(self, config, workdir: str):
        validate(config)
        data.check_config(config)
        self.config, self.workdir = config, workdir
        distributed.check_cpu_devices(config.cpu.devices)
        self.mesh = distributed.data_mesh()
        distributed.check_batch_size(config.training.batch_size, self.mesh)
        distributed.check_batch_size(config.eval.batch_size, self.mesh, "eval.batch_size")
        distributed.check_batch_size(config.eval.num_samples, self.mesh, "eval.num_samples")
        self.model = VDM.from_config(config)
        self.tx, self.lr_schedule = make_optimizer(config.optim, config.training.num_steps)
        self.keys = _keys(config.training.seed)
        self.main = distributed.is_main_process()
        self.repl = distributed.replicated(self.mesh)

    @functools.cached_property
    def eval_step(self):
        return make_eval_step(self.model, self.mesh)

    def test_split(self) -> data.Split:
        arrays = Source(self.config.data.name, "test", self.config.data.data_dir or None).to_numpy()
        data.check_values(arrays["images"], self.config.data.vocab_size, f"{self.config.data.name} test split")
        return data.Split(arrays["images"], arrays["labels"])

    def abstract_state(self):
        shapes = jax.eval_shape(lambda: create_train_state(self.model, self.tx, jax.random.key(0)))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.repl), shapes)

    def fresh_state(self):
        init = jax.jit(lambda k: create_train_state(self.model, self.tx, k), out_shardings=self.repl)
        return init(self.keys["init"])

    def restore(self, step=None, data_iterator=None):
        manager = checkpoint.make_manager(self.workdir, self.config.checkpoint.max_to_keep)
        return checkpoint.restore(manager, self.abstract_state(), step, data_iterator)

    def generate(self, params, key, num_samples=None):
        c = self.config.eval
        return distributed.to_host(generate(self.model, params, key, num_samples or c.num_samples, c.sampler_steps,
                                            sampler=c.sampler, mesh=self.mesh))

    def write_pictures(self, params, tag, key, num_samples=None):
        samples = self.generate(params, key, num_samples)
        if self.main:
            outputs.save_image_grid(samples, self.model.vocab_size, os.path.join(self.workdir, f"samples_{tag}.png"))
            outputs.plot_schedule(self.model.gamma_fn(params), os.path.join(self.workdir, f"log_snr_{tag}.png"))
        return samples

    def evaluate(self, params, test, key, num_repeats: int = 1) -> dict:
        """Test ELBO terms, each under a name that says which likelihood it bounds.

        Unconditional models: 'bpd', its terms and errors (-ELBO of log p(x)).
        Class-conditional models: the same names with '_conditional' (log p(x | y),
        true labels), and, if they were trained with label dropout, the plain names
        for the null label (log p(x)). 'bpd' always means log p(x).
        """
        model = self.model

        def on(split):
            return evaluate(self.eval_step, params, split, self.config.eval.batch_size, key, num_repeats, self.mesh)

        res = on(test)
        if not model.class_conditional:
            return res
        out = {_conditional_name(k): v for k, v in res.items()}
        if model.label_dropout > 0:
            out.update(on(data.Split(test.images, np.full_like(test.labels, model.num_classes))))
        return out

    def final_evaluation(self, state, test, train_seconds=None):
        """Test bits/dim over the whole split with EMA parameters -> results.json; samples -> PNG + npz."""
        config, model = self.config, self.model
        res = self.evaluate(state.ema_params, test, self.keys["final"], config.eval.num_repeats)
        samples = self.write_pictures(state.ema_params, "final", self.keys["sample"])
        gamma = model.gamma_fn(state.ema_params)(jnp.array([0.0, 1.0]))
        results = {
            **{f"test_{k}": v for k, v in res.items()},
            "bpd_means": ("-ELBO of log p(x | y) in bits/dim ('_conditional'); of log p(x) (null label)"
                               if model.class_conditional else "-ELBO of log p(x) in bits/dim"),
            "parameters": "EMA parameters (decay %g, warmed up)" % config.optim.ema_decay,
            "stderr": STDERR_NOTE,
            "mc_stderr": MC_STDERR_NOTE + " (%d repeats)" % config.eval.num_repeats,
            "num_test_examples": len(test),
            "step": int(distributed.to_host(state.step)),
            "num_parameters": num_parameters(state.params),
            "train_seconds": train_seconds,
            "gamma_0": float(distributed.to_host(gamma)[0]),
            "gamma_1": float(distributed.to_host(gamma)[1]),
            "samples": "samples_final.png (first %d), samples.npz (all %d; %s, --steps %d)" % (
                min(outputs.GRID_MAX_IMAGES, config.eval.num_samples), config.eval.num_samples,
                config.eval.sampler, config.eval.sampler_steps),
        }
        path = os.path.join(self.workdir, "results.json")
        if self.main:
            np.savez_compressed(os.path.join(self.workdir, "samples.npz"), samples=samples)
            outputs.write_json(path, results)
        return results, path


def _conditional_name(key: str) -> str:
    """'bpd_prior_stderr' -> 'bpd_prior_conditional_stderr' (the suffix goes before the error's name)."""
    for tail in ("_mc_stderr", "_stderr"):
        if key.endswith(tail):
            return key[: -len(tail)] + "_conditional" + tail
    return key + "_conditional"


def result_line(results: dict, path: str) -> str:
    """The last line a run prints: `test_bpd=<v> results=<path>` (test_bpd_conditional= where only that exists)."""
    name = "test_bpd" if "test_bpd" in results else "test_bpd_conditional"
    return f"{name}={results[name]:.4f} results={os.path.abspath(path)}"


def check_same_config(config, workdir: str) -> None:
    """WorkdirError if `workdir` holds a run of a config that computes something else than `config`.

    Keys in `checkpoint.RERUN_FREE_KEYS` (wall-clock cap, logging, checkpoint
    cadence, eval batch size) may differ. Nothing is written.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return
    differences = checkpoint.config_differences(config, checkpoint.load_config(workdir))
    if differences:
        raise WorkdirError(
            f"{workdir} holds a run of another config: {checkpoint.describe_differences(differences)}; nothing "
            f"was changed. Use a new --workdir, or the config in {os.path.join(workdir, 'config.json')}")


def stored_config(config, workdir: str):
    """For --mode=eval|sample|likelihood: the workdir's own config (the model it trained), with `config`'s eval keys.

    Without a config.json in the workdir, `config` itself.
    """
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return config
    stored = checkpoint.load_config(workdir)
    stored.eval = config.eval
    differences = [d for d in checkpoint.config_differences(config, stored) if not d[0].startswith("eval.")]
    if differences and distributed.is_main_process():
        print(f"vdm: using the model of {workdir}/config.json; --config differs in "
              f"{checkpoint.describe_differences(differences)}", file=sys.stderr, flush=True)
    return stored


def _write_config(run: _Run) -> None:
    outputs.write_json(os.path.join(run.workdir, "config.json"), {"config": run.config.to_dict(), **outputs.run_metadata()})


def _mean_metrics(pending) -> dict:
    """Means over the finite values of each metric, plus the number of rejected steps."""
    cat = {k: np.concatenate([distributed.to_host(m[k]) for m in pending]) for k in pending[0]}
    ok = cat.pop("nonfinite") == 0
    means = {k: float(np.mean(v[ok])) if ok.any() else float("nan") for k, v in cat.items()}
    means["rejected_steps"] = float((~ok).sum())
    return means


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming if the workdir has a checkpoint), evaluates the EMA parameters, writes results.json.

    Returns results.json's contents. The last line printed is `test_bpd=<value> results=<path>`.
    """
    check_workdir(workdir)
    check_same_config(config, workdir)
    results_path = os.path.join(workdir, "results.json")
    if os.path.exists(results_path):
        with open(results_path) as f:
            results = json.load(f)
        print(f"vdm: {workdir} already finished (delete results.json to evaluate again)\n"
              + result_line(results, results_path), flush=True)
        return results
    run = _Run(config, workdir)
    t, c = config.training, config.checkpoint
    iterator = data.make_train_iterator(config, jax.process_index(), jax.process_count())
    test = run.test_split()
    manager = checkpoint.make_manager(workdir, c.max_to_keep)
    resumed = manager.latest_step()
    if resumed is not None:
        state = checkpoint.restore(manager, run.abstract_state(), resumed, iterator.iterator)
    else:
        state = run.fresh_state()
    step = int(distributed.to_host(state.step))
    writer = outputs.MetricsWriter(workdir, enabled=run.main)
    if run.main:
        _write_config(run)
        writer.rewind(step)
        print(f"vdm: {config.data.name} {tuple(config.data.image_shape)} V={config.data.vocab_size}, "
              f"U-Net {config.model.channels} ch x {config.model.num_blocks} blocks, "
              f"{num_parameters(state.params):,} parameters, {t.num_steps} steps of batch {t.batch_size} "
              f"on {run.mesh.devices.size} {jax.default_backend()} device(s) in {jax.process_count()} process(es)"
              + (f"; resumed from step {step}" if resumed is not None else ""), flush=True)
    train_step = make_train_step(run.model, run.tx, run.lr_schedule, config.optim.ema_decay, run.mesh,
                                 donate=config.training.donate_state)

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()  # in a log file, redraw every 30 s instead of every 2 s
    bar = tqdm(total=t.num_steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               mininterval=2.0 if interactive else 30.0, disable=not run.main)
    start = last_time = last_save_time = time.time()
    start -= writer.last_value("train", "train_seconds", 0.0)  # training.max_seconds counts across resumes
    last_step, last_saved, pending = step, step, []

    def save(at):
        nonlocal last_saved, last_save_time
        checkpoint.save(manager, at, state, iterator.iterator)
        last_saved, last_save_time = at, time.time()

    def check_finite(metrics, first):
        rejected = distributed.to_host(metrics["nonfinite"])
        if rejected.any() and t.on_nonfinite == "stop":
            raise NonFiniteLoss(
                f"step {first + int(np.argmax(rejected))} gave a non-finite loss or gradient; its update was rejected "
                f"and the run stopped. Last good checkpoint: step {manager.latest_step()} in {manager.directory}. "
                "Lower optim.learning_rate, or set --config.training.on_nonfinite=skip to skip such steps")

    with PreemptionGuard() as guard:
        while step < t.num_steps:
            local = iterator.next(t.steps_per_call)
            batches = distributed.global_batch(local, run.mesh, leading_axes=1)
            if pending:  # the previous call: waiting for it keeps exactly one call in flight
                check_finite(pending[-1], step - t.steps_per_call)
            state, metrics = train_step(state, batches, run.keys["train"])
            step += t.steps_per_call
            pending.append(metrics)
            bar.update(t.steps_per_call)
            out_of_time, stop, save_due = distributed.any_process(
                t.max_seconds and time.time() - start >= t.max_seconds,
                guard.requested,
                step - last_saved >= c.every_steps or (c.every_minutes and time.time() - last_save_time >= 60 * c.every_minutes),
            )
            if step % t.log_every == 0 or step == t.num_steps or out_of_time or save_due or stop or step % t.eval_every == 0:
                check_finite(metrics, step - t.steps_per_call)  # nothing is logged or saved after a bad step
            if step % t.log_every == 0 or step == t.num_steps or out_of_time:
                means = _mean_metrics(pending)
                now = time.time()
                means["steps_per_sec"] = (step - last_step) / (now - last_time)
                means["train_seconds"] = now - start
                last_step, last_time, pending = step, now, []
                writer.write(step, "train", means)
                if math.isfinite(means["bpd"]):
                    bar.set_postfix(bpd=f"{means['bpd']:.3f}", g0=f"{means['gamma_0']:.2f}", g1=f"{means['gamma_1']:.2f}")
            if step % t.eval_every == 0 and step < t.num_steps and not out_of_time:
                res = run.evaluate(state.ema_params, test, jax.random.fold_in(run.keys["eval"], step))
                writer.write(step, "eval", res)
                run.write_pictures(state.ema_params, f"step{step}", run.keys["sample"],
                                   min(outputs.GRID_MAX_IMAGES, config.eval.num_samples))
                save(step)
                name = "bpd" if "bpd" in res else "bpd_conditional"
                bar.write(f"step {step}: test {name} {res[name]:.4f} ± {res[name + '_stderr']:.4f} (EMA, 1 pass)")
            elif save_due:
                save(step)
            if stop:
                if last_saved != step:
                    save(step)
                bar.close()
                guard.exit(f"{guard.signal_name or 'signal on another process'} at step {step}: checkpoint written to {manager.directory}; "
                           "run the same command to resume")
            if out_of_time:
                bar.write(f"training.max_seconds={t.max_seconds:g} reached at step {step}; evaluating")
                break
        bar.close()
        train_seconds = time.time() - start
        if manager.latest_step() != step:
            save(step)
        guard.checkpointed = True  # from here on a signal stops at once: the final state is saved
        results, path = run.final_evaluation(state, test, train_seconds)
    writer.write(step, "test", {k: v for k, v in results.items() if k.startswith("test_")})
    writer.close()
    if run.main:
        print(result_line(results, path), flush=True)
    return results


def evaluate_run(config, workdir: str, step: int | None = None) -> dict:
    """Re-evaluates a checkpoint (default: latest) -> results.json."""
    run = _Run(config, workdir)
    state = run.restore(step)
    results, path = run.final_evaluation(state, run.test_split())
    if run.main:
        print(result_line(results, path), flush=True)
    return results


def sample_run(config, workdir: str, step: int | None = None, seed: int = 0, sampler: str = "ancestral",
               num_steps: int | None = None, guidance: float = 0.0, label: int = -1):
    """Samples from a checkpoint's EMA parameters -> samples_<sampler>.png and samples_<sampler>.npz.

    label: a class for every sample, or -1 for classes 0, 1, 2, ... in turn (class-conditional
    models; unconditional models ignore it); guidance: classifier-free weight w.
    """
    from vdm.sampling import SAMPLER_NOTES, SAMPLERS

    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler={sampler!r}; expected one of {list(SAMPLERS)}")
    run = _Run(config, workdir)
    state = run.restore(step)
    n, steps = config.eval.num_samples, num_steps or config.eval.sampler_steps
    labels = None
    if run.model.class_conditional:
        labels = np.arange(n) % run.model.num_classes if label < 0 else np.full(n, label)
        labels = jnp.asarray(labels, jnp.int32)
    elif guidance:
        raise ConfigError("--guidance needs a class-conditional model (model.class_conditional=True)")
    start = time.time()
    samples = distributed.to_host(generate(run.model, state.ema_params, jax.random.key(seed), n, steps, labels,
                                           sampler, float(guidance), run.mesh))
    seconds = time.time() - start
    tag = sampler + (f"_w{guidance:g}" if guidance else "")
    png = os.path.join(workdir, f"samples_{tag}.png")
    if run.main:
        outputs.save_image_grid(samples, run.model.vocab_size, png)
        np.savez_compressed(os.path.join(workdir, f"samples_{tag}.npz"), samples=samples,
                            labels=np.asarray(labels) if labels is not None else np.zeros(0))
        print(f"{SAMPLER_NOTES[sampler].replace('--steps', str(steps))}: {n} samples in {seconds:.1f} s "
              f"(compile included)\nsamples={os.path.abspath(png)}", flush=True)
    return samples


def likelihood_run(config, workdir: str, step: int | None = None, probe: str = "rademacher",
                   max_examples: int = 0, seed: int = 0) -> dict:
    """Test-split bits/dim through the probability-flow ODE (both dequantisations) next to the ELBO -> likelihood.json."""
    from vdm import likelihood

    run = _Run(config, workdir)
    state = run.restore(step)
    test = run.test_split()
    if max_examples:
        test = data.Split(test.images[:max_examples], test.labels[:max_examples])
    params, model = state.ema_params, run.model
    elbo = run.evaluate(params, test, run.keys["final"], config.eval.num_repeats)
    if "bpd" not in elbo:
        raise ConfigError("--mode=likelihood computes log p(x) through the ODE with the null label, which this "
                          "class-conditional model never learned (model.label_dropout = 0)")

    @functools.partial(jax.jit, static_argnums=2)
    def ode_bpd(x_int, key, dequantization):
        return likelihood.bits_per_dim(x_int, model.eps_hat_fn(params), model.gamma_fn(params), model.vocab_size,
                                       key, dequantization=dequantization, probe=probe)

    out = {"elbo_bpd": elbo["bpd"], "elbo_bpd_stderr": elbo["bpd_stderr"], "num_examples": len(test),
           "step": int(distributed.to_host(state.step)), "probe": probe,
           "elbo": "continuous-time ELBO (%d Monte-Carlo passes), EMA parameters" % config.eval.num_repeats,
           "stderr": STDERR_NOTE}
    for deq, note in likelihood.DEQUANTIZATIONS.items():
        start, values = time.time(), []
        for b, batch in enumerate(data.eval_batches(test, config.eval.batch_size)):
            n = int(batch["mask"].sum())
            key = jax.random.fold_in(jax.random.key(seed), b)
            values.append(np.asarray(ode_bpd(jnp.asarray(batch["images"]), key, deq))[:n])
        values = np.concatenate(values)
        out[f"ode_bpd_{deq}"] = float(values.mean())
        out[f"ode_bpd_{deq}_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values)))
        out[f"ode_{deq}_dequantization"] = note
        out[f"ode_{deq}_seconds"] = time.time() - start
    if run.main:
        outputs.write_json(os.path.join(workdir, "likelihood.json"), out)
        print(f"test bits/dim of log p(x) over {len(test)} examples (± standard error over examples):")
        print(f"  ELBO                        {out['elbo_bpd']:.4f} ± {out['elbo_bpd_stderr']:.4f}")
        for deq in likelihood.DEQUANTIZATIONS:
            print(f"  ODE, {deq:<11} dequant.  {out[f'ode_bpd_{deq}']:.4f} ± {out[f'ode_bpd_{deq}_stderr']:.4f}"
                  f"   ({out[f'ode_{deq}_dequantization']})")
        print(f"likelihood={os.path.abspath(os.path.join(workdir, 'likelihood.json'))}", flush=True)
    return out
