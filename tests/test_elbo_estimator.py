"""The evaluation ELBO estimator (vdm.core.elbo_estimator) and the errors `evaluate` reports.

Ground truth: data x ~ N(0, s^2 I) with its optimal denoiser eps_hat = sigma z / (alpha^2 s^2 + sigma^2), for which

    E[L_inf] = D/2 log((1 + s^2 SNR_0) / (1 + s^2 SNR_1)),
    E[L_T]   = D/2 sum_i expm1(gamma_i - gamma_{i-1}) s^2 SNR_i / (1 + s^2 SNR_i),

and the schedule is alpha-cosine on [-8, 5] (the demo's), whose gamma'(0) ~ 160 puts a spike into the
t-integrand 1/2 gamma'(t) E||eps - eps_hat||^2 at high SNR, where the optimal error is ~D.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm.core import diffusion, elbo_estimator, losses, schedules
from vdm.data import pipeline
from vdm.training.evaluation import evaluate

S, D = 1.0, 16
GAMMA_0, GAMMA_1 = -8.0, 5.0
COSINE = schedules.AlphaCosine(GAMMA_0, GAMMA_1)


def gamma_fn(t):
    return COSINE({}, t)


def optimal_eps_hat(z, gamma, s=S):
    gamma = gamma.reshape(gamma.shape + (1,) * (z.ndim - gamma.ndim))
    alpha_sq, sigma_sq = jax.nn.sigmoid(-gamma), jax.nn.sigmoid(gamma)
    return jnp.sqrt(sigma_sq) * z / (alpha_sq * s**2 + sigma_sq)


def l_inf_truth(s=S, dims=D):
    return dims / 2 * math.log((1 + s**2 * math.exp(-GAMMA_0)) / (1 + s**2 * math.exp(-GAMMA_1)))


def l_T_truth(T, s=S, dims=D):
    g = np.asarray(gamma_fn(jnp.arange(T + 1) / T), np.float64)
    snr = np.exp(-g[1:])
    return dims / 2 * float(np.sum(np.expm1(g[1:] - g[:-1]) * s**2 * snr / (1 + s**2 * snr)))


def _estimates(num_keys, n, points, density="log_snr_uniform", num_steps=0, s=S):
    """[num_keys, n] per-example diffusion estimates, fresh data x ~ N(0, s^2 I) for every key."""

    def one(key):
        k_x, k_est = jax.random.split(key)
        x = s * jax.random.normal(k_x, (n, D))
        return elbo_estimator.diffusion_estimate(x, jax.random.split(k_est, n), lambda z, g: optimal_eps_hat(z, g, s),
                                                 gamma_fn, num_steps, points, density)

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), num_keys)), np.float64)


def test_error_bars_are_calibrated_under_a_spiky_schedule():
    """|estimate - truth| <= 2 s.e. for 90-98% of 400 keys: the s.e. over examples is honest (neither too small
    nor too large). The estimator of before (one low-discrepancy offset per batch, t-sampling under the schedule,
    s.e. over examples) covers 99.8% here: its stratification across examples makes the s.e. 2x too large."""
    n = 64
    v = _estimates(400, n, points=4)
    mean, se = v.mean(axis=1), v.std(axis=1, ddof=1) / math.sqrt(n)
    coverage = np.mean(np.abs(mean - l_inf_truth()) <= 2 * se)
    assert 0.90 <= coverage <= 0.98, coverage
    # the s.e. matches the spread of the estimates about the truth, within its own sampling error (~4% at 400 keys)
    rms = np.sqrt(np.mean(np.square(mean - l_inf_truth())))
    assert 0.85 <= rms / np.sqrt(np.mean(se**2)) <= 1.15, (rms, np.sqrt(np.mean(se**2)))


@pytest.mark.parametrize("density", ["log_snr_uniform", "schedule"])
def test_every_density_is_unbiased_for_L_inf(density):
    """Both proposals estimate the same integral (Monte Carlo within 4 s.e.): the weight g(u) is right."""
    v = _estimates(16, 512, points=8, density=density).ravel()
    assert abs(v.mean() - l_inf_truth()) < 4 * v.std(ddof=1) / math.sqrt(v.size), (v.mean(), l_inf_truth())


def test_log_snr_uniform_has_lower_variance_than_the_spiky_schedule():
    """The point of sampling in log-SNR: under alpha-cosine the per-example variance falls by > 5x."""
    uniform = _estimates(4, 512, points=1).ravel()
    schedule = _estimates(4, 512, points=1, density="schedule").ravel()
    assert uniform.var() * 5 < schedule.var(), (uniform.var(), schedule.var())


def test_stratified_points_lie_one_in_each_stratum():
    u = np.asarray(jax.vmap(lambda k: elbo_estimator.stratified_points(k, 8))(jax.random.split(jax.random.key(1), 1000)))
    assert np.all(np.floor(u * 8) == np.arange(8))
    # within its stratum each point is uniform: mean offset 1/2 with s.e. (1/sqrt(12)) / sqrt(1000)
    offsets = u * 8 - np.arange(8)
    assert abs(np.mean(offsets) - 0.5) < 4 / math.sqrt(12 * 8000)
    # and the strata are jittered independently (one shared offset would correlate them fully)
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 1])[0, 1]) < 4 / math.sqrt(1000)


@pytest.mark.parametrize("T, points", [(10, 16), (10, 10), (50, 8)])
def test_discrete_time_matches_L_T(T, points):
    """L_T under the nonlinear alpha-cosine schedule: enumerated (T <= K) or stratified (T > K) steps, each at
    ceil(T u) with its own expm1(gamma_t - gamma_s) (a floor here pairs every gamma with the next step's rate)."""
    v = _estimates(8, 512, points=points, num_steps=T).ravel()
    truth, se = l_T_truth(T), v.std(ddof=1) / math.sqrt(v.size)
    assert abs(v.mean() - truth) < 4 * se, (v.mean(), truth, se)
    if T == 10:  # the test can tell L_T from L_inf
        assert abs(truth - l_inf_truth()) > 10 * se


def test_enumerated_steps_leave_only_the_noise_random():
    """With T <= K the estimate is the exact sum over steps: a denoiser with a constant squared error c per
    dimension gives 1/2 D c sum_i expm1(gamma_i - gamma_{i-1}) with no randomness at all."""
    T, c = 10, 0.25

    def eps_hat(z, gamma):  # x = 0, so eps = z / sigma: the error is sqrt(c) in every dimension, whatever eps was
        gamma = gamma.reshape(gamma.shape + (1,) * (z.ndim - gamma.ndim))
        return z / jnp.sqrt(jax.nn.sigmoid(gamma)) - math.sqrt(c)

    x = jnp.zeros((5, D))
    v = elbo_estimator.diffusion_estimate(x, jax.random.split(jax.random.key(2), 5), eps_hat, gamma_fn, T, 16)
    g = np.asarray(gamma_fn(jnp.arange(T + 1) / T), np.float64)
    np.testing.assert_allclose(np.asarray(v), 0.5 * D * c * np.sum(np.expm1(np.diff(g))), rtol=2e-5)


def test_an_examples_draws_depend_on_its_key_alone():
    """Per-example keys: the first 5 examples' terms are the same computed alone or in a batch of 12."""
    x_int = jax.random.randint(jax.random.key(3), (12, 4, 4, 1), 0, 17)
    keys = jax.random.split(jax.random.key(4), 12)
    eps_hat = lambda z, g: jnp.tanh(z) * jax.nn.sigmoid(g.reshape(-1, 1, 1, 1))
    full = elbo_estimator.elbo_estimate(x_int, keys, eps_hat, gamma_fn, 17)
    part = elbo_estimator.elbo_estimate(x_int[:5], keys[:5], eps_hat, gamma_fn, 17)
    for name in ("prior", "reconstruction", "diffusion", "bpd"):
        np.testing.assert_allclose(part[name], full[name][:5], rtol=1e-6)


def test_elbo_estimate_has_the_expectation_of_the_training_loss_terms():
    """Any denoiser of (z, gamma): the evaluation estimate and `losses.elbo_terms` (t ~ U under the schedule)
    estimate the same ELBO, within 4 s.e. of their difference (discrete data, V = 17)."""
    n, V = 4096, 17
    x_int = jax.random.randint(jax.random.key(5), (n, 2, 2, 1), 0, V)
    eps_hat = lambda z, g: 0.8 * jnp.tanh(z) * jax.nn.sigmoid(g.reshape(-1, 1, 1, 1))
    new = elbo_estimator.elbo_estimate(x_int, jax.random.split(jax.random.key(6), n), eps_hat, gamma_fn, V,
                                       points=4)["total"]
    t = jax.random.uniform(jax.random.key(7), (n,))
    old = losses.elbo_terms(x_int, losses.elbo_noise(jax.random.key(8), x_int.shape, t=t), eps_hat, gamma_fn, V)["total"]
    new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
    se = math.sqrt(new.var(ddof=1) / n + old.var(ddof=1) / n)
    assert abs(new.mean() - old.mean()) < 4 * se, (new.mean(), old.mean(), se)
    assert new.var() * 5 < old.var()  # and the estimate is far less noisy


def _fake_eval_step(params, batch, key):
    """Per-example 'terms': a fixed value per example (its index / 100) plus N(0, 1) noise from its own key."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, batch["index"])
    noise = jax.vmap(lambda k: jax.random.normal(k, ()))(keys)
    value = batch["index"] / 100.0 + noise
    return {name: value for name in ("bpd", "bpd_prior", "bpd_reconstruction", "bpd_diffusion")}


def test_evaluate_errors_have_their_stated_meaning():
    """Over 200 keys on a fixed split of 150 examples: the spread of the split mean matches '_mc_stderr'
    (noise 1 / sqrt(R N)), '_stderr' adds the spread between examples, and no padded row counts."""
    n, repeats = 150, 3
    split = pipeline.Split(np.zeros((n, 1, 1, 1), np.int32), np.zeros(n, np.int32))
    step = jax.jit(_fake_eval_step)
    runs = [evaluate(step, None, split, 64, jax.random.key(k), repeats) for k in range(200)]
    means = np.array([r["bpd"] for r in runs])
    truth_mc = 1 / math.sqrt(repeats * n)
    assert abs(means.mean() - np.arange(n).mean() / 100) < 4 * truth_mc / math.sqrt(200)  # padding excluded
    assert 0.85 < means.std(ddof=1) / truth_mc < 1.15
    np.testing.assert_allclose(np.mean([r["bpd_mc_stderr"] for r in runs]), truth_mc, rtol=0.02)
    truth_se = math.sqrt((np.var(np.arange(n) / 100, ddof=1) + 1 / repeats) / n)
    np.testing.assert_allclose(np.mean([r["bpd_stderr"] for r in runs]), truth_se, rtol=0.03)


def test_evaluate_does_not_depend_on_the_batch_size():
    split = pipeline.Split(np.zeros((150, 1, 1, 1), np.int32), np.zeros(150, np.int32))
    step = jax.jit(_fake_eval_step)
    a = evaluate(step, None, split, 64, jax.random.key(9), 2)
    b = evaluate(step, None, split, 150, jax.random.key(9), 2)
    assert a == pytest.approx(b, rel=1e-12)


def test_elbo_estimate_prior_and_reconstruction_are_their_closed_forms():
    """With gamma_0 = -1 the decoder term is large (~0.6 nats per dimension at V = 17): the estimate's reconstruction
    term has the mean of `losses.reconstruction_loss` under independent draws of z_0 ~ q(z_0 | x) (4 s.e.), its prior
    term is `losses.prior_kl` exactly, and bits/dim divide the total by D ln 2 with D = 2 * 2 * 1."""
    n, V = 4096, 17
    schedule = schedules.FixedLinear(-1.0, 5.0)
    gamma = lambda t: schedule({}, t)  # noqa: E731
    x_int = jnp.tile(jax.random.randint(jax.random.key(9), (1, 2, 2, 1), 0, V), (n, 1, 1, 1))
    terms = elbo_estimator.elbo_estimate(x_int, jax.random.split(jax.random.key(10), n), lambda z, g: 0.5 * z, gamma, V,
                                         points=2)
    x = losses.scale_data(x_int, V)
    np.testing.assert_allclose(terms["prior"], losses.prior_kl(x, gamma(jnp.ones(n))), rtol=1e-6)
    g0 = gamma(jnp.zeros(n))
    z_0 = diffusion.q_sample(x, g0, jax.random.normal(jax.random.key(11), x.shape))
    direct = np.asarray(losses.reconstruction_loss(x_int, z_0, g0, V), np.float64)
    ours = np.asarray(terms["reconstruction"], np.float64)
    assert direct.mean() > 0.5 * 4  # the term matters here
    se = math.sqrt(ours.var(ddof=1) / n + direct.var(ddof=1) / n)
    assert abs(ours.mean() - direct.mean()) < 4 * se, (ours.mean(), direct.mean(), se)
    np.testing.assert_allclose(terms["bpd"], terms["total"] / (4 * math.log(2)), rtol=1e-6)


def test_estimator_reads_its_three_config_keys_and_says_what_it_estimates():
    import ml_collections

    est = elbo_estimator.ElboEstimator.from_config(ml_collections.ConfigDict(
        {"points_per_example": 3, "time_density": "schedule", "num_repeats": 5}))
    assert (est.points, est.density, est.repeats) == (3, "schedule", 5)
    assert est.describe().startswith("L_inf at 3 stratified points per example, ")
    assert est.describe().endswith("; 5 repeat(s); independent draws per example")
    assert est.describe(3).startswith("L_T with all 3 steps per example")  # T = K: every step once
    assert est.describe(4).startswith("L_T at 3 stratified steps of 4 per example")
    for bad in ({"points": 0}, {"repeats": 0}, {"points": 1, "repeats": 0}):
        with pytest.raises(ValueError, match="must be >= 1"):
            elbo_estimator.ElboEstimator(**bad)
    elbo_estimator.ElboEstimator(points=1, repeats=1)  # the smallest valid one
    with pytest.raises(ValueError, match="log_snr_uniform"):
        elbo_estimator.ElboEstimator(density="uniform_t")
