"""Dropout with its mask named, so that recomputation (`model.recompute`) keeps the mask instead of redrawing it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

DROPOUT_MASK = "resnet_dropout_mask"  # the name `vdm.nets.layers.RECOMPUTE_POLICY` keeps


class NamedMaskDropout(nn.Module):
    """flax.linen.Dropout (same key, mask and output) with its boolean mask named `DROPOUT_MASK`.

    Under a remat policy that saves the name, the backward pass reuses the mask
    instead of drawing the random bits again (on a CPU, drawing them costs more
    than storing one byte per activation).
    """

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=x.shape)
        return jax.lax.select(checkpoint_name(mask, DROPOUT_MASK), x / keep, jnp.zeros_like(x))
