"""The jitted train and eval steps, pure functions of the train state and a batch.

train_step(state, batches, base_key) -> (state, metrics) runs `steps_per_call`
optimizer steps under one `lax.scan` (batches carry a leading [K] axis); the
randomness of step n is `fold_in(base_key, n)`, so it does not depend on how
steps are grouped into calls.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from vdm.core.elbo_estimator import ElboEstimator
from vdm.training import distributed, optim
from vdm.model import VDM
from vdm.model.vdm_model import TERM_NAMES  # the ELBO's terms; 'bpd_latent' too with a latent (`VDM.term_names`)



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


def _scalar_metrics(loss, terms, grad_norm, lr, names=TERM_NAMES):
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr}
    for name in names:
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

    With schedule.interior_objective = 'variance', 'grad_norm' is the norm of every gradient
    but the schedule interior's, and 'grad_norm_interior' that one's (the optimizer clips them
    apart: `optim.make_optimizer(..., clip_interior_apart=True)`); a non-finite value in either
    rejects the step.
    """
    apart = model.interior_objective == "variance"

    def one_step(state: TrainState, batch, base_key):
        key = jax.random.fold_in(base_key, state.step)
        (loss, terms), grads = model.loss_and_grads(state.params, batch, key)
        if apart:  # the interior's gradient is of another objective: its norm is reported (and clipped) apart
            grad_norm, interior_norm = optim.global_norms(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(interior_norm)
        else:
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
        metrics = _scalar_metrics(loss, terms, grad_norm, lr_schedule(num_updates - 1), model.term_names)
        gamma_01 = model.gamma_fn(new_state.params)(jnp.array([0.0, 1.0]))
        gamma_0, gamma_1 = jnp.mean(gamma_01.reshape(2, -1), axis=-1)  # one gamma per dimension: their mean
        metrics.update(gamma_0=gamma_0, gamma_1=gamma_1, nonfinite=1.0 - finite.astype(jnp.float32))
        if apart:
            metrics["grad_norm_interior"] = interior_norm
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


def make_eval_step(model: VDM, mesh=None, matmul_precision: str = "highest", estimator: ElboEstimator | None = None):
    """Returns a jitted eval_step(params, batch, key) -> per-example terms {name: [B]} (no dropout).

    One repeat of `estimator` (default `ElboEstimator()`; `vdm.core.elbo_estimator`). batch['index']
    [B] (int32) holds each row's example index in its split: row i draws from fold_in(key, index[i]),
    so an example's draws depend on the key alone, not on the batch size or the devices
    (`vdm.data.pipeline.eval_batches` gives it).
    Its matmuls and convolutions run at `matmul_precision` (config key eval.matmul_precision;
    'highest': full float32 on every backend, so reported bits/dim do not depend on a TPU's
    bf16 passes or a GPU's TF32; 'default': the backend's choice).
    """

    estimator = ElboEstimator() if estimator is None else estimator

    def eval_step(params, batch, key):
        if "index" not in batch:
            raise ValueError("eval_step needs batch['index'], each row's example index (pipeline.eval_batches): "
                             "without it every batch would reuse the same draws")
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, batch["index"])
        with jax.default_matmul_precision(matmul_precision):
            terms = model.elbo_estimate(params, batch, keys, estimator)
        return {name: terms[name] for name in model.term_names}

    if mesh is None:
        return jax.jit(eval_step)
    repl, batch = distributed.replicated(mesh), distributed.batch_sharding(mesh)
    return jax.jit(eval_step, in_shardings=(repl, batch, repl), out_shardings=batch)
