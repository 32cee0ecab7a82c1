"""Optimizer (optax) and parameter EMA.

AdamW with weight decay on kernels and embeddings only (no decay on biases,
norm scales or schedule parameters), linear warm-up then constant or cosine
learning rate, global-norm clipping, optional gradient accumulation, and an
optional learning-rate multiplier for a learned schedule's interior shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

DECAYED_LEAF_NAMES = ("kernel", "embedding")


def weight_decay_mask(params):
    """True for leaves named 'kernel' or 'embedding' (conv / dense weights, label embeddings)."""

    def decide(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name in DECAYED_LEAF_NAMES

    return jax.tree_util.tree_map_with_path(decide, params)


def schedule_interior_mask(params):
    """True for the leaves of params['schedule']['interior'] (a learned schedule's shape)."""

    def decide(path, _):
        names = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        return names[:2] == ["schedule", "interior"]

    return jax.tree_util.tree_map_with_path(decide, params)


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to learning_rate, then constant or cosine decay to 0 at num_steps."""
    lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
    if optim_config.decay == "cosine":
        if warmup == 0:
            return optax.cosine_decay_schedule(lr, max(num_steps, 1))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(num_steps, warmup + 1), 0.0)
    if optim_config.decay == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
    raise ValueError(f"optim.decay: unknown value {optim_config.decay!r}; expected 'constant' or 'cosine'")


def make_optimizer(optim_config, num_steps: int):
    """Returns (optax transformation, learning-rate schedule)."""
    schedule = learning_rate_schedule(optim_config, num_steps)
    parts = []
    if optim_config.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
            mask=weight_decay_mask,
        )
    )
    if optim_config.schedule_lr_scale != 1.0:
        parts.append(optax.masked(optax.scale(optim_config.schedule_lr_scale), schedule_interior_mask))
    tx = optax.chain(*parts)
    if optim_config.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim_config.accumulate_steps)
    return tx, schedule


def ema_decay(max_decay: float, num_updates):
    """Warmed-up EMA decay min(max_decay, (1 + n) / (10 + n)): early averages forget the initialisation."""
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(max_decay, (1.0 + n) / (10.0 + n))


def ema_update(ema_params, params, max_decay: float, num_updates):
    """ema <- d ema + (1 - d) params with the warmed-up decay d."""
    d = ema_decay(max_decay, num_updates)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)
