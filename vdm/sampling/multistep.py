"""Two more training-free multistep ODE solvers in data prediction: iPNDM and UniPC.

Both solve the probability-flow ODE of `vdm.sampling.dpm_solver` (lambda = -gamma / 2 = log(alpha / sigma),
x_hat(z, gamma) = (z - sigma eps_hat) / alpha), take their points from `grids.batch_grid`, spend one network
evaluation per step (num_steps = NFE) in one `lax.scan`, and start with lower orders while previous
predictions are missing. Each takes the arguments of `dpm_solver.dpm_solver_pp` (`grid=`, `denoise_final=`, `z_1=`).

iPNDM (Zhang & Chen 2023's improved PNDM; variable steps as in Zhou et al. 2024), in its published
noise-prediction form: with y = z / alpha and rho = sigma / alpha = e^-lambda (the VE noise level) the ODE is

    dy/drho = eps_hat(z),                                         (DDIM is Euler's method on it)

and a step from rho_i to rho_(i+1) = rho_i + drho integrates the polynomial (in rho) through the last k
predictions (rho_(i-j), e_j = eps_hat_(i-j)), j < k: Adams-Bashforth of order k = min(i + 1, 4), variable steps,

    z_(i+1) = (alpha_(i+1) / alpha_i) z_i - sigma_(i+1) expm1(h) sum_j b_j e_j,
    b_j = int_0^1 l_j(s) ds,   l_j the Lagrange basis on the nodes s_j = (rho_(i-j) - rho_i) / drho
                                = expm1(lambda_i - lambda_(i-j)) / expm1(-h)   (s_0 = 0 > s_1 > ...),

h = lambda_(i+1) - lambda_i (alpha_(i+1) drho = -sigma_(i+1) expm1(h)). The nodes are ratios of steps, all O(1)
whatever the range of rho; on nodes 0, -1, -2, -3 (equal steps in rho) b = (55, -59, 37, -9) / 24. On a grid
uniform in lambda the steps in rho shrink by e^-h from one to the next, so the polynomial extrapolates over
shorter steps than those it was fitted on. The data-prediction twin (y = z / sigma, u = alpha / sigma,
dy/du = x_hat) has steps that grow by e^h instead: on the Gaussian closed form it diverged below 40 NFE
(mean error 4.4e2 at 10 NFE), which is why iPNDM is kept in its noise-prediction form here.

UniPC (Zhao et al. 2023), data prediction. The exact step from lambda_s to lambda_t = lambda_s + h is

    z_t = (sigma_t / sigma_s) z_s + alpha_t int_0^h e^(u - h) x_hat(lambda_s + u) du,

and with x_hat(lambda_s + u) = sum_n x_hat^(n) u^n / n! the integral is sum_n x_hat^(n) h^(n+1) phi_(n+1)(-h)
(phi_1(x) = (e^x - 1) / x, phi_(n+1)(x) = (phi_n(x) - 1/n!) / x). Given points lambda_s + r_k h with
predictions m_k and D_k = m_k - m_0 = sum_n x_hat^(n) (r_k h)^n / n!, the step

    z_t = (sigma_t / sigma_s) z_s + alpha_t (1 - e^-h) m_0 + alpha_t B(h) sum_k a_k D_k / r_k,
    sum_k a_k r_k^(n-1) = g_n / B(h),  g_n = h n! phi_(n+1)(-h),  n = 1 .. K      (K = number of points)

matches the Taylor terms up to n = K: local error O(h^(K+2)). UniP-p (the predictor) uses the p - 1 previous
points (r_k = (lambda_(i-k) - lambda_i) / h < 0): order p. UniC (the corrector) redoes the step just taken
with the prediction at its new point as well (r = 1), no extra evaluation: order p + 1; it is not applied after
the last step. With one point the paper takes a_1 = 1/2, the h -> 0 limit of g_1 / B(h), which is where B(h)
matters: variant 'bh1' B(h) = h, 'bh2' B(h) = 1 - e^-h (the paper's e^h - 1 of noise prediction with h -> -h,
the data-prediction step's own first-order weight; then UniP-2 is DPM-Solver++(2M)). Larger systems are solved
exactly (Lagrange weights), where B(h) cancels. The weights a_k = L(l_k), L(s^(n-1)) = g_n / B, l_k the
Lagrange basis on the r_k: the same helper as iPNDM's with other moments.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from vdm.core import diffusion
from vdm.sampling import grids

IPNDM_MAX_ORDER = 4
UNIPC_VARIANTS = ("bh1", "bh2")
_SERIES_BELOW = 1.0  # |h| below which g_n / h comes from its series (the recurrence divides by h once per n)
_SERIES_TERMS = 12  # truncation < 1 / 14! relative at |h| = 1


def lagrange_weights(nodes, moments):
    """Weights w_k = L(l_k) of the functional L(s^j) = moments[j] on the Lagrange basis l_k of `nodes`.

    nodes: K distinct arrays (any broadcastable shapes); moments: K arrays or floats. sum_k w_k P(nodes[k]) = L(P)
    for every polynomial P of degree < K. Traced-safe (K is static). Returns a list of K arrays.
    """
    weights = []
    for k, r_k in enumerate(nodes):
        others = [r for m, r in enumerate(nodes) if m != k]
        poly = [1.0]  # prod_(m != k) (s - r_m), coefficients of s^0, s^1, ...
        for r in others:
            poly = [(poly[j - 1] if j >= 1 else 0.0) - r * (poly[j] if j < len(poly) else 0.0)
                    for j in range(len(poly) + 1)]
        denominator = math.prod((r_k - r for r in others), start=1.0)
        weights.append(sum(c * moments[j] for j, c in enumerate(poly)) / denominator)
    return weights


def adams_bashforth_weights(nodes):
    """b_j = int_0^1 l_j(s) ds on nodes [s_0 = 0, s_1, ...] (previous points in units of the step); list of arrays."""
    return lagrange_weights(nodes, [1.0 / (j + 1) for j in range(len(nodes))])


def taylor_weights(h, count: int):
    """[g_1 / h, ..., g_count / h] with g_n / h = n! phi_(n+1)(-h) = n! int_0^1 e^(-h (1 - v)) v^n / n! dv.

    Recurrence q_0 = (1 - e^-h) / h, q_n = (1 - n q_(n-1)) / h; for |h| < 1 the series
    q_n = n! sum_j (-h)^j / (j + n + 1)! instead (the recurrence cancels there). h: any shape.
    """
    small = jnp.abs(h) < _SERIES_BELOW
    h_safe = jnp.where(small, 1.0, h)
    q = -jnp.expm1(-h_safe) / h_safe
    out = []
    for n in range(1, count + 1):
        q = (1.0 - n * q) / h_safe
        series = sum(math.factorial(n) / math.factorial(j + n + 1) * (-h) ** j for j in range(_SERIES_TERMS))
        out.append(jnp.where(small, series, q))
    return out


def _setup(eps_hat_fn, gamma_fn, shape, num_steps, grid, denoise_final, z_1, key, name):
    solver_steps = num_steps - 1 if denoise_final else num_steps
    if solver_steps < 1:
        raise ValueError(f"{name} needs num_steps >= {2 if denoise_final else 1}, got {num_steps}")
    z = jax.random.normal(key, shape) if z_1 is None else z_1
    _, gamma_at = grids.batch_grid(grid, gamma_fn, solver_steps, shape[0])

    def gamma(i):  # gamma at grid point i (clamped to 0 below), broadcast against z
        return diffusion.expand_gamma(gamma_at(jnp.maximum(i, 0)), z)

    def x_hat(z, i):
        g = gamma_at(i)
        return diffusion.x_from_eps(z, eps_hat_fn(z, g), g)

    def eps(z, i):
        return eps_hat_fn(z, gamma_at(i))

    def finish(z):
        if denoise_final:
            return jnp.sqrt(jax.nn.sigmoid(-gamma(solver_steps))) * x_hat(z, solver_steps)
        return z

    return z, solver_steps, gamma, x_hat, eps, finish


def _exponential_parts(gamma_s, gamma_t):
    """(sigma_t / sigma_s, alpha_t, h = lambda_t - lambda_s) from gamma at both ends (float32-stable forms)."""
    sigma_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(gamma_t) - jax.nn.log_sigmoid(gamma_s)))
    return sigma_ratio, jnp.sqrt(jax.nn.sigmoid(-gamma_t)), 0.5 * (gamma_s - gamma_t)


def _select(i_order, weights_by_order, slots):
    """Per slot j, the weight of the order i_order (traced) from {order: [w_0, ..., w_(order-1)]}; 0 past it."""
    out = []
    for j in range(slots):
        w = 0.0
        for order, weights in weights_by_order.items():
            w = jnp.where(i_order == order, weights[j] if j < order else 0.0, w)
        out.append(w)
    return out


def ipndm(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_logsnr",
          denoise_final: bool = False, z_1=None, max_order: int = IPNDM_MAX_ORDER):
    """z_0 [B, ...] from z_1 by iPNDM (variable-step Adams-Bashforth in rho = sigma / alpha on eps_hat), num_steps NFE.

    Steps 1, 2, 3 have orders 1 (DDIM), 2, 3; later ones max_order (<= 4). Arguments as `dpm_solver.dpm_solver_pp`.
    """
    if not 1 <= max_order <= IPNDM_MAX_ORDER:
        raise ValueError(f"iPNDM order must be 1 .. {IPNDM_MAX_ORDER}, got {max_order}")
    z, steps, gamma, _, eps, finish = _setup(eps_hat_fn, gamma_fn, shape, num_steps, grid, denoise_final, z_1, key,
                                             "iPNDM")

    def step(carry, i):
        z, previous = carry  # previous: eps_hat at points i - 1, i - 2, ... (max_order - 1 of them)
        e0 = eps(z, i)
        g_s, g_t = gamma(i), gamma(i + 1)
        alpha_ratio = jnp.exp(0.5 * (jax.nn.log_sigmoid(-g_t) - jax.nn.log_sigmoid(-g_s)))
        sigma_t, h = jnp.sqrt(jax.nn.sigmoid(g_t)), 0.5 * (g_s - g_t)
        nodes = [jnp.zeros_like(h)]
        for j in range(1, max_order):  # unused (i < j) ones get distinct dummies
            nodes.append(jnp.where(i >= j, jnp.expm1(0.5 * (gamma(i - j) - g_s)) / jnp.expm1(-h), -float(j)))
        by_order = {k: adams_bashforth_weights(nodes[:k]) for k in range(1, max_order + 1)}
        b = _select(jnp.minimum(i + 1, max_order), by_order, max_order)
        # a step of zero length in float32 (h = 0, a flat stretch of a learned schedule) makes nodes coincide: Euler
        finite = functools.reduce(jnp.logical_and, [jnp.isfinite(w) for w in b])
        b = [jnp.where(finite, w, 1.0 if j == 0 else 0.0) for j, w in enumerate(b)]
        preds = (e0,) + previous
        z = alpha_ratio * z - sigma_t * jnp.expm1(h) * sum(b_j * e for b_j, e in zip(b, preds))
        return (z, preds[:-1]), None

    previous = tuple(jnp.zeros(shape, z.dtype) for _ in range(max_order - 1))
    (z, _), _ = jax.lax.scan(step, (z, previous), jnp.arange(steps))
    return finish(z)


def _unipc_weights(r_nodes, h, variant):
    """a_k B(h) / h for the points r_nodes (list, r = 1 for the new one): the paper's a_1 = 1/2 for one point,
    else the exact solve of sum_k a_k r_k^(n-1) = g_n / B(h)."""
    if len(r_nodes) == 1:
        b_over_h = 1.0 if variant == "bh1" else -jnp.expm1(-h) / h
        return [0.5 * b_over_h]
    return lagrange_weights(r_nodes, taylor_weights(h, len(r_nodes)))


def _unipc_step(z_s, m0, diffs, r_nodes, gamma_s, gamma_t, variant):
    """z_t from z_s [B, ...]: (sigma_t / sigma_s) z_s + alpha_t (1 - e^-h) m0 + alpha_t h sum_k w_k D_k / r_k,
    w_k = a_k B(h) / h selected per order upstream. diffs: D_k; r_nodes: r_k, each broadcasting against z."""
    sigma_ratio, alpha_t, h = _exponential_parts(gamma_s, gamma_t)
    z_t = sigma_ratio * z_s - alpha_t * jnp.expm1(-h) * m0
    if diffs:  # coefficients w_k / r_k; where a zero-length step (h = 0 in float32) leaves them non-finite, none
        coefficients = [w / r for w, r in zip(_unipc_weights(r_nodes, h, variant), r_nodes)]
        finite = functools.reduce(jnp.logical_and, [jnp.isfinite(c) for c in coefficients])
        z_t = z_t + alpha_t * h * sum(jnp.where(finite, c, 0.0) * d for c, d in zip(coefficients, diffs))
    return z_t


def unipc(key, eps_hat_fn, gamma_fn, shape, num_steps: int, order: int = 2, grid: str = "uniform_logsnr",
          denoise_final: bool = False, z_1=None, variant: str = "bh2", corrector: bool = True):
    """z_0 [B, ...] from z_1 by UniPC: UniP-`order` (2 or 3) predictor + UniC corrector, num_steps NFE.

    Step i + 1 has predictor order min(order, i + 1); its corrector, one order higher, reuses the evaluation at
    the new point (none after the last step). corrector=False: UniP alone. Arguments as `dpm_solver.dpm_solver_pp`.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"UniPC variant must be one of {UNIPC_VARIANTS}, got {variant!r}")
    z, steps, gamma, x_hat, _, finish = _setup(eps_hat_fn, gamma_fn, shape, num_steps, grid, denoise_final, z_1, key,
                                               "UniPC")

    def ratios(base, count):
        """r_k = (lambda_(base-k) - lambda_base) / (lambda_(base+1) - lambda_base), k = 1..count (-k where unused)."""
        h = 0.5 * (gamma(base) - gamma(base + 1))
        return [jnp.where(base >= k, 0.5 * (gamma(base) - gamma(base - k)) / h, -float(k)) for k in range(1, count + 1)]

    def multistep(i_prev_points, z_s, m0, previous, r_prev, new, gamma_s, gamma_t):
        """The step with min(order - 1, i_prev_points) previous points (+ the new one, if given), selected at run time."""
        outs = {}
        for count in range(order):
            diffs = [m - m0 for m in previous[:count]]
            nodes = list(r_prev[:count])
            if new is not None:
                diffs, nodes = diffs + [new - m0], nodes + [jnp.ones_like(gamma_s)]
            outs[count] = _unipc_step(z_s, m0, diffs, nodes, gamma_s, gamma_t, variant)
        used = jnp.minimum(i_prev_points, order - 1)
        out = outs[0]
        for count in range(1, order):
            out = jnp.where(used == count, outs[count], out)
        return out

    def step(carry, i):
        z_pred, z_prev, previous = carry  # previous: x_hat at points i - 1, i - 2, i - 3 (the first `order`)
        m_new = x_hat(z_pred, i)
        if corrector:  # redo the step from point i - 1 with m_new; at i = 0 there is none
            base = jnp.maximum(i - 1, 0)  # at i = 0 a finite dummy step (from point 0 to 1), discarded
            corrected = multistep(i - 1, z_prev, previous[0], previous[1:], ratios(base, order - 1), m_new,
                                  gamma(base), gamma(base + 1))
            z_here = jnp.where(i >= 1, corrected, z_pred)
        else:
            z_here = z_pred
        z_next = multistep(i, z_here, m_new, previous, ratios(i, order - 1), None, gamma(i), gamma(i + 1))
        return (z_next, z_here, (m_new,) + previous[:-1]), None

    previous = tuple(jnp.zeros(shape, z.dtype) for _ in range(order))
    (z, _, _), _ = jax.lax.scan(step, (z, z, previous), jnp.arange(steps))
    return finish(z)


def unipc_2(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_logsnr",
            denoise_final: bool = False, z_1=None):
    """UniPC with the UniP-2 predictor and UniC (order 3), B(h) = 1 - e^-h; num_steps = NFE. See `unipc`."""
    return unipc(key, eps_hat_fn, gamma_fn, shape, num_steps, 2, grid, denoise_final, z_1)


def unipc_3(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "uniform_logsnr",
            denoise_final: bool = False, z_1=None):
    """UniPC with the UniP-3 predictor and UniC (order 4), B(h) = 1 - e^-h; num_steps = NFE. See `unipc`."""
    return unipc(key, eps_hat_fn, gamma_fn, shape, num_steps, 3, grid, denoise_final, z_1)
