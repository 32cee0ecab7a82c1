"""The ELBO estimator of evaluation: independent draws per example, K stratified points, sampling in log-SNR.

For one example the continuous-time diffusion term is an integral over gamma alone: the network sees
gamma, not t, so the schedule enters only through its endpoints (the paper's Eq. 16):

    L_inf(x) = 1/2 int_{gamma_0}^{gamma_1} E_eps ||eps - eps_hat(z_gamma; gamma)||^2 d gamma,
    z_gamma = alpha_gamma x + sigma_gamma eps.

Any increasing map u -> gamma(u) of [0, 1] onto [gamma_0, gamma_1] with derivative g(u) gives the
unbiased estimate 1/2 g(u) ||eps - eps_hat||^2 at u ~ U[0, 1): importance sampling of gamma with the
proposal density 1 / g. The maps, `TIME_DENSITIES` (config key eval.time_density):

    log_snr_uniform   gamma = gamma_0 + (gamma_1 - gamma_0) u, g = gamma_1 - gamma_0 (uniform in log-SNR)
    schedule          gamma = gamma(u), g = gamma'(u): the model's own schedule, the training loss's t-sampling

Under a schedule with a steep end (alpha-cosine on [-8, 5] has gamma'(0) ~ 160) `schedule` puts few
points where gamma' is large and weights them by gamma': a heavy-tailed estimate. `log_snr_uniform`
weights every point alike. A denoiser that is not a function of (z, gamma) alone (one that sees t, or a
schedule that differs per example or per pixel) breaks the identity above and must use `schedule`.

Each example gets its own key, hence independent draws: K jittered-stratified points u_k = (k + v_k) / K
(v_k ~ U[0, 1) per stratum), an eps for each, and z_0's noise for the reconstruction term. The
per-example estimates are then independent given the data, so a standard error over examples covers
the data, the times and the noise together.

Discrete time (T steps): L_T = 1/2 sum_{i=1}^{T} expm1(gamma_{i/T} - gamma_{(i-1)/T}) E_eps ||eps - eps_hat||^2
at gamma_{i/T}. With T <= K every step is evaluated once (enumeration: only eps is random); with T > K
the K stratified times go to the steps ceil(T u_k) (each stratum holds T / K steps).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm.core import diffusion, losses, objective
from vdm.core.schedules import gamma_and_derivative, one_gamma_per_example
from vdm.registry import Registry

__all__ = ["TIME_DENSITIES", "TimeDensity", "ElboEstimator", "stratified_points", "diffusion_estimate", "elbo_estimate"]


@dataclasses.dataclass(frozen=True)
class TimeDensity:
    """A map u -> gamma: fn(u [K, B], gamma_fn, gamma_0, gamma_1) -> (gamma [K, B], d gamma / du [K, B]) for a
    schedule of one gamma per example (one per dimension takes `schedule`'s t-sampling point by point)."""

    fn: Callable
    description: str


def _log_snr_uniform(u, gamma_fn, gamma_0, gamma_1):
    return gamma_0 + (gamma_1 - gamma_0) * u, jnp.broadcast_to(gamma_1 - gamma_0, u.shape)


def _schedule(u, gamma_fn, gamma_0, gamma_1):
    gamma, dgamma = gamma_and_derivative(gamma_fn, u.reshape(-1))
    return gamma.reshape(u.shape), dgamma.reshape(u.shape)


TIME_DENSITIES = Registry("time density", {
    "log_snr_uniform": TimeDensity(_log_snr_uniform, "uniform in log-SNR"),
    "schedule": TimeDensity(_schedule, "t ~ U[0, 1) under the model's schedule"),
})


@dataclasses.dataclass(frozen=True)
class ElboEstimator:
    """How evaluation estimates the ELBO: K points per example (eval.points_per_example), their density in
    log-SNR (eval.time_density) and R independent repeats (eval.num_repeats)."""

    points: int = 8
    density: str = "log_snr_uniform"
    repeats: int = 2

    def __post_init__(self):
        TIME_DENSITIES.lookup(self.density)
        if self.points < 1 or self.repeats < 1:
            raise ValueError(f"points and repeats must be >= 1, got {self.points}, {self.repeats}")

    @classmethod
    def from_config(cls, eval_config) -> "ElboEstimator":
        return cls(eval_config.points_per_example, eval_config.time_density, eval_config.num_repeats)

    def describe(self, num_steps: int = 0) -> str:
        """One line for results.json and the experiments' tables: what the reported bits/dim estimate is."""
        if num_steps and num_steps <= self.points:
            diffusion = f"L_T with all {num_steps} steps per example"
        elif num_steps:
            diffusion = f"L_T at {self.points} stratified steps of {num_steps} per example"
        else:
            diffusion = f"L_inf at {self.points} stratified points per example, {TIME_DENSITIES[self.density].description}"
        return f"{diffusion}; {self.repeats} repeat(s); independent draws per example"


def stratified_points(key, num_points: int):
    """u_k = (k + v_k) / K, v_k ~ U[0, 1) independent: one point in each of K equal strata of [0, 1), [K]."""
    return (jnp.arange(num_points) + jax.random.uniform(key, (num_points,))) / num_points


def diffusion_estimate(x, keys, eps_hat_fn, gamma_fn, num_steps: int = 0, points: int = 8,
                       density: str = "log_snr_uniform"):
    """The diffusion term, one independent estimate per example, [B] nats (see the module docstring).

    Args:
      x: data in the network's scale [B, ...]. keys: one PRNG key per example [B].
      eps_hat_fn(z [B, ...], gamma [B]) -> eps_hat [B, ...]: called once per point k on every example
        (`jax.lax.map` over the K points).
      gamma_fn(t) -> gamma, elementwise and increasing. num_steps: T, or 0 for continuous time.
      points: K. density: a key of TIME_DENSITIES (continuous time only).
    Returns:
      [B]: unbiased for each example's L_inf(x) (or L_T(x)).
    """
    enumerate_steps = 0 < num_steps <= points
    num_points = num_steps if enumerate_steps else points

    def draws(key):
        k_u, k_eps = jax.random.split(key)
        return stratified_points(k_u, num_points), jax.random.normal(k_eps, (num_points, *x.shape[1:]))

    u, eps = jax.vmap(draws)(keys)
    u, eps = u.T, jnp.moveaxis(eps, 1, 0)  # [K, B], [K, B, ...]
    t = (jnp.arange(num_steps)[:, None] + 0.5) / num_steps if enumerate_steps else u  # the middle of every step
    if not one_gamma_per_example(gamma_fn, x.shape[0]):
        # One gamma per dimension: t ~ U[0, 1) under the schedule (L_inf depends on its path in gamma-space), each
        # point's gamma evaluated for the batch (a schedule conditioned on each example takes times [B]).
        if not num_steps and density != "schedule":
            raise ValueError(f"eval.time_density {density!r} samples one log-SNR for all dimensions; a schedule of one "
                             "gamma per dimension makes L_inf depend on its path in gamma-space: use 'schedule'")

        def point(et):
            return objective.diffusion_loss(x, et[0], *objective.gamma_and_rate(gamma_fn, et[1], num_steps), eps_hat_fn)[1]

        return jnp.mean(jax.lax.map(point, (eps, jnp.broadcast_to(t, u.shape))), axis=0)
    if num_steps:  # u, or the middle of every step when enumerating, goes to its step i / T
        gamma, weight = objective.gamma_and_rate(gamma_fn, jnp.broadcast_to(t, u.shape).reshape(-1), num_steps)
        gamma, weight = gamma.reshape(u.shape), weight.reshape(u.shape)
    else:
        gamma_0, gamma_1 = gamma_fn(jnp.array([0.0, 1.0]))
        gamma, weight = TIME_DENSITIES.lookup(density).fn(u, gamma_fn, gamma_0, gamma_1)
    point_losses = jax.lax.map(lambda ewg: objective.diffusion_loss(x, *ewg, eps_hat_fn)[1], (eps, gamma, weight))
    return jnp.mean(point_losses, axis=0)  # [K, B] -> [B]


def elbo_estimate(x_int, keys, eps_hat_fn, gamma_fn, vocab_size: int, num_steps: int = 0, points: int = 8,
                  density: str = "log_snr_uniform", decoder_window: int = 0, latent_kl=None) -> dict:
    """Prior, reconstruction and diffusion terms and their total, one independent estimate per example.

    x_int: integer data [B, ...] in {0..V-1}; keys: one PRNG key per example [B]; the rest as
    `diffusion_estimate` and `vdm.core.losses.elbo_terms`.
    Returns {'prior', 'reconstruction', 'diffusion', 'total'} in nats and 'bpd', 'bpd_<term>', each [B].
    """
    x = losses.scale_data(x_int, vocab_size)
    key_0, key_diffusion = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    gamma_0, gamma_1 = losses.endpoint_gammas(gamma_fn, x.shape[0])
    eps_0 = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:]))(key_0)
    terms = {
        "prior": losses.prior_kl(x, gamma_1),
        "reconstruction": losses.reconstruction_loss(
            x_int, diffusion.q_sample(x, gamma_0, eps_0), gamma_0, vocab_size, decoder_window),
        "diffusion": diffusion_estimate(x, key_diffusion, eps_hat_fn, gamma_fn, num_steps, points, density),
        **({} if latent_kl is None else {"latent": latent_kl}),  # an auxiliary latent's KL (MuLAN)
    }
    return losses.with_totals(terms, math.prod(x.shape[1:]))
