"""MuLAN's auxiliary latent (Sahoo et al. 2024): an encoder q(c | x) and the head that turns c into each image's
noise schedule (`schedule.latent`, with `schedule.name = mulan`).

gaussian:  q(c | x) = N(mu(x), diag exp(log_var(x))),  p(c) = N(0, I),
           KL(q || p) = 1/2 sum_j (mu_j^2 + exp(log_var_j) - log_var_j - 1)                  (nats per example)

topk:      c in {0, 1}^d with k ones (MuLAN's discrete latent). q(. | x) draws k of the d slots one after another
           without replacement, slot i with probability proportional to exp(l_i(x)) among those left (Plackett-Luce,
           drawn exactly as the top k of l + Gumbel noise); p draws them uniformly. The latent is the ordered draw
           pi = (pi_1 .. pi_k), the schedule sees only the set. With q_j = softmax of l over the slots left at draw j,
               KL(q(pi | x) || p(pi)) = E_q sum_{j=1..k} [ sum_i q_j(i) log q_j(i) + log(d - j + 1) ]
           and `topk_kl` returns the bracket's sum for the sampled prefix: its value is an unbiased estimate, exact
           for k = 1 (then it is MuLAN's KL(softmax(l) || Uniform(d)), which is its first term for any k). Its
           gradient holds the drawn order fixed (no score-function term for how the prefix depends on l), so for
           k > 1 it is not the KL's exact gradient, like the straight-through latent's. The ordered draw's KL is
           at least the set's, so the ELBO stays a bound. c = hard multi-hot, with gradients through
           MuLAN's soft stand-in (the centred, normalised noisy logits; straight-through). MuLAN perturbs the
           logits with sums of Gamma draws; Gumbel noise is used here because then q is known exactly.

The head maps c [B, d] to offsets (da, db, draw_c) of the polynomial schedule's coefficients, each of the data's
shape per example (`vdm.core.per_dimension.PerDimensionPolynomial`). The encoder's and the head's output layers
start at zero: at initialisation q(c | x) = p(c) (KL 0) and every image has the shared schedule.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm.registry import Registry

__all__ = ["LATENTS", "make_latent", "GaussianLatent", "TopKLatent", "LatentEncoder", "ScheduleHead",
           "gaussian_kl_to_standard", "topk_kl"]


class LatentEncoder(nn.Module):
    """x [B, H, W, C] in the network's scale -> [B, outputs]: two 3x3 convolutions, the second with stride 2, then a
    dense layer initialised at zero."""

    outputs: int
    channels: int = 16

    @nn.compact
    def __call__(self, x):
        h = nn.swish(nn.Conv(self.channels, (3, 3), name="conv0")(x))
        h = nn.swish(nn.Conv(self.channels, (3, 3), strides=2, name="conv1")(h))
        return nn.Dense(self.outputs, kernel_init=nn.initializers.zeros, name="out")(h.reshape(h.shape[0], -1))


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


def topk_kl(logits, order):
    """The top-k latent's KL estimate [B] nats (module docstring) for logits [B, d] and the drawn slots order [B, k]
    (first drawn first)."""
    d = logits.shape[-1]
    taken = jnp.zeros(logits.shape, bool)
    kl = jnp.zeros(logits.shape[:-1], jnp.float32)
    for j in range(order.shape[-1]):
        log_q = jax.nn.log_softmax(jnp.where(taken, -1e30, logits), axis=-1)  # finite: -inf would give NaN gradients
        kl = kl + jnp.sum(jnp.where(taken, 0.0, jnp.exp(log_q) * log_q), axis=-1) + math.log(d - j)
        taken = taken | jax.nn.one_hot(order[..., j], d, dtype=bool)
    return kl


@dataclasses.dataclass(frozen=True)
class GaussianLatent:
    """A Gaussian latent c ~ q(c | x) per image, p(c) = N(0, I), whose KL joins the ELBO."""

    dim: int

    @property
    def encoder_outputs(self) -> int:
        return 2 * self.dim

    def noise(self, key, shape):
        return jax.random.normal(key, shape)

    def posterior(self, encoded, noise):
        """(c [B, d], KL [B] nats) from the encoder's output [B, 2d] and noise [B, d] ~ N(0, I)."""
        mean, log_var = encoded[:, : self.dim], encoded[:, self.dim:]
        return mean + jnp.exp(0.5 * log_var) * noise, gaussian_kl_to_standard(mean, log_var)

    def prior(self, noise):
        return noise

    def prior_mean(self, batch_size: int):
        """E_p[c] [B, d] = 0: the latent of a model asked for 'the' schedule without one."""
        return jnp.zeros((batch_size, self.dim))


@dataclasses.dataclass(frozen=True)
class TopKLatent:
    """MuLAN's discrete latent: k of d slots on, drawn without replacement from softmax(l(x)); p draws them
    uniformly."""

    dim: int
    k: int

    @property
    def encoder_outputs(self) -> int:
        return self.dim

    def noise(self, key, shape):
        return jax.random.gumbel(key, shape)

    def _multi_hot(self, perturbed):
        _, order = jax.lax.top_k(perturbed, self.k)
        return jnp.sum(jax.nn.one_hot(order, self.dim), axis=-2), order

    def posterior(self, logits, noise):
        """(c [B, d] multi-hot, KL estimate [B] nats) from logits [B, d] and Gumbel noise [B, d]."""
        perturbed = logits + noise
        hard, order = self._multi_hot(perturbed)
        centred = perturbed - jnp.mean(perturbed, axis=-1, keepdims=True)
        soft = centred / jnp.maximum(jnp.linalg.norm(centred, axis=-1, keepdims=True), 1e-12)
        return hard + (soft - jax.lax.stop_gradient(soft)), topk_kl(logits, order)  # the value is hard exactly

    def prior(self, noise):
        return self._multi_hot(noise)[0]

    def prior_mean(self, batch_size: int):
        """E_p[c] [B, d] = k / d per slot (zero is no top-k latent's value)."""
        return jnp.full((batch_size, self.dim), self.k / self.dim)


LATENTS = Registry("schedule latent", {
    "none": None,  # one schedule per dimension shared by every image (MuLAN without its latent: the ablation)
    "gaussian": GaussianLatent,
    "topk": TopKLatent,
})


def make_latent(name: str, dim: int, k: int = 0):
    """The latent `schedule.latent` names (None for 'none'), of dimension `dim` (k slots on for 'topk')."""
    cls = LATENTS.lookup(name)
    if cls is None:
        return None
    return cls(dim, k) if cls is TopKLatent else cls(dim)
