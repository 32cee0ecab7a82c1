"""The official implementation's train step, timed beside ours: `python -m experiments.benchmark --official_dir=PATH`.

PATH is a user's checkout of google-research/vdm. Its `model_vdm.py` is
imported from there at run time (it needs `chex`: `pip install chex`); nothing
of it is part of this project. The official train step is rebuilt here the way
its `experiment_vdm.py` computes it: the mean of loss_recon + loss_klz +
loss_diff in bits/dim, its gradient, global-norm clipping, AdamW and the EMA
update, in one jitted call, on the same shapes and settings as our
configuration (width, blocks, Fourier features, attention, dropout, learned
linear schedule, continuous time). Both steps are timed in the same process,
one call of each in turn, so the ratio does not depend on how busy the machine
is at one moment.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def load_official_model(official_dir: str):
    """The official `model_vdm` module from a checkout; a clear error if it is not there or cannot import."""
    path = os.path.join(official_dir, "model_vdm.py")
    if not os.path.exists(path):
        raise SystemExit(f"--official_dir={official_dir}: no model_vdm.py there (a checkout of google-research/vdm?)")
    try:  # model_vdm.py imports only chex, flax, jax and numpy: loaded by path, no import path changed
        spec = importlib.util.spec_from_file_location("official_model_vdm", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except ImportError as e:
        raise SystemExit(f"--official_dir: importing {path} failed ({e}); it needs chex: pip install chex") from None
    return module


def official_train_step(model_vdm, config):
    """(jitted step(state, images, key) -> (state, bpd), initial state) of the official model for `config`."""
    m, s, o = config.model, config.schedule, config.optim
    shape = (config.training.batch_size, *config.data.image_shape)
    if shape[-1] != 3:
        raise ValueError("the official decoder is written for 3 image channels")
    vdm_config = model_vdm.VDMConfig(
        vocab_size=config.data.vocab_size, sample_softmax=False, antithetic_time_sampling=True,
        with_fourier_features=m.fourier_features, with_attention=m.attention_per_block,
        gamma_type="learnable_scalar", gamma_min=s.gamma_min, gamma_max=s.gamma_max,
        sm_n_timesteps=config.loss.num_steps, sm_n_embd=m.channels, sm_n_layer=m.num_blocks, sm_pdrop=m.dropout)
    model = model_vdm.VDM(vdm_config)
    images = jnp.zeros(shape, jnp.uint8)
    cond = jnp.zeros((shape[0],))
    k = jax.random.key(0)
    params = model.init({"params": k, "sample": k, "dropout": k}, images, cond, deterministic=False)["params"]
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                     optax.adamw(o.learning_rate, o.b1, o.b2, o.eps, o.weight_decay))
    to_bpd = 1.0 / (math.prod(shape[1:]) * math.log(2.0))

    def loss(params, images, key):
        k_sample, k_drop = jax.random.split(key)
        out = model.apply({"params": params}, images, cond, deterministic=False,
                          rngs={"sample": k_sample, "dropout": k_drop})
        return jnp.mean(out.loss_recon + out.loss_klz + out.loss_diff) * to_bpd

    def step(state, images, key):
        params, ema, opt_state = state
        bpd, grads = jax.value_and_grad(loss)(params, images, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: o.ema_decay * e + (1 - o.ema_decay) * p, ema, params)
        return (params, ema, opt_state), bpd

    return jax.jit(step, donate_argnums=0), (params, jax.tree.map(jnp.copy, params), tx.init(params))


def side_by_side(official_dir: str, config, ours, steps: int = 10) -> dict:
    """Images per second of our train step and the official one, calls interleaved; ratio ours / official.

    ours: () -> (compiled step, state, batches, compile seconds, model), as `experiments.benchmark` builds it
    (its batches carry `training.steps_per_call` steps).
    """
    model_vdm = load_official_model(official_dir)
    step_o, state_o = official_train_step(model_vdm, config)
    b, shape = config.training.batch_size, tuple(config.data.image_shape)
    images = jnp.asarray(np.random.default_rng(0).integers(0, config.data.vocab_size, (b, *shape)), jnp.uint8)
    t0 = time.perf_counter()
    state_o, bpd = step_o(state_o, images, jax.random.key(1))
    jax.block_until_ready(bpd)
    official_compile = time.perf_counter() - t0
    compiled, state, batch, ours_compile, _ = ours()
    k = config.training.steps_per_call
    state, m = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(m)
    times = {"ours": [], "official": []}
    for i in range(max(2, steps)):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, jax.random.key(2 + i))
        jax.block_until_ready(m)
        times["ours"].append((time.perf_counter() - t0) / k)
        t0 = time.perf_counter()
        for _ in range(k):  # the same number of optimizer steps per timed turn
            state_o, bpd = step_o(state_o, images, jax.random.key(100 + i))
        jax.block_until_ready(bpd)
        times["official"].append((time.perf_counter() - t0) / k)
    ours_s, official_s = float(np.median(times["ours"])), float(np.median(times["official"]))
    return {"ours_images_per_second": b / ours_s, "official_images_per_second": b / official_s,
            "ratio": official_s / ours_s, "ours_compile_seconds": ours_compile,
            "official_compile_seconds": official_compile, "timed_steps": len(times["ours"]),
            "official_commit_note": "model_vdm.py imported from " + os.path.abspath(official_dir)}
