"""Plausible bugs the suite must catch: each is planted in a temporary copy of the repository and its tests run there.

    python -m tests.mutations            # every entry; exit 1 if one is not caught or its text is gone
    python -m tests.mutations --list     # the table
    python -m tests.mutations --only NAME [--only NAME ...]

An entry names the file, the exact text to find (it must occur exactly once, so the table follows the code: an
entry whose text is gone is itself a failure), its replacement, the real bug it stands for, and the tests that
must fail. The entry's tests first run on the unchanged copy and must pass there ('control failed' if not);
then "caught" means pytest exits 1 on the changed copy (a test failed), not 2+ (collection or usage errors,
reported apart).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPIED = ("vdm", "tests", "configs", "experiments", "pyproject.toml")


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    edits: tuple  # ((exact text, replacement), ...), each text once in the file
    stands_for: str
    tests: tuple  # pytest arguments: files, node ids, -k expressions


MUTATIONS = (
    Mutation("load_run_swaps_ema", "vdm/training/workdirs.py",
             (("state.ema_params if ema else state.params", "state.params if ema else state.ema_params"),),
             "load_run returns the raw parameters where the EMA ones were asked for",
             ("tests/test_checkpoint.py::test_load_run_gives_config_model_and_ema_params",)),
    Mutation("digit_check_class_balance_off", "vdm/metrics/digits_quality.py",
             (('report["min_class_fraction"] >= 0.04', 'report["min_class_fraction"] >= 0.0'),
              ('report["max_class_fraction"] <= 0.20', 'report["max_class_fraction"] <= 1.0')),
             "the digit check no longer rejects a mode-collapsed sample set",
             ("tests/test_digits_quality.py",)),
    Mutation("kid_jackknife_term_dropped", "vdm/metrics/feature_distances.py",
             (("sxy.sum() - sxy.sum(1) - sxy.sum(0) + sxy[diag, diag]", "sxy.sum() - sxy.sum(1) - sxy.sum(0)"),),
             "the leave-one-block-out cross term double-subtracts the left-out block pair",
             ("tests/test_feature_distances.py",)),
    Mutation("pc_corrector_step_zero", "vdm/sampling/sde.py",
             (("        delta = snr_step_size(eps_hat_fn, z, gamma, target_snr, eps=eps)\n",
               "        delta = 0.0 * snr_step_size(eps_hat_fn, z, gamma, target_snr, eps=eps)\n"),),
             "the predictor-corrector's Langevin corrector never moves",
             ("tests/test_sde_and_likelihood.py", "-k", "langevin_corrector")),
    Mutation("beta_linear_half_dropped", "vdm/core/schedules.py",
             (("a, b = 0.5 * (self.beta_1 - self.beta_0), self.beta_0", "a, b = (self.beta_1 - self.beta_0), self.beta_0"),
              ("a = self.beta_0 * tau + 0.5 * (self.beta_1 - self.beta_0) * tau**2",
               "a = self.beta_0 * tau + (self.beta_1 - self.beta_0) * tau**2")),
             "beta-linear integrates beta(tau) without the 1/2 (consistently, so both endpoints still hold)",
             ("tests/test_schedules.py",)),
    Mutation("discrete_time_floor", "vdm/core/losses.py",
             (("t = jnp.maximum(jnp.ceil(t * T), 1.0) / T", "t = jnp.maximum(jnp.floor(t * T), 1.0) / T"),),
             "the training loss maps t to the wrong step of L_T",
             ("tests/test_losses.py", "-k", "grid_mapping")),
    Mutation("eval_counts_padded_rows", "vdm/training/evaluation.py",
             (("            n = int(mask.sum())\n            for name in TERM_NAMES:",
               "            n = len(mask)\n            for name in TERM_NAMES:"),),
             "evaluation counts the padding rows of the last batch",
             ("tests/test_train.py", "-k", "per_example_loop")),
    Mutation("cfg_ignores_weight", "vdm/sampling/guidance.py",
             (("return (1 + weight) * eps_cond - weight * eps_null", "return eps_cond + 0.0 * weight * eps_null"),),
             "classifier-free guidance returns the plain conditional denoiser whatever w",
             ("tests/test_sde_and_likelihood.py", "-k", "1_plus_w")),
    Mutation("estimator_floor", "vdm/core/elbo_estimator.py",
             (("jnp.maximum(jnp.ceil(u * T), 1.0)", "jnp.maximum(jnp.floor(u * T), 1.0)"),),
             "evaluation's stratified L_T pairs each step with the wrong gamma",
             ("tests/test_elbo_estimator.py", "-k", "discrete")),
    Mutation("estimator_enumeration_off_by_one", "vdm/core/elbo_estimator.py",
             (("jnp.arange(1.0, T + 1.0)", "jnp.arange(0.0, T)"),),
             "evaluation's enumerated L_T starts one step early",
             ("tests/test_elbo_estimator.py", "-k", "discrete or enumerated")),
    Mutation("estimator_log_snr_weight", "vdm/core/elbo_estimator.py",
             (("jnp.broadcast_to(gamma_1 - gamma_0, u.shape)", "jnp.ones_like(u)"),),
             "uniform-in-log-SNR sampling without its density's weight gamma_1 - gamma_0",
             ("tests/test_elbo_estimator.py", "-k", "unbiased or calibrated")),
    Mutation("estimator_expm1", "vdm/core/elbo_estimator.py",
             (("T * jnp.expm1(gamma_t - gamma_s)", "T * (gamma_t - gamma_s)"),),
             "L_T's weight linearised: the continuous-time rate in place of expm1",
             ("tests/test_elbo_estimator.py", "-k", "discrete")),
    Mutation("transition_variance_sign", "vdm/core/diffusion.py",
             (("    c = -jnp.expm1(gamma_s - gamma_t)\n", "    c = -jnp.expm1(gamma_t - gamma_s)\n"),),
             "q(z_t | z_s)'s variance factor 1 - SNR_t / SNR_s with the ratio inverted",
             ("tests/test_diffusion.py",)),
    Mutation("posterior_ratio_inverted", "vdm/core/diffusion.py",
             (("ratio = jnp.exp(jax.nn.log_sigmoid(gamma_s) - jax.nn.log_sigmoid(gamma_t))",
               "ratio = jnp.exp(jax.nn.log_sigmoid(gamma_t) - jax.nn.log_sigmoid(gamma_s))"),),
             "the posterior q(z_s | z_t, x) with sigma_t^2 / sigma_s^2 for sigma_s^2 / sigma_t^2",
             ("tests/test_diffusion.py",)),
    Mutation("alpha_sigma_swapped", "vdm/core/diffusion.py",
             (("return jnp.sqrt(jax.nn.sigmoid(-gamma)), jnp.sqrt(jax.nn.sigmoid(gamma))",
               "return jnp.sqrt(jax.nn.sigmoid(gamma)), jnp.sqrt(jax.nn.sigmoid(-gamma))"),),
             "alpha and sigma swapped (gamma read as log-SNR instead of -log-SNR)",
             ("tests/test_diffusion.py",)),
    Mutation("prior_kl_log_sign", "vdm/core/losses.py",
             (("- jax.nn.log_sigmoid(gamma_1))", "+ jax.nn.log_sigmoid(gamma_1))"),),
             "the prior KL with +log sigma_1^2",
             ("tests/test_losses.py",)),
    Mutation("decoder_snr_sign", "vdm/core/losses.py",
             (("return -0.5 * jnp.exp(-gamma_0)[..., None]", "return -0.5 * jnp.exp(gamma_0)[..., None]"),),
             "the discretised decoder's logits scaled by 1 / SNR_0 instead of SNR_0",
             ("tests/test_losses.py",)),
    Mutation("bin_centres_shifted", "vdm/core/losses.py",
             (("return 2.0 * (jnp.asarray(x_int, jnp.float32) + 0.5) / vocab_size - 1.0",
               "return 2.0 * jnp.asarray(x_int, jnp.float32) / vocab_size - 1.0"),),
             "data scaled to bin edges instead of bin centres",
             ("tests/test_losses.py",)),
    Mutation("edm_weight_inverted", "vdm/core/weightings.py",
             (("return jnp.exp(log_density + log_factor)", "return jnp.exp(log_density - log_factor)"),),
             "EDM's weighting divided by its (e^-lambda + sigma_data^2) / sigma_data^2 factor",
             ("tests/test_weightings.py",)),
)


def missing_texts(mutation: Mutation, root: str = ROOT) -> list[str]:
    """The entry's texts that do not occur exactly once in its file (the table no longer follows the code)."""
    with open(os.path.join(root, mutation.path)) as f:
        source = f.read()
    return [text for text, _ in mutation.edits if source.count(text) != 1]


def run(mutation: Mutation, root: str = ROOT) -> tuple[str, float]:
    """('caught' | 'NOT caught' | 'text gone' | 'control failed' | 'error <code>', seconds) for one entry, in a
    temporary copy: its tests on the unchanged copy, then on the copy with the edits."""
    if missing_texts(mutation, root):
        return "text gone", 0.0
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="vdm_mutation_") as copy:
        for name in COPIED:
            src = os.path.join(root, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(
                src, os.path.join(copy, name), **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                  if os.path.isdir(src) else {}))
        env = {**os.environ, "PYTHONPATH": copy}

        def tests():
            return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                   *mutation.tests], cwd=copy, env=env, capture_output=True, text=True).returncode

        if tests() != 0:
            return "control failed", time.time() - start
        target = os.path.join(copy, mutation.path)
        with open(target) as f:
            source = f.read()
        for text, replacement in mutation.edits:
            source = source.replace(text, replacement)
        with open(target, "w") as f:
            f.write(source)
        code = tests()
    verdict = {0: "NOT caught", 1: "caught"}.get(code, f"error {code}")
    return verdict, time.time() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    parser.add_argument("--only", action="append", help="run only this entry (repeatable)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:36s} {m.path:34s} {m.stands_for}")
        return 0
    failures, start = [], time.time()
    for m in chosen:
        verdict, seconds = run(m)
        print(f"{verdict:10s} {seconds:6.1f} s  {m.name}: {m.stands_for}", flush=True)
        if verdict != "caught":
            failures.append(m.name)
    print(f"{len(chosen) - len(failures)} of {len(chosen)} caught in {time.time() - start:.0f} s"
          + (f"; not caught or broken: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
