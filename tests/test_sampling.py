"""Samplers driven by an exact denoiser reproduce the data; DDIM at eta = 1 is the ancestral step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import sampling
from vdm.core import schedules
from vdm.core import diffusion as D

MODES = (-0.5, 0.5)  # x uniform on two points


def exact_eps_hat(z, gamma):
    """E[eps | z_t] for x uniform on MODES, by Bayes' rule."""
    a, s = D.alpha_sigma(D.expand_gamma(gamma, z))
    log_w = jnp.stack([-jnp.square(z - a * m) / (2 * s**2) for m in MODES])
    w = jax.nn.softmax(log_w, axis=0)
    x_hat = sum(wi * m for wi, m in zip(w, MODES))
    return (z - a * x_hat) / s


GAMMA = schedules.FixedLinear(-10.0, 6.0)


def gamma_fn(t):
    return GAMMA({}, t)


def test_ancestral_sampler_reproduces_a_two_point_mixture():
    z0 = sampling.ancestral_sample(jax.random.key(0), exact_eps_hat, gamma_fn, (20_000, 1), 200)
    a0, _ = D.alpha_sigma(-10.0)
    x = np.asarray(z0 / a0).ravel()
    assert np.mean(np.abs(np.abs(x) - 0.5) < 0.05) > 0.999
    assert abs((x > 0).mean() - 0.5) < 4 * 0.5 / np.sqrt(len(x))


def test_wrong_score_fails_the_same_check():
    flipped = lambda z, g: -exact_eps_hat(z, g)
    z0 = sampling.ancestral_sample(jax.random.key(0), flipped, gamma_fn, (2_000, 1), 200)
    x = np.asarray(z0 / D.alpha_sigma(-10.0)[0]).ravel()
    assert not np.mean(np.abs(np.abs(x) - 0.5) < 0.05) > 0.999


def test_ddim_eta_one_is_the_ancestral_sampler():
    key = jax.random.key(3)
    a = sampling.ancestral_sample(key, exact_eps_hat, gamma_fn, (64, 2), 50)
    b = sampling.ddim_sample(key, exact_eps_hat, gamma_fn, (64, 2), 50, eta=1.0)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_has_the_mean_and_variance_of_its_eta(eta):
    """One DDIM step t = 1 -> s = 0 from a fixed z_1: z_0 ~ N(alpha_s x_hat + sqrt(sigma_s^2 - v) eps_hat, v) with
    v = eta^2 sigma_s^2 (1 - SNR_t / SNR_s), computed here in float64. 40 000 draws: the mean to 5 standard errors,
    the variance to 5 standard errors of a sample variance (sqrt(2 / n) relative); eta vs eta^2 at 0.5 is 2x."""
    n = 40_000
    z_1 = jnp.full((n, 1), 0.7)
    eps_hat = lambda z, g: 0.3 * z + 0.1  # noqa: E731  any deterministic denoiser
    z_0 = np.asarray(sampling.ddim_sample(jax.random.key(5), eps_hat, gamma_fn, (n, 1), 1, eta=eta, z_1=z_1)).ravel()
    g_s, g_t = np.float64(gamma_fn(jnp.zeros(1))[0]), np.float64(gamma_fn(jnp.ones(1))[0])
    sig = lambda g: 1 / (1 + np.exp(-g))  # noqa: E731  sigma^2 = sigmoid(gamma)
    e = 0.3 * 0.7 + 0.1
    x_hat = (0.7 - np.sqrt(sig(g_t)) * e) / np.sqrt(sig(-g_t))
    v = eta**2 * sig(g_s) * -np.expm1(g_s - g_t)
    mean = np.sqrt(sig(-g_s)) * x_hat + np.sqrt(sig(g_s) - v) * e
    assert abs(z_0.mean() - mean) <= 5 * np.sqrt(v / n) + 1e-5
    assert abs(z_0.var() - v) <= 5 * v * np.sqrt(2 / n) + 1e-10


def test_decode_picks_the_nearest_bin_at_high_snr():
    V = 17
    x_int = jnp.arange(V).reshape(1, V, 1, 1)
    z0 = D.q_sample(2 * (x_int + 0.5) / V - 1, -12.0, jnp.zeros(x_int.shape))
    np.testing.assert_array_equal(sampling.decode(z0, -12.0, V), x_int)


def test_every_sampler_is_one_registry_entry_reached_by_name():
    """get_sampler covers the discrete, SDE and ODE samplers alike; an unknown name's error lists them all."""
    assert {"ancestral", "ddim", "ode", "ode_adaptive", "reverse_sde", "pc", "annealed_langevin"} <= set(sampling.SAMPLERS)
    for name, entry in sampling.SAMPLERS.items():
        fn = sampling.get_sampler(name)
        assert fn is entry.fn, name
        z0 = jax.jit(fn, static_argnums=(1, 2, 3, 4))(jax.random.key(0), exact_eps_hat, gamma_fn, (16, 1), 4)
        assert z0.shape == (16, 1) and bool(jnp.all(jnp.isfinite(z0))), name
        assert entry.describe(4) and "{" not in entry.describe(4), name
    assert "17 steps" in sampling.SAMPLERS["reverse_sde"].describe(17)
    with pytest.raises(ValueError) as info:
        sampling.get_sampler("euler")
    assert "'euler'" in str(info.value) and all(repr(name) in str(info.value) for name in sampling.SAMPLERS)
