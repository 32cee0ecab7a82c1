"""Weighted diffusion losses L_w against closed forms (Gaussian data, optimal denoiser), the weightings' claims,
the loss.objective -> loss.weighting migration, the demo's unchanged training loss, and the interior gradient
clipped apart."""

import json
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

G0, G1 = -13.3, 5.0  # lambda in [-5, 13.3]
DIM, SCALE = 4, 0.5  # x ~ N(0, SCALE^2 I_DIM)
N = 100_000  # the issue asks for >= 1e5
SCHEDULES = ("fixed_linear", "alpha_cosine", "monotone_net")  # three shapes sharing the endpoints
PARAMS = {"sigmoid": {"bias": 1.0}}


def optimal_eps_hat(z, gamma):
    """E[eps | z] for x ~ N(0, s^2 I): sigma z / (alpha^2 s^2 + sigma^2)."""
    a, s = D.alpha_sigma(D.expand_gamma(gamma, z))
    return s * z / (a**2 * SCALE**2 + s**2)


def _gamma_fn(name):
    sched = S.make_schedule(name, G0, G1)
    params = sched.init(jax.random.key(7))
    return lambda t: sched(params, t)


def _mmse(lam):
    """E ||eps - eps_hat_opt(z_lambda)||^2 = D s^2 e^lambda / (1 + s^2 e^lambda) (float64)."""
    return DIM * SCALE**2 * np.exp(lam) / (1 + SCALE**2 * np.exp(lam))


def exact(name, schedule):
    """L_w by quadrature: over lambda for a weighting of lambda alone, over t for a schedule-defined one."""
    w = W.get_weighting(name, **PARAMS.get(name, {}))
    if not w.schedule_dependent:
        lam = np.linspace(-G1, -G0, 40_001)
        f = 0.5 * np.asarray(w(jnp.asarray(lam, jnp.float32)), np.float64) * _mmse(lam)
        return np.trapezoid(f, lam)
    t = np.linspace(0.0, 1.0, 20_001)
    lam = -np.asarray(_gamma_fn(schedule)(jnp.asarray(t, jnp.float32)), np.float64)
    f = 0.5 * np.asarray(w.loss_weight(jnp.asarray(lam, jnp.float32), None), np.float64) * _mmse(lam)
    return np.trapezoid(f, t)


@pytest.fixture(scope="module")
def draws():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return SCALE * jax.random.normal(k1, (N, DIM)), jax.random.normal(k2, (N, DIM)), L.low_discrepancy_times(k3, N)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_weighted_loss_matches_closed_form_for_every_weighting_and_schedule_shape(draws, schedule):
    """Monte-Carlo L_w (1e5 draws) within 4 s.e. of the quadrature of (D / 2) int w(lambda) s^2 e^l / (1 + s^2 e^l).

    For weightings of lambda alone the exact value is the same for all three schedules (the invariance)."""
    x, eps, t = draws
    gamma_fn = _gamma_fn(schedule)
    weightings = {name: W.get_weighting(name, **PARAMS.get(name, {})) for name in W.WEIGHTINGS}
    all_losses = jax.jit(lambda x, e, t: {  # one program: the denoiser's error is computed once
        name: O.diffusion_loss(x, e, *O.gamma_and_rate(gamma_fn, t), optimal_eps_hat, w)[0]
        for name, w in weightings.items()})
    for name, per_example in all_losses(x, eps, t).items():
        per_example = np.asarray(per_example, np.float64)
        mean, se = per_example.mean(), per_example.std() / math.sqrt(N)
        value = exact(name, schedule)
        assert abs(mean - value) < 4 * se, f"{name} / {schedule}: MC {mean:.5f} +- {se:.5f} vs exact {value:.5f}"
    # w = 1 is the ELBO: (D / 2) log((1 + s^2 SNR_max) / (1 + s^2 SNR_min))
    elbo = DIM / 2 * math.log((1 + math.exp(-G0) * SCALE**2) / (1 + math.exp(-G1) * SCALE**2))
    assert abs(exact("elbo", schedule) - elbo) < 1e-6 * elbo


def test_elbo_weighting_is_the_diffusion_loss(draws):
    """w = 1: the weighted loss is the ELBO's diffusion term bit for bit (the demo's likelihood runs train on it)."""
    x, eps, t = (a[:4096] for a in draws)
    for schedule in SCHEDULES:
        gamma_fn = _gamma_fn(schedule)
        weighted, elbo = jax.jit(lambda x, e, t: O.diffusion_loss(
            x, e, *O.gamma_and_rate(gamma_fn, t), optimal_eps_hat, W.get_weighting("elbo")))(x, eps, t)
        np.testing.assert_array_equal(weighted, elbo)
        gamma, dgamma = S.gamma_and_derivative(gamma_fn, t)
        z = D.q_sample(x, gamma, eps)
        by_hand = 0.5 * np.asarray(dgamma, np.float64) * np.sum(
            np.square(np.asarray(eps - optimal_eps_hat(z, gamma), np.float64)), -1)
        np.testing.assert_allclose(elbo, by_hand, rtol=5e-5)  # float32 z and eps_hat, outside and inside jit


@pytest.mark.parametrize("name", list(W.WEIGHTINGS))
def test_monotone_claims(name):
    """monotone=True: non-increasing over lambda in [-30, 30]; False: increases somewhere there; None (defined
    under the schedule): eps_mse is constant under fixed_linear and not monotone under alpha_cosine, v_mse is
    decreasing under fixed_linear."""
    entry = W.WEIGHTINGS[name]
    w = W.get_weighting(name, **PARAMS.get(name, {}))
    if entry.monotone is not None:
        lam = jnp.linspace(-30.0, 30.0, 6001)
        steps = np.diff(np.asarray(w(lam), np.float64))
        scale = float(np.max(np.asarray(w(lam))))
        if entry.monotone:
            assert np.all(steps <= 1e-6 * scale), f"{name} increases somewhere"
        else:
            assert np.any(steps > 1e-3 * scale), f"{name} claimed not monotone but is"
        return
    for schedule, monotone in (("fixed_linear", True), ("alpha_cosine", name == "v_mse")):
        t = jnp.linspace(0.0, 1.0, 2001)
        gamma, dgamma = S.gamma_and_derivative(_gamma_fn(schedule), t)
        values = np.asarray(w(-gamma, dgamma), np.float64)  # lambda = -gamma decreases with t
        steps = np.diff(values[::-1])  # along increasing lambda
        assert np.all(steps <= 1e-5 * values.max()) == monotone, (name, schedule)


def test_v_mse_is_the_explicit_v_prediction_mse(draws):
    """||v - v_hat||^2 with v = alpha eps - sigma x and v_hat from the denoiser's x_hat, on the same draws."""
    x, eps, t = (a[:4096] for a in draws)
    gamma_fn = _gamma_fn("alpha_cosine")
    eps_hat_fn = lambda z, g: 0.7 * z + 0.1 * jnp.tanh(3 * z)  # noqa: E731  (any denoiser)

    def explicit(x, eps, t):
        gamma = gamma_fn(t)
        a, s = D.alpha_sigma(D.expand_gamma(gamma, x))
        z = a * x + s * eps
        eps_hat = eps_hat_fn(z, gamma)
        x_hat = (z - s * eps_hat) / a
        return (jnp.sum(jnp.square((a * eps - s * x) - (a * eps_hat - s * x_hat)), axis=-1),
                jnp.sum(jnp.square(eps - eps_hat), axis=-1))

    def ours(name):
        return jax.jit(lambda x, e, t: O.diffusion_loss(
            x, e, *O.gamma_and_rate(gamma_fn, t), eps_hat_fn, W.get_weighting(name))[0])(x, eps, t)

    v_error, eps_error = jax.jit(explicit)(x, eps, t)
    np.testing.assert_allclose(ours("v_mse"), v_error, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(ours("eps_mse"), eps_error, rtol=1e-5)


def test_edm_weighting_is_edms_loss_in_lambda_form():
    """E_{ln sigma ~ N(-1.2, 1.2^2)} [(sigma^2 + sigma_d^2) / sigma_d^2 f(-2 ln sigma)] = int w_edm(lambda) f(lambda) dl
    for a test function f (the eps error's expectation at lambda), by quadrature on both sides."""
    f = lambda lam: 1.0 / (1.0 + np.exp(-lam / 3.0))  # noqa: E731
    u = np.linspace(-1.2 - 12 * 1.2, -1.2 + 12 * 1.2, 400_001)  # ln sigma
    density = np.exp(-0.5 * ((u + 1.2) / 1.2) ** 2) / (1.2 * math.sqrt(2 * math.pi))
    edm = np.trapezoid(density * (np.exp(2 * u) + 0.25) / 0.25 * f(-2 * u), u)
    lam = np.linspace(-40.0, 40.0, 400_001)
    ours = np.trapezoid(np.asarray(W.get_weighting("edm")(jnp.asarray(lam, jnp.float32)), np.float64) * f(lam), lam)
    assert abs(ours - edm) < 1e-4 * edm, (ours, edm)
    # edm_monotonic: edm at and above the peak, the peak value below it; the peak is edm's maximum
    lam = jnp.linspace(-30.0, 30.0, 60001)
    edm, mono = W.get_weighting("edm")(lam), W.get_weighting("edm_monotonic")(lam)
    above = lam >= W.EDM_PEAK
    np.testing.assert_array_equal(mono[above], edm[above])
    assert float(jnp.max(edm)) <= float(W.get_weighting("edm")(W.EDM_PEAK)) * (1 + 1e-6)
    np.testing.assert_allclose(mono[~above], float(W.get_weighting("edm")(W.EDM_PEAK)), rtol=1e-6)


def test_get_weighting_parameters():
    assert W.get_weighting("sigmoid").params == {"bias": 0.0}
    np.testing.assert_allclose(W.get_weighting("sigmoid", bias=2.0)(jnp.array([2.0])), [0.5])
    with pytest.raises(ValueError, match="takes parameters"):
        W.get_weighting("elbo", bias=1.0)
    with pytest.raises(ValueError, match="unknown weighting 'mse'"):
        W.get_weighting("mse")
    with pytest.raises(ValueError, match="depends on the schedule"):
        W.get_weighting("eps_mse")(jnp.zeros(3))


# --- config: loss.objective moved to loss.weighting -------------------------------------------------------------


def test_loss_objective_maps_to_loss_weighting(tmp_path):
    from vdm.config.schema import base_config
    from vdm.config.validation import ConfigError, apply_overrides, load_config_file, validate

    path = tmp_path / "old.py"
    path.write_text("from vdm.config.schema import base_config\n\n\ndef get_config():\n    c = base_config()\n"
                    "    c.schedule.name = 'alpha_cosine'\n    c.loss.objective = 'simple'\n    return c\n")
    config = load_config_file(str(path))
    validate(config)
    assert config.loss.weighting == "eps_mse" and "objective" not in config.loss
    assert apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "alpha_cosine", "loss.objective": "simple"}).loss.weighting == "eps_mse"
    with pytest.raises(ConfigError, match="'loss.objective' moved to 'loss.weighting'"):
        apply_overrides(load_config_file("configs/tiny.py"), {"loss.objective": "mse"})
    built = base_config()
    built.loss.objective = "simple"  # a config built in code, not loaded from a file: one line naming the new key
    with pytest.raises(ConfigError, match="'loss.objective' moved to 'loss.weighting' \\('elbo' -> 'elbo', 'simple' -> 'eps_mse'\\)"):
        validate(built)


def test_non_elbo_weighting_cannot_train_learned_schedule_or_discrete_time():
    from vdm.config.validation import ConfigError, apply_overrides, load_config_file

    for name in ("eps_mse", "sigmoid"):
        for schedule in ("learned_linear", "monotone_net", "official_nnet"):
            with pytest.raises(ConfigError, match="cannot train a learned 'schedule.name'"):
                apply_overrides(load_config_file("configs/tiny.py"), {"schedule.name": schedule, "loss.weighting": name})
    # the adaptive importance sampler: a weighting of lambda alone, monotone_net's interior on the variance
    apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "monotone_net", "schedule.interior_objective": "variance", "loss.weighting": "edm"})
    with pytest.raises(ConfigError, match="function of lambda alone \\(elbo, sigmoid, edm, edm_monotonic\\), got 'v_mse'"):
        apply_overrides(load_config_file("configs/tiny.py"), {
            "schedule.name": "monotone_net", "schedule.interior_objective": "variance", "loss.weighting": "v_mse"})
    with pytest.raises(ConfigError, match="continuous-time only"):
        apply_overrides(load_config_file("configs/tiny.py"), {
            "schedule.name": "alpha_cosine", "loss.weighting": "edm", "loss.num_steps": 10})
    apply_overrides(load_config_file("configs/tiny.py"), {  # L_simple in discrete time, as before
        "schedule.name": "alpha_cosine", "loss.weighting": "eps_mse", "loss.num_steps": 10})


def test_old_demo_workdir_with_loss_objective_loads_and_reruns(tmp_path):
    """A demo workdir written before the weightings (config.json: loss.objective = 'simple') loads with
    loss.weighting = 'eps_mse' and is the same config as today's demo: a rerun is not refused."""
    from vdm.config.validation import load_config_file
    from vdm.training import workdirs

    demo = load_config_file("configs/digits.py")
    saved = demo.to_dict()
    del saved["loss"]["weighting"], saved["loss"]["weighting_bias"]
    saved["loss"]["objective"] = "simple"
    (tmp_path / "config.json").write_text(json.dumps({"config": saved, "time": "2026-12-01T10:00:00"}))
    loaded = workdirs.load_config(str(tmp_path))
    assert loaded.loss.weighting == "eps_mse" and "objective" not in loaded.loss
    assert workdirs.config_differences(demo, loaded) == []
    workdirs.check_same_config(demo, str(tmp_path))


# --- the demo's training loss is bitwise today's ----------------------------------------------------------------


def test_demo_training_loss_and_gradients_are_l_simple_over_ln_2():
    """configs/digits.py (eps_mse under alpha_cosine): the train step's loss and gradients are those of
    mean(L_simple) / ln 2, L_simple = mean_i (eps - eps_hat)_i^2 as DDPM's 'simple' objective computed it (the
    unit of every training loss is bits/dim; a narrower network, to compile fast). The prior and reconstruction
    terms the loss also carries have no gradient under the fixed schedule."""
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    config = apply_overrides(load_config_file("configs/digits.py"), {"model.channels": 16, "model.num_blocks": 1})
    assert config.loss.weighting == "eps_mse" and config.schedule.name == "alpha_cosine"
    model = VDM.from_config(config)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {"images": jnp.asarray(rng.integers(0, 17, (8, 8, 8, 1))), "labels": jnp.zeros(8, jnp.int32)}
    key = jax.random.key(4)
    k_elbo, k_drop, _ = jax.random.split(key, 3)
    noise = L.elbo_noise(k_elbo, batch["images"].shape)

    def l_simple(p):  # DDPM's objective, written out
        x = L.scale_data(batch["images"], 17)
        gamma = model.gamma_fn(p)(noise["t"])
        eps_hat = model.eps_hat_fn(p, dropout_key=k_drop)(D.q_sample(x, gamma, noise["eps"]), gamma)
        return jnp.mean(jnp.square(noise["eps"] - eps_hat)) / math.log(2)

    (loss, terms), grads = jax.jit(model.loss_and_grads)(params, batch, key)
    simple, grads_simple = jax.jit(jax.value_and_grad(l_simple))(params)
    np.testing.assert_allclose(jnp.mean(terms["loss_diffusion"]), simple, rtol=1e-6)
    extra = jnp.mean(terms["bpd_prior"] + terms["bpd_reconstruction"])
    np.testing.assert_allclose(loss, simple + extra, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads["net"]), jax.tree.leaves(grads_simple["net"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7 * float(jnp.max(jnp.abs(b))))


# --- the variance-minimising interior's gradient, clipped and reported apart -------------------------------------


def test_interior_gradient_clipped_apart_leaves_the_network_update_unchanged():
    import ml_collections

    from vdm.training import optim

    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, decay="constant", b1=0.9, b2=0.99,
                                         eps=1e-8, weight_decay=0.0, grad_clip=1.0, accumulate_steps=1,
                                         schedule_lr_scale=1.0))
    params = {"net": {"kernel": jnp.ones((3, 2))}, "schedule": {"endpoints": {"gamma_0": jnp.zeros(())},
                                                                 "interior": {"w": jnp.ones((4,))}}}
    grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
    big = {**grads, "schedule": {**grads["schedule"], "interior": {"w": 1e4 * jnp.ones((4,))}}}
    apart, _ = optim.make_optimizer(cfg, 10, clip_interior_apart=True)
    together, _ = optim.make_optimizer(cfg, 10)
    u1, _ = apart.update(grads, apart.init(params), params)
    u2, _ = apart.update(big, apart.init(params), params)
    np.testing.assert_array_equal(u1["net"]["kernel"], u2["net"]["kernel"])
    np.testing.assert_array_equal(u1["schedule"]["endpoints"]["gamma_0"], u2["schedule"]["endpoints"]["gamma_0"])
    # clipped together, the large interior gradient shrinks the network's share (Adam's first step hides a
    # uniform scale, so compare the clipped gradients themselves)
    clip_apart, clip_together = optim.clip_by_global_norm_apart(1.0), optim.optax.clip_by_global_norm(1.0)
    g_apart = clip_apart.update(big, clip_apart.init(params))[0]
    g_together = clip_together.update(big, clip_together.init(params))[0]
    np.testing.assert_array_equal(g_apart["net"]["kernel"], clip_together.update(
        {"net": grads["net"], "schedule": {"endpoints": grads["schedule"]["endpoints"]}}, None)[0]["net"]["kernel"])
    assert float(jnp.max(g_together["net"]["kernel"])) < 1e-3 * float(jnp.max(g_apart["net"]["kernel"]))
    assert float(optim.optax.tree.norm(g_apart["schedule"]["interior"])) == pytest.approx(1.0, rel=1e-6)
    # state structure unchanged: checkpoints of either form restore into the other
    assert jax.tree.structure(apart.init(params)) == jax.tree.structure(together.init(params))
    rest, interior = optim.global_norms(big)
    assert float(interior) == pytest.approx(2e4, rel=1e-6) and float(rest) == pytest.approx(0.3 * math.sqrt(7), rel=1e-6)


def test_variance_train_step_reports_the_interior_gradient_norm_apart():
    """interior_objective = 'variance': the step's grad_norm leaves the interior out, grad_norm_interior is its own,
    and a non-finite interior gradient still rejects the step (a stand-in model: the step's logic only)."""
    import ml_collections

    from vdm.training import optim
    from vdm.training.steps import TERM_NAMES, make_train_step

    class Toy:
        interior_objective = "variance"
        term_names = TERM_NAMES

        def init(self, key):
            return {"net": {"kernel": jnp.ones((3,))},
                    "schedule": {"endpoints": {"gamma_0": jnp.zeros(())}, "interior": {"w": jnp.ones((2,))}}}

        def loss_and_grads(self, params, batch, key):
            scale = batch["images"][0]  # the interior's gradient: 1e3 * scale
            grads = {"net": {"kernel": jnp.full((3,), 3.0)}, "schedule": {
                "endpoints": {"gamma_0": jnp.asarray(4.0)}, "interior": {"w": jnp.full((2,), 1e3) * scale}}}
            terms = {name: jnp.zeros((2,)) for name in TERM_NAMES}
            return (jnp.asarray(1.0), terms), grads

        def gamma_fn(self, params):
            return lambda t: params["schedule"]["endpoints"]["gamma_0"] + t

    model = Toy()
    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, decay="constant", b1=0.9, b2=0.99,
                                         eps=1e-8, weight_decay=0.0, grad_clip=1.0, accumulate_steps=1,
                                         schedule_lr_scale=1.0))
    tx, lr = optim.make_optimizer(cfg, 10, clip_interior_apart=True)
    from vdm.training.steps import create_train_state

    state = create_train_state(model, tx, jax.random.key(0))
    step = make_train_step(model, tx, lr, 0.99, donate=False)
    new, metrics = step(state, {"images": jnp.ones((1, 1))}, jax.random.key(1))
    np.testing.assert_allclose(metrics["grad_norm"][0], math.sqrt(3 * 9 + 16), rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm_interior"][0], 1e3 * math.sqrt(2), rtol=1e-6)
    assert float(metrics["nonfinite"][0]) == 0
    _, rejected = step(state, {"images": jnp.full((1, 1), jnp.inf)}, jax.random.key(1))
    assert float(rejected["nonfinite"][0]) == 1 and math.isfinite(float(rejected["grad_norm"][0]))


def _sigmoid_integral(bias, lam_0, lam_1):
    """int_{lam_0}^{lam_1} sigmoid(b - lambda) d lambda = softplus(b - lam_0) - softplus(b - lam_1)."""
    return np.logaddexp(0.0, bias - lam_0) - np.logaddexp(0.0, bias - lam_1)


def test_adaptive_schedule_keeps_the_mean_and_reaches_the_minimum_variance():
    """monotone_net + interior_objective = 'variance' as an importance sampler of lambda for L_w, against closed forms.

    With eps_hat = 0 the error ||eps||^2 ~ chi^2_D does not depend on lambda, so per example
    L_w = 1/2 w(lambda_t) gamma'(t) ||eps||^2 has the mean 1/2 D int w d lambda whatever the interior
    (the endpoints pinned) and the least variance (1/2 int w)^2 2 D, reached when lambda's density
    1 / gamma'(t) is w / int w. Training the interior on d/d eta mean(L^2) must keep the mean and come
    near that minimum (the monotone network approaches it slowly: 1.29x after 600 steps); the test fails if the endpoints move (the mean changes) or the interior gets the
    wrong gradient (the variance stays high).
    """
    import optax

    dims, bias, width = 16, 2.0, 32
    weighting = W.get_weighting("sigmoid", bias=bias)
    schedule = S.make_schedule("monotone_net", G0, G1, width=width)
    params = {"schedule": schedule.init(jax.random.key(0))}

    def per_example(chi2):
        def fn(p, gammas_t):
            gamma, dgamma = gammas_t
            loss = 0.5 * weighting(-gamma) * dgamma * chi2
            return loss, loss, None
        return fn

    def draw(key, n):
        k_t, k_eps = jax.random.split(key)
        return jax.random.uniform(k_t, (n,)), jnp.sum(jnp.square(jax.random.normal(k_eps, (n, dims))), axis=1)

    tx = optax.adam(0.1)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        t, chi2 = draw(key, 1024)
        _, grads = L.variance_minimizing_value_and_grad(per_example(chi2), schedule, params, t, pin_endpoints=True)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    @jax.jit
    def losses(params, key):
        t, chi2 = draw(key, 400_000)
        gamma, dgamma = L.gamma_and_derivative(lambda u: schedule(params["schedule"], u), t)
        return 0.5 * weighting(-gamma) * dgamma * chi2

    mean = 0.5 * dims * _sigmoid_integral(bias, -G1, -G0)
    least_variance = (0.5 * _sigmoid_integral(bias, -G1, -G0)) ** 2 * 2 * dims
    before = np.asarray(losses(params, jax.random.key(1)), np.float64)
    for i in range(600):
        params, opt = step(params, opt, jax.random.key(100 + i))
    after = np.asarray(losses(params, jax.random.key(2)), np.float64)
    for sample in (before, after):
        assert abs(sample.mean() - mean) < 4 * sample.std() / math.sqrt(sample.size)
    np.testing.assert_allclose(S.endpoints(params["schedule"]), (G0, G1), rtol=1e-6)
    assert before.var() > 5 * least_variance  # not vacuous: the linear start is far from the minimum
    # measured: 12.2x the least variance at the start, 1.29x after 600 steps (1.21x after 1000)
    assert after.var() < 1.5 * least_variance, (before.var() / least_variance, after.var() / least_variance)


@pytest.mark.slow  # ~40 s on 2 cores; the closed-form test above and the ELBO brute force (test_losses) stay fast
def test_adaptive_schedule_trains_the_network_on_l_w_and_the_interior_on_its_square():
    """The trainer's path (`VDM.loss_and_grads`): network gradient of mean(L_w), interior gradient of mean(L_w^2)
    (brute force through the whole model), endpoints zero."""
    from vdm.config.validation import apply_overrides, load_config_file
    from vdm.model import VDM

    config = apply_overrides(load_config_file("configs/tiny.py"), {
        "schedule.name": "monotone_net", "schedule.width": 16, "schedule.interior_objective": "variance",
        "loss.weighting": "sigmoid", "loss.weighting_bias": 2.0, "model.dropout": 0.1})
    model = VDM.from_config(config)
    params = jax.jit(model.init)(jax.random.key(0))
    batch = {"images": np.random.default_rng(0).integers(0, 17, (8, 8, 8, 1)), "labels": np.zeros(8, np.int32)}
    key = jax.random.key(3)
    noise = L.elbo_noise(model._split(key)[0], batch["images"].shape)

    def l_w(p):
        return model.elbo_terms(p, batch, key, train=True, noise=noise)["loss_diffusion"]

    @jax.jit
    def both(p):
        (loss, _), grads = model.loss_and_grads(p, batch, key)
        return loss, grads, jax.grad(lambda q: jnp.mean(l_w(q)))(p), jax.grad(lambda q: jnp.mean(jnp.square(l_w(q))))(p)

    loss, grads, mean_grad, square_grad = both(params)
    terms = model.elbo_terms(params, batch, key, train=True, noise=noise)
    np.testing.assert_allclose(loss, jnp.mean(terms["loss"]), rtol=1e-5)
    rel = lambda a, b: math.sqrt(sum(float(jnp.sum(jnp.square(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
                                 / sum(float(jnp.sum(jnp.square(y))) for y in jax.tree.leaves(b)))  # noqa: E731
    assert rel(grads["net"], mean_grad["net"]) < 1e-4
    # float32: the two programs sum products of L_i (spread over decades under the sigmoid weighting) in other
    # orders; measured 1.4e-3 (the ELBO's bits/dim path: ~1e-4 .. 1e-3, tests/test_losses.py)
    assert rel(grads["schedule"]["interior"], square_grad["schedule"]["interior"]) < 3e-3
    # not vacuous: the interior's gradient of mean(L_w^2) is not a multiple of that of mean(L_w)
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(mean_grad["schedule"]["interior"])])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(square_grad["schedule"]["interior"])])
    assert float(jnp.linalg.norm(b - a * jnp.dot(a, b) / jnp.dot(a, a)) / jnp.linalg.norm(b)) > 0.05
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grads["schedule"]["endpoints"]))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(mean_grad["schedule"]["endpoints"]))


def test_training_loss_of_each_weighting_is_its_documented_term():
    """From one `elbo_terms` call, in bits/dim for every weighting: `elbo` trains the whole bound (terms['bpd']);
    a weighting equal to 1 everywhere (sigmoid with a bias of 1e4) trains the same number; eps_mse trains
    prior + reconstruction + ||eps - eps_hat||^2 (L_simple / ln 2 plus the terms without a network)."""
    V, shape = 17, (6, 4, 4, 1)
    x_int = jax.random.randint(jax.random.key(1), shape, 0, V)
    sched = S.FixedLinear(-8.0, 4.0)
    D_ = math.prod(shape[1:])

    def terms(name, **p):
        return L.elbo_terms(x_int, jax.random.key(2), lambda z, g: 0.2 * z, lambda t: sched({}, t), V,
                            weighting=W.get_weighting(name, **p))

    elbo = terms("elbo")
    np.testing.assert_array_equal(elbo["loss"], elbo["bpd"])
    np.testing.assert_allclose(terms("sigmoid", bias=1e4)["loss"], elbo["bpd"], rtol=1e-6)
    eps_error = 2.0 * elbo["diffusion"] / 12.0  # L_inf = gamma'/2 ||eps - eps_hat||^2, gamma' = 12
    eps_mse = terms("eps_mse")
    np.testing.assert_allclose(eps_mse["loss_diffusion"], eps_error / (D_ * math.log(2)), rtol=1e-5)
    np.testing.assert_allclose(eps_mse["loss"], elbo["bpd_prior"] + elbo["bpd_reconstruction"] + eps_mse["loss_diffusion"],
                               rtol=1e-5)
    assert float(jnp.min(elbo["bpd_diffusion"] - eps_mse["loss_diffusion"])) > 0  # not the same number
