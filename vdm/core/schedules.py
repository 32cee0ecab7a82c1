"""Noise schedules gamma(t) = -log SNR(t), t in [0, 1], strictly increasing.

A schedule is a small frozen object with

    init(key) -> params         a pytree (an empty dict for fixed schedules)
    __call__(params, t) -> gamma   elementwise in t: [B] -> [B] (or scalar -> scalar)

so `functools.partial(schedule, params)` is the ``gamma_fn(t)`` the losses and
samplers take, and gamma'(t) comes from `gamma_and_derivative` (a `jax.jvp`).

Learned schedules keep their parameters in two groups,
``{"endpoints": {...}, "interior": {...}}``: the endpoints gamma_0, gamma_1 train
on the ELBO; the interior shape (monotone network) may instead train on the
variance of the loss (paper appendix; see `vdm.core.losses`).

Families (all with finite endpoints gamma(0) = gamma_0, gamma(1) = gamma_1):
  * `FixedLinear`      gamma_0 + (gamma_1 - gamma_0) t
  * `LearnedLinear`    same, gamma_0 and gamma_1 = gamma_0 + softplus(delta) learned
  * `MonotoneNet`      the paper's positive-weight network, endpoints pinned and learned
  * `BetaLinear`       DDPM's beta-linear schedule, affinely re-timed onto [gamma_0, gamma_1]
  * `AlphaCosine`      Nichol & Dhariwal's cosine schedule, re-timed likewise

and `OfficialNNet`, the official code's `learnable_nnet` schedule as it is (endpoints
not pinned, so gamma(0), gamma(1) move with its network), for checkpoints of that
code (`python -m vdm.import_official`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from vdm.core.per_dimension import PerDimensionPolynomial
from vdm.registry import Registry

__all__ = [
    "FixedLinear",
    "LearnedLinear",
    "MonotoneNet",
    "BetaLinear",
    "AlphaCosine",
    "OfficialNNet",
    "gamma_and_derivative",
    "t_from_gamma",
    "one_gamma_per_example",
    "make_schedule",
    "SCHEDULES",
]


def gamma_and_derivative(gamma_fn, t):
    """(gamma(t), gamma'(t)) for an elementwise gamma_fn, via one forward-mode pass."""
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))


def one_gamma_per_example(gamma_fn, batch: int) -> bool:
    """Whether gamma_fn(t [B]) is [B] (one noise level per example) rather than [B, ...] (one per dimension, the
    same for every example or, for a schedule conditioned on each example, its own)."""
    return jax.eval_shape(gamma_fn, jax.ShapeDtypeStruct((batch,), jnp.float32)).shape == (batch,)


def t_from_gamma(gamma_fn, gamma, num_iters: int = 32):
    """t in [0, 1] with gamma_fn(t) = gamma, elementwise: the inverse of a strictly increasing schedule.

    Vectorised bisection on [0, 1] (no closed form needed, so it serves every family,
    learned or not): after k halvings |t - t*| <= 2^-k, and 32 reach float32's resolution
    on [0, 1]. gamma outside [gamma_fn(0), gamma_fn(1)] maps to the nearer end.
    gamma: any shape; returns float32 t of its shape.
    """
    gamma = jnp.asarray(gamma, jnp.float32)
    lo, hi = jnp.zeros_like(gamma), jnp.ones_like(gamma)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = gamma_fn(mid) < gamma
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_iters, halve, (lo, hi))
    return 0.5 * (lo + hi)


def _softplus_inverse(y):
    return y + math.log(-math.expm1(-y))


def _endpoint_params(gamma_0, gamma_1):
    if not gamma_1 > gamma_0:
        raise ValueError(f"schedule needs gamma_min < gamma_max, got {gamma_0} >= {gamma_1}")
    return {
        "gamma_0": jnp.asarray(gamma_0, jnp.float32),
        "delta": jnp.asarray(_softplus_inverse(gamma_1 - gamma_0), jnp.float32),
    }


def endpoints(params):
    """(gamma_0, gamma_1) of a learned schedule's parameters; gamma_1 > gamma_0 always."""
    e = params["endpoints"]
    return e["gamma_0"], e["gamma_0"] + jax.nn.softplus(e["delta"])


@dataclasses.dataclass(frozen=True)
class FixedLinear:
    """gamma(t) = gamma_0 + (gamma_1 - gamma_0) t (log-SNR linear in t); no parameters."""

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def __post_init__(self):
        _endpoint_params(self.gamma_min, self.gamma_max)

    def init(self, key=None):
        return {}

    def __call__(self, params, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * jnp.asarray(t, jnp.float32)


@dataclasses.dataclass(frozen=True)
class LearnedLinear:
    """gamma(t) = gamma_0 + (gamma_1 - gamma_0) t with learned gamma_0 and gamma_1 = gamma_0 + softplus(delta)."""

    learned = True  # parameters trained with the model (not a dataclass field)

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def init(self, key=None):
        return {"endpoints": _endpoint_params(self.gamma_min, self.gamma_max), "interior": {}}

    def __call__(self, params, t):
        g0, g1 = endpoints(params)
        return g0 + (g1 - g0) * jnp.asarray(t, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _NetworkSchedule:
    """The fields of the schedules that are small monotone networks: the gamma range and the hidden width."""

    learned = True  # parameters trained with the model (not a dataclass field)

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    width: int = 1024


@dataclasses.dataclass(frozen=True)
class MonotoneNet(_NetworkSchedule):
    """The paper's learned monotone schedule (VDM appendix), endpoints pinned.

    gamma~(t) = l1(t) + l3(sigmoid(l2(l1(t)))), with l1: 1->1, l2: 1->width,
    l3: width->1 dense layers whose weights are kept positive (softplus of a raw
    weight), so gamma~ is strictly increasing. Then

        gamma(t) = gamma_0 + (gamma_1 - gamma_0) (gamma~(t) - gamma~(0)) / (gamma~(1) - gamma~(0))

    has exactly the learned endpoints (the official code skips this
    normalisation; its issue #11).
    """

    def init(self, key):
        k2, k3 = jax.random.split(key)
        interior = {
            "l1": {"w": jnp.asarray(_softplus_inverse(1.0), jnp.float32), "b": jnp.zeros((), jnp.float32)},
            "l2": {
                "w": jax.random.normal(k2, (self.width,), jnp.float32),
                "b": jnp.zeros((self.width,), jnp.float32),
            },
            "l3": {"w": -3.0 + 0.1 * jax.random.normal(k3, (self.width,), jnp.float32)},
        }
        return {"endpoints": _endpoint_params(self.gamma_min, self.gamma_max), "interior": interior}

    @staticmethod
    def unnormalized(interior, t):
        """gamma~(t) for t of any shape (elementwise)."""
        t = jnp.asarray(t, jnp.float32)
        sp = jax.nn.softplus
        h1 = sp(interior["l1"]["w"]) * t + interior["l1"]["b"]
        h2 = jax.nn.sigmoid(h1[..., None] * sp(interior["l2"]["w"]) + interior["l2"]["b"])
        return h1 + h2 @ sp(interior["l3"]["w"]) / interior["l2"]["w"].shape[0]

    def __call__(self, params, t):
        g0, g1 = endpoints(params)
        f = lambda u: self.unnormalized(params["interior"], u)
        f0, f1 = f(0.0), f(1.0)
        return g0 + (g1 - g0) * (f(t) - f0) / (f1 - f0)


def _retime(inverse, gamma_min, gamma_max):
    """Affine change of time t -> tau = tau_0 + (tau_1 - tau_0) t with gamma(tau_0) = gamma_min etc."""
    return float(inverse(gamma_min)), float(inverse(gamma_max))


@dataclasses.dataclass(frozen=True)
class BetaLinear:
    """DDPM's beta-linear VP schedule on [gamma_min, gamma_max].

    Native form (beta(tau) = beta_0 + (beta_1 - beta_0) tau, tau in [0, 1]):
        gamma(tau) = log(expm1(beta_0 tau + (beta_1 - beta_0) tau^2 / 2)),
    which is -inf at tau = 0. We use tau = tau_0 + (tau_1 - tau_0) t with tau_0,
    tau_1 solving gamma(tau) = gamma_min, gamma_max (softplus(gamma) =
    beta_0 tau + (beta_1 - beta_0) tau^2 / 2, a quadratic in tau).
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    beta_0: float = 0.1
    beta_1: float = 20.0

    def _tau(self, gamma):
        a, b = 0.5 * (self.beta_1 - self.beta_0), self.beta_0
        c = math.log1p(math.exp(-abs(gamma))) + max(gamma, 0.0)  # softplus(gamma)
        if a == 0:
            return c / b
        return 2 * c / (b + math.sqrt(b * b + 4 * a * c))  # stable root of a tau^2 + b tau - c

    def init(self, key=None):
        _endpoint_params(self.gamma_min, self.gamma_max)
        return {}

    def __call__(self, params, t):
        tau_0, tau_1 = _retime(self._tau, self.gamma_min, self.gamma_max)
        tau = tau_0 + (tau_1 - tau_0) * jnp.asarray(t, jnp.float32)
        a = self.beta_0 * tau + 0.5 * (self.beta_1 - self.beta_0) * tau**2
        return a + jnp.log(-jnp.expm1(-a))  # log(expm1(a)), stable for small and large a


@dataclasses.dataclass(frozen=True)
class AlphaCosine:
    """The alpha-cosine schedule (Nichol & Dhariwal 2021) on [gamma_min, gamma_max].

    alpha^2(tau) = cos^2(pi tau / 2) gives gamma(tau) = 2 log tan(pi tau / 2).
    The usual offset s and any rescaling are absorbed by the affine re-timing
    tau = tau_0 + (tau_1 - tau_0) t, tau(gamma) = (2/pi) arctan(exp(gamma / 2)).
    Evaluated as 2 [log sin(pi tau / 2) - log sin(pi (1 - tau) / 2)] with tau and
    1 - tau each taken from its own endpoint, so both ends stay exact in float32.
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def init(self, key=None):
        _endpoint_params(self.gamma_min, self.gamma_max)
        return {}

    def __call__(self, params, t):
        tau_0 = 2 / math.pi * math.atan(math.exp(0.5 * self.gamma_min))
        rest_1 = 2 / math.pi * math.atan(math.exp(-0.5 * self.gamma_max))  # 1 - tau_1
        span = 1.0 - tau_0 - rest_1
        t = jnp.asarray(t, jnp.float32)
        tau = tau_0 + span * t
        rest = rest_1 + span * (1.0 - t)
        half_pi = 0.5 * math.pi
        return 2.0 * (jnp.log(jnp.sin(half_pi * tau)) - jnp.log(jnp.sin(half_pi * rest)))


@dataclasses.dataclass(frozen=True)
class OfficialNNet(_NetworkSchedule):
    """The official VDM code's `learnable_nnet` schedule (its NoiseSchedule_NNet), the same function of the same weights.

    With |.| taken of every weight (monotone dense layers) and n = width,

        gamma(t) = |w1| t + b1 + (1/n) |w3| . s(|w2| (2t - 1) + b2),   s(u) = 2 sigmoid(u) - 1.

    Unlike `MonotoneNet` the endpoints are not pinned: gamma(0) and gamma(1) are
    whatever the network gives, so the whole tree is "interior" and "endpoints" is
    empty. Parameters keep the official names, {"l1": {"kernel" [1, 1], "bias" [1]},
    "l2": {"kernel" [1, n], "bias" [n]}, "l3": {"kernel" [n, 1]}}, and the official
    initialisation (l1 from gamma_min to gamma_max, l2 and l3 normal(0.01));
    the width is read from the parameters (the official code's is 1024).
    """

    def init(self, key):
        k2, k3 = jax.random.split(key)
        interior = {
            "l1": {"kernel": jnp.full((1, 1), self.gamma_max - self.gamma_min, jnp.float32),
                   "bias": jnp.full((1,), self.gamma_min, jnp.float32)},
            "l2": {"kernel": 0.01 * jax.random.normal(k2, (1, self.width), jnp.float32),
                   "bias": jnp.zeros((self.width,), jnp.float32)},
            "l3": {"kernel": 0.01 * jax.random.normal(k3, (self.width, 1), jnp.float32)},
        }
        return {"endpoints": {}, "interior": interior}

    def __call__(self, params, t):
        p = params["interior"]
        t = jnp.asarray(t, jnp.float32)[..., None]  # [..., 1]
        h = t @ jnp.abs(p["l1"]["kernel"]) + p["l1"]["bias"]
        u = (2.0 * (t - 0.5)) @ jnp.abs(p["l2"]["kernel"]) + p["l2"]["bias"]
        u = 2.0 * (jax.nn.sigmoid(u) - 0.5)
        h = h + (u @ jnp.abs(p["l3"]["kernel"])) / p["l2"]["kernel"].shape[-1]
        return h[..., 0]


SCHEDULES = Registry("schedule", {
    "fixed_linear": FixedLinear,
    "learned_linear": LearnedLinear,
    "monotone_net": MonotoneNet,
    "beta_linear": BetaLinear,
    "alpha_cosine": AlphaCosine,
    "official_nnet": OfficialNNet,
    "mulan": PerDimensionPolynomial,
})


def make_schedule(name: str, gamma_min: float, gamma_max: float, **kwargs):
    """Builds a schedule by name (a key of `SCHEDULES`)."""
    schedule = SCHEDULES.lookup(name)
    if not gamma_min < gamma_max:
        raise ValueError(f"schedule needs gamma_min < gamma_max, got {gamma_min} >= {gamma_max}")
    return schedule(gamma_min=gamma_min, gamma_max=gamma_max, **kwargs)
