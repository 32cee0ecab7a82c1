"""The training loop and the eval / sample entry points behind `python -m vdm.main`."""

from __future__ import annotations

import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import checkpoint, data, outputs
from vdm.config_validation import ConfigError, validate
from vdm.model import VDM
from vdm.optim import make_optimizer
from vdm.train import create_train_state, evaluate, generate, make_eval_step, make_train_step


def _keys(seed: int):
    k = jax.random.key(seed)
    return {name: jax.random.fold_in(k, i) for i, name in enumerate(("init", "train", "eval", "sample", "final"))}


def _load_data(config) -> data.Dataset:
    ds = data.load_dataset(config.data.name)
    if tuple(config.data.image_shape) != ds.image_shape:
        raise ConfigError(f"config key 'data.image_shape' = {tuple(config.data.image_shape)} but {ds.name} images are {ds.image_shape}")
    if config.data.vocab_size != ds.vocab_size:
        raise ConfigError(f"config key 'data.vocab_size' = {config.data.vocab_size} but {ds.name} has V = {ds.vocab_size}")
    return ds


def _setup(config):
    validate(config)
    ds = _load_data(config)
    model = VDM.from_config(config)
    tx, lr_schedule = make_optimizer(config.optim, config.training.num_steps)
    return ds, model, tx, lr_schedule


def num_parameters(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


def _write_pictures(model, params, workdir, tag, key, config):
    samples = np.asarray(generate(model, params, key, config.eval.num_samples, config.eval.sampler_steps))
    outputs.save_image_grid(samples, model.vocab_size, os.path.join(workdir, f"samples_{tag}.png"))
    outputs.plot_schedule(model.gamma_fn(params), os.path.join(workdir, f"log_snr_{tag}.png"))
    return samples


def final_evaluation(config, workdir, model, state, ds, keys, train_seconds=None):
    """Test bits/dim over the whole split with EMA parameters -> results.json; samples -> PNG + npz."""
    eval_step = make_eval_step(model)
    res = evaluate(eval_step, state.ema_params, ds.test, config.eval.batch_size, keys["final"], config.eval.num_repeats)
    samples = _write_pictures(model, state.ema_params, workdir, "final", keys["sample"], config)
    np.savez_compressed(os.path.join(workdir, "samples.npz"), samples=samples)
    results = {
        "test_bpd": res["bpd"],
        "test_bpd_stderr": res["bpd_stderr"],
        **{f"test_{k}": v for k, v in res.items() if k not in ("bpd", "bpd_stderr")},
        "parameters": "EMA parameters (decay %g, warmed up)" % config.optim.ema_decay,
        "stderr": "Monte-Carlo standard error over %d repeats of the whole test split" % config.eval.num_repeats,
        "num_test_examples": len(ds.test),
        "step": int(state.step),
        "num_parameters": num_parameters(state.params),
        "train_seconds": train_seconds,
        "gamma_0": float(model.gamma_fn(state.ema_params)(jnp.zeros(1))[0]),
        "gamma_1": float(model.gamma_fn(state.ema_params)(jnp.ones(1))[0]),
        "samples": "samples_final.png, samples.npz (ancestral, T=%d)" % config.eval.sampler_steps,
    }
    path = os.path.join(workdir, "results.json")
    outputs.write_json(path, results)
    return results, path


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains from the config, evaluates the EMA parameters on the test split, writes everything to workdir.

    Returns results.json's contents. The last line printed is
    `test_bpd=<value> results=<path>`.
    """
    ds, model, tx, lr_schedule = _setup(config)
    os.makedirs(workdir, exist_ok=True)
    outputs.write_json(os.path.join(workdir, "config.json"), {"config": config.to_dict(), **outputs.run_metadata()})
    t = config.training
    if t.num_steps % t.steps_per_call:
        raise ConfigError("config key 'training.num_steps' must be a multiple of 'training.steps_per_call'")
    keys = _keys(t.seed)
    state = create_train_state(model, tx, keys["init"])
    print(f"vdm: {ds.name} {ds.image_shape} V={ds.vocab_size}, {num_parameters(state.params):,} parameters, "
          f"{t.num_steps} steps of batch {t.batch_size}", flush=True)
    train_step = make_train_step(model, tx, lr_schedule, config.optim.ema_decay)
    eval_step = make_eval_step(model)
    writer = outputs.MetricsWriter(workdir)
    manager = checkpoint.make_manager(workdir)

    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()  # in a log file, redraw every 30 s instead of every 2 s
    bar = tqdm(total=t.num_steps, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0 if interactive else 30.0)
    start = last_time = time.time()
    step, last_step, pending = 0, 0, []
    while step < t.num_steps:
        batches = data.train_batches(ds.train, t.batch_size, t.seed, step, t.steps_per_call)
        if pending:  # keep one call in flight, so the progress bar counts finished steps
            jax.block_until_ready(pending[-1])
        state, metrics = train_step(state, batches, keys["train"])
        step += t.steps_per_call
        pending.append(metrics)
        bar.update(t.steps_per_call)
        out_of_time = t.max_seconds and time.time() - start >= t.max_seconds
        if step % t.log_every == 0 or step == t.num_steps or out_of_time:
            means = {k: float(np.mean(np.concatenate([np.asarray(m[k]) for m in pending]))) for k in pending[0]}
            now = time.time()
            means["steps_per_sec"] = (step - last_step) / (now - last_time)
            last_step, last_time, pending = step, now, []
            if not all(math.isfinite(v) for v in means.values()):
                raise FloatingPointError(f"non-finite training metrics at step {step}: {means}")
            writer.write(step, "train", means)
            bar.set_postfix(bpd=f"{means['bpd']:.3f}", g0=f"{means['gamma_0']:.2f}", g1=f"{means['gamma_1']:.2f}")
        if step % t.eval_every == 0 and step < t.num_steps and not out_of_time:
            res = evaluate(eval_step, state.ema_params, ds.test, config.eval.batch_size, jax.random.fold_in(keys["eval"], step))
            writer.write(step, "eval", {k: v for k, v in res.items()})
            _write_pictures(model, state.ema_params, workdir, f"step{step}", keys["sample"], config)
            checkpoint.save(manager, step, state)
            bar.write(f"step {step}: test bpd {res['bpd']:.4f} ± {res['bpd_stderr']:.4f} (EMA, 1 pass)")
        if out_of_time:
            bar.write(f"training.max_seconds={t.max_seconds:g} reached at step {step}; evaluating")
            break
    bar.close()
    train_seconds = time.time() - start
    checkpoint.save(manager, step, state)
    results, path = final_evaluation(config, workdir, model, state, ds, keys, train_seconds)
    writer.write(step, "test", {k: v for k, v in results.items() if k.startswith("test_")})
    writer.close()
    print(f"test_bpd={results['test_bpd']:.4f} results={os.path.abspath(path)}", flush=True)
    return results


def _restore(config, workdir, step=None):
    ds, model, tx, _ = _setup(config)
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.key(0)))
    state = checkpoint.restore(checkpoint.make_manager(workdir), abstract, step)
    return ds, model, state


def evaluate_run(config, workdir: str, step: int | None = None) -> dict:
    """Re-evaluates a checkpoint (default: latest) -> results.json."""
    ds, model, state = _restore(config, workdir, step)
    results, path = final_evaluation(config, workdir, model, state, ds, _keys(config.training.seed))
    print(f"test_bpd={results['test_bpd']:.4f} results={os.path.abspath(path)}", flush=True)
    return results


def sample_run(config, workdir: str, step: int | None = None, seed: int = 0):
    """Samples from a checkpoint's EMA parameters -> samples_sampled.png and samples_sampled.npz."""
    _, model, state = _restore(config, workdir, step)
    samples = np.asarray(generate(model, state.ema_params, jax.random.key(seed), config.eval.num_samples, config.eval.sampler_steps))
    png = os.path.join(workdir, "samples_sampled.png")
    outputs.save_image_grid(samples, model.vocab_size, png)
    np.savez_compressed(os.path.join(workdir, "samples_sampled.npz"), samples=samples)
    print(f"samples={os.path.abspath(png)}", flush=True)
    return samples
