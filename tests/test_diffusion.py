"""The forward process, transitions, posterior, KLs and parameterisations vs closed forms."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vdm.core import diffusion as D

GAMMA_PAIRS = [(-13.3, -13.0), (-5.0, -2.0), (-1.0, 0.5), (0.0, 4.9), (3.0, 5.0), (-30.0, 30.0), (10.0, 10.5)]


def _np_alpha2(g):
    return 1.0 / (1.0 + np.exp(np.float64(g)))


def _joint_conditioning(x, z_t, gs, gt):
    """q(z_s | z_t, x) by conditioning the joint Gaussian of (z_s, z_t) given x, float64."""
    a2s, a2t = _np_alpha2(gs), _np_alpha2(gt)
    s2s, s2t = 1 - a2s, 1 - a2t
    a_ts = np.sqrt(a2t / a2s)
    cov_st = a_ts * s2s  # Cov(z_s, z_t | x)
    mean = np.sqrt(a2s) * x + cov_st / s2t * (z_t - np.sqrt(a2t) * x)
    var = s2s - cov_st**2 / s2t
    return mean, var


@pytest.mark.parametrize("gs,gt", GAMMA_PAIRS[:5])
def test_posterior_equals_gaussian_conditioning(gs, gt):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 5))
    z_t = rng.normal(size=(3, 5))
    mean, var = D.posterior(jnp.asarray(z_t, jnp.float32), jnp.asarray(x, jnp.float32), gs, gt)
    ref_mean, ref_var = _joint_conditioning(x, z_t, gs, gt)
    np.testing.assert_allclose(mean, ref_mean, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(np.broadcast_to(var, (3, 5)), np.full((3, 5), ref_var), rtol=2e-5)


@pytest.mark.parametrize("gs,gt", [(-6.0, -5.5), (-1.0, 0.5), (2.0, 3.0)])
def test_posterior_matches_ddpm_notation(gs, gt):
    """Seed 001 eq. 13-14: mu_q = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(a_t)(1 - abar_{t-1})/(1 - abar_t) x_t."""
    abar_s, abar_t = _np_alpha2(gs), _np_alpha2(gt)
    a_t = abar_t / abar_s
    beta_t = 1 - a_t
    rng = np.random.default_rng(1)
    x0, xt = rng.uniform(-1, 1, (2, 7)), rng.normal(size=(2, 7))
    mu = np.sqrt(abar_s) * beta_t / (1 - abar_t) * x0 + np.sqrt(a_t) * (1 - abar_s) / (1 - abar_t) * xt
    var = (1 - abar_s) / (1 - abar_t) * beta_t
    mean, v = D.posterior(jnp.asarray(xt, jnp.float32), jnp.asarray(x0, jnp.float32), gs, gt)
    np.testing.assert_allclose(mean, mu, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(v, var, rtol=2e-5)


def test_posterior_eps_form_equals_x_form():
    key = jax.random.key(0)
    x = jax.random.uniform(key, (4, 3, 3, 2), minval=-1, maxval=1)
    eps = jax.random.normal(jax.random.key(1), x.shape)
    gs, gt = jnp.array([-7.0, -2.0, 0.0, 4.0]), jnp.array([-6.0, 1.0, 0.3, 5.0])
    z_t = D.q_sample(x, gt, eps)
    m1, v1 = D.posterior(z_t, x, gs, gt)
    m2, v2 = D.posterior_from_eps(z_t, eps, gs, gt)
    np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-6)


@pytest.mark.parametrize("gs,gt", GAMMA_PAIRS[:5])
def test_transition_composes_with_marginal(gs, gt):
    """q(z_s|x) then q(z_t|z_s) has mean alpha_t x and variance sigma_t^2 (exactly and by Monte Carlo)."""
    x = jnp.linspace(-1, 1, 6)[None]
    a_s, s_s = D.alpha_sigma(gs)
    a_t, s_t = D.alpha_sigma(gt)
    mean_ts, var_ts = D.transition(a_s * x, gs, gt)  # the mean propagates linearly
    np.testing.assert_allclose(mean_ts, a_t * x, rtol=1e-5, atol=1e-7)
    alpha_ts = mean_ts[0, -1] / (a_s * x[0, -1])
    np.testing.assert_allclose(alpha_ts**2 * s_s**2 + var_ts, s_t**2, rtol=1e-5)
    # Monte Carlo through the two-step sampler
    n = 200_000
    k1, k2 = jax.random.split(jax.random.key(2))
    xs = jnp.full((n, 1), 0.7)
    z_s = D.q_sample(xs, gs, jax.random.normal(k1, xs.shape))
    m, v = D.transition(z_s, gs, gt)
    z_t = m + jnp.sqrt(v) * jax.random.normal(k2, xs.shape)
    se = float(s_t) / np.sqrt(n)
    assert abs(float(z_t.mean()) - 0.7 * float(a_t)) < 5 * se
    np.testing.assert_allclose(float(z_t.var()), float(s_t) ** 2, rtol=0.02)


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(3)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    ref = np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    np.testing.assert_allclose(D.gaussian_kl(m1, v1, m2, v2), ref, rtol=1e-5)
    assert float(jnp.abs(D.gaussian_kl(m1, v1, m1, v1)).max()) < 1e-6


@pytest.mark.parametrize("gs,gt", [(-10.0, -9.0), (-3.0, -1.0), (0.0, 0.01), (2.0, 5.0)])
def test_posterior_kl_and_every_parameterisation_give_the_same_loss(gs, gt):
    """KL(q(z_s|z_t,x) || q(z_s|z_t,x_hat)) = 1/2 (SNR_s - SNR_t) ||x - x_hat||^2, in all four forms."""
    k = jax.random.split(jax.random.key(4), 3)
    x = jax.random.uniform(k[0], (2, 16), minval=-1, maxval=1)
    eps = jax.random.normal(k[1], x.shape)
    eps_hat = eps + 0.3 * jax.random.normal(k[2], x.shape)
    z = D.q_sample(x, gt, eps)
    x_hat = D.x_from_eps(z, eps_hat, gt)
    m1, v1 = D.posterior(z, x, gs, gt)
    m2, v2 = D.posterior(z, x_hat, gs, gt)
    kl = jnp.sum(D.gaussian_kl(m1, v1, m2, v2), axis=-1)
    snr_s, snr_t = np.exp(-np.float64(gs)), np.exp(-np.float64(gt))
    x_form = 0.5 * (snr_s - snr_t) * np.sum((np.float64(x) - np.float64(x_hat)) ** 2, -1)
    eps_form = 0.5 * (snr_s / snr_t - 1) * np.sum((np.float64(eps) - np.float64(eps_hat)) ** 2, -1)
    s_t2 = 1 / (1 + np.exp(-np.float64(gt)))
    score, score_hat = D.score_from_eps(eps, gt), D.score_from_eps(eps_hat, gt)
    score_form = 0.5 * (snr_s / snr_t - 1) * s_t2 * np.sum((np.float64(score) - np.float64(score_hat)) ** 2, -1)
    a_t2 = 1 - s_t2
    v, v_hat = D.v_from_eps(z, eps, gt), D.v_from_eps(z, eps_hat, gt)  # ||eps - eps_hat|| = alpha_t ||v - v_hat||
    v_form = 0.5 * (snr_s / snr_t - 1) * a_t2 * np.sum((np.float64(v) - np.float64(v_hat)) ** 2, -1)
    for other in (x_form, eps_form, score_form, v_form):
        np.testing.assert_allclose(kl, other, rtol=2e-3)
    np.testing.assert_allclose(x_form, eps_form, rtol=1e-4)


@pytest.mark.parametrize("kind", D.PREDICTIONS)
def test_conversions_round_trip(kind):
    k = jax.random.split(jax.random.key(5), 3)
    x = jax.random.uniform(k[0], (5, 4), minval=-1, maxval=1)
    eps = jax.random.normal(k[1], x.shape)
    gamma = jnp.array([-8.0, -2.0, 0.0, 2.0, 6.0])
    z = D.q_sample(x, gamma, eps)
    pred = D.prediction_from_eps(eps, z, gamma, kind)
    np.testing.assert_allclose(D.eps_from_prediction(pred, z, gamma, kind), eps, rtol=1e-4, atol=1e-4)
    if kind == "x":
        np.testing.assert_allclose(pred, x, atol=2e-3)
    if kind == "v":
        a, s = D.alpha_sigma(gamma[:, None])
        np.testing.assert_allclose(pred, a * eps - s * x, atol=1e-5)
        np.testing.assert_allclose(a * z - s * pred, x, atol=1e-5)  # x = alpha z - sigma v
    if kind == "score":  # Tweedie: alpha x_hat = z + sigma^2 score
        a, s = D.alpha_sigma(gamma[:, None])
        np.testing.assert_allclose(a * x, z + s**2 * pred, atol=1e-5)
    with pytest.raises(ValueError, match="unknown prediction kind"):
        D.eps_from_prediction(pred, z, gamma, "logits")


def test_gamma_shapes_broadcast():
    x = jnp.ones((3, 2, 2, 1))
    for g in (0.5, jnp.full((3,), 0.5), jnp.full((3, 1, 1, 1), 0.5)):
        assert D.q_sample(x, g, x).shape == x.shape
        m, v = D.posterior(x, x, g - 1.0, g)
        assert m.shape == x.shape and jnp.broadcast_shapes(v.shape, x.shape) == x.shape


def test_extreme_gamma_finite_under_jit_vmap_grad():
    gammas = jnp.linspace(-30.0, 30.0, 61)
    x = jnp.linspace(-1, 1, 61)[:, None] * jnp.ones((1, 3))
    eps = jnp.ones_like(x) * 0.5

    def everything(g, xx, ee):
        gs = g - 0.5
        z = D.q_sample(xx, g, ee)
        out = [z, *D.alpha_sigma(g), *D.transition(z, gs, g), *D.posterior(z, xx, gs, g),
               *D.posterior_from_eps(z, ee, gs, g)]
        for kind in D.PREDICTIONS:
            out.append(D.eps_from_prediction(D.prediction_from_eps(ee, z, g, kind), z, g, kind))
        m1, v1 = D.posterior(z, xx, gs, g)
        m2, v2 = D.posterior(z, 0.9 * xx, gs, g)
        out.append(D.gaussian_kl(m1, v1, m2, v2))
        return sum(jnp.sum(jnp.where(jnp.isfinite(o), 0.0, 1.0)) for o in out), sum(jnp.sum(o) for o in out)

    bad, _ = jax.jit(everything)(gammas, x, eps)
    assert int(bad) == 0
    bad_v, _ = jax.vmap(lambda g, xx, ee: everything(g[None], xx[None], ee[None]))(gammas, x, eps)
    assert int(bad_v.sum()) == 0
    grads = jax.grad(lambda g: everything(g, x, eps)[1])(gammas)
    assert bool(jnp.all(jnp.isfinite(grads)))
