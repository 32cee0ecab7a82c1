"""DPM-Solver++ against the exact probability-flow ODE of the 2-D Gaussian mixture, and the time grids.

Ground truth: from the same z_1, the PF-ODE dz/dλ = σ² z − σ ε̂(z) (λ = −γ/2, the exact mixture
denoiser) solved in float64 by diffrax's Dopri8 at rtol = atol = 1e-11. Its end point depends only
on the schedule's end points γ(0), γ(1), so the solvers, which only evaluate γ(t), are checked on
any schedule.

The error of a solver is the median over 128 trajectories of |z_0 − z_0^ODE|: a few trajectories
start near a boundary between the mixture's components, where the flow separates sharply and
every fixed-step solver's error stays large until very many steps; the median measures the
order on the typical one. The demo's log-SNR range γ ∈ [−8, 5] is used; on the log-SNR-linear
schedule uniform t is uniform λ, so DDIM and DPM-Solver++ there share their grid and differ only
in order.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixture

from vdm import sampling
from vdm.core import schedules
from vdm.sampling import dpm_solver, grids, sde

MIX = mixture.three_blobs()
COSINE = schedules.AlphaCosine(-8.0, 5.0)
LINEAR = schedules.FixedLinear(-8.0, 5.0)
N = 128
NFES = (10, 20, 40, 80)


def cosine(t):
    return COSINE({}, t)


def linear(t):
    return LINEAR({}, t)


def _z_1():
    return jax.random.normal(jax.random.key(1), (N, 2))


@functools.lru_cache(maxsize=None)
def reference() -> np.ndarray:
    """z_0 [N, 2] of the PF-ODE from _z_1() at γ = 5 to γ = −8: float64, in λ time, scipy's DOP853 at 1e-11."""
    from scipy.integrate import solve_ivp

    z_1 = np.asarray(_z_1(), np.float64)  # drawn in float32, outside the float64 context (its draws differ)
    with jax.enable_x64(True):
        @jax.jit
        def drift(lam, z):
            gamma = -2.0 * lam
            sigma = jnp.sqrt(jax.nn.sigmoid(gamma))
            return sigma**2 * z - sigma * MIX.eps_hat(z, jnp.full((z.shape[0],), gamma))

        sol = solve_ivp(lambda lam, y: np.asarray(drift(lam, y.reshape(N, 2))).ravel(), (-2.5, 4.0), z_1.ravel(),
                        method="DOP853", rtol=1e-11, atol=1e-11)
    assert sol.success, sol.message
    return sol.y[:, -1].reshape(N, 2)


def median_errors(sampler, gamma_fn, nfes, **kwargs) -> list[float]:
    """Median over the N trajectories of |z_0 - z_0^ODE| for each NFE in nfes (one compiled program)."""
    np.testing.assert_allclose(gamma_fn(jnp.array([0.0, 1.0])), [-8.0, 5.0], atol=1e-5)  # the reference's ends
    run = jax.jit(lambda z_1: [sampler(jax.random.key(0), MIX.eps_hat, gamma_fn, (N, 2), n, z_1=z_1, **kwargs)
                               for n in nfes])
    return [float(np.median(np.linalg.norm(np.asarray(z, np.float64) - reference(), axis=-1))) for z in run(_z_1())]


def slope(errors) -> float:
    return float(np.polyfit(np.log(NFES), np.log(errors), 1)[0])


@pytest.mark.parametrize("sampler, order", [(dpm_solver.dpm_solver_pp_2m, 2), (dpm_solver.dpm_solver_pp_3m, 3)])
def test_dpm_solver_pp_converges_to_the_exact_ode_solution_at_its_order(sampler, order):
    """Fitted log-log slope over NFE 10-80 (measured: 2M -2.13, 3M -3.11 on this cosine schedule)."""
    errors = median_errors(sampler, cosine, NFES)
    need = {2: -1.7, 3: -2.5}[order]
    assert slope(errors) <= need, (errors, slope(errors))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-3, errors


def test_dpm_solver_pp_at_10_nfe_beats_ddim_threefold():
    """Same λ grid (log-SNR-linear schedule), same z_1: DDIM 9.4e-2; measured ratios 3.4 (2M) and 4.7 (3M)."""
    [ddim] = median_errors(sampling.ddim_sample, linear, [10])
    for sampler in (dpm_solver.dpm_solver_pp_2m, dpm_solver.dpm_solver_pp_3m):
        [err] = median_errors(sampler, linear, [10])
        assert err * 3 <= ddim, (sampler.__name__, err, ddim)


def test_the_first_order_solver_is_ddim_on_the_same_grid():
    """DPM-Solver++ of order 1 is DDIM (η = 0) step for step: the exponential integrator's first term."""
    z_1 = _z_1()
    a = dpm_solver.dpm_solver_pp(jax.random.key(0), MIX.eps_hat, cosine, (N, 2), 7, order=1, grid="uniform_t", z_1=z_1)
    b = sampling.ddim_sample(jax.random.key(0), MIX.eps_hat, cosine, (N, 2), 7, z_1=z_1)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_denoise_final_spends_the_last_evaluation_on_x_hat_at_gamma_0():
    z_1 = _z_1()
    plain = dpm_solver.dpm_solver_pp_2m(jax.random.key(0), MIX.eps_hat, cosine, (N, 2), 9, z_1=z_1)
    final = dpm_solver.dpm_solver_pp_2m(jax.random.key(0), MIX.eps_hat, cosine, (N, 2), 10, denoise_final=True, z_1=z_1)
    g0 = cosine(jnp.zeros((N,)))
    alpha_0 = jnp.sqrt(jax.nn.sigmoid(-g0))[:, None]
    x_hat = (plain - jnp.sqrt(jax.nn.sigmoid(g0))[:, None] * MIX.eps_hat(plain, g0)) / alpha_0
    np.testing.assert_allclose(final, alpha_0 * x_hat, atol=1e-5)


def test_phi_functions_match_their_definitions_in_float64_on_both_sides_of_the_series_switch():
    h = np.array([1e-4, 0.03, 0.0999, 0.1001, 0.4, 1.3])
    phi1, phi2, phi3 = (np.asarray(p, np.float64) for p in dpm_solver.phis(jnp.asarray(h, jnp.float32)))
    e1 = np.expm1(-h)
    e2 = e1 / h + 1
    e3 = e2 / h - 0.5
    # float64 quotients lose ~1e-16 / h^2 absolutely; at h = 1e-4 phi3's is ~1e-8 of its 1.7e-5
    np.testing.assert_allclose(phi1, e1, rtol=1e-6)
    np.testing.assert_allclose(phi2, e2, rtol=1e-5)
    np.testing.assert_allclose(phi3, e3, rtol=1e-4)


@pytest.mark.parametrize("schedule", [COSINE, LINEAR, schedules.BetaLinear(-8.0, 5.0)],
                         ids=["alpha_cosine", "fixed_linear", "beta_linear"])
def test_t_from_gamma_inverts_the_schedule(schedule):
    gamma_fn = functools.partial(schedule, {})
    t = jnp.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(schedules.t_from_gamma(gamma_fn, gamma_fn(t)), t, atol=3e-6)
    if schedule is LINEAR:  # the closed form t = (γ − γ0) / (γ1 − γ0)
        g = jnp.array([-7.5, 0.0, 4.9])
        np.testing.assert_allclose(schedules.t_from_gamma(gamma_fn, g), (g + 8.0) / 13.0, atol=1e-6)
    if schedule is COSINE:  # the closed form through τ(γ) = (2/π) arctan(exp(γ/2))
        g = np.array([-7.5, 0.0, 4.9])
        tau = lambda x: 2 / np.pi * np.arctan(np.exp(x / 2))  # noqa: E731
        closed = (tau(g) - tau(-8.0)) / (tau(5.0) - tau(-8.0))
        np.testing.assert_allclose(schedules.t_from_gamma(gamma_fn, jnp.asarray(g)), closed, atol=2e-6)


def test_t_from_gamma_inverts_a_learned_monotone_network():
    schedule = schedules.MonotoneNet(-8.0, 5.0, width=16)
    params = schedule.init(jax.random.key(3))
    gamma_fn = functools.partial(schedule, params)
    t = jnp.linspace(0.0, 1.0, 33)
    np.testing.assert_allclose(schedules.t_from_gamma(gamma_fn, gamma_fn(t)), t, atol=3e-6)


def test_grids_span_the_schedule_and_space_their_points_as_named():
    n = 12
    for name in grids.GRIDS:
        t, gamma = grids.time_grid(name, cosine, n)
        assert t.shape == gamma.shape == (n + 1,), name
        assert float(t[0]) == 1.0 and float(t[-1]) == 0.0, name
        assert bool(jnp.all(jnp.diff(t) < 0)) and bool(jnp.all(jnp.diff(gamma) < 0)), name
        np.testing.assert_allclose(gamma, cosine(t), atol=2e-4, err_msg=name)
    _, gamma = grids.time_grid("uniform_logsnr", cosine, n)
    np.testing.assert_allclose(np.diff(gamma), -13.0 / n, rtol=1e-4)
    _, gamma = grids.time_grid("edm", cosine, n)
    root = np.exp(np.asarray(gamma, np.float64) / 14)  # s^(1/7), s = exp(γ/2)
    np.testing.assert_allclose(np.diff(root), (np.exp(-8 / 14) - np.exp(5 / 14)) / n, rtol=1e-4)
    t, _ = grids.time_grid("uniform_t", cosine, n)
    np.testing.assert_allclose(t, np.arange(n, -1, -1) / n, atol=1e-7)


def test_heun_on_the_logsnr_grid_still_solves_the_ode():
    """The t grid from the schedule's inverse is the right one: Heun (2nd order) on it converges to the exact solution."""
    errors = median_errors(sde.ode_sample_heun, cosine, [10, 40], grid="uniform_logsnr")  # NFE 20, 80
    assert errors[1] < errors[0] / 8, errors


def test_guided_denoisers_drive_dpm_solver_to_the_requested_component():
    """Classifier-free guidance at w = 3 with the exact conditional and unconditional mixture denoisers."""
    from vdm.sampling import guidance

    k = 2
    cond = MIX.conditional(k)
    eps_for = lambda labels: (lambda z, g: jnp.where((labels == k)[:, None], cond.eps_hat(z, g), MIX.eps_hat(z, g)))  # noqa: E731
    eps = guidance.classifier_free_eps_hat_fn(eps_for, jnp.full((N,), k), null_label=-1, weight=3.0)
    z = jax.jit(lambda: dpm_solver.dpm_solver_pp_2m(jax.random.key(5), eps, cosine, (N, 2), 20))()
    x = np.asarray(z) / np.sqrt(float(jax.nn.sigmoid(8.0)))
    nearest = np.argmin(np.linalg.norm(x[:, None] - MIX.means[None], axis=-1), 1)
    assert (nearest == k).mean() > 0.95, np.bincount(nearest, minlength=3)
