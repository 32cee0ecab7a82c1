"""Noise schedules: monotone, exact endpoints, finite derivatives, stable at extremes."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from vdm.core import schedules as S

G0, G1 = -13.3, 5.0
ALL = ["fixed_linear", "learned_linear", "monotone_net", "beta_linear", "alpha_cosine"]


def _params(name, g0=G0, g1=G1, seed=0):
    sched = S.make_schedule(name, g0, g1)
    return sched, sched.init(jax.random.key(seed))


@pytest.mark.parametrize("name", ALL)
def test_endpoints_exact_and_strictly_increasing(name):
    sched, params = _params(name)
    t = jnp.linspace(0.0, 1.0, 4001)
    g = sched(params, t)
    np.testing.assert_allclose(g[0], G0, atol=2e-5)
    np.testing.assert_allclose(g[-1], G1, atol=2e-5)
    assert bool(jnp.all(jnp.diff(g) > 0)), "gamma must be strictly increasing"
    _, dg = S.gamma_and_derivative(lambda u: sched(params, u), t)
    assert bool(jnp.all(dg > 0)) and bool(jnp.all(jnp.isfinite(dg)))
    # derivative agrees with finite differences
    fd = np.gradient(np.asarray(g, np.float64), np.asarray(t, np.float64))
    np.testing.assert_allclose(np.asarray(dg)[5:-5], fd[5:-5], rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_monotone_net_random_params(seed):
    sched = S.MonotoneNet(gamma_min=-7.0, gamma_max=9.0, width=64)
    params = sched.init(jax.random.key(seed))
    keys = jax.random.split(jax.random.key(100 + seed), 4)
    # scramble every interior parameter, far from the initialisation
    leaves, tree = jax.tree.flatten(params["interior"])
    leaves = [l + 3.0 * jax.random.normal(k, l.shape) for l, k in zip(leaves, jax.random.split(keys[0], len(leaves)))]
    params = {"endpoints": {"gamma_0": jnp.float32(-7.0), "delta": jnp.float32(2.0)}, "interior": jax.tree.unflatten(tree, leaves)}
    t = jnp.linspace(0.0, 1.0, 10001)
    g = sched(params, t)
    g0, g1 = S.endpoints(params)
    np.testing.assert_allclose([g[0], g[-1]], [g0, g1], atol=1e-5)
    assert float(g1) > float(g0)
    assert bool(jnp.all(jnp.diff(g) > 0))
    grads = jax.grad(lambda p: jnp.sum(S.gamma_and_derivative(lambda u: sched(p, u), t)[1] ** 2))(params)
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(grads))
    assert any(float(jnp.abs(l).max()) > 0 for l in jax.tree.leaves(grads["interior"]))


def test_monotone_net_is_increasing_even_when_its_raw_weights_point_down():
    """Monotonicity must come from the softplus of the weights, not from where training happens to put them. With
    raw l2 weights of -5, l1 sweeping h1 over [-2.5, 2.5] and large l3 weights, the network without the constraint
    would fall in the middle of [0, 1] (d gamma~ / d h1 = 1 - 5 * 5 * sigmoid' < 0 near h1 = 0) and rise at the
    ends, which no normalisation undoes."""
    width = 8
    sched = S.MonotoneNet(gamma_min=-7.0, gamma_max=9.0, width=width)
    interior = {"l1": {"w": jnp.float32(5.0), "b": jnp.float32(-2.5)},
                "l2": {"w": jnp.full((width,), -5.0), "b": jnp.zeros((width,))},
                "l3": {"w": jnp.full((width,), 5.0)}}
    params = {"endpoints": {"gamma_0": jnp.float32(-7.0), "delta": jnp.float32(2.0)}, "interior": interior}
    g = sched(params, jnp.linspace(0.0, 1.0, 1001))
    assert bool(jnp.all(jnp.diff(g) > 0))


def test_learned_endpoints_keep_order():
    sched = S.LearnedLinear(-2.0, 3.0)
    params = sched.init()
    for delta in (-8.0, 0.0, 8.0):  # gamma_1 = gamma_0 + softplus(delta) > gamma_0 for any delta
        params["endpoints"]["delta"] = jnp.float32(delta)
        g0, g1 = S.endpoints(params)
        assert float(g1) > float(g0)
        np.testing.assert_allclose(float(g1 - g0), np.log1p(np.exp(delta)), rtol=1e-3)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("g0,g1", [(-30.0, 30.0), (-13.3, 5.0), (-1.0, 1.0)])
def test_extreme_endpoints_finite_under_jit_vmap_grad(name, g0, g1):
    sched, params = _params(name, g0, g1)
    t = jnp.linspace(0.0, 1.0, 257)
    g, dg = jax.jit(lambda p, u: S.gamma_and_derivative(lambda v: sched(p, v), u))(params, t)
    assert bool(jnp.all(jnp.isfinite(g))) and bool(jnp.all(jnp.isfinite(dg)))
    np.testing.assert_allclose([g[0], g[-1]], [g0, g1], atol=5e-5 * max(1, abs(g0), abs(g1)))
    gv = jax.vmap(lambda u: sched(params, u))(t)
    np.testing.assert_allclose(gv, g, rtol=1e-5, atol=1e-5)
    dt = jax.vmap(jax.grad(lambda u: sched(params, u)))(t)
    np.testing.assert_allclose(dt, dg, rtol=1e-3, atol=1e-3)


def test_bad_endpoints_and_names():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        S.make_schedule("fixed_linear", 5.0, -13.3)
    for name in ("fixed_linear", "learned_linear"):  # equal endpoints: a schedule of zero width
        with pytest.raises(ValueError, match="gamma_min < gamma_max"):
            S.make_schedule(name, 2.0, 2.0).init(jax.random.key(0))
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):  # the schedule's own check, built directly
        S.LearnedLinear(2.0, 2.0).init()
    with pytest.raises(ValueError, match="unknown schedule"):
        S.make_schedule("quadratic", -1.0, 1.0)


@pytest.mark.parametrize("gamma_min, gamma_max", [(-13.3, 5.0), (-8.0, 5.0), (-5.0, 9.0)])
def test_beta_linear_interior_is_ddpms_alpha_bar(gamma_min, gamma_max):
    """gamma(t) = log((1 - abar) / abar) with DDPM's abar(tau) = exp(-beta_0 tau - 1/2 (beta_1 - beta_0) tau^2),
    tau affine in t between the taus where gamma hits its endpoints: solved here in float64 with brentq, not with
    the schedule's own quadratic, and compared at 101 interior points (float32 rounding of gamma: 1e-4 abs)."""
    from scipy.optimize import brentq

    sched = S.BetaLinear(gamma_min, gamma_max)
    b0, b1 = sched.beta_0, sched.beta_1

    def ddpm_gamma(tau):
        abar = np.exp(-b0 * tau - 0.5 * (b1 - b0) * tau**2)
        return np.log((1.0 - abar) / abar)

    tau_0 = brentq(lambda tau: ddpm_gamma(tau) - gamma_min, 1e-12, 1.0)
    tau_1 = brentq(lambda tau: ddpm_gamma(tau) - gamma_max, 1e-12, 1.0)
    t = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(np.asarray(sched({}, jnp.asarray(t, jnp.float32)), np.float64),
                               ddpm_gamma(tau_0 + (tau_1 - tau_0) * t), atol=1e-4, rtol=0)


def test_beta_linear_with_a_constant_beta_is_the_exponential_schedule():
    """beta_0 = beta_1 = b: alpha_bar(tau) = exp(-b tau), gamma(tau) = log(expm1(b tau)) with tau_0, tau_1 = softplus(
    gamma_min) / b, softplus(gamma_max) / b (the linear, not the quadratic, root), in float64."""
    b = 3.0
    sched = S.BetaLinear(gamma_min=-6.0, gamma_max=4.0, beta_0=b, beta_1=b)
    t = np.linspace(0.0, 1.0, 101)
    tau_0, tau_1 = np.log1p(np.exp(-6.0)) / b, np.log1p(np.exp(4.0)) / b
    truth = np.log(np.expm1(b * (tau_0 + (tau_1 - tau_0) * t)))
    np.testing.assert_allclose(sched({}, jnp.asarray(t, jnp.float32)), truth, atol=2e-5)


def test_official_nnet_starts_from_the_official_initialisation():
    """The official NoiseSchedule_NNet's init: l1 = (gamma_max - gamma_min, gamma_min), so gamma starts as the linear
    schedule; l2 and l3 kernels ~ N(0, 0.01^2) (flax's normal() default), l2 bias 0. At width 1024 the sample std is
    within 10% of 0.01 (its own s.e. is 2.2%) and gamma is within 3e-4 of linear (measured ~3e-5; kernels of
    scale 1 give ~3e-3)."""
    sched = S.OfficialNNet(gamma_min=-13.3, gamma_max=5.0, width=1024)
    params = sched.init(jax.random.key(0))
    assert set(params) == {"endpoints", "interior"} and params["endpoints"] == {}
    p = params["interior"]
    np.testing.assert_allclose(p["l1"]["kernel"], [[18.3]], rtol=1e-6)
    np.testing.assert_allclose(p["l1"]["bias"], [-13.3], rtol=1e-6)
    np.testing.assert_array_equal(p["l2"]["bias"], np.zeros(1024))
    for kernel in (p["l2"]["kernel"], p["l3"]["kernel"]):
        assert abs(float(np.std(kernel)) - 0.01) < 0.001 and abs(float(np.mean(kernel))) < 4 * 0.01 / 32
    t = jnp.linspace(0.0, 1.0, 11)
    assert float(jnp.max(jnp.abs(sched(params, t) - (-13.3 + 18.3 * t)))) < 3e-4


def test_monotone_net_is_its_documented_formula_and_initialisation():
    """gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))) / width with softplus'd weights, against numpy in float64 for
    scrambled parameters; and the initialisation: softplus(l1.w) = 1, l1.b = l2.b = 0, l2.w ~ N(0, 1), l3.w ~
    N(-3, 0.1^2) (sample moments at width 1024 within 5 of their standard errors)."""
    width = 1024
    sched = S.MonotoneNet(gamma_min=-7.0, gamma_max=9.0, width=width)
    params = sched.init(jax.random.key(0))
    p = params["interior"]
    assert float(jax.nn.softplus(p["l1"]["w"])) == pytest.approx(1.0, rel=1e-6)
    assert float(p["l1"]["b"]) == 0.0 and not np.any(np.asarray(p["l2"]["b"]))
    for w, mean, std in ((p["l2"]["w"], 0.0, 1.0), (p["l3"]["w"], -3.0, 0.1)):
        w = np.asarray(w, np.float64)
        assert abs(w.mean() - mean) < 5 * std / math.sqrt(width) and abs(w.std() - std) < 5 * std / math.sqrt(2 * width)
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    scrambled = jax.tree.unflatten(tree, [l + jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
    q = jax.tree.map(lambda a: np.asarray(a, np.float64), scrambled)
    sp = lambda a: np.log1p(np.exp(a))  # noqa: E731
    t = np.linspace(0.0, 1.0, 11)
    h1 = sp(q["l1"]["w"]) * t + q["l1"]["b"]
    h2 = 1 / (1 + np.exp(-(h1[:, None] * sp(q["l2"]["w"]) + q["l2"]["b"])))
    truth = h1 + h2 @ sp(q["l3"]["w"]) / width
    np.testing.assert_allclose(S.MonotoneNet.unnormalized(scrambled, jnp.asarray(t, jnp.float32)), truth, rtol=1e-5,
                               atol=1e-5)
