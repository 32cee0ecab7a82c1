"""Every sampler evaluates the network as often as its registry entry says (counted at run time, under jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm import sampling
from vdm.core import schedules

GAMMA = schedules.FixedLinear(-8.0, 5.0)


def gamma_fn(t):
    return GAMMA({}, t)


def counted_calls(name: str, num_steps: int) -> int:
    """Network evaluations of SAMPLERS[name] with num_steps, counted by a host callback inside the compiled program."""
    calls = []

    def eps_hat_fn(z, gamma):
        jax.debug.callback(lambda: calls.append(1))
        return 0.5 * z * jnp.sqrt(jax.nn.sigmoid(gamma))[:, None]

    fn = sampling.get_sampler(name)
    jax.block_until_ready(jax.jit(lambda key: fn(key, eps_hat_fn, gamma_fn, (4, 2), num_steps))(jax.random.key(0)))
    jax.effects_barrier()
    return len(calls)


@pytest.mark.parametrize("name", [n for n, s in sampling.SAMPLERS.items() if s.nfe is not None])
def test_network_evaluations_are_what_the_registry_says(name):
    entry = sampling.SAMPLERS[name]
    for steps in (3, 5):
        assert counted_calls(name, steps) == entry.nfe(steps), (name, steps)


def test_predictor_corrector_evaluates_once_per_point():
    """T predictor points and T - 1 corrector points, one evaluation each (no repeat at the same (z, gamma),
    no corrector after the last predictor step)."""
    assert counted_calls("pc", 6) == 2 * 6 - 1


def test_steps_for_a_budget_of_network_evaluations():
    s = sampling.SAMPLERS
    assert s["dpm_solver_pp_2m"].steps_for(20) == 20 and s["ancestral"].steps_for(20) == 20
    assert s["ode"].steps_for(20) == 10 and s["ode"].steps_for(21) == 10
    assert s["pc"].steps_for(20) == 10 and s["pc"].steps_for(19) == 10 and s["pc"].steps_for(18) == 9
    assert s["annealed_langevin"].steps_for(20) is None and s["annealed_langevin"].steps_for(60) == 2
    assert s["ode_adaptive"].steps_for(100) is None
    assert "20 NFE" in s["dpm_solver_pp_3m"].describe(20) and "39 network calls" in s["pc"].describe(20)


def test_new_samplers_take_a_starting_latent_and_are_deterministic_given_it():
    z_1 = jax.random.normal(jax.random.key(4), (8, 2))
    for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        fn = sampling.get_sampler(name)
        f = lambda z, g: 0.3 * z  # noqa: E731
        a = fn(jax.random.key(0), f, gamma_fn, (8, 2), 6, z_1=z_1)
        b = fn(jax.random.key(99), f, gamma_fn, (8, 2), 6, z_1=z_1)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, fn(jax.random.key(0), f, gamma_fn, (8, 2), 6))


EXACT = schedules.FixedLinear(-8.0, 8.0)  # gamma = -8 + 16 t: 16 t is exact, so fused or not gamma rounds once


def exact_gamma_fn(t):
    return EXACT({}, t)


def _noise_levels(name: str, num_steps: int) -> np.ndarray:
    """The gamma of every network evaluation of SAMPLERS[name], in order, recorded inside the compiled program."""
    seen = []

    def eps_hat_fn(z, gamma):
        jax.debug.callback(lambda g: seen.append(float(g[0])), gamma, ordered=True)
        return 0.5 * z * jnp.sqrt(jax.nn.sigmoid(gamma))[:, None]

    fn = sampling.get_sampler(name)
    jax.block_until_ready(jax.jit(lambda key: fn(key, eps_hat_fn, exact_gamma_fn, (4, 2), num_steps))(jax.random.key(0)))
    jax.effects_barrier()
    return np.asarray(seen, np.float32)


def test_every_sampler_evaluates_the_network_at_todays_points_on_its_default_grid():
    """The points each sampler used before the grids were shared, written out here: t = i / T for the ancestral,
    DDIM and Heun samplers, jnp.linspace(1, 0, T + 1) for the reverse SDE, predictor-corrector and annealed
    Langevin, equal steps in log-SNR for DPM-Solver++ (bitwise, except DPM-Solver's bisected t: 1e-6)."""
    T = 5
    g = lambda t: np.asarray(exact_gamma_fn(jnp.asarray(t, jnp.float32)), np.float32)  # noqa: E731
    i_over_t = np.array([np.float32(i) / np.float32(T) for i in range(T, -1, -1)], np.float32)  # 1, (T-1)/T, ..., 0
    linspace = np.asarray(jnp.linspace(1.0, 0.0, T + 1))
    expected = {
        "ancestral": g(i_over_t[:-1]),
        "ddim": g(i_over_t[:-1]),
        "ode": g(np.stack([i_over_t[:-1], i_over_t[1:]], 1).ravel()),  # Heun: both ends of each step
        "reverse_sde": g(linspace[:-1]),
        # predictor at t_i, then its corrector at t_(i+1); no corrector after the last predictor step
        "pc": g(np.array([v for i in range(T - 1) for v in (linspace[i], linspace[i + 1])] + [linspace[T - 1]])),
        "annealed_langevin": np.repeat(g(linspace), 20),
    }
    for name, levels in expected.items():
        np.testing.assert_array_equal(_noise_levels(name, T), levels, err_msg=name)
    gamma_0, gamma_1 = float(g([0.0])[0]), float(g([1.0])[0])
    logsnr = gamma_1 + (gamma_0 - gamma_1) * np.arange(T + 1) / T
    for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        np.testing.assert_allclose(_noise_levels(name, T), logsnr[:-1], atol=1e-5, err_msg=name)
