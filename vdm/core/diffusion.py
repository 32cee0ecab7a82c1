"""The Gaussian diffusion process in SNR form (Kingma et al. 2021, §2-3).

Everything is parameterised by the log-SNR's negative, gamma = -log SNR:

    sigma^2 = sigmoid(gamma),  alpha^2 = sigmoid(-gamma),  SNR = exp(-gamma).

Shapes: ``x``, ``z``, ``eps`` are float arrays ``[B, ...]``. ``gamma`` is a
scalar, ``[B]`` (one noise level per example), ``[B, 1, ..., 1]``, or the data's
whole shape ``[B, ...]`` (one per dimension); a ``[B]`` gamma is reshaped to
``[B, 1, ..., 1]`` against the data it is combined with. Every formula is
elementwise, so each holds per dimension. Returned means have the data's shape;
returned variances broadcast against it.

All formulas use the stable sigmoid / log-sigmoid / expm1 forms, so they stay
finite in float32 for gamma in [-30, 30].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm.registry import Registry

__all__ = [
    "alpha_sigma",
    "expand_gamma",
    "log_snr",
    "q_sample",
    "transition",
    "posterior",
    "posterior_from_eps",
    "gaussian_kl",
    "x_from_eps",
    "eps_from_x",
    "score_from_eps",
    "eps_from_score",
    "v_from_eps",
    "eps_from_v",
    "eps_from_prediction",
    "prediction_from_eps",
    "Prediction",
    "PREDICTIONS",
]


def expand_gamma(gamma, like):
    """Reshapes a scalar / [B] / [B,1,..,1] gamma so it broadcasts against `like` [B, ...]; one of like's shape
    (a gamma per dimension) passes as it is."""
    gamma = jnp.asarray(gamma)
    like = jnp.asarray(like)
    if gamma.ndim == 1 and like.ndim > 1:
        gamma = gamma.reshape(gamma.shape + (1,) * (like.ndim - 1))
    return gamma


def log_snr(gamma):
    """lambda = log SNR = log(alpha^2 / sigma^2) = -gamma: the log-SNR of the weightings and the ELBO's integral
    (DPM-Solver's lambda is half of it, log(alpha / sigma); `vdm.sampling.dpm_solver` calls that half_log_snr)."""
    return -jnp.asarray(gamma)


def alpha_sigma(gamma):
    """(alpha, sigma) with alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma).

    Returns arrays of gamma's shape.
    """
    gamma = jnp.asarray(gamma)
    return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))


def q_sample(x, gamma, eps):
    """z_t = alpha_t x + sigma_t eps, a draw from q(z_t | x) = N(alpha_t x, sigma_t^2 I).

    Args:
      x: data [B, ...]. gamma: scalar, [B] or [B, 1, ..., 1]. eps: N(0, I) noise, x's shape.
    Returns:
      z_t of x's shape.
    """
    alpha, sigma = alpha_sigma(expand_gamma(gamma, x))
    return alpha * x + sigma * eps


def _transition_coefficients(gamma_s, gamma_t):
    """alpha_{t|s} = alpha_t / alpha_s and c = 1 - SNR_t/SNR_s = -expm1(gamma_s - gamma_t), for gamma_s <= gamma_t.

    c is clamped at 0: where a per-dimension schedule is flat (MuLAN's polynomial at a root of p), float32 can give
    gamma_s a rounding above gamma_t, which would make a variance negative."""
    alpha_ts = jnp.exp(0.5 * (jax.nn.log_sigmoid(-gamma_t) - jax.nn.log_sigmoid(-gamma_s)))
    c = -jnp.expm1(jnp.minimum(gamma_s - gamma_t, 0.0))
    return alpha_ts, c


def transition(z_s, gamma_s, gamma_t):
    """q(z_t | z_s) = N(alpha_{t|s} z_s, sigma_{t|s}^2 I) for s < t (gamma_s < gamma_t).

    alpha_{t|s} = alpha_t / alpha_s;  sigma_{t|s}^2 = sigma_t^2 (1 - SNR_t / SNR_s)
    = sigmoid(gamma_t) * -expm1(gamma_s - gamma_t).

    Returns:
      (mean [B, ...], var broadcastable to z_s).
    """
    gamma_s, gamma_t = expand_gamma(gamma_s, z_s), expand_gamma(gamma_t, z_s)
    alpha_ts, c = _transition_coefficients(gamma_s, gamma_t)
    return alpha_ts * z_s, jax.nn.sigmoid(gamma_t) * c


def posterior(z_t, x, gamma_s, gamma_t):
    """q(z_s | z_t, x) = N(mu_Q, sigma_Q^2 I) for s < t.

    mu_Q = alpha_{t|s} (sigma_s^2 / sigma_t^2) z_t + alpha_s c x,
    sigma_Q^2 = sigma_s^2 c,  with c = -expm1(gamma_s - gamma_t).

    Args:
      z_t: [B, ...]. x: clean data (or a prediction of it), z_t's shape.
      gamma_s, gamma_t: scalar, [B] or [B, 1, ..., 1], gamma_s < gamma_t.
    Returns:
      (mean [B, ...], var broadcastable to z_t).
    """
    gamma_s, gamma_t = expand_gamma(gamma_s, z_t), expand_gamma(gamma_t, z_t)
    alpha_ts, c = _transition_coefficients(gamma_s, gamma_t)
    ratio = jnp.exp(jax.nn.log_sigmoid(gamma_s) - jax.nn.log_sigmoid(gamma_t))  # sigma_s^2/sigma_t^2
    alpha_s = jnp.sqrt(jax.nn.sigmoid(-gamma_s))
    mean = alpha_ts * ratio * z_t + alpha_s * c * x
    return mean, jax.nn.sigmoid(gamma_s) * c


def posterior_from_eps(z_t, eps, gamma_s, gamma_t):
    """q(z_s | z_t, x) with x expressed through eps: mu_Q = (alpha_s/alpha_t)(z_t - sigma_t c eps).

    Same distribution as `posterior(z_t, x, ...)` when z_t = alpha_t x + sigma_t eps.
    Returns (mean, var).
    """
    gamma_s, gamma_t = expand_gamma(gamma_s, z_t), expand_gamma(gamma_t, z_t)
    alpha_ts, c = _transition_coefficients(gamma_s, gamma_t)
    sigma_t = jnp.sqrt(jax.nn.sigmoid(gamma_t))
    mean = (z_t - sigma_t * c * eps) / alpha_ts
    return mean, jax.nn.sigmoid(gamma_s) * c


def gaussian_kl(mean1, var1, mean2, var2):
    """Elementwise KL(N(mean1, var1) || N(mean2, var2)) in nats (sum it yourself).

    = 1/2 [log(var2/var1) + var1/var2 + (mean1 - mean2)^2 / var2 - 1].
    """
    ratio = var1 / var2
    return 0.5 * (ratio - jnp.log(ratio) - 1.0 + jnp.square(mean1 - mean2) / var2)


# --- Equivalent parameterisations of the denoiser ------------------------------------
# With z = alpha x + sigma eps:  x = (z - sigma eps)/alpha;  score = -eps/sigma
# (Tweedie: alpha x_hat = z + sigma^2 score);  v = alpha eps - sigma x, so that
# x = alpha z - sigma v and eps = sigma z + alpha v.


def x_from_eps(z, eps, gamma):
    """x_hat = (z - sigma eps) / alpha."""
    alpha, sigma = alpha_sigma(expand_gamma(gamma, z))
    return (z - sigma * eps) / alpha


def eps_from_x(z, x, gamma):
    """eps_hat = (z - alpha x) / sigma."""
    alpha, sigma = alpha_sigma(expand_gamma(gamma, z))
    return (z - alpha * x) / sigma


def score_from_eps(eps, gamma):
    """score = grad_z log q(z_t) estimate = -eps / sigma."""
    _, sigma = alpha_sigma(expand_gamma(gamma, eps))
    return -eps / sigma


def eps_from_score(score, gamma):
    """eps = -sigma score."""
    _, sigma = alpha_sigma(expand_gamma(gamma, score))
    return -sigma * score


def v_from_eps(z, eps, gamma):
    """v = alpha eps - sigma x = (eps - sigma z) / alpha."""
    alpha, sigma = alpha_sigma(expand_gamma(gamma, z))
    return (eps - sigma * z) / alpha


def eps_from_v(z, v, gamma):
    """eps = sigma z + alpha v."""
    alpha, sigma = alpha_sigma(expand_gamma(gamma, z))
    return sigma * z + alpha * v


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What a network may predict: to_eps(pred, z, gamma) -> eps_hat and its inverse from_eps(eps, z, gamma)."""

    to_eps: Callable
    from_eps: Callable


PREDICTIONS = Registry("prediction kind", {
    "eps": Prediction(lambda eps, z, gamma: eps, lambda eps, z, gamma: eps),
    "x": Prediction(lambda x, z, gamma: eps_from_x(z, x, gamma), lambda eps, z, gamma: x_from_eps(z, eps, gamma)),
    "v": Prediction(lambda v, z, gamma: eps_from_v(z, v, gamma), lambda eps, z, gamma: v_from_eps(z, eps, gamma)),
    "score": Prediction(lambda score, z, gamma: eps_from_score(score, gamma),
                        lambda eps, z, gamma: score_from_eps(eps, gamma)),
})


def eps_from_prediction(pred, z, gamma, kind: str):
    """Converts a network output of a kind in `PREDICTIONS` ('eps', 'x', 'v', 'score') to eps_hat."""
    return PREDICTIONS.lookup(kind).to_eps(pred, z, gamma)


def prediction_from_eps(eps, z, gamma, kind: str):
    """Inverse of `eps_from_prediction`: eps_hat -> the prediction of the given kind."""
    return PREDICTIONS.lookup(kind).from_eps(eps, z, gamma)
