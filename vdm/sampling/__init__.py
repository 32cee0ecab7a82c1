"""Samplers: from z_1 ~ N(0, I) to data, for any denoiser eps_hat_fn(z, gamma) and schedule gamma_fn(t).

    discrete.py    ancestral sampling (the VDM posterior steps) and DDIM on t_i = i / T; decoding z_0
    sde.py         the continuous-time view: probability-flow ODE, reverse-time SDE, Langevin dynamics
    likelihood.py  log-likelihood through the probability-flow ODE, dequantisations
    guidance.py    classifier-free and classifier guidance: a guided eps_hat_fn for any sampler

`SAMPLERS` is the one list of samplers (`eval.sampler`, `--sampler`): name ->
`Sampler(fn, description)` with fn(key, eps_hat_fn, gamma_fn, shape, num_steps)
-> z_0 [B, ...] (decode it with `decode`); `get_sampler(name)` returns fn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vdm.registry import Registry
from vdm.sampling import sde
from vdm.sampling.discrete import ancestral_sample, ddim_sample, decode

__all__ = ["SAMPLERS", "Sampler", "get_sampler", "ancestral_sample", "ddim_sample", "decode"]


@dataclasses.dataclass(frozen=True)
class Sampler:
    """fn(key, eps_hat_fn, gamma_fn, shape, num_steps) -> z_0, and a line saying what it does ('{steps}': num_steps)."""

    fn: Callable
    description: str

    def describe(self, num_steps: int) -> str:
        return self.description.format(steps=num_steps)


def _ode_adaptive(key, eps_hat_fn, gamma_fn, shape, num_steps):
    """`sde.ode_sample_adaptive` at its default tolerances; the solver chooses its own steps (num_steps unused)."""
    del num_steps
    return sde.ode_sample_adaptive(key, eps_hat_fn, gamma_fn, shape)[0]


SAMPLERS = Registry("sampler", {
    "ancestral": Sampler(ancestral_sample, "VDM posterior steps p(z_s | z_t), T = {steps}"),
    "ddim": Sampler(ddim_sample, "DDIM, eta = 0 (deterministic), T = {steps}"),
    "ode": Sampler(sde.ode_sample_heun, "probability-flow ODE, Heun, {steps} steps (2 evaluations each)"),
    "ode_adaptive": Sampler(_ode_adaptive, "probability-flow ODE, diffrax Tsit5, rtol = atol = 1e-4 (--steps ignored)"),
    "reverse_sde": Sampler(sde.reverse_sde_sample, "reverse-time SDE, Euler-Maruyama, {steps} steps"),
    "pc": Sampler(sde.pc_sample, "predictor-corrector: ancestral predictor + 1 Langevin corrector (snr 0.16), "
                                 "{steps} steps (2 x {steps} - 1 network calls)"),
    "annealed_langevin": Sampler(sde.annealed_langevin_sample,
                                 "annealed Langevin, {steps} levels x 20 steps, step 0.05 sigma_t^2"),
})


def get_sampler(name: str) -> Callable:
    """fn(key, eps_hat_fn, gamma_fn, shape, num_steps) -> z_0 of a sampler in `SAMPLERS`; ValueError naming them if unknown."""
    return SAMPLERS.lookup(name).fn
