"""MuLAN's per-dimension polynomial schedule (`schedule.name = mulan`): its closed form, its endpoints and
monotonicity for random parameters, the ELBO's invariance to its interior on Gaussian data, and the model with
every dimension on the same gamma equal to the scalar model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import diffusion as D
from vdm.core import losses as L
from vdm.core import objective as O
from vdm.core.per_dimension import PerDimensionPolynomial, polynomial_gamma

G0, G1 = -7.0, 8.0


def _random_coefficients(key, shape, scale=3.0):
    ka, kb, kc = jax.random.split(key, 3)
    a = scale * jax.random.normal(ka, shape)
    b = scale * jax.random.normal(kb, shape)
    c = 1e-3 + jax.nn.softplus(scale * jax.random.normal(kc, shape))
    return a, b, c


def test_polynomial_schedule_is_the_normalised_integral_of_p_squared():
    a, b, c = (np.asarray(v, np.float64) for v in _random_coefficients(jax.random.key(0), (5,)))
    t = np.array([0.0, 0.13, 0.5, 0.77, 1.0])
    got = np.asarray(polynomial_gamma(*(jnp.asarray(v, jnp.float32) for v in (a, b, c)), jnp.asarray(t), G0, G1, 1))
    for i in range(5):
        p_squared = np.polymul([a[i], b[i], c[i]], [a[i], b[i], c[i]])
        integral = np.polyint(p_squared)
        expected = G0 + (G1 - G0) * (np.polyval(integral, t) - np.polyval(integral, 0)) / (
            np.polyval(integral, 1) - np.polyval(integral, 0))
        np.testing.assert_allclose(got[:, i], expected, rtol=1e-5, atol=1e-4)


def test_polynomial_schedule_is_monotone_and_hits_both_endpoints_for_random_parameters():
    a, b, c = _random_coefficients(jax.random.key(1), (64,), scale=5.0)
    t = jnp.linspace(0.0, 1.0, 10_000)
    gamma = np.asarray(polynomial_gamma(a, b, c, t, G0, G1, 1), np.float64)  # [10^4, 64]
    assert np.all(np.diff(gamma, axis=0) >= -1e-5 * (G1 - G0))
    np.testing.assert_array_equal(gamma[0], np.full(64, G0, np.float32))
    np.testing.assert_allclose(gamma[-1], G1, rtol=0, atol=1e-5)
    schedule = PerDimensionPolynomial(G0, G1, (4, 4, 2))
    params = schedule.init()
    params["interior"] = dict(zip(("a", "b", "raw_c"), _random_coefficients(jax.random.key(2), (4, 4, 2))))
    ends = schedule(params, jnp.array([0.0, 1.0]))
    assert ends.shape == (2, 4, 4, 2)
    np.testing.assert_allclose(ends[0], G0, atol=1e-6)
    np.testing.assert_allclose(ends[1], G1, atol=1e-5)
    linear = PerDimensionPolynomial(G0, G1, (3,))
    np.testing.assert_allclose(linear(linear.init(), jnp.array([0.25])), [[G0 + 0.25 * (G1 - G0)] * 3], rtol=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_elbo_diffusion_term_under_a_random_polynomial_schedule_is_the_closed_form(seed):
    """x ~ N(0, diag s_i^2) with the optimal denoiser: E[L_inf] = sum_i 1/2 log((1 + s_i^2 SNR_max)/(1 + s_i^2 SNR_min)),
    whatever the learned interior of each dimension."""
    scales = jnp.array([0.3, 0.6, 1.0, 1.5])
    schedule = PerDimensionPolynomial(G0, G1, (4,))
    params = schedule.init()
    params["interior"] = dict(zip(("a", "b", "raw_c"), _random_coefficients(jax.random.key(seed), (4,))))

    def eps_hat(z, gamma):
        alpha, sigma = D.alpha_sigma(D.expand_gamma(gamma, z))
        return sigma * z / (alpha**2 * scales**2 + sigma**2)

    n = 400_000
    k1, k2, k3 = jax.random.split(jax.random.key(seed + 10), 3)
    x, eps = scales * jax.random.normal(k1, (n, 4)), jax.random.normal(k2, (n, 4))
    t = L.low_discrepancy_times(k3, n)
    gamma_fn = lambda u: schedule(params, u)  # noqa: E731
    values = np.asarray(jax.jit(lambda x, e, t: O.diffusion_loss(x, e, *O.gamma_and_rate(gamma_fn, t), eps_hat)[1])(
        x, eps, t), np.float64)
    mean, se = values.mean(), values.std() / math.sqrt(n)
    s = np.asarray(scales, np.float64)
    exact = np.sum(0.5 * np.log((1 + s**2 * math.exp(-G0)) / (1 + s**2 * math.exp(-G1))))
    assert abs(mean - exact) < 4 * se, f"MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"


def test_mulan_model_with_every_dimension_on_the_same_gamma_is_the_scalar_model():
    """At initialisation mulan is log-SNR linear in every dimension: its ELBO terms and training loss equal those of
    fixed_linear with the same network to float32 rounding (the network sees the mean gamma, here the gamma)."""
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    base = {"schedule.gamma_min": G0, "schedule.gamma_max": G1, "eval.time_density": "schedule"}
    scalar = VDM.from_config(apply_overrides(load_config_file("configs/tiny.py"), {**base, "schedule.name": "fixed_linear"}))
    mulan = VDM.from_config(apply_overrides(load_config_file("configs/tiny.py"), {**base, "schedule.name": "mulan"}))
    p_scalar = scalar.init(jax.random.key(0))
    p_mulan = {**mulan.init(jax.random.key(0)), "net": p_scalar["net"]}
    assert p_mulan["schedule"]["interior"]["a"].shape == (8, 8, 1)
    batch = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 17, (6, 8, 8, 1))), "labels": jnp.zeros(6, jnp.int32)}
    a = jax.jit(scalar.elbo_terms)(p_scalar, batch, jax.random.key(1))
    b = jax.jit(mulan.elbo_terms)(p_mulan, batch, jax.random.key(1))
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=2e-5, atol=1e-5, err_msg=name)
    (_, _), grads = jax.jit(mulan.loss_and_grads)(p_mulan, batch, jax.random.key(1))
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["schedule"]["interior"]))


def test_mulan_configs_that_cannot_work_stop_with_one_line():
    from vdm.config.validation import ConfigError, apply_overrides, load_config_file, sampler_schedule_problem

    with pytest.raises(ConfigError, match="'eval.time_density' = 'schedule'"):
        apply_overrides(load_config_file("configs/tiny.py"), {"schedule.name": "mulan"})
    with pytest.raises(ConfigError, match="'eval.sampler' = 'dpm_solver_pp_2m' places its points in one log-SNR"):
        apply_overrides(load_config_file("configs/tiny.py"), {
            "schedule.name": "mulan", "eval.time_density": "schedule", "eval.sampler": "dpm_solver_pp_2m"})
    with pytest.raises(ConfigError, match="cannot train a learned"):
        apply_overrides(load_config_file("configs/tiny.py"), {
            "schedule.name": "mulan", "eval.time_density": "schedule", "loss.weighting": "sigmoid"})
    assert sampler_schedule_problem("mulan", "pc") is None and sampler_schedule_problem("alpha_cosine", "dpm_solver_pp_2m") is None


def test_a_schedule_of_its_own_for_every_example_runs_through_the_estimator_samplers_and_likelihood():
    """MuLAN's schedule conditioned on each image: gamma_fn(t [B]) closes over coefficients [B, D], one set per
    example. x ~ N(0, diag s_i^2): every example's E[L_inf] is the same closed form (fixed endpoints), so the
    evaluation estimator's mean over examples with their own random interiors must match it; samplers and the ODE
    likelihood evaluate gamma_fn at [B] times only."""
    from vdm.core import elbo_estimator as E
    from vdm.sampling import SAMPLERS, likelihood

    n, scales = 20_000, jnp.array([0.3, 0.6, 1.0, 1.5])
    a, b, c = _random_coefficients(jax.random.key(5), (n, 4))

    def gamma_fn(t):
        return polynomial_gamma(a[: t.shape[0]], b[: t.shape[0]], c[: t.shape[0]], t, G0, G1, 1)

    def eps_hat(z, gamma):
        alpha, sigma = D.alpha_sigma(D.expand_gamma(gamma, z))
        return sigma * z / (alpha**2 * scales**2 + sigma**2)

    x = scales * jax.random.normal(jax.random.key(6), (n, 4))
    keys = jax.random.split(jax.random.key(7), n)
    values = np.asarray(jax.jit(lambda x, k: E.diffusion_estimate(x, k, eps_hat, gamma_fn, 0, 4, "schedule"))(x, keys),
                        np.float64)
    mean, se = values.mean(), values.std() / math.sqrt(n)
    s = np.asarray(scales, np.float64)
    exact = np.sum(0.5 * np.log((1 + s**2 * math.exp(-G0)) / (1 + s**2 * math.exp(-G1))))
    assert abs(mean - exact) < 4 * se, f"MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"
    with pytest.raises(ValueError, match="one gamma per dimension"):
        E.diffusion_estimate(x[:8], keys[:8], eps_hat, gamma_fn, 0, 4, "log_snr_uniform")
    gamma_0, gamma_1 = L.endpoint_gammas(gamma_fn, 8)
    np.testing.assert_allclose(gamma_0, G0, atol=1e-6) and np.testing.assert_allclose(gamma_1, G1, atol=1e-5)
    z = jax.jit(lambda k: SAMPLERS["pc"].fn(k, eps_hat, gamma_fn, (n, 4), 100))(jax.random.key(8))
    var_0 = 1 / (1 + math.exp(G0)) * s**2 + 1 / (1 + math.exp(-G0))
    np.testing.assert_allclose(np.var(np.asarray(z, np.float64), axis=0), var_0, rtol=0.15)
    log_p, _, _ = likelihood.ode_log_prob(z[:16], eps_hat, gamma_fn, divergence="exact")
    var_1 = 1 / (1 + math.exp(G1)) * s**2 + 1 / (1 + math.exp(-G1))
    z_0 = np.asarray(z[:16], np.float64)  # the flow of each example scales by sqrt(v_1 / v_0) whatever its path
    exact_log_p = np.sum(-0.5 * z_0**2 * var_1 / var_0 - 0.5 * math.log(2 * math.pi) + 0.5 * np.log(var_1 / var_0), axis=1)
    np.testing.assert_allclose(log_p, exact_log_p, rtol=1e-4, atol=1e-4)


def test_gaussian_latent_kl_matches_a_brute_force_monte_carlo_estimate():
    from vdm.nets.latent import gaussian_kl_to_standard

    mean = jnp.array([[0.3, -1.2, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    log_var = jnp.array([[-0.5, 0.4, -2.0, 0.1], [0.0, 0.0, 0.0, 0.0]])
    n = 400_000
    eps = np.asarray(jax.random.normal(jax.random.key(9), (n, 2, 4)), np.float64)
    c = np.asarray(mean, np.float64) + np.exp(0.5 * np.asarray(log_var, np.float64)) * eps
    log_q = np.sum(-0.5 * eps**2 - 0.5 * np.asarray(log_var, np.float64), -1)  # the 2 pi terms cancel against p
    log_p = np.sum(-0.5 * c**2, -1)
    samples = log_q - log_p  # [n, 2]
    closed = np.asarray(gaussian_kl_to_standard(mean, log_var), np.float64)
    np.testing.assert_allclose(closed[1], 0.0, atol=1e-7)
    se = samples[:, 0].std() / math.sqrt(n)
    assert abs(samples[:, 0].mean() - closed[0]) < 4 * se, (samples[:, 0].mean(), closed[0], se)


@pytest.mark.parametrize("latent", ["gaussian", "topk"])
def test_mulan_with_a_latent_gives_each_image_its_own_schedule_and_a_fourth_elbo_term(latent):
    """At initialisation q(c|x) = p(c) (KL 0) and every latent gives the shared schedule; once the head moves, two
    latents give two schedules with the same fixed endpoints; the ELBO's total includes the latent's KL."""
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    config = apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "mulan", "eval.time_density": "schedule", "schedule.latent": latent,
        "schedule.latent_dim": 4, "schedule.latent_k": 2, "model.class_conditional": True, "model.label_dropout": 0.1})
    model = VDM.from_config(config)
    params = model.init(jax.random.key(0))
    batch = {"images": jnp.asarray(np.random.default_rng(0).integers(0, 17, (6, 8, 8, 1))), "labels": jnp.arange(6) % 10}
    terms = jax.jit(model.elbo_terms)(params, batch, jax.random.key(1))
    if latent == "gaussian":
        np.testing.assert_array_equal(terms["latent"], 0.0)
    else:  # log(d - j) in float64 against float32 log-softmax of equal logits
        np.testing.assert_allclose(terms["latent"], 0.0, atol=1e-6)
    np.testing.assert_allclose(terms["total"], terms["prior"] + terms["reconstruction"] + terms["diffusion"]
                               + terms["latent"], rtol=1e-6)
    t = jnp.full((2,), 0.4)
    two = jnp.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])  # also two of the top-k latent's values
    shared = model.gamma_fn({**params, "schedule": {**params["schedule"]}})(t)
    np.testing.assert_allclose(model.gamma_fn(params, two)(t), shared, rtol=1e-6)
    head = jax.tree.map(lambda w: w + 0.3 * jax.random.normal(jax.random.key(2), w.shape),
                        params["schedule"]["interior"]["head"])
    moved = {**params, "schedule": {**params["schedule"], "interior": {**params["schedule"]["interior"], "head": head}}}
    gamma = model.gamma_fn(moved, two)(t)
    assert float(jnp.max(jnp.abs(gamma[0] - gamma[1]))) > 0.1
    ends = model.gamma_fn(moved, two)
    np.testing.assert_allclose(ends(jnp.zeros(2)), -8.0, atol=1e-5)
    np.testing.assert_allclose(ends(jnp.ones(2)), 5.0, atol=1e-4)
    # guidance doubles the batch: the latents follow
    guided = model.guided_eps_hat_fn(moved, jnp.arange(2), 1.5, two)
    assert guided(jnp.ones((2, 8, 8, 1)), gamma).shape == (2, 8, 8, 1)
    (_, moved_terms), grads = jax.jit(model.loss_and_grads)(moved, batch, jax.random.key(1))
    assert float(jnp.min(moved_terms["latent"])) >= 0
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads["schedule"]["interior"]["encoder"]))
