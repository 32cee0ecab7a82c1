"""The diffusion loss: the one function every weighting, the ELBO and the training loss are built on.

    L_w(x) = 1/2 sum_i w(lambda_t,i) rate_t,i (eps_i - eps_hat_i(z_t; gamma_t))^2     nats per example

    z_t = alpha_t x + sigma_t eps,  eps ~ N(0, I),  lambda = -gamma = log SNR,  t ~ U[0, 1)
    rate_t = gamma'(t)                             continuous time (T = 0)
           = T expm1(gamma(t) - gamma(t - 1/T))    T steps, t mapped to ceil(t T) / T (0 -> 1 / T)

w = 1 gives the ELBO's diffusion term (L_inf, or L_T in discrete time). gamma_t and rate_t have x's
batch shape [B] (one noise level per example) or x's whole shape [B, ...] (one per dimension; rate_t
is then gamma's elementwise derivative, from `jax.jvp`).
"""

from __future__ import annotations

import jax.numpy as jnp

from vdm.core import diffusion, weightings
from vdm.core.schedules import gamma_and_derivative

__all__ = ["gamma_and_rate", "diffusion_loss", "ELBO_WEIGHTING"]

ELBO_WEIGHTING = weightings.get_weighting("elbo")  # w = 1


def gamma_and_rate(gamma_fn, t, num_steps: int = 0):
    """(gamma_t, rate_t) at times t [B], each gamma_fn's output shape ([B] or [B, ...]); see the module docstring."""
    t = jnp.asarray(t, jnp.float32)
    if num_steps == 0:
        return gamma_and_derivative(gamma_fn, t)
    t = jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps
    gamma_t = gamma_fn(t)
    return gamma_t, num_steps * jnp.expm1(gamma_t - gamma_fn(t - 1.0 / num_steps))


def diffusion_loss(x, eps, gamma_t, rate_t, eps_hat_fn, weighting=ELBO_WEIGHTING):
    """(L_w, L_1), each [B] nats, from one network call: the weighted loss and the ELBO's diffusion term.

    x: data in the network's scale [B, ...]; eps: N(0, I) noise, x's shape; gamma_t, rate_t: from
    `gamma_and_rate`; eps_hat_fn(z_t, gamma_t) -> eps_hat, x's shape; weighting: a
    `vdm.core.weightings.get_weighting(...)`, whose `loss_weight(lambda, rate)` is w(lambda) rate.
    """
    eps_hat = eps_hat_fn(diffusion.q_sample(x, gamma_t, eps), gamma_t)
    squared_error = jnp.square(eps - eps_hat)
    loss_weight = weighting.loss_weight(diffusion.log_snr(gamma_t), rate_t)
    return _half_weighted_sum(loss_weight, squared_error), _half_weighted_sum(rate_t, squared_error)


def _half_weighted_sum(weight, squared_error):
    """1/2 sum_i weight_i squared_error_i per example, [B]; a weight per example [B] multiplies the sum."""
    if jnp.ndim(weight) <= 1:
        return 0.5 * weight * jnp.sum(squared_error.reshape(squared_error.shape[0], -1), axis=-1)
    weighted = diffusion.expand_gamma(weight, squared_error) * squared_error
    return 0.5 * jnp.sum(weighted.reshape(weighted.shape[0], -1), axis=-1)
