"""Pure train / eval steps and the training loop `train_and_evaluate(config, workdir)`.

train_step(state, batches, base_key) -> (state, metrics) runs `steps_per_call`
optimizer steps under one `lax.scan` (batches carry a leading [K] axis); the
randomness of step n is `fold_in(base_key, n)`, so it does not depend on how
steps are grouped into calls.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm import distributed, optim
from vdm.model import VDM

TERM_NAMES = ("bpd", "bpd_prior", "bpd_reconstruction", "bpd_diffusion")


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def create_train_state(model: VDM, tx, key) -> TrainState:
    params = model.init(key)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def _scalar_metrics(loss, terms, grad_norm, lr):
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr}
    for name in TERM_NAMES:
        metrics[name] = jnp.mean(terms[name])
    metrics["bpd_variance"] = jnp.var(terms["bpd"])  # per-example variance of the ELBO estimate in the batch
    return metrics


def make_train_step(model: VDM, tx, lr_schedule, ema_decay: float, mesh=None, donate: bool = True):
    """Returns a jitted train_step(state, batches, base_key), the state's buffers donated unless donate=False.

    batches: {'images': [K, B, H, W, C], 'labels': [K, B], optional 'cond': [K, B, D]}:
    K optimizer steps per call. Returns the new state and the metrics of each
    step, leaves [K]. A step whose loss or gradient is not finite is rejected:
    parameters, EMA and optimizer state stay as they were, `state.step` still
    advances, and its metric 'nonfinite' is 1. With a `mesh`, the state is
    replicated and batches are sharded over its 'data' axis.
    """

    def one_step(state: TrainState, batch, base_key):
        key = jax.random.fold_in(base_key, state.step)
        (loss, terms), grads = model.loss_and_grads(state.params, batch, key)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # a NaN or inf anywhere in grads makes the norm non-finite

        def update(state):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            if isinstance(tx, optax.MultiSteps):
                updated = opt_state.mini_step == 0  # the inner optimizer just applied an update
                num_updates = opt_state.gradient_step
            else:
                updated, num_updates = True, state.step + 1
            ema = optim.ema_update(state.ema_params, params, ema_decay, num_updates)
            ema = jax.tree.map(lambda new, old: jnp.where(updated, new, old), ema, state.ema_params)
            return TrainState(state.step + 1, params, ema, opt_state)

        # One branch taken as a whole, not a select per leaf: XLA:CPU took ~3 s to compile the selects.
        new_state = jax.lax.cond(finite, update, lambda s: s.replace(step=s.step + 1), state)
        num_updates = new_state.opt_state.gradient_step if isinstance(tx, optax.MultiSteps) else new_state.step
        metrics = _scalar_metrics(loss, terms, grad_norm, lr_schedule(num_updates - 1))
        gamma_0, gamma_1 = model.gamma_fn(new_state.params)(jnp.array([0.0, 1.0]))
        metrics.update(gamma_0=gamma_0, gamma_1=gamma_1, nonfinite=1.0 - finite.astype(jnp.float32))
        return new_state, metrics

    def train_step(state, batches, base_key):
        if jax.tree.leaves(batches)[0].shape[0] == 1:  # no loop: XLA:CPU runs conv backward slowly in loops
            state, metrics = one_step(state, jax.tree.map(lambda b: b[0], batches), base_key)
            return state, jax.tree.map(lambda m: jnp.asarray(m)[None], metrics)
        return jax.lax.scan(lambda s, b: one_step(s, b, base_key), state, batches)

    donated = (0,) if donate else ()
    if mesh is None:
        return jax.jit(train_step, donate_argnums=donated)
    repl = distributed.replicated(mesh)
    return jax.jit(train_step, donate_argnums=donated, in_shardings=(repl, distributed.batch_sharding(mesh, 1), repl),
                   out_shardings=(repl, repl))


def make_eval_step(model: VDM, mesh=None):
    """Returns a jitted eval_step(params, batch, key) -> per-example terms {name: [B]} (no dropout)."""

    def eval_step(params, batch, key):
        terms = model.elbo_terms(params, batch, key, train=False)
        return {name: terms[name] for name in TERM_NAMES}

    if mesh is None:
        return jax.jit(eval_step)
    repl, batch = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(repl, batch, repl), out_shardings=batch)


STDERR_NOTE = "standard error of the mean over test examples (each example's value averaged over the repeats)"
MC_STDERR_NOTE = "Monte-Carlo standard error: std over repeats of the split mean / sqrt(repeats)"


def evaluate(eval_step, params, split, batch_size: int, key, num_repeats: int = 1, mesh=None):
    """ELBO over a whole split, `num_repeats` Monte-Carlo passes.

    Returns {name: mean over examples and repeats} and, for every name, two errors
    with one meaning each (see STDERR_NOTE, MC_STDERR_NOTE):
    '<name>_stderr': std over examples of the per-example mean / sqrt(N), the error
    of the split mean as an estimate for the data distribution (any num_repeats);
    '<name>_mc_stderr' (num_repeats > 1 only): the Monte-Carlo error of the mean over
    this split, std over repeats of the split mean / sqrt(num_repeats).
    With a `mesh`, every process holds the split and feeds its part of each batch.
    """
    from vdm.data import eval_batches, local_part

    per_repeat = {name: [] for name in TERM_NAMES}
    per_example = {name: np.zeros(len(split)) for name in TERM_NAMES}
    for r in range(num_repeats):
        sums = {name: 0.0 for name in TERM_NAMES}
        offset = 0
        for b, batch in enumerate(eval_batches(split, batch_size)):
            mask = batch.pop("mask")
            if mesh is not None:
                batch = distributed.global_batch(local_part(batch, jax.process_index(), jax.process_count()), mesh)
            terms = eval_step(params, batch, jax.random.fold_in(jax.random.fold_in(key, r), b))
            n = int(mask.sum())
            for name in TERM_NAMES:
                values = distributed.to_host(terms[name])[:n]
                sums[name] += float(values.sum())
                per_example[name][offset : offset + n] += values / num_repeats
            offset += n
        for name in TERM_NAMES:
            per_repeat[name].append(sums[name] / len(split))
    out = {}
    for name in TERM_NAMES:
        out[name] = float(np.mean(per_repeat[name]))
        out[name + "_stderr"] = float(np.std(per_example[name], ddof=1) / np.sqrt(len(split)))
        if num_repeats > 1:
            out[name + "_mc_stderr"] = float(np.std(per_repeat[name], ddof=1) / np.sqrt(num_repeats))
    return out


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 6, 7, 8))
def generate(model: VDM, params, key, num_samples: int, num_steps: int, labels=None, sampler: str = "ancestral",
             guidance: float = 0.0, mesh=None):
    """Integer samples [N, H, W, C] from a sampler of `vdm.sampling.SAMPLERS` with `num_steps` steps.

    labels [N] (class-conditional models; None = the null label, i.e. unconditional);
    guidance: classifier-free weight w (needs labels). With a `mesh`, the samples
    are split over its 'data' axis (N divisible by its size): each device runs the
    network on its part of the batch.
    """
    from vdm import guidance as guide
    from vdm import sampling

    k_sample, k_decode = jax.random.split(key)
    if guidance:
        if labels is None:
            raise ValueError("classifier-free guidance needs labels")
        eps_hat_fn = guide.classifier_free_eps_hat_fn(model, params, labels, guidance)
    else:
        eps_hat_fn = model.eps_hat_fn(params, labels=labels)
    shard = (lambda x: x) if mesh is None else functools.partial(
        jax.lax.with_sharding_constraint, shardings=distributed.batch_sharding(mesh))
    z_0 = sampling.get_sampler(sampler)(
        k_sample, lambda z, gamma: eps_hat_fn(shard(z), gamma), model.gamma_fn(params),
        (num_samples, *model.image_shape), num_steps
    )
    gamma_0 = model.gamma_fn(params)(jnp.zeros((1,)))[0]
    return shard(sampling.decode(shard(z_0), gamma_0, model.vocab_size, k_decode))
