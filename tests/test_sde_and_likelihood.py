"""Samplers and the ODE likelihood against a 2-D Gaussian mixture whose denoiser and densities are exact.

Each sampler, driven by the exact denoiser, must land within an energy-distance
threshold of true samples; the same sampler with a sign-flipped score, or the
score scaled by 0.8, must not. The threshold sits between the two: far above
the distance between two true sample sets of this size, far below the
distances of the wrong samplers (see the calibration in each assert message).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixture

from vdm import sampling
from vdm.core import schedules
from vdm.core import diffusion as D
from vdm.sampling import likelihood, sde

MIX = mixture.three_blobs()
SCHEDULE = schedules.FixedLinear(-10.0, 10.0)
N = 4000
THRESHOLD = 0.005  # true-vs-true 0.0005-0.0013; exact samplers <= 0.0024; wrong ones >= 0.0073


def gamma_fn(t):
    return SCHEDULE({}, t)


def exact(z, gamma):
    return MIX.eps_hat(z, gamma)


def flipped(z, gamma):
    return -MIX.eps_hat(z, gamma)


def shrunk(z, gamma):
    return 0.8 * MIX.eps_hat(z, gamma)


@functools.lru_cache(maxsize=None)
def _truth():
    return np.asarray(MIX.sample(jax.random.key(123), N))


SAMPLERS = {
    "ancestral": lambda k, f: sampling.ancestral_sample(k, f, gamma_fn, (N, 2), 100),
    "ddim": lambda k, f: sampling.ddim_sample(k, f, gamma_fn, (N, 2), 100, eta=0.0),
    "ode_heun": lambda k, f: sde.ode_sample_heun(k, f, gamma_fn, (N, 2), 50),
    "ode_adaptive": lambda k, f: sde.ode_sample_adaptive(k, f, gamma_fn, (N, 2))[0],
    "reverse_sde": lambda k, f: sde.reverse_sde_sample(k, f, gamma_fn, (N, 2), 200),
    "pc": lambda k, f: sde.pc_sample(k, f, gamma_fn, (N, 2), 100, corrector_steps=1, target_snr=0.1),
    "annealed_langevin": lambda k, f: sde.annealed_langevin_sample(k, f, gamma_fn, (N, 2), 100, 20, 0.05),
    "dpm_solver_pp_2m": lambda k, f: sampling.dpm_solver_pp_2m(k, f, gamma_fn, (N, 2), 20),
    "dpm_solver_pp_3m": lambda k, f: sampling.dpm_solver_pp_3m(k, f, gamma_fn, (N, 2), 20),
}


def test_mixture_ground_truth_score_is_the_gradient_of_its_density_and_the_density_is_normalised():
    z = jax.random.normal(jax.random.key(20), (32, 2)) * 1.5
    for g in (-10.0, 0.0, 10.0):
        gamma = jnp.full((32,), g)
        autodiff = jax.vmap(jax.grad(lambda zi, gi: MIX.log_prob(zi[None], gi[None])[0]))(z, gamma)
        np.testing.assert_allclose(MIX.score(z, gamma), autodiff, rtol=1e-4, atol=1e-4)
    # q(z_t) at gamma = 0 integrates to 1 (a grid over [-5, 5]^2, far beyond the mass)
    grid = jnp.stack(jnp.meshgrid(jnp.linspace(-5, 5, 401), jnp.linspace(-5, 5, 401)), -1).reshape(-1, 2)
    mass = float(jnp.sum(jnp.exp(MIX.log_prob(grid, 0.0))) * (10 / 400) ** 2)
    assert abs(mass - 1.0) < 1e-3, mass


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_with_the_exact_denoiser_reproduces_the_mixture_and_wrong_scores_fail(name):
    run = jax.jit(SAMPLERS[name], static_argnums=1)
    reference = mixture.energy_distance(_truth(), np.asarray(MIX.sample(jax.random.key(7), N)))
    good = mixture.energy_distance(run(jax.random.key(0), exact), _truth())
    bad = [mixture.energy_distance(run(jax.random.key(0), f), _truth()) for f in (flipped, shrunk)]
    bad = np.nan_to_num(bad, nan=np.inf)  # a sampler that diverges to NaN has certainly failed
    figures = f"true-vs-true {reference:.4f}, exact {good:.4f}, flipped {bad[0]:.4f}, x0.8 {bad[1]:.4f}"
    assert good < THRESHOLD, figures
    assert min(bad) > THRESHOLD, figures


def test_ode_sampler_is_deterministic_given_z1():
    z_1 = jax.random.normal(jax.random.key(4), (16, 2))
    a = sde.ode_sample_heun(jax.random.key(0), exact, gamma_fn, (16, 2), 20, z_1=z_1)
    b = sde.ode_sample_heun(jax.random.key(99), exact, gamma_fn, (16, 2), 20, z_1=z_1)
    np.testing.assert_array_equal(a, b)


def test_ddim_eta_zero_approaches_the_probability_flow_ode():
    key, z_1 = jax.random.key(5), jax.random.normal(jax.random.key(6), (256, 2))
    ode = sde.ode_sample_adaptive(key, exact, gamma_fn, (256, 2), rtol=1e-6, atol=1e-6, z_1=z_1)[0]
    errors = [float(jnp.mean(jnp.abs(sampling.ddim_sample(key, exact, gamma_fn, (256, 2), n, z_1=z_1) - ode)))
              for n in (10, 40, 160)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.02 and errors[2] < errors[0] / 4, errors


def test_ddim_eta_one_matches_the_ancestral_step_per_step():
    key = jax.random.key(8)
    for n in (1, 7):
        a = sampling.ancestral_sample(key, exact, gamma_fn, (64, 2), n)
        b = sampling.ddim_sample(key, exact, gamma_fn, (64, 2), n, eta=1.0)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_ode_log_density_matches_the_exact_density_of_q_z0():
    """Exact divergence, the exact denoiser and prior: the only error is the solver's (rtol = atol = 1e-5 on a
    log-density change of ~10 nats: <= ~1e-4 per dimension; measured ~1e-5). A denoiser off by 1% (x 0.99) is
    off by ~0.04 nats per dimension."""
    z_0 = MIX.sample(jax.random.key(11), 64) + jnp.sqrt(jax.nn.sigmoid(-10.0)) * jax.random.normal(jax.random.key(12), (64, 2))
    exact_log_q = MIX.log_prob(z_0, gamma_fn(jnp.zeros(())))
    prior = lambda z: MIX.log_prob(z, gamma_fn(jnp.ones(())))  # noqa: E731  (the exact q(z_1))
    log_p, _, _ = jax.jit(lambda z: likelihood.ode_log_prob(z, exact, gamma_fn, divergence="exact", prior_log_prob=prior))(z_0)
    per_dim_error = float(jnp.mean(jnp.abs(log_p - exact_log_q))) / 2
    assert per_dim_error <= 2e-4, per_dim_error
    slightly_off = lambda z, g: 0.99 * exact(z, g)  # noqa: E731
    wrong, _, _ = likelihood.ode_log_prob(z_0, slightly_off, gamma_fn, divergence="exact", prior_log_prob=prior)
    assert float(jnp.mean(jnp.abs(wrong - exact_log_q))) / 2 > 2e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased_for_the_divergence(probe):
    z = MIX.sample(jax.random.key(2), 8) * 0.7
    f = lambda y: sde.ode_drift(exact, gamma_fn, y, 0.3)  # noqa: E731
    truth = likelihood.exact_divergence(f, z)
    keys = jax.random.split(jax.random.key(3), 4000)
    draws = jax.vmap(lambda k: likelihood.hutchinson_divergence(f, z, likelihood.make_probe(k, z.shape, probe)))(keys)
    mean, stderr = jnp.mean(draws, 0), jnp.std(draws, 0) / np.sqrt(len(keys))
    assert bool(jnp.all(jnp.abs(mean - truth) < 4 * stderr + 1e-4)), (mean, truth, stderr)
    assert bool(jnp.any(stderr > 1e-3))  # the estimate really is random


def test_exact_divergence_of_a_linear_map_is_its_trace():
    a = jnp.array([[1.0, 2.0, 0.0], [0.5, -3.0, 1.0], [0.0, 4.0, 0.25]])
    z = jax.random.normal(jax.random.key(0), (5, 3))
    np.testing.assert_allclose(likelihood.exact_divergence(lambda y: y @ a.T, z), jnp.full(5, -1.75), rtol=1e-6)


def test_variational_dequantisation_of_an_exact_discrete_model_gives_its_entropy():
    """x uniform on V values per dimension; the model's z_0 density is the exact q(z_0): bpd -> log2(V)."""
    V = 4
    values = 2 * (np.arange(V) + 0.5) / V - 1
    means = np.stack(np.meshgrid(values, values, indexing="ij"), -1).reshape(-1, 2)
    atoms = mixture.GaussianMixture(np.full(V * V, 1.0 / V**2), means, np.tile(np.eye(2) * 1e-8, (V * V, 1, 1)))
    x_int = jax.random.randint(jax.random.key(0), (256, 2), 0, V)
    bpd = likelihood.ode_bits_per_dim(x_int, atoms.eps_hat, gamma_fn, V, jax.random.key(1), dequantization="variational")
    assert abs(float(jnp.mean(bpd)) - 2.0) < 0.02, float(jnp.mean(bpd))


def test_uniform_dequantisation_bounds_the_binned_probability_of_the_model():
    """Model z ~ N(0, s^2 I): E_u[-log p(x~ + u)] + D log(V/2) >= -log P(bin) (Jensen), and is close for wide s."""
    from scipy.stats import norm

    V, s = 8, 0.8
    wide = mixture.GaussianMixture(np.ones(1), np.zeros((1, 2)), np.eye(2)[None] * (s**2 - float(jax.nn.sigmoid(-10.0))))
    x_int = jax.random.randint(jax.random.key(0), (512, 2), 0, V)
    bpd = likelihood.ode_bits_per_dim(x_int, wide.eps_hat, gamma_fn, V, jax.random.key(1), dequantization="uniform",
                                  rtol=1e-6, atol=1e-6)
    lo = (2 * np.asarray(x_int) / V - 1)
    p_bin = norm.cdf((lo + 2 / V) / s) - norm.cdf(lo / s)
    exact_bpd = -np.log2(p_bin).sum(-1) / 2
    diff = np.asarray(bpd) - exact_bpd
    assert diff.mean() > -3 * diff.std() / np.sqrt(len(diff)), diff.mean()
    assert diff.mean() < 0.02, diff.mean()


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_denoiser():
    from vdm.sampling import guidance

    z = MIX.sample(jax.random.key(1), 32) * 0.8
    gamma = jnp.full((32,), 0.5)
    labels = jnp.full((32,), 1)
    guided = guidance.classifier_guided_eps_hat_fn(exact, MIX.log_posterior, labels, 1.0)(z, gamma)
    np.testing.assert_allclose(guided, MIX.conditional(1).eps_hat(z, gamma), rtol=1e-4, atol=1e-5)


def test_classifier_free_guidance_sharpens_towards_the_requested_component():
    from vdm.sampling import guidance

    labels = jnp.full((N,), 2)

    def guided(w):
        eps = lambda z, g: guidance.classifier_free(MIX.conditional(2).eps_hat(z, g), exact(z, g), w)  # noqa: E731
        z0 = sampling.ancestral_sample(jax.random.key(0), eps, gamma_fn, (N, 2), 100)
        return float(jnp.mean(jnp.exp(MIX.log_posterior(z0, gamma_fn(jnp.zeros(()))))[jnp.arange(N), labels]))

    p0, p1, p3 = guided(0.0), guided(1.0), guided(3.0)
    assert p0 > 0.9 and p1 >= p0 - 0.01 and p3 >= p1 - 0.01, (p0, p1, p3)
    truth = mixture.energy_distance(np.asarray(MIX.conditional(2).sample(jax.random.key(3), N)), _truth())
    assert truth > THRESHOLD  # sanity: the conditional is far from the unconditional mixture


def _noisy_mixture(key, gamma: float):
    """N exact draws of q(z_gamma) = alpha x + sigma eps, x from the mixture."""
    k_x, k_eps = jax.random.split(key)
    return D.q_sample(MIX.sample(k_x, N), jnp.full((N,), gamma), jax.random.normal(k_eps, (N, 2)))


@pytest.mark.parametrize("gamma", [-2.0, 1.0])
def test_langevin_corrector_keeps_q_zt_and_pulls_a_wrong_start_back(gamma):
    """The predictor-corrector's corrector alone, with the exact denoiser: exact q(z_t) draws stay at q(z_t)
    (energy distance as small as between two exact sets), a start 1.6x too wide is pulled back to it, and
    zero steps leave z as it was."""
    g = jnp.full((N,), gamma)
    truth = np.asarray(_noisy_mixture(jax.random.key(31), gamma))
    exact_start = _noisy_mixture(jax.random.key(32), gamma)
    wide_start = 1.6 * _noisy_mixture(jax.random.key(33), gamma)
    correct = jax.jit(lambda z, steps: sde.langevin_correct(jax.random.key(34), exact, z, g, 0.16, steps),
                      static_argnums=1)
    reference = mixture.energy_distance(np.asarray(exact_start), truth)
    kept = mixture.energy_distance(np.asarray(correct(exact_start, 100)), truth)
    wide = mixture.energy_distance(np.asarray(wide_start), truth)
    pulled = mixture.energy_distance(np.asarray(correct(wide_start, 100)), truth)
    figures = f"true-vs-true {reference:.4f}, kept {kept:.4f}, wide {wide:.4f}, pulled back {pulled:.4f}"
    assert kept < THRESHOLD and pulled < THRESHOLD < wide, figures
    np.testing.assert_array_equal(np.asarray(correct(wide_start, 0)), np.asarray(wide_start))


@pytest.mark.parametrize("weight", [0.0, 1.0, 3.0])
def test_classifier_free_guidance_at_w_is_classifier_guidance_at_1_plus_w(weight):
    """With the mixture's exact conditional, unconditional and posterior: (1 + w) eps(z, y) - w eps(z) equals
    eps(z) - (1 + w) sigma grad log p(y | z), an identity, through the doubled-batch denoiser the models use."""
    from vdm.sampling import guidance

    num_components = len(MIX.weights)
    null = num_components

    def eps_hat_fn_for(labels):
        def eps(z, gamma):
            per_label = [MIX.conditional(k).eps_hat(z, gamma) for k in range(num_components)] + [exact(z, gamma)]
            return jnp.take_along_axis(jnp.stack(per_label, 1), labels[:, None, None], 1)[:, 0]
        return eps

    z = MIX.sample(jax.random.key(2), 64) * 0.9
    gamma = jnp.linspace(-3.0, 3.0, 64)
    labels = jnp.arange(64) % num_components
    cfg = guidance.classifier_free_eps_hat_fn(eps_hat_fn_for, labels, null, weight)(z, gamma)
    cg = guidance.classifier_guided_eps_hat_fn(exact, MIX.log_posterior, labels, 1.0 + weight)(z, gamma)
    np.testing.assert_allclose(cfg, cg, rtol=1e-4, atol=2e-5)


# MuLAN's schedule: one gamma per dimension *and* per example (each example its own polynomial shape), the same
# endpoints [-10, 10]; the exact denoiser of the mixture under it (C_k = diag(alpha) Sigma_k diag(alpha) + diag(sigma^2))
_COEFFICIENTS = [np.asarray(jax.random.normal(k, (N, 2)), np.float32) * 1.5 for k in jax.random.split(jax.random.key(31), 3)]


def mulan_gamma_fn(t):
    from vdm.core.per_dimension import polynomial_gamma

    a, b, raw_c = (jnp.asarray(c[: jnp.shape(t)[0]]) for c in _COEFFICIENTS)
    return polynomial_gamma(a, b, 1e-3 + jax.nn.softplus(raw_c), t, -10.0, 10.0, event_ndim=1)


def _mulan_sampler(name):
    fn = sampling.SAMPLERS[name].fn
    if sampling.SAMPLERS[name].log_snr_grid:  # their default grid is uniform in one log-SNR, which this schedule has not
        fn = functools.partial(fn, grid="uniform_t")
    steps = {"annealed_langevin": 100, "pc": 100, "reverse_sde": 200, "ode": 50, "ddim": 100, "ancestral": 100}
    return lambda k, f: fn(k, f, mulan_gamma_fn, (N, 2), steps.get(name, 20))


@pytest.mark.parametrize("name", list(sampling.SAMPLERS))
def test_every_sampler_on_a_per_pixel_per_example_schedule_reproduces_the_mixture_and_wrong_scores_fail(name):
    """The scalar samplers' test under MuLAN-shaped schedules: the same threshold on the energy distance."""
    gammas = np.asarray(mulan_gamma_fn(jnp.full((N,), 0.5)))
    assert np.ptp(gammas[:, 0]) > 3 and np.ptp(gammas[:, 0] - gammas[:, 1]) > 3  # per example and per dimension
    run = jax.jit(_mulan_sampler(name), static_argnums=1)
    good = mixture.energy_distance(run(jax.random.key(0), exact), _truth())
    bad = [mixture.energy_distance(run(jax.random.key(0), f), _truth()) for f in (flipped, shrunk)]
    bad = np.nan_to_num(bad, nan=np.inf)
    figures = f"exact {good:.4f}, flipped {bad[0]:.4f}, x0.8 {bad[1]:.4f}"
    assert good < THRESHOLD, figures
    assert min(bad) > THRESHOLD, figures


def test_the_mixture_score_under_one_gamma_per_dimension_is_the_gradient_of_its_density():
    z = jax.random.normal(jax.random.key(21), (16, 2)) * 1.5
    gamma = jnp.stack([jnp.linspace(-8, 8, 16), jnp.linspace(6, -6, 16)], -1)
    autodiff = jax.vmap(jax.grad(lambda zi, gi: MIX.log_prob(zi[None], gi[None])[0]))(z, gamma)
    np.testing.assert_allclose(MIX.score(z, gamma), autodiff, rtol=1e-4, atol=1e-4)
    same = jnp.full((16, 2), 1.5)  # equal gammas: the scalar path
    np.testing.assert_allclose(MIX.score(z, same), MIX.score(z, same[:, 0]), rtol=1e-4, atol=1e-5)
