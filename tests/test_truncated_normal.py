"""i-DODE's truncated-normal dequantisation on a 1-D discretised Gaussian, where the ODE's density is exact.

Data x ~ N(0, s^2) under a log-SNR-linear schedule with the optimal denoiser: the probability-flow ODE maps z_0
to z_1 = z_0 sqrt(v_1 / v_0) (v_t = alpha_t^2 s^2 + sigma_t^2), so p_ODE(z_0) = N(z_0; 0, v_0 / v_1) under the
N(0, 1) prior. For one bin x the bound E_q[log p_ODE(z_0) - log q(z_0 | x)] is then a 1-D integral over the
truncated normal, computed here by quadrature in float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vdm.core import diffusion as D
from vdm.sampling import likelihood

S, G0, G1, V = 0.5, -4.0, 6.0, 8  # tau = alpha_0 / (V sigma_0) = 0.92: the normaliser erf(tau / sqrt 2) = 0.64 matters


def gamma_fn(t):
    return G0 + (G1 - G0) * jnp.asarray(t, jnp.float32)


def optimal_eps_hat(z, gamma):
    a, s = D.alpha_sigma(D.expand_gamma(gamma, z))
    return s * z / (a**2 * S**2 + s**2)


def _variance(gamma):
    alpha_sq = 1 / (1 + math.exp(gamma))
    return alpha_sq * S**2 + 1 - alpha_sq


def test_truncated_normal_bound_matches_quadrature_and_stays_below_log_p_of_the_bin():
    k = 5
    x = 2 * (k + 0.5) / V - 1
    alpha_0, sigma_0 = math.sqrt(1 / (1 + math.exp(G0))), math.sqrt(1 / (1 + math.exp(-G0)))
    model_var = _variance(G0) / _variance(G1)
    tau = alpha_0 / (V * sigma_0)
    eps = np.linspace(-tau, tau, 200_001)
    z_normaliser = math.erf(tau / math.sqrt(2))
    log_q = stats.norm.logpdf(eps) - math.log(sigma_0) - math.log(z_normaliser)
    integrand = np.exp(log_q + math.log(sigma_0)) * (stats.norm.logpdf(alpha_0 * x + sigma_0 * eps, 0, math.sqrt(model_var)) - log_q)
    bound = np.trapezoid(integrand, eps)  # nats
    box = (alpha_0 * (x - 1 / V), alpha_0 * (x + 1 / V))
    log_p_bin = math.log(stats.norm.cdf(box[1], 0, math.sqrt(model_var)) - stats.norm.cdf(box[0], 0, math.sqrt(model_var)))
    # a bound: the gap is KL(q || p restricted to the box), p being nearly flat over it here
    assert bound <= log_p_bin

    n = 2000
    x_int = jnp.full((n, 1), k)
    bpd = jax.jit(lambda key: likelihood.ode_bits_per_dim(x_int, optimal_eps_hat, gamma_fn, V, key,
                                                            dequantization="truncated_normal"))(jax.random.key(0))
    log_lik = -np.asarray(bpd, np.float64) * math.log(2)  # D = 1
    mean, se = log_lik.mean(), log_lik.std() / math.sqrt(n)
    assert abs(mean - bound) < 4 * se + 1e-4, f"MC {mean:.5f} +- {se:.5f} vs quadrature {bound:.5f}"
    # not vacuous: the Monte-Carlo error separates the bound of a bin half as wide (tau / 2), by quadrature
    half = np.linspace(-tau / 2, tau / 2, 200_001)
    log_q_half = stats.norm.logpdf(half) - math.log(sigma_0) - math.log(math.erf(tau / 2 / math.sqrt(2)))
    bound_half = np.trapezoid(np.exp(log_q_half + math.log(sigma_0)) * (
        stats.norm.logpdf(alpha_0 * x + sigma_0 * half, 0, math.sqrt(model_var)) - log_q_half), half)
    assert abs(bound_half - bound) > 10 * se
