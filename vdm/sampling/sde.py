"""The continuous-time view: probability-flow ODE, reverse-time SDE and Langevin dynamics.

With α_t² = sigmoid(−γ_t), σ_t² = sigmoid(γ_t), the forward process is the
variance-preserving SDE dz = f z dt + g dW with

    g(t)² = γ'(t) σ_t²,    f(t) = −½ g(t)²,    score ŝ(z, t) = −ε̂(z, γ_t) / σ_t.

Reverse-time SDE:      dz = [f z − g² ŝ] dt + g dW̄  =  [−½ γ' σ² z + γ' σ ε̂] dt + g dW̄
Probability-flow ODE:  dz/dt = f z − ½ g² ŝ  =  ½ γ'(t) σ_t (ε̂ − σ_t z)

Every sampler is a pure function of a denoiser `eps_hat_fn(z [B, ...], gamma)`,
a schedule `gamma_fn(t [B]) -> gamma` ([B], or [B, ...] for one gamma per dimension: γ' is then
elementwise and every formula above holds per dimension), a key, a shape and a step count, and
returns z_0 [B, ...] (decode with `vdm.sampling.decode`). Fixed-step samplers are
one `lax.scan`; the adaptive ODE solver is diffrax's Tsit5 with a PID controller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import diffusion, schedules
from vdm.sampling import grids


def _gamma_dgamma(gamma_fn, t, batch: int):
    """(γ_t, γ'(t)) at a scalar time t for a batch: each [batch] (or [batch, ...] for one γ per dimension)."""
    gamma, dgamma = schedules.gamma_and_derivative(gamma_fn, jnp.full((batch,), t, jnp.float32))
    return gamma, dgamma


def _sigma(gamma, like):
    return jnp.sqrt(jax.nn.sigmoid(diffusion.expand_gamma(gamma, like)))


def ode_drift(eps_hat_fn, gamma_fn, z, t):
    """dz/dt of the probability-flow ODE at scalar time t: ½ γ'(t) σ_t (ε̂ − σ_t z), shape of z."""
    gamma, dgamma = _gamma_dgamma(gamma_fn, t, z.shape[0])
    sigma = _sigma(gamma, z)
    return 0.5 * diffusion.expand_gamma(dgamma, z) * sigma * (eps_hat_fn(z, gamma) - sigma * z)


def reverse_drift(z, eps, sigma, dgamma):
    """f(t) z - g(t)^2 score of the reverse-time SDE in gamma form: -1/2 gamma' sigma^2 z + gamma' sigma eps_hat
    (score = -eps_hat / sigma, g^2 = gamma' sigma^2, f = -1/2 gamma' sigma^2); sigma, dgamma broadcast against z."""
    return -0.5 * dgamma * sigma**2 * z + dgamma * sigma * eps


def ode_sample_heun(key, eps_hat_fn, gamma_fn, shape, num_steps: int, z_1=None, grid: str = "uniform_t"):
    """Probability-flow ODE from t = 1 to 0 with Heun's method (2nd order, 2 evaluations per step: 2 T NFE).

    z_1 ~ N(0, I) from `key` unless given; deterministic given z_1. grid: the times t_i, a key of
    `vdm.sampling.grids.GRIDS` (default t_i = i / T).
    """
    z = jax.random.normal(key, shape) if z_1 is None else z_1
    ts, _ = grids.batch_grid(grid, gamma_fn, num_steps, shape[0])

    def step(z, i):
        t, s = ts[i], ts[i + 1]
        d_t = ode_drift(eps_hat_fn, gamma_fn, z, t)
        z_euler = z + (s - t) * d_t
        d_s = ode_drift(eps_hat_fn, gamma_fn, z_euler, s)
        return z + (s - t) * 0.5 * (d_t + d_s), None

    z, _ = jax.lax.scan(step, z, jnp.arange(num_steps))
    return z


def ode_sample_adaptive(key, eps_hat_fn, gamma_fn, shape, rtol: float = 1e-4, atol: float = 1e-4,
                        max_steps: int = 4096, z_1=None):
    """Probability-flow ODE from t = 1 to 0 with diffrax's adaptive Tsit5. Returns (z_0, number of steps)."""
    import diffrax

    z = jax.random.normal(key, shape) if z_1 is None else z_1
    term = diffrax.ODETerm(lambda t, y, args: ode_drift(eps_hat_fn, gamma_fn, y, t))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=1.0, t1=0.0, dt0=-1e-2, y0=z,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
    )
    return sol.ys[-1], sol.stats["num_steps"]


def reverse_sde_sample(key, eps_hat_fn, gamma_fn, shape, num_steps: int, grid: str = "linspace_t"):
    """Euler–Maruyama on the reverse-time SDE from t = 1 to 0 (no noise added on the last step).

    grid: the times, a key of `vdm.sampling.grids.GRIDS` (default: jnp.linspace(1, 0, T + 1))."""
    k_init, k_steps = jax.random.split(key)
    z = jax.random.normal(k_init, shape)
    ts, _ = grids.batch_grid(grid, gamma_fn, num_steps, shape[0])

    def step(z, i):
        t, dt = ts[i], ts[i] - ts[i + 1]
        gamma, dgamma = _gamma_dgamma(gamma_fn, t, shape[0])
        sigma, dg = _sigma(gamma, z), diffusion.expand_gamma(dgamma, z)
        drift = reverse_drift(z, eps_hat_fn(z, gamma), sigma, dg)
        noise = jax.random.normal(jax.random.fold_in(k_steps, i), shape)
        last = i == num_steps - 1
        return z - dt * drift + jnp.where(last, 0.0, jnp.sqrt(jnp.maximum(dg, 0.0) * sigma**2 * dt)) * noise, None

    z, _ = jax.lax.scan(step, z, jnp.arange(num_steps))
    return z


def langevin_step(key, eps_hat_fn, z, gamma, step_size, eps=None):
    """One Langevin step targeting q(z_t): z + δ ŝ + sqrt(2δ) ξ, ŝ = −ε̂/σ_t; δ [B] per example (or γ's shape).

    eps: ε̂(z, γ) if the caller has it already (no second network call).
    """
    eps = eps_hat_fn(z, gamma) if eps is None else eps
    score = -eps / _sigma(gamma, z)
    delta = diffusion.expand_gamma(step_size, z)
    return z + delta * score + jnp.sqrt(2 * delta) * jax.random.normal(key, z.shape)


def snr_step_size(eps_hat_fn, z, gamma, target_snr: float, eps=None):
    """Song et al.'s rule: δ = 2 (r ‖ξ‖ / ‖ŝ‖)², r = target_snr, ‖ŝ‖ = ‖ε̂‖ / σ_t, norms averaged over the batch.

    (Per-example norms would let one example whose ε̂ happens to be near 0 take a huge step.)
    eps: ε̂(z, γ) if the caller has it already. Returns δ [B], the same for every example (γ's shape for one γ
    per dimension: δ_i ∝ σ_i², a diagonal preconditioner).
    """
    eps = eps_hat_fn(z, gamma) if eps is None else eps
    axes = tuple(range(1, z.ndim))
    eps_norm = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(eps), axes)))
    noise_norm = jnp.sqrt(jnp.asarray(z[0].size, jnp.float32))
    sigma = jnp.sqrt(jax.nn.sigmoid(gamma))
    return 2.0 * jnp.square(target_snr * noise_norm * sigma / jnp.maximum(eps_norm, 1e-12))


def langevin_correct(key, eps_hat_fn, z, gamma, target_snr: float, num_steps: int):
    """`num_steps` Langevin steps targeting q(z_t) at gamma [B], each sized by `snr_step_size` (one network
    evaluation per step: the step size and the move share it). Leaves z as it is for num_steps = 0."""

    def correct(z, j):
        eps = eps_hat_fn(z, gamma)
        delta = snr_step_size(eps_hat_fn, z, gamma, target_snr, eps=eps)
        return langevin_step(jax.random.fold_in(key, j), eps_hat_fn, z, gamma, delta, eps=eps), None

    return jax.lax.scan(correct, z, jnp.arange(num_steps))[0]


def pc_sample(key, eps_hat_fn, gamma_fn, shape, num_steps: int, corrector_steps: int = 1,
              target_snr: float = 0.16, predictor: str = "ancestral", grid: str = "linspace_t"):
    """Predictor–corrector: each step a predictor move t -> s then `corrector_steps` Langevin steps at s.

    predictor: 'ancestral' (the VDM posterior step) or 'reverse_sde' (Euler–Maruyama).
    Step sizes follow `snr_step_size`. No corrector after the last predictor step. grid: the times, a key of
    `vdm.sampling.grids.GRIDS` (default: jnp.linspace(1, 0, T + 1)). Network
    evaluations: num_steps (1 + corrector_steps) - corrector_steps (one per Langevin step:
    its step size and its move share the evaluation).
    """
    if predictor not in ("ancestral", "reverse_sde"):
        raise ValueError(f"unknown predictor {predictor!r}; expected 'ancestral' or 'reverse_sde'")
    k_init, k_steps = jax.random.split(key)
    z = jax.random.normal(k_init, shape)
    ts, _ = grids.batch_grid(grid, gamma_fn, num_steps, shape[0])
    batch = shape[0]

    def predict(z, i, key):
        t, s = ts[i], ts[i + 1]
        gamma_t, dgamma_t = _gamma_dgamma(gamma_fn, t, batch)
        gamma_s = gamma_fn(jnp.full((batch,), s, jnp.float32))
        eps = eps_hat_fn(z, gamma_t)
        noise = jax.random.normal(key, shape)
        if predictor == "ancestral":
            mean, var = diffusion.posterior_from_eps(z, eps, gamma_s, gamma_t)
            return mean + jnp.sqrt(var) * noise, gamma_s
        sigma, dg = _sigma(gamma_t, z), diffusion.expand_gamma(dgamma_t, z)
        dt = t - s
        return z - dt * reverse_drift(z, eps, sigma, dg) + jnp.sqrt(jnp.maximum(dg, 0.0) * sigma**2 * dt) * noise, gamma_s

    def step(z, i):
        k_pred, k_corr = jax.random.split(jax.random.fold_in(k_steps, i))
        z, gamma_s = predict(z, i, k_pred)
        return langevin_correct(k_corr, eps_hat_fn, z, gamma_s, target_snr, corrector_steps), None

    z, _ = jax.lax.scan(step, z, jnp.arange(num_steps - 1))
    last = num_steps - 1
    return predict(z, last, jax.random.split(jax.random.fold_in(k_steps, last))[0])[0]


def annealed_langevin_sample(key, eps_hat_fn, gamma_fn, shape, num_levels: int, steps_per_level: int = 20,
                             step_scale: float = 0.05, grid: str = "linspace_t"):
    """Annealed Langevin dynamics (Song & Ermon 2019) on the levels t_i = i / L, i = L .. 1, then 0.

    At each level, `steps_per_level` Langevin steps target q(z_{t_i}) with step
    δ_i = step_scale · σ²_{t_i} (the step shrinks with the noise level, as α_i ∝ σ_i²
    in NCSN); each level starts from the previous level's last sample; z_1 ~ N(0, I). grid: the levels, a key of
    `vdm.sampling.grids.GRIDS` (default: jnp.linspace(1, 0, L + 1)).
    """
    k_init, k_levels = jax.random.split(key)
    z = jax.random.normal(k_init, shape)
    levels, _ = grids.batch_grid(grid, gamma_fn, num_levels, shape[0])
    batch = shape[0]

    def level(z, i):
        gamma = gamma_fn(jnp.full((batch,), levels[i], jnp.float32))
        delta = step_scale * jax.nn.sigmoid(gamma)

        def inner(z, j):
            return langevin_step(jax.random.fold_in(jax.random.fold_in(k_levels, i), j), eps_hat_fn, z, gamma, delta), None

        z, _ = jax.lax.scan(inner, z, jnp.arange(steps_per_level))
        return z, None

    z, _ = jax.lax.scan(level, z, jnp.arange(num_levels + 1))
    return z
