"""Samplers: from z_1 ~ N(0, I) to data, for any denoiser eps_hat_fn(z, gamma) and schedule gamma_fn(t).

    discrete.py    ancestral sampling (the VDM posterior steps) and DDIM on t_i = i / T; decoding z_0
    sde.py         the continuous-time view: probability-flow ODE, reverse-time SDE, Langevin dynamics
    dpm_solver.py  DPM-Solver++ multistep (2nd / 3rd order) in lambda = -gamma / 2: few-step deterministic sampling
    multistep.py   iPNDM (variable-step Adams-Bashforth in alpha / sigma) and UniPC (predictor + corrector): few-step too
    grids.py       time grids of every sampler (GRIDS): uniform in t, in log-SNR, Karras et al.'s rho = 7
    likelihood.py  log-likelihood through the probability-flow ODE, dequantisations
    guidance.py    classifier-free and classifier guidance: a guided eps_hat_fn for any sampler

`SAMPLERS` is the one list of samplers (`eval.sampler`, `--sampler`): name ->
`Sampler(fn, description, nfe)` with fn(key, eps_hat_fn, gamma_fn, shape, num_steps)
-> z_0 [B, ...] (decode it with `decode`) and nfe(num_steps), its number of network
evaluations (None for the adaptive solver); `get_sampler(name)` returns fn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vdm.registry import Registry
from vdm.sampling import sde
from vdm.sampling.discrete import ancestral_sample, ddim_sample, decode
from vdm.sampling.dpm_solver import dpm_solver_pp_2m, dpm_solver_pp_3m
from vdm.sampling.multistep import ipndm, unipc_2, unipc_3

__all__ = ["SAMPLERS", "Sampler", "get_sampler", "ancestral_sample", "ddim_sample", "dpm_solver_pp_2m",
           "dpm_solver_pp_3m", "ipndm", "unipc_2", "unipc_3", "decode"]


def _one_per_step(num_steps: int) -> int:
    return num_steps


@dataclasses.dataclass(frozen=True)
class Sampler:
    """fn(key, eps_hat_fn, gamma_fn, shape, num_steps) -> z_0, a line saying what it does ('{steps}': num_steps,
    '{nfe}': network evaluations), and nfe(num_steps) -> network evaluations (None: the solver decides)."""

    fn: Callable
    description: str
    nfe: Callable[[int], int] | None = _one_per_step
    log_snr_grid: bool = False  # its default points are placed in one log-SNR: it needs one gamma per example

    def describe(self, num_steps: int) -> str:
        return self.description.format(steps=num_steps, nfe=self.nfe(num_steps) if self.nfe else "adaptive")

    def steps_for(self, nfe: int) -> int | None:
        """The most steps whose network evaluations fit in `nfe` (None if not even 1 step fits or nfe is not fixed)."""
        if self.nfe is None or self.nfe(1) > nfe:
            return None
        steps = 1
        while self.nfe(steps + 1) <= nfe:
            steps += 1
        return steps


def _ode_adaptive(key, eps_hat_fn, gamma_fn, shape, num_steps):
    """`sde.ode_sample_adaptive` at its default tolerances; the solver chooses its own steps (num_steps unused)."""
    del num_steps
    return sde.ode_sample_adaptive(key, eps_hat_fn, gamma_fn, shape)[0]


SAMPLERS = Registry("sampler", {
    "ancestral": Sampler(ancestral_sample, "VDM posterior steps p(z_s | z_t), T = {steps}"),
    "ddim": Sampler(ddim_sample, "DDIM, eta = 0 (deterministic), T = {steps}"),
    "ode": Sampler(sde.ode_sample_heun, "probability-flow ODE, Heun, {steps} steps (2 evaluations each, {nfe} NFE)",
                   lambda steps: 2 * steps),
    "ode_adaptive": Sampler(_ode_adaptive, "probability-flow ODE, diffrax Tsit5, rtol = atol = 1e-4 (--steps ignored)",
                            None),
    "reverse_sde": Sampler(sde.reverse_sde_sample, "reverse-time SDE, Euler-Maruyama, {steps} steps"),
    "pc": Sampler(sde.pc_sample, "predictor-corrector: ancestral predictor + 1 Langevin corrector (snr 0.16), "
                                 "{steps} steps ({nfe} network calls)", lambda steps: 2 * steps - 1),
    "annealed_langevin": Sampler(sde.annealed_langevin_sample,
                                 "annealed Langevin, {steps} levels x 20 steps, step 0.05 sigma_t^2 ({nfe} NFE)",
                                 lambda levels: 20 * (levels + 1)),
    "dpm_solver_pp_2m": Sampler(dpm_solver_pp_2m, "DPM-Solver++(2M), uniform in log-SNR, {nfe} NFE",
                                log_snr_grid=True),
    "dpm_solver_pp_3m": Sampler(dpm_solver_pp_3m, "DPM-Solver++(3M), uniform in log-SNR, {nfe} NFE",
                                log_snr_grid=True),
    "ipndm": Sampler(ipndm, "iPNDM (4th-order Adams-Bashforth on eps_hat in sigma / alpha), uniform in log-SNR, {nfe} NFE",
                     log_snr_grid=True),
    "unipc_2": Sampler(unipc_2, "UniPC, UniP-2 + UniC (3rd order), uniform in log-SNR, {nfe} NFE", log_snr_grid=True),
    "unipc_3": Sampler(unipc_3, "UniPC, UniP-3 + UniC (4th order), uniform in log-SNR, {nfe} NFE", log_snr_grid=True),
})


def get_sampler(name: str) -> Callable:
    """fn(key, eps_hat_fn, gamma_fn, shape, num_steps) -> z_0 of a sampler in `SAMPLERS`; ValueError naming them if unknown."""
    return SAMPLERS.lookup(name).fn
