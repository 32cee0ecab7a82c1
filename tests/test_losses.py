"""ELBO terms against closed forms: Gaussian data with the optimal denoiser, the decoder, the prior KL."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vdm.core import diffusion as D
from vdm.core import losses as L
from vdm.core import objective as O
from vdm.core import schedules as S
from vdm.core import weightings as W

G0, G1 = -13.3, 5.0
DIM, SCALE = 4, 0.5  # x ~ N(0, SCALE^2 I_DIM)


def optimal_eps_hat(z, gamma):
    """E[eps | z] for x ~ N(0, s^2 I): sigma z / (alpha^2 s^2 + sigma^2)."""
    a, s = D.alpha_sigma(D.expand_gamma(gamma, z))
    return s * z / (a**2 * SCALE**2 + s**2)


def exact_continuous(g0=G0, g1=G1):
    return DIM / 2 * math.log((1 + math.exp(-g0) * SCALE**2) / (1 + math.exp(-g1) * SCALE**2))


def exact_discrete_linear(T, g0=G0, g1=G1):
    t = np.arange(1, T + 1, dtype=np.float64) / T
    snr_t = np.exp(-(g0 + (g1 - g0) * t))
    snr_s = np.exp(-(g0 + (g1 - g0) * (t - 1 / T)))
    return DIM / 2 * np.sum((snr_s - snr_t) * SCALE**2 / (1 + snr_t * SCALE**2))


def _monte_carlo(gamma_fn, num_steps, n=200_000, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    x = SCALE * jax.random.normal(k1, (n, DIM))
    eps = jax.random.normal(k2, (n, DIM))
    t = L.low_discrepancy_times(k3, n)
    per_example = jax.jit(lambda x, e, t: O.diffusion_loss(
        x, e, *O.gamma_and_rate(gamma_fn, t, num_steps), optimal_eps_hat)[1])(x, eps, t)
    per_example = np.asarray(per_example, np.float64)
    return per_example.mean(), per_example.std() / math.sqrt(n)


def _schedule_fns():
    fns = {}
    for name in ("fixed_linear", "alpha_cosine", "monotone_net"):
        sched = S.make_schedule(name, G0, G1)
        params = sched.init(jax.random.key(7))
        fns[name] = (lambda s, p: (lambda t: s(p, t)))(sched, params)
    return fns


@pytest.mark.parametrize("name", ["fixed_linear", "alpha_cosine", "monotone_net"])
def test_continuous_loss_matches_closed_form_for_any_schedule_shape(name):
    mean, se = _monte_carlo(_schedule_fns()[name], 0)
    exact = exact_continuous()
    assert abs(mean - exact) < 4 * se, f"{name}: MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"


@pytest.mark.parametrize("T", [10, 100, 1000])
def test_discrete_loss_matches_closed_form(T):
    mean, se = _monte_carlo(_schedule_fns()["fixed_linear"], T, seed=T)
    exact = exact_discrete_linear(T)
    assert abs(mean - exact) < 4 * se, f"T={T}: MC {mean:.4f} +- {se:.4f} vs exact {exact:.4f}"


def test_discrete_exact_values_decrease_towards_continuous():
    cont = exact_continuous()
    values = [exact_discrete_linear(T) for T in (10, 100, 1000)]
    assert values[0] > values[1] > values[2] > cont
    assert (values[2] - cont) / cont < 0.01


def test_low_discrepancy_times_are_stratified_and_shardable():
    key = jax.random.key(3)
    t = np.asarray(L.low_discrepancy_times(key, 64))
    assert t.min() >= 0 and t.max() < 1
    assert sorted(np.floor(t * 64).astype(int).tolist()) == list(range(64))  # one per stratum
    parts = [L.low_discrepancy_times(key, 16, start_index=16 * i, global_batch_size=64) for i in range(4)]
    np.testing.assert_allclose(np.concatenate(parts), t, atol=1e-7)


def test_discrete_time_grid_mapping():
    """t in ((i-1)/T, i/T] -> t = i/T, s = (i-1)/T; t = 0 -> 1/T. A quadratic gamma gives every step its own
    expm1(gamma_t - gamma_s), so a point mapped to the neighbouring step (floor for ceil) changes the loss; the
    points sit on and just beside the step boundaries."""
    T = 4
    gamma_fn = lambda t: -1.0 + 6.0 * t * t
    t = jnp.array([0.0, 1e-4, 0.25, 0.2501, 0.5, 0.5001, 0.74, 0.75, 0.7501, 0.999])
    steps = np.array([1, 1, 1, 2, 2, 3, 3, 3, 4, 4])  # i for each t
    x = jnp.zeros((t.shape[0], 1))
    eps = jnp.ones((t.shape[0], 1))
    zero_hat = lambda z, g: jnp.zeros_like(z)  # ||eps - eps_hat||^2 = 1
    loss = O.diffusion_loss(x, eps, *O.gamma_and_rate(gamma_fn, t, T), zero_hat)[1]
    g = lambda u: -1.0 + 6.0 * u * u
    expected = 0.5 * T * np.expm1(g(steps / T) - g((steps - 1) / T))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_prior_kl_equals_gaussian_kl():
    x = jax.random.uniform(jax.random.key(0), (3, 2, 2, 3), minval=-1, maxval=1)
    for g1 in (-2.0, 5.0, 12.0):
        a2 = 1 / (1 + math.exp(g1))  # float64 reference: KL(N(a x, 1 - a^2) || N(0, 1))
        xx = np.asarray(x, np.float64)
        ref = np.sum(0.5 * (a2 * xx**2 + (1 - a2) - np.log(1 - a2) - 1), axis=(1, 2, 3))
        np.testing.assert_allclose(L.prior_kl(x, g1), ref, rtol=1e-5, atol=1e-8)


def test_decoder_normalised_and_recovers_data_at_high_snr():
    V = 17
    x_int = jax.random.randint(jax.random.key(1), (6, 8, 8, 1), 0, V)
    x = L.scale_data(x_int, V)
    centres = (2 * np.arange(V) + 1.0) / V - 1.0
    for g0 in (-13.3, -2.0, 3.0):
        z0 = D.q_sample(x, g0, jax.random.normal(jax.random.key(2), x.shape))
        # p(x_i = k | z_0) = N(z_0 / alpha_0; x~_k, 1 / SNR_0) normalised over the V bin centres, in float64
        u = np.asarray(z0, np.float64)[..., None] * np.sqrt(1 + np.exp(g0))  # z_0 / alpha_0
        log_w = -0.5 * np.exp(-g0) * (u - centres) ** 2
        truth = np.exp(log_w - log_w.max(-1, keepdims=True))
        truth /= truth.sum(-1, keepdims=True)
        np.testing.assert_allclose(np.exp(L.decoder_log_probs(z0, g0, V)), truth, atol=2e-5)
    z0 = D.q_sample(x, -13.3, jax.random.normal(jax.random.key(2), x.shape))
    assert bool(jnp.all(jnp.argmax(L.decoder_log_probs(z0, -13.3, V), -1) == x_int))
    assert float(L.reconstruction_loss(x_int, z0, -13.3, V).max()) < 1e-3
    # at low SNR_0 the decoder knows nearly nothing: close to D log V
    z0 = D.q_sample(x, 8.0, jax.random.normal(jax.random.key(2), x.shape))
    per_dim = L.reconstruction_loss(x_int, z0, 8.0, V) / 64
    assert float(per_dim.mean()) > 0.9 * math.log(V)


def test_decoder_same_per_dimension_likelihood_for_one_and_three_channels():
    V = 256
    x1 = jax.random.randint(jax.random.key(3), (4, 5, 5, 1), 0, V)
    z1 = D.q_sample(L.scale_data(x1, V), -6.0, jax.random.normal(jax.random.key(4), x1.shape))
    x3, z3 = jnp.repeat(x1, 3, axis=-1), jnp.repeat(z1, 3, axis=-1)
    r1 = L.reconstruction_loss(x1, z1, -6.0, V) / 25
    r3 = L.reconstruction_loss(x3, z3, -6.0, V) / 75
    np.testing.assert_allclose(r1, r3, rtol=1e-5)


def test_elbo_terms_prior_and_bits_per_dim():
    V = 17
    x_int = jax.random.randint(jax.random.key(5), (8, 4, 4, 1), 0, V)
    sched = S.FixedLinear(G0, G1)
    eps_hat = lambda z, g: 0.1 * z
    terms = jax.jit(lambda x, k: L.elbo_terms(x, k, eps_hat, lambda t: sched({}, t), V))(x_int, jax.random.key(6))
    # the prior term is the closed-form KL of the standalone function (elbo_terms passes it the right gamma_1 and
    # x; 1e-5: gamma_1 = -13.3 + 18.3 * 1 rounds in float32); bits/dim are nats / (D ln 2) with D = 4 * 4 * 1. (Sums of terms and their expectations: test_elbo_estimator.)
    np.testing.assert_allclose(terms["prior"], L.prior_kl(L.scale_data(x_int, V), jnp.float32(G1)), rtol=1e-5)
    np.testing.assert_allclose(terms["bpd"], terms["total"] / (16 * math.log(2)), rtol=1e-6)
    assert terms["bpd"].shape == (8,)


@pytest.mark.parametrize("g0,g1", [(-30.0, 30.0), (-30.0, -29.0), (29.0, 30.0)])
def test_losses_finite_at_extreme_gamma_under_jit_vmap_grad(g0, g1):
    V = 256
    x_int = jax.random.randint(jax.random.key(8), (4, 3, 3, 3), 0, V)
    sched = S.LearnedLinear(g0, g1)
    params = sched.init()

    def total(p, T):
        eps_hat = lambda z, g: jnp.tanh(z)
        return L.elbo_terms(x_int, jax.random.key(9), eps_hat, lambda t: sched(p, t), V, num_steps=T)["total"]

    for T in (0, 10):
        assert bool(jnp.all(jnp.isfinite(jax.jit(total, static_argnums=1)(params, T))))
        g = jax.grad(lambda p: jnp.mean(total(p, T)))(params)
        assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g))
    per_x = jax.vmap(lambda xi: L.reconstruction_loss(xi[None], L.scale_data(xi[None], V), g0, V))(x_int)
    assert bool(jnp.all(jnp.isfinite(per_x)))


def _tree_rel(a, b):
    num = sum(float(jnp.sum(jnp.square(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(jnp.sum(jnp.square(y))) for y in jax.tree.leaves(b))
    return math.sqrt(num / den)


@pytest.fixture(scope="module")
def variance_setup():
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    config = apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "monotone_net", "schedule.width": 16, "schedule.interior_objective": "variance",
        "model.dropout": 0.1, "model.attention_per_block": False})  # the network's kind does not matter here
    model = VDM.from_config(config)
    params = jax.jit(model.init)(jax.random.key(0))  # one program: op by op, a first init compiles every op
    rng = np.random.default_rng(0)
    batch = {"images": rng.integers(0, 17, (8, 8, 8, 1)), "labels": np.zeros(8, np.int32)}
    return model, params, batch, jax.random.key(3)


def test_variance_minimizing_gradient_against_brute_force(variance_setup):
    """Interior: grad of mean(L_diffusion_i^2) in nats; network and endpoints: the plain ELBO gradient."""
    model, params, batch, key = variance_setup
    noise = L.elbo_noise(jax.random.split(key, 3)[0], batch["images"].shape)  # the draws of model.elbo_terms
    t = noise["t"]

    def terms(p):
        return model.elbo_terms(p, batch, key, train=True, noise=noise)

    def per_example(p, gammas_t):
        out = model.elbo_terms(p, batch, key, train=True, noise=noise, gammas_t=gammas_t)
        return out["total"], out["diffusion"], None

    (loss, _), grads = jax.jit(lambda p: L.variance_minimizing_value_and_grad(per_example, model.schedule, p, t))(params)

    @jax.jit
    def brute_force(p):  # one compiled program: the mean ELBO, its gradient, the gradient of the mean square
        mean_elbo, elbo = jax.value_and_grad(lambda q: jnp.mean(terms(q)["total"]))(p)
        return mean_elbo, elbo, jax.grad(lambda q: jnp.mean(jnp.square(terms(q)["diffusion"])))(p)

    mean_elbo, elbo, variance = brute_force(params)
    np.testing.assert_allclose(loss, mean_elbo, rtol=1e-6)
    assert _tree_rel(grads["net"], elbo["net"]) < 1e-4
    assert _tree_rel(grads["schedule"]["endpoints"], elbo["schedule"]["endpoints"]) < 1e-4
    # float32: the two programs sum the same products in different orders; < 1e-4 while the noise was drawn
    # inside the programs, 1.9e-4 with it passed in (other fusions), against > 0.5 for a wrong gradient
    assert _tree_rel(grads["schedule"]["interior"], variance["schedule"]["interior"]) < 5e-4
    # not vacuous: the variance gradient of the interior is far from its ELBO gradient
    assert _tree_rel(elbo["schedule"]["interior"], variance["schedule"]["interior"]) > 0.5

    # the model's training path works in bits/dim: interior = grad of mean(bpd_diffusion_i^2) = to_bpd^2 times the
    # brute force in nats. float32 alone moves this gradient by ~1e-4 (brute force in nats vs in bits/dim differed
    # by 1.4e-4 here), hence 1e-3.
    (loss_bpd, _), model_grads = jax.jit(lambda p: model.loss_and_grads(p, batch, key))(params)
    to_bpd = 1.0 / (model.num_dims * math.log(2.0))
    np.testing.assert_allclose(loss_bpd, loss * to_bpd, rtol=1e-5)
    assert _tree_rel(model_grads["net"], jax.tree.map(lambda g: g * to_bpd, elbo["net"])) < 1e-4
    variance_bpd = jax.tree.map(lambda g: g * to_bpd**2, variance["schedule"]["interior"])
    assert _tree_rel(model_grads["schedule"]["interior"], variance_bpd) < 1e-3


def test_variance_objective_needs_monotone_net_and_continuous_elbo():
    from vdm.config.validation import ConfigError, apply_overrides, load_config_file

    for overrides, words in [({"schedule.name": "learned_linear"}, "monotone_net"),
                             ({"schedule.name": "monotone_net", "loss.num_steps": 10}, "continuous-time")]:
        with pytest.raises(ConfigError, match=words):
            apply_overrides(load_config_file("configs/tiny.py"), {"schedule.interior_objective": "variance", **overrides})


@pytest.mark.parametrize("vocab", [17, 256])
@pytest.mark.parametrize("gamma_0", [-13.3, -8.0, -5.0, -1.0])
def test_windowed_decoder_equals_the_full_one(vocab, gamma_0):
    """Exactness guard: the windowed normaliser (or its fallback) gives the full decoder's loss and gradients."""
    rng = np.random.default_rng(int(-gamma_0 * 10) + vocab)
    x_int = jnp.asarray(rng.integers(0, vocab, (4, 6, 6, 3)))
    x = L.scale_data(x_int, vocab)
    z_0 = D.q_sample(x, jnp.full((4,), gamma_0), jax.random.normal(jax.random.key(vocab), x.shape))
    z_0 = z_0.at[0, 0, 0, 0].set(1.02).at[1, 0, 0, 0].set(-1.02)  # outside the data range: edge windows
    g0 = jnp.full((4,), gamma_0)
    full = lambda z, g: L.reconstruction_loss(x_int, z, g, vocab)  # noqa: E731
    windowed = lambda z, g: L.reconstruction_loss(x_int, z, g, vocab, window=3)  # noqa: E731
    # atol: u = z_0 / alpha_0 is known to a float32 ulp, so a logit -1/2 SNR (u - c)^2 of a draw within a sigma of
    # its bin centre c is known to ~SNR |u - c| eps ~ sqrt(SNR_0) eps, and the two forms compute c and u - c apart:
    # D sqrt(SNR_0) eps over the D = 108 dimensions (2e-5 at gamma_0 = -1, 1e-2 at -13.3; seen: 1e-4 at -13.3 and
    # -8 with XLA:CPU's fusion emitters off). A wrong normaliser is off by nats.
    atol = max(1e-5, x.size / 4 * np.exp(-gamma_0 / 2) * np.finfo(np.float32).eps)
    np.testing.assert_allclose(jax.jit(windowed)(z_0, g0), jax.jit(full)(z_0, g0), rtol=1e-5, atol=atol)
    g_full = jax.jit(jax.grad(lambda z, g: jnp.sum(full(z, g)), argnums=(0, 1)))(z_0, g0)
    g_win = jax.jit(jax.grad(lambda z, g: jnp.sum(windowed(z, g)), argnums=(0, 1)))(z_0, g0)
    for a, b in zip(g_win, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_elbo_terms_call_the_network_once_and_give_the_loss_of_that_call():
    """The ELBO's diffusion term and a weighting's loss come from one network call at the same (t, eps) draw."""
    calls = []

    def eps_hat_fn(z, gamma):
        calls.append(z.shape)
        return 0.3 * z

    gamma_fn = lambda t: -6.0 + 10.0 * t  # noqa: E731
    x_int = jnp.asarray(np.random.default_rng(0).integers(0, 17, (4, 3, 3, 1)))
    key = jax.random.key(5)
    terms = L.elbo_terms(x_int, key, eps_hat_fn, gamma_fn, 17, weighting=W.get_weighting("eps_mse"))
    assert len(calls) == 1
    key_t, _, key_eps = jax.random.split(key, 3)
    x, eps, t = L.scale_data(x_int, 17), jax.random.normal(key_eps, (4, 3, 3, 1)), L.low_discrepancy_times(key_t, 4)
    gamma = np.asarray(-6.0 + 10.0 * t, np.float64)[:, None, None, None]
    z = np.sqrt(1 / (1 + np.exp(gamma))) * np.asarray(x) + np.sqrt(1 / (1 + np.exp(-gamma))) * np.asarray(eps)
    error = np.sum(np.square(np.asarray(eps) - 0.3 * z).reshape(4, -1), -1)  # ||eps - eps_hat||^2
    np.testing.assert_allclose(terms["diffusion"], 0.5 * 10.0 * error, rtol=1e-5)  # L_inf = gamma'/2 ||.||^2
    np.testing.assert_allclose(terms["loss_diffusion"], error / (9 * math.log(2)), rtol=1e-5)  # L_simple / ln 2
    total = terms["prior"] + terms["reconstruction"] + error
    np.testing.assert_allclose(terms["loss"], total / (9 * math.log(2)), rtol=1e-5)
