"""Sampling a model: integer images from any sampler of `vdm.sampling.SAMPLERS`, for notebooks and for runs.

`sample` is the one jitted function behind every picture: the grids a run draws
while it trains, its final samples, `--mode=sample` (`sample_run`) and
`vdm.sample` in a notebook.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import sampling
from vdm.config.validation import sampler_schedule_problem
from vdm.errors import ConfigError
from vdm.training import distributed, outputs
from vdm.training.run import Run


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "sampler", "num_steps", "guidance", "mesh"))
def sample(model, params, key, num_samples: int, sampler: str = "ancestral", num_steps: int = 1000, labels=None,
           guidance: float = 0.0, mesh=None):
    """Integer samples [N, H, W, C] in {0..V-1} of a VDM from `sampler` with `num_steps` steps.

    z_1 ~ N(0, I) is carried to z_0 by the sampler, and x is drawn from the
    discretised decoder p(x | z_0). labels [N]: classes of a class-conditional
    model (None: the null label, i.e. unconditional); guidance: the
    classifier-free weight w (needs labels). With a `mesh`, the samples are split
    over its 'data' axis (N divisible by its size): each device runs the network
    on its part of the batch; the samples are those of one device.
    """
    k_sample, k_decode = jax.random.split(key)
    latent = None
    if model.latent_dim:  # MuLAN: each sample's own schedule from c ~ p(c)
        latent = model.prior_latent(key, num_samples)
    if guidance:
        if labels is None:
            raise ValueError("classifier-free guidance needs labels")
        eps_hat_fn = model.guided_eps_hat_fn(params, labels, guidance, latent)
    else:
        eps_hat_fn = model.eps_hat_fn(params, labels=labels, latent=latent)
    gamma_fn = model.gamma_fn(params, latent)
    shard = distributed.constrain_to_batch(mesh)
    z_0 = sampling.get_sampler(sampler)(k_sample, lambda z, gamma: eps_hat_fn(shard(z), gamma), gamma_fn,
                                        (num_samples, *model.image_shape), num_steps)
    gamma_0 = gamma_fn(jnp.zeros((num_samples,))) if model.latent_dim else gamma_fn(jnp.zeros((1,)))[0]
    return shard(sampling.decode(shard(z_0), gamma_0, model.vocab_size, k_decode))


def run_samples(run: Run, params, key, num_samples: int | None = None) -> np.ndarray:
    """Samples with the run's eval.sampler and eval.sampler_steps (eval.num_samples of them by default), on the host."""
    c = run.config.eval
    return distributed.to_host(sample(run.model, params, key, num_samples or c.num_samples, c.sampler, c.sampler_steps,
                                      mesh=run.mesh))


def write_pictures(run: Run, params, tag: str, key, num_samples: int | None = None) -> np.ndarray:
    """samples_<tag>.png and log_snr_<tag>.png in the workdir; returns the samples (None with eval.num_samples = 0:
    then only the schedule's picture)."""
    samples = None
    if num_samples or run.config.eval.num_samples:
        samples = run_samples(run, params, key, num_samples)
    if run.main and samples is not None:
        outputs.save_image_grid(samples, run.model.vocab_size, os.path.join(run.workdir, f"samples_{tag}.png"))
    if run.main:
        outputs.plot_schedule(run.model.gamma_fn(params), os.path.join(run.workdir, f"log_snr_{tag}.png"))
    return samples


def sample_run(config, workdir: str, step: int | None = None, seed: int = 0, sampler: str = "ancestral",
               num_steps: int | None = None, guidance: float = 0.0, label: int = -1):
    """--mode=sample: a checkpoint's EMA parameters -> samples_<sampler>.png and samples_<sampler>.npz.

    label: a class for every sample, or -1 for classes 0, 1, 2, ... in turn (class-conditional
    models; unconditional models ignore it); guidance: classifier-free weight w.
    """
    if sampler not in sampling.SAMPLERS:
        raise ConfigError(f"--sampler={sampler!r}; expected one of {list(sampling.SAMPLERS)}")
    problem = sampler_schedule_problem(config.schedule.name, sampler)
    if problem:
        raise ConfigError(f"--sampler={problem}")
    run = Run(config, workdir)
    state = run.restore(step)
    n, steps = config.eval.num_samples, num_steps or config.eval.sampler_steps
    labels = None
    if run.model.class_conditional:
        labels = np.arange(n) % run.model.num_classes if label < 0 else np.full(n, label)
        labels = jnp.asarray(labels, jnp.int32)
    elif guidance:
        raise ConfigError("--guidance needs a class-conditional model (model.class_conditional=True)")
    start = time.time()
    samples = distributed.to_host(sample(run.model, state.ema_params, jax.random.key(seed), n, sampler, steps, labels,
                                         float(guidance), run.mesh))
    seconds = time.time() - start
    tag = sampler + (f"_w{guidance:g}" if guidance else "")
    png = os.path.join(workdir, f"samples_{tag}.png")
    if run.main:
        outputs.save_image_grid(samples, run.model.vocab_size, png)
        np.savez_compressed(os.path.join(workdir, f"samples_{tag}.npz"), samples=samples,
                            labels=np.asarray(labels) if labels is not None else np.zeros(0))
        print(f"{sampling.SAMPLERS[sampler].describe(steps)}: {n} samples in {seconds:.1f} s "
              f"(compile included)\nsamples={os.path.abspath(png)}", flush=True)
    return samples
