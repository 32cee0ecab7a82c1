"""vdm: Variational Diffusion Models (Kingma et al. 2021) in JAX + Flax.

The sub-packages are layers; each imports only from those listed before it:

    vdm.core       the diffusion math as pure functions: q(z_t | x), schedules, the ELBO terms
    vdm.nets       the networks (Flax linen): ScoreUNet and its blocks, their CPU-tuned forms, a noisy classifier
    vdm.data       the datasets and the input pipeline
    vdm.sampling   samplers (SAMPLERS), the SDE / ODE view, the ODE likelihood, guidance
    vdm.metrics    sample-quality measures
    vdm.config     the config schema, its validation, and the migrations that keep old configs and workdirs loading
    vdm.model      the model glue: VDM (network + schedule + decoder -> the ELBO and the training loss)
    vdm.training   what a run does in its workdir: train / eval steps, the run loop, evaluation, checkpoints
    vdm.main       the command line: python -m vdm.main

In a notebook (README, "In a notebook"):

    run = vdm.load_run("runs/demo")                        # config, model, EMA parameters
    images = vdm.sample(run.model, run.params, jax.random.key(0), 16, sampler="ddim", num_steps=50)
    vdm.elbo_bits_per_dim(run.model, run.params, vdm.load_dataset("digits").test.images)["bpd"]

`from vdm import diffusion, losses, schedules, sampling, likelihood, guidance`
gives those modules. Every name here is imported on first use, so `import vdm`
itself imports nothing.
"""

import importlib

__version__ = "0.1.0"

# name -> (home module, attribute; None: the module itself)
_PUBLIC = {
    "diffusion": ("vdm.core.diffusion", None),
    "losses": ("vdm.core.losses", None),
    "schedules": ("vdm.core.schedules", None),
    "sampling": ("vdm.sampling", None),
    "likelihood": ("vdm.sampling.likelihood", None),
    "guidance": ("vdm.sampling.guidance", None),
    "VDM": ("vdm.model", "VDM"),
    "load_run": ("vdm.training.workdirs", "load_run"),
    "sample": ("vdm.training.generation", "sample"),
    "elbo_bits_per_dim": ("vdm.training.evaluation", "elbo_bits_per_dim"),
    "elbo_terms": ("vdm.core.losses", "elbo_terms"),
    "load_dataset": ("vdm.data.pipeline", "load_dataset"),
    "SCHEDULES": ("vdm.core.schedules", "SCHEDULES"),
    "make_schedule": ("vdm.core.schedules", "make_schedule"),
    "SAMPLERS": ("vdm.sampling", "SAMPLERS"),
    "get_sampler": ("vdm.sampling", "get_sampler"),
}

__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vdm' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = importlib.import_module(module)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_PUBLIC})
