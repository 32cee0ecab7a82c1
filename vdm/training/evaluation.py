"""Test bits/dim: the ELBO over a whole split, what a finished run reports, and the ODE likelihood.

    evaluate          the ELBO terms over a split, Monte-Carlo repeats, two standard errors
    elbo_bits_per_dim the same for a model and a set of images (`vdm.elbo_bits_per_dim`)
    test_elbo         a run's test terms, named by the likelihood they bound
    final_evaluation  results.json and the final samples of a run
    evaluate_run      --mode=eval
    likelihood_run    --mode=likelihood: bits/dim through the probability-flow ODE next to the ELBO
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm.core import losses
from vdm.core.elbo_estimator import ElboEstimator
from vdm.data import pipeline
from vdm.errors import ConfigError
from vdm.sampling import likelihood
from vdm.training import distributed, outputs
from vdm.training.generation import write_pictures
from vdm.training.run import Run, num_parameters
from vdm.training.steps import make_eval_step
from vdm.training.workdirs import result_line

STDERR_NOTE = ("standard error over test examples of each example's estimate (its mean over the repeats); every "
               "example draws its own times and noise, so this covers the examples, the times and the noise together")
MC_STDERR_NOTE = ("Monte-Carlo standard error of this split's mean alone (the times and noise, the examples held "
                  "fixed): sqrt(sum_i s_i^2 / R) / N, s_i^2 the variance of example i's estimate over the R repeats")


def evaluate(eval_step, params, split, batch_size: int, key, num_repeats: int = 1, mesh=None):
    """ELBO over a whole split, `num_repeats` independent repeats of the eval step's estimator.

    Example i of repeat r draws from fold_in(fold_in(key, r), i) (`make_eval_step`): the numbers do not
    depend on the batch size or the devices. Returns {name: mean over examples and repeats} and, for
    every name, two errors with one meaning each (STDERR_NOTE, MC_STDERR_NOTE):
    '<name>_stderr': std over examples of the per-example mean / sqrt(N), the error of the split mean
    as an estimate for the data distribution, Monte-Carlo noise included (any num_repeats);
    '<name>_mc_stderr' (num_repeats > 1 only): the Monte-Carlo error of the mean over this split,
    from the per-example variance over repeats pooled over the N examples.
    With a `mesh`, every process holds the split and feeds its part of each batch.
    """
    values = {}  # {name: [repeats, examples]} for the terms the eval step returns (`VDM.term_names`)
    for r in range(num_repeats):
        offset = 0
        for batch in pipeline.eval_batches(split, batch_size):
            mask = batch.pop("mask")
            if mesh is not None:
                batch = distributed.global_batch(pipeline.local_part(batch, jax.process_index(), jax.process_count()), mesh)
            terms = eval_step(params, batch, jax.random.fold_in(key, r))
            n = int(mask.sum())
            for name in terms:
                values.setdefault(name, np.zeros((num_repeats, len(split))))[r, offset : offset + n] = (
                    distributed.to_host(terms[name])[:n])
            offset += n
    out = {}
    for name, v in values.items():
        out[name] = float(v.mean())
        out[name + "_stderr"] = float(np.std(v.mean(axis=0), ddof=1) / np.sqrt(len(split)))
        if num_repeats > 1:
            out[name + "_mc_stderr"] = float(np.sqrt(np.var(v, axis=0, ddof=1).sum() / num_repeats) / len(split))
    return out


def elbo_bits_per_dim(model, params, images, labels=None, key=None, estimator: ElboEstimator | None = None,
                      batch_size: int = 256) -> dict:
    """-ELBO of integer images [N, H, W, C] in bits/dim under a VDM: the means and errors of `evaluate`.

    Returns {'bpd', 'bpd_prior', 'bpd_reconstruction', 'bpd_diffusion'}, each with '<name>_stderr'
    (and '<name>_mc_stderr' when the estimator has 2 or more repeats), and 'estimator' (what was
    computed). estimator: default `ElboEstimator()`, the config's default (`vdm.core.elbo_estimator`).
    labels [N]: the classes of a class-conditional model (default: the null label, a bound on
    log p(x) for a model trained with label dropout). key: default key(0).
    """
    images = np.asarray(images)
    labels = np.full(len(images), model.num_classes, np.int32) if labels is None else np.asarray(labels, np.int32)
    key = jax.random.key(0) if key is None else key
    estimator = ElboEstimator() if estimator is None else estimator
    res = evaluate(make_eval_step(model, estimator=estimator), params, pipeline.Split(images, labels), batch_size, key,
                   estimator.repeats)
    return {**res, "estimator": estimator.describe(model.num_steps)}


def conditional_name(key: str) -> str:
    """'bpd_prior_stderr' -> 'bpd_prior_conditional_stderr' (the suffix goes before the error's name)."""
    for tail in ("_mc_stderr", "_stderr"):
        if key.endswith(tail):
            return key[: -len(tail)] + "_conditional" + tail
    return key + "_conditional"


def test_elbo(run: Run, params, test: pipeline.Split, key, repeats: int = 0) -> dict:
    """Test ELBO terms, each under a name that says which likelihood it bounds.

    Unconditional models: 'bpd', its terms and errors (-ELBO of log p(x)).
    repeats: of the run's estimator (0: eval.num_repeats).
    Class-conditional models: the same names with '_conditional' (log p(x | y),
    true labels), and, if they were trained with label dropout, the plain names
    for the null label (log p(x)). 'bpd' always means log p(x).
    """
    model = run.model

    def on(split):
        return evaluate(run.eval_step, params, split, run.config.eval.batch_size, key, repeats or run.estimator.repeats,
                        run.mesh)

    res = on(test)
    if not model.class_conditional:
        return res
    out = {conditional_name(k): v for k, v in res.items()}
    if model.label_dropout > 0:
        out.update(on(pipeline.Split(test.images, np.full_like(test.labels, model.num_classes))))
    return out


def final_evaluation(run: Run, state, test: pipeline.Split, train_seconds=None):
    """Test bits/dim over the whole split with EMA parameters -> results.json; samples -> PNG + npz.

    Returns (results, path of results.json).
    """
    config, model = run.config, run.model
    res = test_elbo(run, state.ema_params, test, run.keys["final"])
    samples = write_pictures(run, state.ema_params, "final", run.keys["sample"])
    gamma = distributed.to_host(model.gamma_fn(state.ema_params)(jnp.array([0.0, 1.0])))
    gamma = np.asarray(gamma).reshape(2, -1).mean(-1)  # one gamma per dimension: their mean
    results = {
        **{f"test_{k}": v for k, v in res.items()},
        "bpd_means": ("-ELBO of log p(x | y) in bits/dim ('_conditional'); of log p(x) (null label)"
                      if model.class_conditional else "-ELBO of log p(x) in bits/dim"),
        "parameters": "EMA parameters (decay %g, warmed up)" % config.optim.ema_decay,
        "estimator": run.estimator.describe(model.num_steps),
        "eval_points_per_example": run.estimator.points,
        "eval_time_density": run.estimator.density,
        "eval_num_repeats": run.estimator.repeats,
        "stderr": STDERR_NOTE,
        **({"mc_stderr": MC_STDERR_NOTE + " (%d repeats)" % run.estimator.repeats} if run.estimator.repeats > 1 else {}),
        "num_test_examples": len(test),
        "step": int(distributed.to_host(state.step)),
        "num_parameters": num_parameters(state.params),
        "train_seconds": train_seconds,
        "gamma_0": float(gamma[0]),
        "gamma_1": float(gamma[1]),
        "samples": "samples_final.png (first %d), samples.npz (all %d; %s, --steps %d)" % (
            min(outputs.GRID_MAX_IMAGES, config.eval.num_samples), config.eval.num_samples,
            config.eval.sampler, config.eval.sampler_steps) if samples is not None else "none (eval.num_samples = 0)",
    }
    path = os.path.join(run.workdir, "results.json")
    if run.main and samples is not None:
        np.savez_compressed(os.path.join(run.workdir, "samples.npz"), samples=samples)
    if run.main:
        outputs.write_json(path, results)
    return results, path


def evaluate_run(config, workdir: str, step: int | None = None) -> dict:
    """--mode=eval: re-evaluates a checkpoint (default: latest) -> results.json."""
    run = Run(config, workdir)
    state = run.restore(step)
    results, path = final_evaluation(run, state, run.test_split())
    if run.main:
        print(result_line(results, path), flush=True)
    return results


def ode_bits_per_dim_fn(model, probe: str = "rademacher", mesh=None, matmul_precision: str = "highest"):
    """Jitted (params, x_int [B, ...], key, dequantization) -> [B] bits/dim through the probability-flow ODE.

    `vdm.sampling.likelihood.ode_bits_per_dim` with the model's denoiser and schedule; with a
    `mesh`, x_int is batch-sharded over its 'data' axis and every device solves the ODE
    for its part of the batch (the network input is constrained to that layout).
    """
    shard = distributed.constrain_to_batch(mesh)

    @functools.partial(jax.jit, static_argnums=3)
    def ode_bpd(params, x_int, key, dequantization):
        latent, latent_bpd = None, 0.0
        if model.latent_dim:  # MuLAN: log p(x) >= E_q(c|x)[log p(x | c)] - KL(q(c | x) || p(c)), one c per example
            latent, latent_kl = model.draw_latent(params, x_int, model.latent_noise(key, x_int.shape[0]))
            latent_bpd = losses.to_bits_per_dim(latent_kl, model.num_dims)
        eps_hat_fn = model.eps_hat_fn(params, latent=latent)
        with jax.default_matmul_precision(matmul_precision):
            return shard(likelihood.ode_bits_per_dim(shard(x_int), lambda z, g: eps_hat_fn(shard(z), g),
                                                 model.gamma_fn(params, latent), model.vocab_size, key,
                                                 dequantization=dequantization, probe=probe) + latent_bpd)

    return ode_bpd


def likelihood_run(config, workdir: str, step: int | None = None, probe: str = "rademacher",
                   max_examples: int = 0, seed: int = 0) -> dict:
    """Test-split bits/dim through the probability-flow ODE (both dequantisations) next to the ELBO -> likelihood.json."""
    run = Run(config, workdir)
    state = run.restore(step)
    test = run.test_split()
    if max_examples:
        test = pipeline.Split(test.images[:max_examples], test.labels[:max_examples])
    params, model = state.ema_params, run.model
    elbo = test_elbo(run, params, test, run.keys["final"])
    if "bpd" not in elbo:
        raise ConfigError("--mode=likelihood computes log p(x) through the ODE with the null label, which this "
                          "class-conditional model never learned (model.label_dropout = 0)")

    ode_bpd = ode_bits_per_dim_fn(model, probe, run.mesh, config.eval.matmul_precision)

    out = {"elbo_bpd": elbo["bpd"], "elbo_bpd_stderr": elbo["bpd_stderr"], "num_examples": len(test),
           "step": int(distributed.to_host(state.step)), "probe": probe,
           "elbo": "ELBO of the EMA parameters: " + run.estimator.describe(model.num_steps),
           "stderr": STDERR_NOTE}
    if "bpd_mc_stderr" in elbo:
        out["elbo_bpd_mc_stderr"] = elbo["bpd_mc_stderr"]
    for deq, note in likelihood.DEQUANTIZATIONS.items():
        start, values = time.time(), []
        for b, batch in enumerate(pipeline.eval_batches(test, config.eval.batch_size)):
            n = int(batch["mask"].sum())
            key = jax.random.fold_in(jax.random.key(seed), b)
            images = distributed.global_batch(
                pipeline.local_part({"images": batch["images"]}, jax.process_index(), jax.process_count()), run.mesh)
            values.append(distributed.to_host(ode_bpd(params, images["images"], key, deq))[:n])
        values = np.concatenate(values)
        out[f"ode_bpd_{deq}"] = float(values.mean())
        out[f"ode_bpd_{deq}_stderr"] = float(values.std(ddof=1) / np.sqrt(len(values)))
        out[f"ode_{deq}_dequantization"] = note
        out[f"ode_{deq}_seconds"] = time.time() - start
    if run.main:
        outputs.write_json(os.path.join(workdir, "likelihood.json"), out)
        print(f"test bits/dim of log p(x) over {len(test)} examples (± standard error over examples):")
        mc = f", Monte-Carlo alone ± {out['elbo_bpd_mc_stderr']:.4f}" if "elbo_bpd_mc_stderr" in out else ""
        print(f"  ELBO                             {out['elbo_bpd']:.4f} ± {out['elbo_bpd_stderr']:.4f}   ({out['elbo']}{mc})")
        for deq in likelihood.DEQUANTIZATIONS:
            print(f"  ODE, {deq:<16} dequant.  {out[f'ode_bpd_{deq}']:.4f} ± {out[f'ode_bpd_{deq}_stderr']:.4f}"
                  f"   ({out[f'ode_{deq}_dequantization']})")
        print(f"likelihood={os.path.abspath(os.path.join(workdir, 'likelihood.json'))}", flush=True)
    return out
