"""DPM-Solver++ multistep (Lu et al. 2022): the probability-flow ODE in log-SNR time, data prediction.

With lambda = -gamma / 2 = log(alpha / sigma) (DPM-Solver's lambda: half the log-SNR `diffusion.log_snr`,
named `half_log_snr` in the code) and
the data prediction x_hat(z, gamma) = (z - sigma eps_hat) / alpha, the probability-flow ODE
(`vdm.sampling.sde`) is dz/dlambda = -alpha^2 z + alpha x_hat, whose linear part integrates
exactly (variation of constants) from lambda_s to lambda_t = lambda_s + h:

    z_t = (sigma_t / sigma_s) z_s + alpha_t int_0^h e^(u - h) x_hat(lambda_s + u) du.

Only x_hat is approximated, by a polynomial in lambda through the last k predictions
m0 = x_hat_i, m1 = x_hat_(i-1), m2 = x_hat_(i-2) (k = the step's order). With
phi1 = expm1(-h), phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2 (int_0^h e^(u-h) u^j / j! du =
-phi1, h phi2, -h^2 phi3 for j = 0, 1, 2), and r0 = h0 / h, r1 = h1 / h the ratios of the two
previous steps h0 = lambda_i - lambda_(i-1), h1 = lambda_(i-1) - lambda_(i-2) to this one:

    order 1 (DDIM):  z_t = (sigma_t / sigma_s) z_s - alpha_t phi1 m0
    order 2 (2M):    ... - alpha_t phi1 (m0 - m1) / (2 r0)            (the paper's Algorithm 2)
    order 3 (3M):    ... + alpha_t phi2 D1 - 2 alpha_t phi3 D2, with
                     d0 = (m0 - m1) / r0, d1 = (m1 - m2) / r1 (each h x_hat' + O(h^2)),
                     D1 = d0 + r0 (d0 - d1) / (r0 + r1) = h x_hat' + O(h^3),
                     D2 = (d0 - d1) / (r0 + r1) = h^2 x_hat'' / 2 + O(h^3).

The first steps have lower order (the first is order 1, the second at most order 2), as
the paper does: there are not yet enough previous predictions. Each step evaluates the
network once, so `num_steps` is the number of network evaluations (NFE). With
`denoise_final`, the last evaluation is spent instead on x_hat at gamma_0 after
num_steps - 1 solver steps, and alpha_0 x_hat is returned (the noise-free z_0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion
from vdm.sampling import grids

_SERIES_BELOW = 0.1  # |h| below which phi2, phi3 come from their Taylor series (no cancellation in float32)


def phis(h):
    """(phi1, phi2, phi3) of step sizes h in lambda (any shape): expm1(-h), phi1 / h + 1, phi2 / h - 1/2.

    phi2 = h/2 - h^2/6 + h^3/24 - h^4/120 + ..., phi3 = -h/6 + h^2/24 - h^3/120 + h^4/720 - ...;
    the series (truncation error < 1e-8 relative) replaces the cancelling quotients for |h| < 0.1.
    """
    phi1 = jnp.expm1(-h)
    small = jnp.abs(h) < _SERIES_BELOW
    h_safe = jnp.where(small, 1.0, h)
    phi2_direct = phi1 / h_safe + 1.0
    phi3_direct = phi2_direct / h_safe - 0.5
    phi2_series = h * (0.5 + h * (-1.0 / 6 + h * (1.0 / 24 - h / 120)))
    phi3_series = h * (-1.0 / 6 + h * (1.0 / 24 + h * (-1.0 / 120 + h / 720)))
    return phi1, jnp.where(small, phi2_series, phi2_direct), jnp.where(small, phi3_series, phi3_direct)


def _update(z, preds, half_log_snrs, gamma_s, gamma_t, i, order):
    """z at grid point i + 1 from z [B, ...] at point i: the step of order min(order, i + 1).

    preds: (m0, m1, m2), the data predictions at points i, i - 1, i - 2 (m1, m2 unused early on);
    half_log_snrs: DPM-Solver's lambda = -gamma / 2 at points (i + 1, i, i - 1, i - 2), the earlier ones
    clamped to point 0; gamma_s, gamma_t: gamma at points i and i + 1; each broadcasts against z.
    i: traced step index.
    """
    m0, m1, m2 = preds
    at_next, at_i, at_prev, at_prev2 = half_log_snrs
    h = at_next - at_i
    h0, h1 = jnp.where(i >= 1, at_i - at_prev, h), jnp.where(i >= 2, at_prev - at_prev2, h)  # never 0 where unused
    phi1, phi2, phi3 = phis(h)
    sigma_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(gamma_t) - jax.nn.log_sigmoid(gamma_s)))
    alpha_t = jnp.sqrt(jax.nn.sigmoid(-gamma_t))
    first = sigma_ratio * z - alpha_t * phi1 * m0
    if order == 1:
        return first
    r0, r1 = h0 / h, h1 / h
    d0 = (m0 - m1) / r0
    second = first - alpha_t * phi1 * d0 / 2
    if order == 2:
        return jnp.where(i >= 1, second, first)
    d1 = (m1 - m2) / r1
    big_d1 = d0 + r0 * (d0 - d1) / (r0 + r1)
    big_d2 = (d0 - d1) / (r0 + r1)
    third = first + alpha_t * phi2 * big_d1 - 2 * alpha_t * phi3 * big_d2
    return jnp.where(i >= 2, third, jnp.where(i >= 1, second, first))


def dpm_solver_pp(key, eps_hat_fn, gamma_fn, shape, num_steps: int, order: int = 2, grid: str = "uniform_logsnr",
                  denoise_final: bool = False, z_1=None):
    """z_0 from z_1 by DPM-Solver++ multistep of `order` (1, 2 or 3) in num_steps network evaluations (NFE).

    eps_hat_fn(z [B, ...], gamma) -> eps_hat: any denoiser, guided ones included.
    grid: a key of `vdm.sampling.grids.GRIDS` (default: uniform in lambda between the schedule's
    end points gamma_fn(1) and gamma_fn(0); a schedule of one gamma per dimension needs a grid placed in t,
    e.g. 'uniform_t'). z_1: the starting latent (default: N(0, I) from key).
    Deterministic given z_1; one `lax.scan` over the steps. Returns z_0 [B, ...].
    """
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    solver_steps = num_steps - 1 if denoise_final else num_steps
    if solver_steps < 1:
        raise ValueError(f"DPM-Solver++ needs num_steps >= {2 if denoise_final else 1}, got {num_steps}")
    z = jax.random.normal(key, shape) if z_1 is None else z_1
    _, gamma_at = grids.batch_grid(grid, gamma_fn, solver_steps, shape[0])

    def gamma(i):  # gamma at grid point i, broadcast against z
        return diffusion.expand_gamma(gamma_at(i), z)

    def x_hat(z, i):
        g = gamma_at(i)
        return diffusion.x_from_eps(z, eps_hat_fn(z, g), g)

    def step(carry, i):
        z, m1, m2 = carry
        m0 = x_hat(z, i)
        points = (i + 1, i, jnp.maximum(i - 1, 0), jnp.maximum(i - 2, 0))
        half_log_snrs = tuple(0.5 * diffusion.log_snr(gamma(k)) for k in points)
        return (_update(z, (m0, m1, m2), half_log_snrs, gamma(i), gamma(i + 1), i, order), m0, m1), None

    zeros = jnp.zeros(shape, z.dtype)
    (z, _, _), _ = jax.lax.scan(step, (z, zeros, zeros), jnp.arange(solver_steps))
    if denoise_final:
        return jnp.sqrt(jax.nn.sigmoid(-gamma(solver_steps))) * x_hat(z, solver_steps)
    return z


def dpm_solver_pp_2m(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_logsnr",
                     denoise_final: bool = False, z_1=None):
    """DPM-Solver++(2M): 2nd-order multistep, first step 1st order; num_steps = NFE. See `dpm_solver_pp`."""
    return dpm_solver_pp(key, eps_hat_fn, gamma_fn, shape, num_steps, 2, grid, denoise_final, z_1)


def dpm_solver_pp_3m(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_logsnr",
                     denoise_final: bool = False, z_1=None):
    """DPM-Solver++(3M): 3rd-order multistep, steps 1 and 2 of order 1 and 2; num_steps = NFE. See `dpm_solver_pp`."""
    return dpm_solver_pp(key, eps_hat_fn, gamma_fn, shape, num_steps, 3, grid, denoise_final, z_1)
