"""Noise schedules with one gamma per data dimension (MuLAN, Sahoo et al. 2024): gamma_fn(t [B]) -> [B, ...].

MuLAN's polynomial form: per dimension i, with p_i(s) = a_i s^2 + b_i s + c_i (c_i > 0),

    gamma_i(t) = gamma_min + (gamma_max - gamma_min) P_i(t) / P_i(1),   P_i(t) = int_0^t p_i(s)^2 ds
    P(t) = a^2 t^5 / 5 + a b t^4 / 2 + (b^2 + 2 a c) t^3 / 3 + b c t^2 + c^2 t.

P is non-decreasing (its derivative p^2 >= 0) and P(0) = 0, so every gamma_i runs from gamma_min at t = 0 to
gamma_max at t = 1 exactly, whatever a, b, c; only the shape in between is learned. a = 0, b = 0 gives the
log-SNR-linear schedule. gamma'(t) comes from `jax.jvp` like every other schedule's.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["polynomial_gamma", "PerDimensionPolynomial"]

_MIN_C = 1e-3  # c = _MIN_C + softplus(raw c) > 0: p has no root at s = 0, so gamma is strictly increasing there


def polynomial_gamma(a, b, c, t, gamma_min: float, gamma_max: float, event_ndim: int):
    """gamma [B, ...] at times t [B] of the per-dimension polynomial schedule with coefficients a, b, c.

    a, b, c: c > 0, each of the data's shape [...] (event_ndim axes: one set for the whole batch) or [B, ...]
    (one set per example).
    """
    t = jnp.asarray(t, jnp.float32)
    t = t.reshape(t.shape + (1,) * event_ndim)
    return gamma_min + (gamma_max - gamma_min) * _integral(a, b, c, t) / _integral(a, b, c, 1.0)


def _integral(a, b, c, t):
    """P(t) = int_0^t (a s^2 + b s + c)^2 ds."""
    return a * a * t**5 / 5 + a * b * t**4 / 2 + (b * b + 2 * a * c) * t**3 / 3 + b * c * t**2 + c * c * t


@dataclasses.dataclass(frozen=True)
class PerDimensionPolynomial:
    """`schedule.name = mulan_static`: MuLAN's polynomial schedule with one (a, b, c) per dimension of the data,
    learned, the same for every image (MuLAN without its auxiliary latent: the ablation). Endpoints fixed at
    gamma_min, gamma_max; parameters {"endpoints": {}, "interior": {"a", "b", "raw_c"}}, each of the data's shape.
    Starts log-SNR linear (a = b = 0, c = 1)."""

    learned = True
    per_dimension = True

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    shape: tuple = ()

    def init(self, key=None):
        zeros = jnp.zeros(self.shape, jnp.float32)
        raw_c = jnp.full(self.shape, math.log(math.expm1(1.0 - _MIN_C)), jnp.float32)  # softplus^-1: c = 1
        return {"endpoints": {}, "interior": {"a": zeros, "b": zeros, "raw_c": raw_c}}

    def __call__(self, params, t, offsets=None):
        """gamma [B, *shape] at t [B]; offsets: (da, db, draw_c) of each example [B, *shape] (MuLAN's latent) added to
        the shared coefficients, or None."""
        p = params["interior"]
        a, b, raw_c = p["a"], p["b"], p["raw_c"]
        if offsets is not None:
            a, b, raw_c = a + offsets[0], b + offsets[1], raw_c + offsets[2]
        c = _MIN_C + jax.nn.softplus(raw_c)
        return polynomial_gamma(a, b, c, t, self.gamma_min, self.gamma_max, len(self.shape))
