"""Time grids of every sampler: where between t = 1 and t = 0 the network is evaluated.

A grid is a pure function grid(gamma_fn, num_steps) -> (t, gamma), each [num_steps + 1],
from t_0 = 1 down to t_N = 0 (gamma decreasing from gamma_fn(1) to gamma_fn(0)), with
gamma = gamma_fn(t) at every point (up to float32 bisection for the grids defined in gamma).
Samplers that only need the noise levels use gamma; the ODE solved in t uses t.

    uniform_t        t_i = (N - i) / N (the ancestral, DDIM and ODE samplers' grid)
    linspace_t       t_i = jnp.linspace(1, 0, N + 1): the same points computed as 1 + i (0 - 1) / N, which differ
                     from uniform_t's in the last bit for most N (the reverse-SDE, predictor-corrector and
                     annealed-Langevin samplers' grid, kept bit for bit)
    uniform_logsnr   log-SNR -gamma uniform: gamma_i = gamma_1 + (gamma_0 - gamma_1) i / N, i.e. uniform in
                     DPM-Solver's lambda = -gamma / 2 = log(alpha / sigma) (half the log-SNR)
    edm              Karras et al. (2022), rho = 7, in the VE noise level s = sigma / alpha = exp(gamma / 2):
                     s_i = (s_max^(1/rho) + i / N (s_min^(1/rho) - s_max^(1/rho)))^rho

Grids defined in gamma are mapped to t with `vdm.core.schedules.t_from_gamma` (bisection on
the monotone schedule); their end points are exactly t = 1 and t = 0.

Samplers take their points from `batch_grid`: the times and gamma at each point for a batch, [B] for a
schedule of one gamma per example, gamma_fn(t_i) of the data's shape [B, ...] for one gamma per
dimension (then only the grids placed in t, `TIME_GRIDS`, apply: one log-SNR grid cannot serve every
dimension).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm.core import schedules
from vdm.registry import Registry

EDM_RHO = 7.0


def _endpoints(gamma_fn):
    """(gamma_0, gamma_1) = (gamma_fn(0), gamma_fn(1)) as float32 scalars."""
    g = gamma_fn(jnp.array([0.0, 1.0], jnp.float32))
    return g[0], g[1]


def _from_gammas(gamma_fn, gamma):
    """(t, gamma) for a decreasing gamma [N + 1] from gamma_fn(1) to gamma_fn(0): t by bisection, ends pinned."""
    t = schedules.t_from_gamma(gamma_fn, gamma)
    t = t.at[0].set(1.0).at[-1].set(0.0)
    gamma = gamma.at[0].set(gamma_fn(t[:1])[0]).at[-1].set(gamma_fn(t[-1:])[0])
    return t, gamma


def uniform_t(gamma_fn, num_steps: int):
    """t_i = (N - i) / N, gamma_i = gamma_fn(t_i); each [N + 1] (the same floats as the ancestral sampler's i / T)."""
    t = jnp.arange(num_steps, -1, -1, dtype=jnp.float32) / num_steps
    return t, gamma_fn(t)


def linspace_t(gamma_fn, num_steps: int):
    """t = jnp.linspace(1, 0, N + 1), gamma_i = gamma_fn(t_i); each [N + 1] (uniform_t up to the last bit)."""
    t = jnp.linspace(1.0, 0.0, num_steps + 1)
    return t, gamma_fn(t)


def uniform_logsnr(gamma_fn, num_steps: int):
    """gamma_i = gamma_1 + (gamma_0 - gamma_1) i / N (equal steps h in lambda = -gamma / 2), t_i = t(gamma_i)."""
    gamma_0, gamma_1 = _endpoints(gamma_fn)
    frac = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    return _from_gammas(gamma_fn, gamma_1 + (gamma_0 - gamma_1) * frac)


def edm(gamma_fn, num_steps: int, rho: float = EDM_RHO):
    """Karras et al.'s rho grid in s = exp(gamma / 2): s_i^(1/rho) uniform from s_max^(1/rho) to s_min^(1/rho).

    gamma_i = 2 rho log(s_max^(1/rho) + i / N (s_min^(1/rho) - s_max^(1/rho))), s^(1/rho) = exp(gamma / (2 rho)).
    """
    gamma_0, gamma_1 = _endpoints(gamma_fn)
    frac = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
    root_max, root_min = jnp.exp(gamma_1 / (2 * rho)), jnp.exp(gamma_0 / (2 * rho))
    return _from_gammas(gamma_fn, 2 * rho * jnp.log(root_max + frac * (root_min - root_max)))


GRIDS = Registry("time grid", {"uniform_t": uniform_t, "linspace_t": linspace_t, "uniform_logsnr": uniform_logsnr,
                               "edm": edm})


def time_grid(name: str, gamma_fn, num_steps: int):
    """(t, gamma), each [num_steps + 1] from t = 1 to t = 0, of the grid `name` (a key of `GRIDS`)."""
    return GRIDS.lookup(name)(gamma_fn, num_steps)


TIME_GRIDS = ("uniform_t", "linspace_t")  # placed in t: usable with a schedule of one gamma per dimension


def batch_grid(name: str, gamma_fn, num_steps: int, batch: int):
    """(t [N + 1] from 1 to 0, gamma_at) of the grid `name` for a batch of B; gamma_at(i) is gamma at point i:
    the grid's own gamma_i as [B], or gamma_fn(t_i) [B, ...] for a schedule of one gamma per dimension."""
    if schedules.one_gamma_per_example(gamma_fn, batch):
        t, gamma = time_grid(name, gamma_fn, num_steps)
        return t, lambda i: jnp.full((batch,), gamma[i])
    if name not in TIME_GRIDS:
        raise ValueError(f"grid {name!r} places its points in log-SNR, which differs per dimension under a schedule "
                         f"of one gamma per dimension: use a grid placed in t, {' or '.join(TIME_GRIDS)}")
    t, _ = time_grid(name, lambda u: u, num_steps)
    return t, lambda i: gamma_fn(jnp.full((batch,), t[i]))
