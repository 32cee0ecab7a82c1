"""MuLAN's auxiliary latent (Sahoo et al. 2024): an encoder q(c | x) and the head that turns c into each image's
noise schedule (`schedule.latent`, with `schedule.name = mulan`).

    q(c | x) = N(mu(x), diag exp(log_var(x))),  p(c) = N(0, I),
    KL(q || p) = 1/2 sum_j (mu_j^2 + exp(log_var_j) - log_var_j - 1)        (nats per example)

The head maps c [B, d] to offsets (da, db, draw_c) of the polynomial schedule's coefficients, each of the data's
shape per example (`vdm.core.per_dimension.PerDimensionPolynomial`). Both output layers start at zero: at
initialisation q(c | x) = p(c) (KL 0) and every image has the shared schedule.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

from vdm.registry import Registry

__all__ = ["LATENTS", "GaussianEncoder", "ScheduleHead", "gaussian_kl_to_standard"]

LATENTS = Registry("schedule latent", {
    "none": "one schedule per dimension shared by every image (MuLAN without its latent: the ablation)",
    "gaussian": "a Gaussian latent c ~ q(c | x) per image, p(c) = N(0, I), whose KL joins the ELBO",
})


class GaussianEncoder(nn.Module):
    """x [B, H, W, C] in the network's scale -> (mu [B, d], log_var [B, d]): two 3x3 convolutions, the second with
    stride 2, then a dense layer initialised at zero."""

    latent_dim: int
    channels: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.swish(nn.Conv(self.channels, (3, 3), name="conv0")(x))
        h = nn.swish(nn.Conv(self.channels, (3, 3), strides=2, name="conv1")(h))
        out = nn.Dense(2 * self.latent_dim, kernel_init=nn.initializers.zeros, name="out")(h.reshape(h.shape[0], -1))
        return out[:, : self.latent_dim], out[:, self.latent_dim:]


class ScheduleHead(nn.Module):
    """c [B, d] -> (da, db, draw_c), each [B, *shape]: a hidden layer, then a dense layer initialised at zero."""

    shape: tuple
    hidden: int = 64

    @nn.compact
    def __call__(self, c):
        size = math.prod(self.shape)
        h = nn.swish(nn.Dense(self.hidden, name="hidden")(c))
        out = nn.Dense(3 * size, kernel_init=nn.initializers.zeros, name="out")(h)
        return tuple(out[:, i * size:(i + 1) * size].reshape(c.shape[0], *self.shape) for i in range(3))


def gaussian_kl_to_standard(mean, log_var):
    """KL(N(mean, exp(log_var)) || N(0, I)) per example, [B] nats (see the module docstring)."""
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - log_var - 1.0, axis=-1)
