"""Optimizer (optax) and parameter EMA.

AdamW with weight decay on kernels and embeddings only (no decay on biases,
norm scales or schedule parameters), linear warm-up then constant or cosine
learning rate, global-norm clipping, optional gradient accumulation, and an
optional learning-rate multiplier for a learned schedule's interior shape.

With the variance-minimising schedule (schedule.interior_objective = 'variance') the
interior's gradient is of another objective (the mean squared diffusion loss), so it is
clipped apart from the rest (`clip_by_global_norm_apart`): a large interior gradient
cannot shrink the network's update.
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


def interior_and_rest(tree):
    """(the tree's params['schedule']['interior'] leaves, all other leaves) as two lists."""
    flags = jax.tree.leaves(schedule_interior_mask(tree))
    leaves = jax.tree.leaves(tree)
    return [x for x, f in zip(leaves, flags) if f], [x for x, f in zip(leaves, flags) if not f]


def global_norms(grads):
    """(norm of every gradient but the schedule interior's, norm of the interior's: 0 if it has none)."""
    interior, rest = interior_and_rest(grads)
    return optax.tree.norm(rest), optax.tree.norm(interior) if interior else jnp.zeros((), jnp.float32)


def clip_by_global_norm_apart(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` applied to the schedule interior's gradient and to the rest separately.

    With no interior leaves it is `optax.clip_by_global_norm` itself (the same numbers). Its state is
    optax's EmptyState, like clip_by_global_norm's: checkpoints of either load into the other.
    """
    whole = optax.clip_by_global_norm(max_norm)

    def update(updates, state, params=None):
        flags = jax.tree.leaves(schedule_interior_mask(updates))
        if not any(flags):
            return whole.update(updates, state, params)
        norms = [optax.tree.norm(group) for group in interior_and_rest(updates)]  # (interior, rest)

        def clip(t, norm):  # optax.clip_by_global_norm's arithmetic, per group
            return jax.lax.select(norm < max_norm, t, (t / norm.astype(t.dtype)) * max_norm)

        leaves, tree = jax.tree.flatten(updates)
        clipped = [clip(x, norms[0] if f else norms[1]) for x, f in zip(leaves, flags)]
        return jax.tree.unflatten(tree, clipped), state

    return optax.GradientTransformation(whole.init, update)


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


def make_optimizer(optim_config, num_steps: int, clip_interior_apart: bool = False):
    """Returns (optax transformation, learning-rate schedule).

    clip_interior_apart: clip a learned schedule's interior gradient apart from the rest
    (`clip_by_global_norm_apart`; the trainer sets it with schedule.interior_objective = 'variance').
    """
    schedule = learning_rate_schedule(optim_config, num_steps)
    parts = []
    if optim_config.grad_clip > 0:
        clip = clip_by_global_norm_apart if clip_interior_apart else optax.clip_by_global_norm
        parts.append(clip(optim_config.grad_clip))
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
