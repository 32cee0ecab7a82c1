"""Exact likelihood through the probability-flow ODE (Chen et al. 2018; Song et al. 2021).

For dz/dt = F(z, t) (`vdm.sampling.sde.ode_drift`), the instantaneous change of variables gives

    log p_0(z_0) = log p_1(z_1) + ∫_0^1 ∇·F(z_t, t) dt,

integrated from t = 0 to 1 together with z_t. The divergence is exact (a full
Jacobian: small dimensions only) or Hutchinson's estimate E_v[vᵀ (∂F/∂z) v]
with one Rademacher or Gaussian probe v per example, fixed along the path,
each vᵀJv from one `jax.jvp`. The prior p_1 defaults to N(0, I), the model's.

Bits/dim of discrete data need a dequantisation, and the two give different numbers:

- variational: −E_{q(z_0|x)}[log p_ODE(z_0) + log p(x|z_0) − log q(z_0|x)] (an upper bound on −log P(x));
- uniform: −log p_ODE(x̃ + u) + D log(V/2), u ~ U(−1/V, 1/V)^D, bins of width 2/V around the
  scaled values x̃ — here the ODE's density of z_0 is used as a density over the data
  (exact up to α_0 = sqrt(sigmoid(−γ_0)) ≈ 1).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from vdm.core import diffusion, losses
from vdm.sampling import sde


def standard_normal_log_prob(z):
    """log N(z; 0, I) summed over all but the batch axis: [B]."""
    d = math.prod(z.shape[1:])
    return -0.5 * jnp.sum(jnp.square(z).reshape(z.shape[0], -1), -1) - 0.5 * d * math.log(2 * math.pi)


def exact_divergence(f, z):
    """∇·f at z [B, ...] for f acting per example (f(z)[b] depends only on z[b]): trace of the Jacobian, [B]."""
    batch, shape = z.shape[0], z.shape[1:]
    d = math.prod(shape)

    def column(i):  # J e_i for every example at once, then its i-th coordinate
        e = jnp.zeros((batch, d)).at[:, i].set(1.0).reshape(z.shape)
        return jax.jvp(f, (z,), (e,))[1].reshape(batch, d)[:, i]

    return jnp.sum(jax.vmap(column)(jnp.arange(d)), axis=0)


def value_and_hutchinson_divergence(f, z, probe):
    """(f(z), vᵀ (∂f/∂z) v per example [B]) from one `jax.jvp`, v = probe: unbiased for ∇·f when E[v vᵀ] = I."""
    value, jv = jax.jvp(f, (z,), (probe,))
    return value, jnp.sum((probe * jv).reshape(z.shape[0], -1), -1)


def hutchinson_divergence(f, z, probe):
    """vᵀ (∂f/∂z) v per example, [B]: unbiased for ∇·f when E[v vᵀ] = I."""
    return value_and_hutchinson_divergence(f, z, probe)[1]


def make_probe(key, shape, kind: str):
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, jnp.float32)
    if kind == "gaussian":
        return jax.random.normal(key, shape)
    raise ValueError(f"unknown probe {kind!r}; expected 'rademacher' or 'gaussian'")


def ode_log_prob(z_0, eps_hat_fn, gamma_fn, key=None, divergence: str = "hutchinson", probe: str = "rademacher",
                 prior_log_prob=standard_normal_log_prob, rtol: float = 1e-5, atol: float = 1e-5,
                 max_steps: int = 4096):
    """log p_ODE(z_0) [B] with diffrax's adaptive Tsit5 from t = 0 to 1.

    divergence: 'exact' or 'hutchinson' (then `key` draws one `probe` per example).
    Returns (log p(z_0) [B], z_1 [B, ...], number of solver steps).
    """
    import diffrax

    v = None if divergence == "exact" else make_probe(key, z_0.shape, probe)

    def field(t, state, args):
        z, _ = state
        f = lambda y: sde.ode_drift(eps_hat_fn, gamma_fn, y, t)  # noqa: E731
        if divergence == "exact":
            return f(z), exact_divergence(f, z)
        return value_and_hutchinson_divergence(f, z, v)

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Tsit5(), t0=0.0, t1=1.0, dt0=1e-3,
        y0=(z_0, jnp.zeros(z_0.shape[0])), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    z_1, integral = sol.ys[0][-1], sol.ys[1][-1]
    return prior_log_prob(z_1) + integral, z_1, sol.stats["num_steps"]


def ode_bits_per_dim(x_int, eps_hat_fn, gamma_fn, vocab_size: int, key, dequantization: str = "variational",
                     probe: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5):
    """Per-example bits/dim [B] of integer data x_int [B, ...] through the ODE, with the named dequantisation."""
    k_deq, k_ode = jax.random.split(key)
    x = losses.scale_data(x_int, vocab_size)
    d = math.prod(x.shape[1:])
    if dequantization == "uniform":
        u = jax.random.uniform(k_deq, x.shape, minval=-1.0 / vocab_size, maxval=1.0 / vocab_size)
        log_p, _, _ = ode_log_prob(x + u, eps_hat_fn, gamma_fn, k_ode, probe=probe, rtol=rtol, atol=atol)
        nll = -log_p + d * math.log(vocab_size / 2)
    elif dequantization == "variational":
        gamma_0 = gamma_fn(jnp.zeros((x.shape[0],)))
        eps = jax.random.normal(k_deq, x.shape)
        z_0 = diffusion.q_sample(x, gamma_0, eps)
        log_p, _, _ = ode_log_prob(z_0, eps_hat_fn, gamma_fn, k_ode, probe=probe, rtol=rtol, atol=atol)
        _, sigma_0 = diffusion.alpha_sigma(diffusion.expand_gamma(gamma_0, x))
        log_q = jnp.sum((-0.5 * jnp.square(eps) - jnp.log(sigma_0) - 0.5 * math.log(2 * math.pi)).reshape(x.shape[0], -1), -1)
        log_px = -losses.reconstruction_loss(x_int, z_0, gamma_0, vocab_size)
        nll = -(log_p + log_px - log_q)
    elif dequantization == "truncated_normal":
        log_p, log_q = _truncated_normal_terms(x, eps_hat_fn, gamma_fn, vocab_size, k_deq, k_ode, probe, rtol, atol)
        nll = -(log_p - log_q)
    else:
        raise ValueError(f"unknown dequantization {dequantization!r}; expected one of {', '.join(DEQUANTIZATIONS)}")
    return nll / (d * math.log(2))


def _truncated_normal_terms(x, eps_hat_fn, gamma_fn, vocab_size, k_deq, k_ode, probe, rtol, atol):
    """(log p_ODE(z_0), log q(z_0 | x)), each [B], of i-DODE's truncated-normal dequantisation (Zheng et al. 2023).

    q(z_0 | x) is q(z_0 | x) = N(alpha_0 x, sigma_0^2) restricted to alpha_0 times x's bin [x - 1/V, x + 1/V]:
    z_0 = alpha_0 x + sigma_0 eps, eps ~ N(0, 1) truncated to [-tau, tau], tau = alpha_0 / (V sigma_0), with
    log q = sum_i [log N(eps_i; 0, 1) - log sigma_0,i - log Z_i], Z = erf(tau / sqrt 2). The boxes of different x do
    not overlap, so P(x) = int_box(x) p_ODE(z) dz is a discrete model, and by Jensen
    log P(x) >= E_q[log p_ODE(z_0) - log q(z_0 | x)]: one draw per example estimates the bound.
    """
    gamma_0 = gamma_fn(jnp.zeros((x.shape[0],)))
    alpha_0, sigma_0 = diffusion.alpha_sigma(diffusion.expand_gamma(gamma_0, x))
    tau = jnp.broadcast_to(alpha_0 / (vocab_size * sigma_0), x.shape)
    eps = jax.random.truncated_normal(k_deq, -tau, tau, x.shape)
    z_0 = alpha_0 * x + sigma_0 * eps
    log_p, _, _ = ode_log_prob(z_0, eps_hat_fn, gamma_fn, k_ode, probe=probe, rtol=rtol, atol=atol)
    log_q = (-0.5 * jnp.square(eps) - 0.5 * math.log(2 * math.pi) - jnp.log(jnp.broadcast_to(sigma_0, x.shape))
             - jnp.log(erf(tau / math.sqrt(2.0))))
    return log_p, jnp.sum(log_q.reshape(x.shape[0], -1), -1)


DEQUANTIZATIONS = {
    "variational": "variational: -E_q(z_0|x)[log p_ODE(z_0) + log p(x|z_0) - log q(z_0|x)], one z_0 per example",
    "uniform": "uniform: -log p_ODE(x~ + u) + D log(V/2), u ~ U(-1/V, 1/V) per pixel (bins of width 2/V)",
    "truncated_normal": "truncated normal (i-DODE): -E_q[log p_ODE(z_0) - log q(z_0|x)], q = N(alpha_0 x~, sigma_0^2) "
                        "restricted to alpha_0 times x's bin, one z_0 per example",
}
