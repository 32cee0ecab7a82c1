"""Discrete-time samplers on the grid t_i = i / T, and decoding z_0 to data.

Pure functions of a denoiser eps_hat_fn(z, gamma) and a schedule gamma_fn(t).
Ancestral sampling walks the generative model p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t))
on the grid t_i = i / T, i = T .. 1, from z_1 ~ N(0, I); the last latent z_0
is decoded by the discretised decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion, losses
from vdm.sampling import grids


def ancestral_sample(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_t"):
    """z_0 after T ancestral steps, starting from z_1 ~ N(0, I).

    Each step: eps_hat = eps_hat_fn(z_t, gamma_t); z_s ~ N(mu_Q, sigma_Q^2) with
    mu_Q = (alpha_s / alpha_t)(z_t - sigma_t c eps_hat), sigma_Q^2 = sigma_s^2 c,
    c = -expm1(gamma_s - gamma_t). Compiled as one `lax.scan`.

    Args:
      key: PRNG key. shape: [B, ...] of the latents. num_steps: T. grid: the noise levels, a key of
        `vdm.sampling.grids.GRIDS` (default t_i = i / T).
    Returns:
      z_0 [B, ...].
    """
    k_init, k_steps = jax.random.split(key)
    z = jax.random.normal(k_init, shape)
    _, gamma_at = grids.batch_grid(grid, gamma_fn, num_steps, shape[0])  # T + 1 points, from t = 1 down to t = 0

    def step(z, i):  # i = T - 1, ..., 0: from point T - 1 - i (t) to point T - i (s)
        gamma_s, gamma_t = gamma_at(num_steps - i), gamma_at(num_steps - 1 - i)
        mean, var = diffusion.posterior_from_eps(z, eps_hat_fn(z, gamma_t), gamma_s, gamma_t)
        noise = jax.random.normal(jax.random.fold_in(k_steps, i), shape)
        return mean + jnp.sqrt(var) * noise, None

    z, _ = jax.lax.scan(step, z, jnp.arange(num_steps - 1, -1, -1))
    return z


def decode(z_0, gamma_0, vocab_size: int, key=None):
    """Integer data from z_0: the decoder's most likely value, or a draw from it if `key` is given."""
    logits = losses.decoder_logits(z_0, gamma_0, vocab_size)
    if key is None:
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, logits, axis=-1)


def ddim_sample(key, eps_hat_fn, gamma_fn, shape, num_steps: int, eta: float = 0.0, z_1=None,
                grid: str = "uniform_t"):
    """z_0 after T DDIM steps (Song et al. 2021) from z_1 ~ N(0, I).

    Each step: x_hat = (z_t - sigma_t eps_hat) / alpha_t;
    z_s = alpha_s x_hat + sqrt(sigma_s^2 - v) eps_hat + sqrt(v) noise, with
    v = eta^2 sigma_Q^2 = eta^2 sigma_s^2 c. eta = 1 is exactly the ancestral
    step (sqrt(sigma_s^2 - sigma_Q^2) = sigma_s exp((gamma_s - gamma_t)/2));
    eta = 0 is deterministic and approaches the probability-flow ODE as T grows.
    z_1: the starting latent (default: drawn from `key`). grid: the noise levels, a key of
    `vdm.sampling.grids.GRIDS` (default t_i = i / T). T network evaluations.
    """
    k_init, k_steps = jax.random.split(key)
    z = jax.random.normal(k_init, shape) if z_1 is None else z_1
    _, gamma_at = grids.batch_grid(grid, gamma_fn, num_steps, shape[0])  # T + 1 points, from t = 1 down to t = 0

    def step(z, i):
        gamma_s, gamma_t = gamma_at(num_steps - i), gamma_at(num_steps - 1 - i)
        eps_hat = eps_hat_fn(z, gamma_t)
        x_hat = diffusion.x_from_eps(z, eps_hat, gamma_t)
        g_s = diffusion.expand_gamma(gamma_s, z)
        g_t = diffusion.expand_gamma(gamma_t, z)
        alpha_s, _ = diffusion.alpha_sigma(g_s)
        sigma_s_sq = jax.nn.sigmoid(g_s)
        var = eta**2 * sigma_s_sq * -jnp.expm1(g_s - g_t)
        noise = jax.random.normal(jax.random.fold_in(k_steps, i), shape)
        return alpha_s * x_hat + jnp.sqrt(sigma_s_sq - var) * eps_hat + jnp.sqrt(var) * noise, None

    z, _ = jax.lax.scan(step, z, jnp.arange(num_steps - 1, -1, -1))
    return z
