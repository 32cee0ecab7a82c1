"""gamma of one number per dimension: closed forms for x ~ N(0, diag(s_i^2)) under a different linear schedule per
dimension, with the optimal denoiser eps_hat_i = sigma_i z_i / (alpha_i^2 s_i^2 + sigma_i^2).

    E[L_inf]      = sum_i 1/2 log((1 + s_i^2 SNR_max,i) / (1 + s_i^2 SNR_min,i))            (any interior shape)
    log p_ODE(z)  = sum_i [log N(z_i sqrt(v_1,i / v_0,i); 0, 1) + 1/2 log(v_1,i / v_0,i)],  v_t,i = alpha^2 s^2 + sigma^2
                    (the probability-flow ODE scales each dimension by sqrt(v_t,i / v_0,i))

None of the scalar tests can see a gamma' averaged over dimensions; these do.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import diffusion as D
from vdm.core import losses as L
from vdm.core import objective as O
from vdm.core import schedules as S
from vdm.sampling import SAMPLERS, grids, likelihood

SCALES = np.array([0.3, 0.5, 1.0, 1.6, 0.8, 2.0])  # s_i
GAMMA_0 = np.array([-7.0, -3.0, -5.0, -6.0, -4.0, -3.5])  # gamma_i(0)
GAMMA_1 = np.array([7.0, 10.0, 8.0, 9.0, 7.5, 10.0])  # gamma_i(1): q(z_1) within 0.2% of the prior N(0, I)
DIM = SCALES.size


def gamma_fn(t):
    """[B] -> [B, D]: gamma_i(t) = gamma_0,i + (gamma_1,i - gamma_0,i) t."""
    t = jnp.asarray(t, jnp.float32)[:, None]
    return jnp.asarray(GAMMA_0, jnp.float32) + jnp.asarray(GAMMA_1 - GAMMA_0, jnp.float32) * t


def curved_gamma_fn(t):
    """The same endpoints with another interior shape per dimension: t -> t^(1 + i / 3)."""
    t = jnp.asarray(t, jnp.float32)[:, None] ** (1.0 + jnp.arange(DIM) / 3.0)
    return jnp.asarray(GAMMA_0, jnp.float32) + jnp.asarray(GAMMA_1 - GAMMA_0, jnp.float32) * t


def optimal_eps_hat(z, gamma):
    a, s = D.alpha_sigma(D.expand_gamma(gamma, z))
    return s * z / (a**2 * jnp.asarray(SCALES**2, jnp.float32) + s**2)


def marginal_variance(gamma):
    """v = alpha^2 s^2 + sigma^2 per dimension (float64)."""
    alpha_sq = 1.0 / (1.0 + np.exp(gamma))
    return alpha_sq * SCALES**2 + (1.0 - alpha_sq)


def test_the_schedule_is_one_gamma_per_dimension():
    assert gamma_fn(jnp.zeros(5)).shape == (5, DIM)
    assert not S.one_gamma_per_example(gamma_fn, 5)
    _, rate = O.gamma_and_rate(gamma_fn, jnp.full((3,), 0.4))
    np.testing.assert_allclose(rate, np.broadcast_to(GAMMA_1 - GAMMA_0, (3, DIM)), rtol=1e-5)


@pytest.mark.parametrize("schedule", [gamma_fn, curved_gamma_fn], ids=["linear", "curved"])
def test_continuous_diffusion_loss_matches_the_per_dimension_closed_form(schedule):
    n = 1_000_000
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jnp.asarray(SCALES, jnp.float32) * jax.random.normal(k1, (n, DIM))
    eps = jax.random.normal(k2, (n, DIM))
    t = L.low_discrepancy_times(k3, n)
    per_example = jax.jit(lambda x, e, t: O.diffusion_loss(x, e, *O.gamma_and_rate(schedule, t), optimal_eps_hat)[1])(
        x, eps, t)
    per_example = np.asarray(per_example, np.float64)
    mean, se = per_example.mean(), per_example.std() / math.sqrt(n)
    exact = np.sum(0.5 * np.log((1 + SCALES**2 * np.exp(-GAMMA_0)) / (1 + SCALES**2 * np.exp(-GAMMA_1))))
    assert abs(mean - exact) < 4 * se, f"MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"
    # not vacuous: one rate for all dimensions (their mean) is far off (linear: 23 s.e., curved: 8 s.e.)
    gamma, rate = O.gamma_and_rate(schedule, t)
    averaged = O.diffusion_loss(x, eps, gamma, jnp.broadcast_to(jnp.mean(rate, axis=1, keepdims=True), rate.shape),
                                optimal_eps_hat)[1]
    assert abs(float(jnp.mean(averaged)) - exact) > 6 * se


def test_discrete_diffusion_loss_matches_the_per_dimension_sum():
    n, T = 200_000, 10
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jnp.asarray(SCALES, jnp.float32) * jax.random.normal(k1, (n, DIM))
    eps = jax.random.normal(k2, (n, DIM))
    t = L.low_discrepancy_times(k3, n)
    per_example = jax.jit(lambda x, e, t: O.diffusion_loss(x, e, *O.gamma_and_rate(gamma_fn, t, T), optimal_eps_hat)[1])(
        x, eps, t)
    per_example = np.asarray(per_example, np.float64)
    mean, se = per_example.mean(), per_example.std() / math.sqrt(n)
    steps = np.arange(1, T + 1)[:, None] / T
    snr_t = np.exp(-(GAMMA_0 + (GAMMA_1 - GAMMA_0) * steps))
    snr_s = np.exp(-(GAMMA_0 + (GAMMA_1 - GAMMA_0) * (steps - 1 / T)))
    exact = np.sum(0.5 * (snr_s - snr_t) * SCALES**2 / (1 + snr_t * SCALES**2))
    assert abs(mean - exact) < 4 * se, f"MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"


def test_elbo_terms_per_dimension_with_equal_dimensions_are_the_scalar_terms():
    """Every core term under a per-dimension gamma that is the same in every dimension equals the scalar one."""
    scalar = lambda t: -7.0 + 11.0 * jnp.asarray(t, jnp.float32)  # noqa: E731
    per_dim = lambda t: jnp.broadcast_to(scalar(t)[:, None, None, None], (t.shape[0], 3, 3, 2))  # noqa: E731
    x_int = jax.random.randint(jax.random.key(2), (5, 3, 3, 2), 0, 17)
    eps_hat = lambda z, g: 0.4 * z + 0.05 * D.expand_gamma(g, z)  # noqa: E731  (sees gamma of either shape)
    for num_steps in (0, 7):
        a = L.elbo_terms(x_int, jax.random.key(3), eps_hat, scalar, 17, num_steps, decoder_window=2)
        b = L.elbo_terms(x_int, jax.random.key(3), eps_hat, per_dim, 17, num_steps, decoder_window=2)
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=2e-6, atol=1e-6, err_msg=f"{name}, T = {num_steps}")


def test_prior_and_posterior_take_gamma_per_dimension():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, DIM)), jnp.float32)
    gamma_1 = gamma_fn(jnp.ones(4))
    alpha_sq = 1 / (1 + np.exp(GAMMA_1))
    kl = 0.5 * np.sum(alpha_sq * (np.asarray(x, np.float64) ** 2 - 1) - np.log(1 - alpha_sq), axis=1)
    np.testing.assert_allclose(L.prior_kl(x, gamma_1), kl, rtol=1e-5)
    gamma_s, gamma_t = gamma_fn(jnp.full((4,), 0.3)), gamma_fn(jnp.full((4,), 0.6))
    z_t = D.q_sample(x, gamma_t, jnp.ones_like(x))
    mean, var = D.posterior(z_t, x, gamma_s, gamma_t)
    for i in range(DIM):  # each dimension alone is the scalar posterior at its own gamma
        m_i, v_i = D.posterior(z_t[:, i:i + 1], x[:, i:i + 1], gamma_s[:, i], gamma_t[:, i])
        np.testing.assert_allclose(mean[:, i:i + 1], m_i, rtol=1e-6)
        np.testing.assert_allclose(jnp.broadcast_to(var, x.shape)[:, i:i + 1], jnp.broadcast_to(v_i, m_i.shape), rtol=1e-6)


def test_probability_flow_log_likelihood_is_exact_per_dimension():
    z_0 = jnp.asarray(np.random.default_rng(1).normal(size=(3, DIM)) * np.sqrt(marginal_variance(GAMMA_0)), jnp.float32)
    log_p, z_1, _ = jax.jit(lambda z: likelihood.ode_log_prob(z, optimal_eps_hat, gamma_fn, divergence="exact"))(z_0)
    ratio = marginal_variance(GAMMA_1) / marginal_variance(GAMMA_0)
    z_1_exact = np.asarray(z_0, np.float64) * np.sqrt(ratio)
    exact = np.sum(-0.5 * z_1_exact**2 - 0.5 * math.log(2 * math.pi) + 0.5 * np.log(ratio), axis=1)
    np.testing.assert_allclose(z_1, z_1_exact, rtol=1e-3)
    np.testing.assert_allclose(log_p, exact, rtol=1e-4, atol=1e-4)


SAMPLER_STEPS = {"annealed_langevin": 50, "ode": 100, "pc": 200}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_draws_the_per_dimension_gaussian(name):
    """z_0 ~ N(0, v_0,i) per dimension from every sampler with the exact per-dimension denoiser (4,000 draws)."""
    sampler = SAMPLERS[name].fn
    if SAMPLERS[name].log_snr_grid:
        with pytest.raises(ValueError, match="grid placed in t"):  # its default grid is uniform in one log-SNR
            sampler(jax.random.key(0), optimal_eps_hat, gamma_fn, (4, DIM), 10)
        sampler = functools.partial(sampler, grid="uniform_t")
    n = 4000
    z = jax.jit(lambda k: sampler(k, optimal_eps_hat, gamma_fn, (n, DIM), SAMPLER_STEPS.get(name, 400)))(
        jax.random.key(5))
    var = np.var(np.asarray(z, np.float64), axis=0)
    target = marginal_variance(GAMMA_0)
    # 4,000 draws: s.e. of a variance ~ 2.2%; the Langevin samplers' fixed step sizes leave a bias of their own
    tolerance = {"annealed_langevin": 0.25, "pc": 0.15}.get(name, 0.1)
    np.testing.assert_allclose(var, target, rtol=tolerance, err_msg=name)
    assert np.all(np.isfinite(np.asarray(z)))


def test_evaluation_estimator_takes_gamma_per_dimension_under_the_schedule_density():
    from vdm.core import elbo_estimator as E

    n = 100_000
    x = jnp.asarray(SCALES, jnp.float32) * jax.random.normal(jax.random.key(7), (n, DIM))
    keys = jax.random.split(jax.random.key(8), n)
    per_example = np.asarray(jax.jit(lambda x, k: E.diffusion_estimate(x, k, optimal_eps_hat, gamma_fn, 0, 4, "schedule"))(
        x, keys), np.float64)
    mean, se = per_example.mean(), per_example.std() / math.sqrt(n)
    exact = np.sum(0.5 * np.log((1 + SCALES**2 * np.exp(-GAMMA_0)) / (1 + SCALES**2 * np.exp(-GAMMA_1))))
    assert abs(mean - exact) < 4 * se, f"MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"
    with pytest.raises(ValueError, match="one gamma per dimension"):
        E.diffusion_estimate(x[:4], keys[:4], optimal_eps_hat, gamma_fn, 0, 4, "log_snr_uniform")


def test_variance_minimizing_gradient_takes_gamma_per_dimension():
    """d/d eta mean(L_i^2) for the interior and the plain gradient elsewhere, against brute force, with a schedule of
    one gamma per dimension (the [B] weights 2 L_i must meet gamma's [B, D] cotangents per example)."""
    def schedule_fn(sp, t):
        t = jnp.asarray(t, jnp.float32)[:, None]
        shape = t + sp["interior"]["a"] * t * (1 - t)
        return sp["endpoints"]["g0"] + (sp["endpoints"]["g1"] - sp["endpoints"]["g0"]) * shape

    params = {"net": {"w": jnp.array([0.7, 1.3, 0.4])},
              "schedule": {"endpoints": {"g0": jnp.array([-4.0, -2.0, -3.0]), "g1": jnp.array([3.0, 5.0, 4.0])},
                           "interior": {"a": jnp.array([0.3, -0.2, 0.5])}}}
    t = jnp.array([0.1, 0.45, 0.8])  # B = D = 3: a broadcast over the wrong axis would not raise

    def per_example(p, gammas_t):
        gamma, rate = gammas_t
        loss = 0.5 * jnp.sum(rate * p["net"]["w"] * jax.nn.sigmoid(-gamma), axis=1)
        return loss, loss, None

    (_, _), grads = L.variance_minimizing_value_and_grad(per_example, schedule_fn, params, t)

    def losses(p):
        gammas = O.gamma_and_rate(lambda u: schedule_fn(p["schedule"], u), t)
        return per_example(p, gammas)[0]

    mean_grad = jax.grad(lambda p: jnp.mean(losses(p)))(params)
    square_grad = jax.grad(lambda p: jnp.mean(jnp.square(losses(p))))(params)
    np.testing.assert_allclose(grads["net"]["w"], mean_grad["net"]["w"], rtol=1e-5)
    np.testing.assert_allclose(grads["schedule"]["interior"]["a"], square_grad["schedule"]["interior"]["a"], rtol=1e-4)
    for name in ("g0", "g1"):
        np.testing.assert_allclose(grads["schedule"]["endpoints"][name], mean_grad["schedule"]["endpoints"][name],
                                   rtol=1e-5)


def test_a_flat_dimension_whose_gammas_tie_in_float32_gives_zero_variance_not_nan():
    """Where a per-dimension schedule is flat, consecutive gammas can come out a rounding apart in the wrong order:
    the step's variance is then 0 (c clamped), not the square root of a negative number."""
    z = jnp.ones((2, 3))
    gamma_t = jnp.array([[0.5, 0.5, -2.0]] * 2)
    gamma_s = gamma_t + jnp.array([[0.0, 1e-6, -1.0]])  # tie, a rounding the wrong way, a proper step
    mean, var = D.posterior_from_eps(z, jnp.zeros_like(z), gamma_s, gamma_t)
    np.testing.assert_array_equal(np.asarray(var)[:, :2], 0.0)
    assert float(var[0, 2]) > 0 and np.all(np.isfinite(np.asarray(mean)))
