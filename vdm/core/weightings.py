"""Weightings w(lambda) of the diffusion loss (Kingma & Gao 2023, "Understanding diffusion objectives").

With lambda = -gamma the log-SNR (the full log-SNR log(alpha^2 / sigma^2), not
DPM-Solver's half of it), the weighted diffusion loss of one example is

    L_w(x) = 1/2 E_{t ~ U(0, 1), eps} [ w(lambda_t) (-d lambda_t / dt) ||eps - eps_hat(z_t; lambda_t)||^2 ]
           = 1/2 int_{lambda_min}^{lambda_max} w(lambda) E_eps ||eps - eps_hat(z_lambda; lambda)||^2 d lambda,

so a weighting that is a function of lambda alone makes L_w depend on the noise
schedule only through its endpoints (the schedule importance-samples lambda).
w = 1 is the ELBO's diffusion term; a w that is non-increasing in lambda
("monotone") makes L_w an ELBO of noise-augmented data.

DDPM's L_simple and the v-prediction MSE, sampled over t under a given schedule,
are weightings too, but theirs depends on the schedule: they are defined by the
time weight w(lambda_t) (-d lambda_t / dt), and w(lambda) = that / (-d lambda / dt).

`WEIGHTINGS` is the one table of names (config key `loss.weighting`; its
parameters are the config keys `loss.weighting_<param>`, e.g. `loss.weighting_bias`),
read by `vdm.config.validation` and by the code alike; `get_weighting(name, **params)`
builds the callable.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdm.registry import Registry

__all__ = ["Weighting", "WEIGHTINGS", "get_weighting", "EDM_MEAN", "EDM_STD", "EDM_SIGMA_DATA", "EDM_PEAK"]

# EDM (Karras et al. 2022): ln sigma ~ N(P_mean = -1.2, P_std = 1.2^2), sigma_data = 0.5.
EDM_MEAN, EDM_STD, EDM_SIGMA_DATA = 2.4, 2.4, 0.5  # lambda = -2 ln sigma ~ N(2.4, 2.4^2)


def _edm(lam):
    """EDM's weighting in lambda form (see `WEIGHTINGS['edm']`), computed in log space."""
    lam = jnp.asarray(lam, jnp.float32)
    log_density = -0.5 * jnp.square((lam - EDM_MEAN) / EDM_STD) - math.log(EDM_STD * math.sqrt(2 * math.pi))
    log_factor = jnp.logaddexp(-lam, 2 * math.log(EDM_SIGMA_DATA)) - 2 * math.log(EDM_SIGMA_DATA)
    return jnp.exp(log_density + log_factor)


def _edm_peak() -> float:
    """argmax of the EDM weighting: the root of d/d lambda log w = -(lambda - m) / s^2 - 1 / (1 + sigma_data^2 e^lambda).

    log w is strictly concave (its derivative is strictly decreasing), so the root is unique: bisection.
    """
    def slope(lam):
        return -(lam - EDM_MEAN) / EDM_STD**2 - 1.0 / (1.0 + EDM_SIGMA_DATA**2 * math.exp(lam))

    lo, hi = -20.0, 20.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


EDM_PEAK = _edm_peak()  # about -3.31


@dataclasses.dataclass(frozen=True)
class Weighting:
    """One weighting: either `w(lambda, **params)`, a function of the log-SNR alone, or, for a weighting
    defined under the schedule, `time_weight(lambda)` = w(lambda_t) rate_t with rate_t = -d lambda_t / dt
    (w itself is then time_weight / rate: it depends on the schedule).

    params: {name: default}: the parameters, config keys `loss.weighting_<name>`.
    monotone: True if w is non-increasing in lambda (L_w is then an ELBO of noise-augmented data),
      False if not, None if that depends on the schedule. Checked numerically in tests/test_weightings.py.
    """

    description: str
    monotone: bool | None
    w: Callable | None = None
    time_weight: Callable | None = None
    params: dict = dataclasses.field(default_factory=dict)


class BoundWeighting:
    """A `Weighting` with its parameters bound: w(lambda, rate) and loss_weight(lambda, rate) = w(lambda) rate."""

    def __init__(self, name: str, entry: Weighting, params: dict):
        self.name, self.entry, self.params = name, entry, params

    @property
    def schedule_dependent(self) -> bool:
        return self.entry.w is None

    def __call__(self, lam, rate=None):
        """w(lambda); a schedule-defined weighting also needs rate = -d lambda / dt at lambda."""
        if self.entry.w is not None:
            return self.entry.w(jnp.asarray(lam, jnp.float32), **self.params)
        if rate is None:
            raise ValueError(f"weighting {self.name!r} depends on the schedule: pass rate = -d lambda / dt")
        return self.entry.time_weight(jnp.asarray(lam, jnp.float32)) / rate

    def loss_weight(self, lam, rate):
        """w(lambda) rate: the factor of 1/2 (eps - eps_hat)^2 in L_w (`vdm.core.objective.diffusion_loss`)."""
        if self.entry.w is not None:
            return self.entry.w(jnp.asarray(lam, jnp.float32), **self.params) * rate
        return self.entry.time_weight(jnp.asarray(lam, jnp.float32))  # lambda has rate's shape

    def __repr__(self):
        return f"get_weighting({self.name!r}, **{self.params})"


WEIGHTINGS = Registry("weighting", {
    "elbo": Weighting(
        "w = 1: the ELBO's diffusion term (monotone)", monotone=True,
        w=lambda lam: jnp.ones_like(lam)),
    "sigmoid": Weighting(
        "w = sigmoid(b - lambda), b = loss.weighting_bias (monotone: decreasing in lambda)", monotone=True,
        w=lambda lam, bias: jax.nn.sigmoid(bias - lam), params={"bias": 0.0}),
    # EDM: sigma = exp(-lambda / 2) (SNR = 1 / sigma^2 in EDM's variance-exploding form), ln sigma ~ N(-1.2, 1.2^2)
    # gives lambda = -2 ln sigma ~ N(2.4, 2.4^2). EDM's loss E_{sigma} [(sigma^2 + sigma_d^2) / (sigma sigma_d)^2
    # ||D(x; sigma) - x||^2] with D - x = -sigma (eps_hat - eps) is E_{p(lambda)} [(e^-lambda + sigma_d^2) /
    # sigma_d^2 ||eps - eps_hat||^2] = int p(lambda) (e^-lambda + sigma_d^2) / sigma_d^2 ||eps - eps_hat||^2 dlambda:
    # twice L_w with the w below.
    "edm": Weighting(
        "EDM: w = N(lambda; 2.4, 2.4^2) (e^-lambda + 0.5^2) / 0.5^2 (not monotone: rises up to lambda ~ -3.31)",
        monotone=False, w=_edm),
    "edm_monotonic": Weighting(
        "EDM's w held at its peak value for lambda below the peak (lambda ~ -3.31): monotone",
        monotone=True, w=lambda lam: _edm(jnp.maximum(lam, EDM_PEAK))),
    # ||eps - eps_hat||^2 = 1/2 2 ||eps - eps_hat||^2 at t ~ U(0, 1): time weight 2, w(lambda) = 2 / (-d lambda / dt);
    # in bits/dim (the training loss's unit) L_w / (D ln 2) = L_simple / ln 2, L_simple = mean_i (eps - eps_hat)_i^2.
    # Constant under fixed_linear (monotone); under the cosine schedule lambda = -2 log tan(pi t / 2),
    # -d lambda / dt = pi / sin(pi t) and w ~ sin(pi t) ~ sech(lambda / 2): not monotone.
    "eps_mse": Weighting(
        "DDPM's L_simple: ||eps - eps_hat||^2 at t ~ U(0, 1) under the run's schedule, "
        "w (-d lambda / dt) = 2 (monotone or not depending on the schedule)",
        monotone=None, time_weight=lambda lam: jnp.full_like(lam, 2.0)),
    # v = alpha eps - sigma x, v_hat = alpha eps_hat - sigma x_hat with x_hat = (z - sigma eps_hat) / alpha:
    # x - x_hat = -sigma (eps - eps_hat) / alpha, so v - v_hat = (alpha + sigma^2 / alpha)(eps - eps_hat)
    # = (eps - eps_hat) / alpha (alpha^2 + sigma^2 = 1) and ||v - v_hat||^2 = (1 + e^-lambda) ||eps - eps_hat||^2.
    # ||v - v_hat||^2 at t ~ U(0, 1): time weight 2 (1 + e^-lambda). Under the untruncated cosine
    # schedule w ~ (1 + e^-lambda) sin(pi t) = 2 e^(-lambda / 2): the paper's v-MSE weighting.
    "v_mse": Weighting(
        "v-prediction MSE ||v - v_hat||^2 at t ~ U(0, 1) under the run's schedule: "
        "w (-d lambda / dt) = 2 (1 + e^-lambda) (monotone or not depending on the schedule)",
        monotone=None, time_weight=lambda lam: 2.0 * (1.0 + jnp.exp(-lam))),
})


def get_weighting(name: str, **params) -> BoundWeighting:
    """The weighting `name` (a key of WEIGHTINGS) with its parameters (defaults for those not given)."""
    entry = WEIGHTINGS.lookup(name)
    unknown = set(params) - set(entry.params)
    if unknown:
        raise ValueError(f"weighting {name!r} takes parameters {sorted(entry.params)}, got {sorted(unknown)}")
    return BoundWeighting(name, entry, {**entry.params, **params})


def from_loss_config(loss_config) -> BoundWeighting:
    """The weighting of a config's `loss` section: loss.weighting with its loss.weighting_<param> keys."""
    entry = WEIGHTINGS.lookup(loss_config.weighting)
    return get_weighting(loss_config.weighting, **{p: loss_config[f"weighting_{p}"] for p in entry.params})
