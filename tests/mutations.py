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
             ("tests/test_schedules.py", "-k", "beta_linear")),
    Mutation("discrete_time_floor", "vdm/core/objective.py",
             (("t = jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps",
               "t = jnp.maximum(jnp.floor(t * num_steps), 1.0) / num_steps"),),
             "the training loss maps t to the wrong step of L_T",
             ("tests/test_losses.py", "-k", "grid_mapping")),
    Mutation("eval_counts_padded_rows", "vdm/training/evaluation.py",
             (("            n = int(mask.sum())\n            for name in terms:",
               "            n = len(mask)\n            for name in terms:"),),
             "evaluation counts the padding rows of the last batch",
             ("tests/test_train.py", "-k", "per_example_loop")),
    Mutation("cfg_ignores_weight", "vdm/sampling/guidance.py",
             (("return (1 + weight) * eps_cond - weight * eps_null", "return eps_cond + 0.0 * weight * eps_null"),),
             "classifier-free guidance returns the plain conditional denoiser whatever w",
             ("tests/test_sde_and_likelihood.py", "-k", "1_plus_w")),
    Mutation("estimator_floor", "vdm/core/objective.py",
             (("t = jnp.maximum(jnp.ceil(t * num_steps), 1.0) / num_steps",
               "t = jnp.maximum(jnp.floor(t * num_steps), 1.0) / num_steps"),),
             "evaluation's stratified L_T pairs each step with the wrong gamma (its steps come from the objective)",
             ("tests/test_elbo_estimator.py", "-k", "discrete")),
    Mutation("estimator_enumeration_off_by_one", "vdm/core/elbo_estimator.py",
             (("(jnp.arange(num_steps)[:, None] + 0.5) / num_steps", "(jnp.arange(num_steps)[:, None] - 0.5) / num_steps"),),
             "evaluation's enumerated L_T starts one step early",
             ("tests/test_elbo_estimator.py", "-k", "discrete or enumerated")),
    Mutation("estimator_log_snr_weight", "vdm/core/elbo_estimator.py",
             (("jnp.broadcast_to(gamma_1 - gamma_0, u.shape)", "jnp.ones_like(u)"),),
             "uniform-in-log-SNR sampling without its density's weight gamma_1 - gamma_0",
             ("tests/test_elbo_estimator.py", "-k", "unbiased or calibrated")),
    Mutation("estimator_expm1", "vdm/core/objective.py",
             (("num_steps * jnp.expm1(gamma_t - gamma_fn(t - 1.0 / num_steps))",
               "num_steps * (gamma_t - gamma_fn(t - 1.0 / num_steps))"),),
             "L_T's weight linearised: the continuous-time rate in place of expm1 (training and evaluation alike)",
             ("tests/test_elbo_estimator.py", "-k", "discrete")),
    Mutation("transition_variance_sign", "vdm/core/diffusion.py",
             (("    c = -jnp.expm1(jnp.minimum(gamma_s - gamma_t, 0.0))\n", "    c = -jnp.expm1(gamma_t - gamma_s)\n"),),
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
             ("tests/test_losses.py", "-k", "prior_kl")),
    Mutation("decoder_snr_sign", "vdm/core/losses.py",
             (("return -0.5 * jnp.exp(-gamma_0)[..., None]", "return -0.5 * jnp.exp(gamma_0)[..., None]"),),
             "the discretised decoder's logits scaled by 1 / SNR_0 instead of SNR_0",
             ("tests/test_losses.py", "-k", "decoder")),
    Mutation("bin_centres_shifted", "vdm/core/losses.py",
             (("return 2.0 * (jnp.asarray(x_int, jnp.float32) + 0.5) / vocab_size - 1.0",
               "return 2.0 * jnp.asarray(x_int, jnp.float32) / vocab_size - 1.0"),),
             "data scaled to bin edges instead of bin centres",
             ("tests/test_losses.py", "-k", "decoder")),
    Mutation("edm_weight_inverted", "vdm/core/weightings.py",
             (("return jnp.exp(log_density + log_factor)", "return jnp.exp(log_density - log_factor)"),),
             "EDM's weighting divided by its (e^-lambda + sigma_data^2) / sigma_data^2 factor",
             ("tests/test_weightings.py", "-k", "edm")),
    # samplers
    Mutation("ancestral_noise_variance_as_std", "vdm/sampling/discrete.py",
             (("return mean + jnp.sqrt(var) * noise, None", "return mean + var * noise, None"),),
             "the ancestral step scales its noise by the variance instead of the standard deviation",
             ("tests/test_sampling.py", "tests/test_sde_and_likelihood.py", "-k", "ancestral")),
    Mutation("ddim_eta_not_squared", "vdm/sampling/discrete.py",
             (("var = eta**2 * sigma_s_sq", "var = eta * sigma_s_sq"),),
             "DDIM's added variance eta sigma_Q^2 instead of eta^2 sigma_Q^2 (right at eta = 0 and 1 only)",
             ("tests/test_sampling.py", "-k", "eta")),
    Mutation("heun_as_euler", "vdm/sampling/sde.py",
             (("return z + (s - t) * 0.5 * (d_t + d_s), None", "return z + (s - t) * d_t, None"),),
             "the PF-ODE sampler's Heun step loses its corrector (first-order Euler)",
             ("tests/test_dpm_solver.py", "-k", "heun")),
    Mutation("pf_ode_drift_half_dropped", "vdm/sampling/sde.py",
             (("return 0.5 * diffusion.expand_gamma(dgamma, z) * sigma * (eps_hat_fn(z, gamma) - sigma * z)",
               "return diffusion.expand_gamma(dgamma, z) * sigma * (eps_hat_fn(z, gamma) - sigma * z)"),),
             "the probability-flow drift without the 1/2 of g^2 / 2 (the reverse SDE's score term)",
             ("tests/test_sde_and_likelihood.py", "-k", "ode_log_density")),
    Mutation("reverse_sde_noise_halved", "vdm/sampling/sde.py",
             (("jnp.where(last, 0.0, jnp.sqrt(jnp.maximum(dg, 0.0) * sigma**2 * dt))",
               "jnp.where(last, 0.0, jnp.sqrt(0.5 * jnp.maximum(dg, 0.0) * sigma**2 * dt))"),),
             "Euler-Maruyama's noise with g^2 / 2 dt for g^2 dt",
             ("tests/test_sde_and_likelihood.py", "-k", "reverse_sde")),
    Mutation("reverse_sde_score_halved", "vdm/sampling/sde.py",
             (("return -0.5 * dgamma * sigma**2 * z + dgamma * sigma * eps",
               "return -0.5 * dgamma * sigma**2 * z + 0.5 * dgamma * sigma * eps"),),
             "the reverse SDE with the probability-flow ODE's score weight g^2 / 2 (and the SDE's noise)",
             ("tests/test_sde_and_likelihood.py", "-k", "reverse_sde")),
    Mutation("langevin_noise_sqrt_delta", "vdm/sampling/sde.py",
             (("jnp.sqrt(2 * delta) * jax.random.normal(key, z.shape)", "jnp.sqrt(delta) * jax.random.normal(key, z.shape)"),),
             "a Langevin step with noise sqrt(delta) instead of sqrt(2 delta): it no longer keeps q(z_t)",
             ("tests/test_sde_and_likelihood.py", "-k", "langevin_corrector")),
    Mutation("annealed_langevin_step_fixed", "vdm/sampling/sde.py",
             (("delta = step_scale * jax.nn.sigmoid(gamma)", "delta = step_scale * jnp.ones_like(gamma)"),),
             "annealed Langevin's step does not shrink with the noise level (delta_i proportional to sigma_i^2)",
             ("tests/test_sde_and_likelihood.py", "-k", "annealed_langevin")),
    Mutation("dpm_solver_2m_correction_doubled", "vdm/sampling/dpm_solver.py",
             (("second = first - alpha_t * phi1 * d0 / 2", "second = first - alpha_t * phi1 * d0"),),
             "DPM-Solver++ 2M's second-order correction without its 1/2",
             ("tests/test_dpm_solver.py", "-k", "order")),
    Mutation("dpm_solver_3m_phi3_weight", "vdm/sampling/dpm_solver.py",
             (("third = first + alpha_t * phi2 * big_d1 - 2 * alpha_t * phi3 * big_d2",
               "third = first + alpha_t * phi2 * big_d1 - alpha_t * phi3 * big_d2"),),
             "DPM-Solver++ 3M's third-order term with phi_3 for 2 phi_3",
             ("tests/test_dpm_solver.py", "-k", "order")),
    Mutation("phi2_series_sign", "vdm/sampling/dpm_solver.py",
             (("phi2_series = h * (0.5 + h * (-1.0 / 6", "phi2_series = h * (0.5 + h * (1.0 / 6"),),
             "the small-h series of phi_2 with a wrong sign (used only for |h| < 0.1)",
             ("tests/test_dpm_solver.py", "-k", "phi_functions")),
    Mutation("edm_grid_rho_dropped", "vdm/sampling/grids.py",
             (("root_max, root_min = jnp.exp(gamma_1 / (2 * rho)), jnp.exp(gamma_0 / (2 * rho))",
               "root_max, root_min = jnp.exp(gamma_1 / 2), jnp.exp(gamma_0 / 2)"),),
             "Karras' grid interpolates s instead of s^(1/rho) (the ends still pinned)",
             ("tests/test_dpm_solver.py", "-k", "grids")),
    Mutation("logsnr_grid_reversed", "vdm/sampling/grids.py",
             (("return _from_gammas(gamma_fn, gamma_1 + (gamma_0 - gamma_1) * frac)",
               "return _from_gammas(gamma_fn, gamma_0 + (gamma_1 - gamma_0) * frac)"),),
             "the uniform-log-SNR grid runs from t = 0 to 1",
             ("tests/test_dpm_solver.py", "-k", "grids")),
    Mutation("ipndm_nodes_in_lambda", "vdm/sampling/multistep.py",
             (("jnp.expm1(0.5 * (gamma(i - j) - g_s)) / jnp.expm1(-h)", "(0.5 * (gamma(i - j) - g_s)) / (-h)"),),
             "iPNDM's Adams-Bashforth nodes spaced in lambda while the polynomial is integrated in rho = e^-lambda",
             ("tests/test_few_step_solvers.py", "-k", "ipndm")),
    Mutation("ipndm_ab4_coefficient", "vdm/sampling/multistep.py",
             (("[1.0 / (j + 1) for j in range(len(nodes))]", "[1.0 / (j + 1) for j in range(len(nodes) - 1)] + [0.2]"),),
             "the highest moment of the Adams-Bashforth weights wrong (AB4's 55/24 ... off; orders 1-3 too)",
             ("tests/test_few_step_solvers.py", "-k", "ipndm")),
    Mutation("inception_last_block_avg_pool", "vdm/metrics/inception.py",
             (('InceptionE(max_pool=True, name="Mixed_7c")', 'InceptionE(max_pool=False, name="Mixed_7c")'),),
             "the last Inception block pools its branch by averaging, as torchvision does, not TF's FID graph's max",
             ("tests/test_inception.py", "-k", "equals_pytorch_fid")),
    Mutation("inception_pool_counts_padding", "vdm/metrics/inception.py",
             (("(1, 1)), count_include_pad=False)", "(1, 1)), count_include_pad=True)"),),
             "the blocks' 3x3 average pools count the zero padding (torch's default), not TF's SAME pooling",
             ("tests/test_inception.py", "-k", "equals_pytorch_fid")),
    Mutation("inception_resize_antialiased", "vdm/metrics/inception.py",
             (('"bilinear", antialias=False)', '"bilinear", antialias=True)'),),
             "jax.image.resize's default antialiasing on downsampling, which pytorch-fid's F.interpolate does not do",
             ("tests/test_inception.py", "-k", "equals_pytorch_fid")),
    Mutation("precision_recall_radius_counts_self", "vdm/metrics/inception_metrics.py",
             (("jax.lax.top_k(-d, k + 1)[0][:, k]", "jax.lax.top_k(-d, k + 1)[0][:, k - 1]"),),
             "the k-NN radius takes the point itself as its first neighbour (the (k-1)-th neighbour's distance)",
             ("tests/test_inception_metrics.py", "-k", "precision_recall")),
    Mutation("unipc_corrector_dropped", "vdm/sampling/multistep.py",
             (("            z_here = jnp.where(i >= 1, corrected, z_pred)\n", "            z_here = z_pred\n"),),
             "UniPC's corrector computed but never used (UniP alone: one order lower)",
             ("tests/test_few_step_solvers.py", "-k", "order")),
    Mutation("unipc_taylor_recurrence_factor", "vdm/sampling/multistep.py",
             (("        q = (1.0 - n * q) / h_safe\n", "        q = (1.0 - q) / h_safe\n"),),
             "UniPC's Taylor weights g_n / h without the n of n! phi_(n+1) (wrong only for steps h >= 1)",
             ("tests/test_few_step_solvers.py", "-k", "taylor_weights")),
    # likelihood and dequantisation
    Mutation("uniform_dequantisation_bin_width", "vdm/sampling/likelihood.py",
             (("nll = -log_p + d * math.log(vocab_size / 2)", "nll = -log_p + d * math.log(vocab_size)"),),
             "uniform dequantisation with bins of width 1/V instead of 2/V on [-1, 1]",
             ("tests/test_sde_and_likelihood.py", "-k", "uniform_dequantisation")),
    Mutation("variational_dequantisation_log_q_sign", "vdm/sampling/likelihood.py",
             (("- jnp.log(sigma_0) - 0.5 * math.log(2 * math.pi)", "+ jnp.log(sigma_0) - 0.5 * math.log(2 * math.pi)"),),
             "log q(z_0 | x) with +log sigma_0",
             ("tests/test_sde_and_likelihood.py", "-k", "variational_dequantisation")),
    Mutation("hutchinson_probe_once", "vdm/sampling/likelihood.py",
             (("return value, jnp.sum((probe * jv).reshape(z.shape[0], -1), -1)",
               "return value, jnp.sum(jv.reshape(z.shape[0], -1), -1)"),),
             "Hutchinson's estimate 1^T J v without the left probe",
             ("tests/test_sde_and_likelihood.py", "-k", "hutchinson")),
    Mutation("exact_divergence_first_column", "vdm/sampling/likelihood.py",
             (("return jax.jvp(f, (z,), (e,))[1].reshape(batch, d)[:, i]",
               "return jax.jvp(f, (z,), (e,))[1].reshape(batch, d)[:, 0]"),),
             "the exact divergence sums the first row of the Jacobian instead of its diagonal",
             ("tests/test_sde_and_likelihood.py", "-k", "exact_divergence or log_density")),
    # guidance
    Mutation("classifier_guidance_sign", "vdm/sampling/guidance.py",
             (("return eps_hat_fn(z, gamma) - scale * sigma * jax.grad(log_p_y)(z, gamma)",
               "return eps_hat_fn(z, gamma) + scale * sigma * jax.grad(log_p_y)(z, gamma)"),),
             "classifier guidance pushes away from the class",
             ("tests/test_sde_and_likelihood.py", "-k", "classifier_guidance")),
    Mutation("classifier_guidance_without_sigma", "vdm/sampling/guidance.py",
             (("return eps_hat_fn(z, gamma) - scale * sigma * jax.grad(log_p_y)(z, gamma)",
               "return eps_hat_fn(z, gamma) - scale * jax.grad(log_p_y)(z, gamma)"),),
             "classifier guidance adds the score of p(y | z) to eps without the factor sigma_t",
             ("tests/test_sde_and_likelihood.py", "-k", "classifier_guidance_with_the_exact")),
    Mutation("cfg_null_half_conditional", "vdm/sampling/guidance.py",
             (("jnp.concatenate([labels, jnp.full_like(labels, null_label)])", "jnp.concatenate([labels, labels])"),),
             "classifier-free guidance's unconditional half gets the labels instead of the null label",
             ("tests/test_guidance.py", "-k", "combines")),
    # metrics
    Mutation("fid_cross_term_once", "vdm/metrics/feature_distances.py",
             (("np.trace(cov_b) - 2.0 * tr_cross)", "np.trace(cov_b) - tr_cross)"),),
             "the Frechet distance with tr((S_a S_b)^(1/2)) subtracted once instead of twice",
             ("tests/test_feature_distances.py", "-k", "frechet")),
    Mutation("mmd_keeps_diagonal", "vdm/metrics/feature_distances.py",
             (("within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))", "within_x = kxx.sum() / (m * (m - 1))"),),
             "the unbiased MMD keeps the k(x_i, x_i) terms",
             ("tests/test_feature_distances.py", "-k", "mmd")),
    # evaluation and its standard errors
    Mutation("eval_stderr_over_n", "vdm/training/evaluation.py",
             (("np.std(v.mean(axis=0), ddof=1) / np.sqrt(len(split))", "np.std(v.mean(axis=0), ddof=1) / len(split)"),),
             "the standard error of the mean divided by N instead of sqrt(N)",
             ("tests/test_train.py", "-k", "per_example_loop")),
    Mutation("eval_mc_stderr_without_repeats", "vdm/training/evaluation.py",
             ((".sum() / num_repeats) / len(split))", ".sum()) / len(split))"),),
             "the Monte-Carlo error of an R-repeat mean not divided by R",
             ("tests/test_train.py", "-k", "per_example_loop")),
    # checkpoint / restore and the data pipeline's resume
    Mutation("restore_skips_the_compatibility_check", "vdm/training/checkpoint.py",
             (("        check_compatible(manager, step, abstract_state)\n    except CheckpointError:",
               "        pass\n    except CheckpointError:"),),
             "a checkpoint of another config restores into the wrong shapes with orbax's own error",
             ("tests/test_checkpoint.py", "-k", "incompatible")),
    Mutation("restore_forgets_the_data_position", "vdm/training/checkpoint.py",
             (('        args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)',
               '        pass'),),
             "a resumed run starts its data from the beginning (the parameters restored, the iterator not)",
             ("tests/test_checkpoint.py", "-k", "round_trip")),
    Mutation("iterator_set_state_ignored", "vdm/data/pipeline.py",
             (("        self.iterator.set_state(state)", "        self.iterator.get_state()"),),
             "the training iterator ignores a restored position",
             ("tests/test_data.py", "-k", "resumes")),
    Mutation("shuffle_ignores_seed", "vdm/data/pipeline.py",
             ((".seed(seed).shuffle()", ".seed(0).shuffle()"),),
             "every training.seed reads the data in the same order",
             ("tests/test_data.py", "-k", "shuffling")),
    Mutation("process_reads_every_batch", "vdm/data/pipeline.py",
             (("return ds.batch(local)[process_index::process_count]", "return ds.batch(local)[process_index:]"),),
             "each process reads every global batch's local part in turn instead of its own part",
             ("tests/test_data.py", "-k", "each_process")),
    # config validation
    Mutation("gamma_order_allows_equal", "vdm/config/validation.py",
             (('if not flat["schedule.gamma_min"] < flat["schedule.gamma_max"]:',
               'if not flat["schedule.gamma_min"] <= flat["schedule.gamma_max"]:'),),
             "gamma_min = gamma_max (a zero-width schedule) passes validation",
             ("tests/test_config_and_cli.py", "-k", "invalid_values")),
    Mutation("fraction_allows_one", "vdm/config/validation.py",
             (("if not 0 <= flat[key] < 1:", "if not 0 <= flat[key] <= 1:"),),
             "ema_decay = 1 (parameters never averaged in) or dropout = 1 passes validation",
             ("tests/test_config_and_cli.py", "-k", "invalid_values")),
    Mutation("positive_allows_zero", "vdm/config/validation.py",
             (("if not flat[key] > 0:", "if not flat[key] >= 0:"),),
             "a zero batch size or step count passes validation",
             ("tests/test_config_and_cli.py", "-k", "invalid_values")),
    Mutation("registry_names_unchecked", "vdm/config/validation.py",
             (("        if flat[key] not in names:\n", "        if False:\n"),),
             "a misspelt sampler, schedule or weighting name passes validation and fails later",
             ("tests/test_config_and_cli.py", "-k", "registry")),
    # schedules and weightings
    Mutation("monotone_net_weights_not_positive", "vdm/core/schedules.py",
             (('h1[..., None] * sp(interior["l2"]["w"])', 'h1[..., None] * interior["l2"]["w"]'),),
             "the learned schedule's middle layer loses its positivity constraint (gamma no longer monotone)",
             ("tests/test_schedules.py", "-k", "monotone_net_is")),
    Mutation("per_dimension_rate_averaged", "vdm/core/schedules.py",
             (("    return jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))",
               "    gamma, dgamma = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))\n"
               "    mean = jnp.mean(dgamma.reshape(dgamma.shape[0], -1), -1).reshape((-1,) + (1,) * (dgamma.ndim - 1))\n"
               "    return gamma, jnp.broadcast_to(mean, dgamma.shape)"),),
             "gamma' averaged over the dimensions of a per-dimension schedule (right for one gamma per example)",
             ("tests/test_per_dimension.py",)),
    Mutation("truncated_normal_tau_halved", "vdm/sampling/likelihood.py",
             (("tau = jnp.broadcast_to(alpha_0 / (vocab_size * sigma_0), x.shape)",
               "tau = jnp.broadcast_to(alpha_0 / (2 * vocab_size * sigma_0), x.shape)"),),
             "the truncated-normal dequantisation truncates to half of x's bin (a valid-looking but wrong bound)",
             ("tests/test_truncated_normal.py",)),
    Mutation("truncated_normal_normaliser_dropped", "vdm/sampling/likelihood.py",
             (("             - jnp.log(erf(tau / math.sqrt(2.0))))", "             - 0.0)"),),
             "the truncated normal's density without its normaliser erf(tau / sqrt 2)",
             ("tests/test_truncated_normal.py",)),
    Mutation("mulan_integral_cross_term", "vdm/core/per_dimension.py",
             (("a * b * t**4 / 2", "a * b * t**4 / 4"),),
             "MuLAN's integral of (a s^2 + b s + c)^2 with a wrong cross term (still monotone for most a, b, c)",
             ("tests/test_mulan.py",)),
    Mutation("topk_kl_first_draw_only", "vdm/nets/latent.py",
             (("    for j in range(order.shape[-1]):", "    for j in range(1):"),),
             "the top-k latent's KL as MuLAN's categorical KL(softmax(l) || U(d)) alone: not a bound for k > 1",
             ("tests/test_topk_latent.py",)),
    Mutation("topk_noise_normal", "vdm/nets/latent.py",
             (("        return jax.random.gumbel(key, shape)", "        return jax.random.normal(key, shape)"),),
             "the top-k latent drawn with normal instead of Gumbel noise (the draws no longer follow q's probabilities)",
             ("tests/test_topk_latent.py",)),
    Mutation("sigmoid_weighting_reversed", "vdm/core/weightings.py",
             (("w=lambda lam, bias: jax.nn.sigmoid(bias - lam)", "w=lambda lam, bias: jax.nn.sigmoid(lam - bias)"),),
             "the sigmoid weighting increasing in lambda (weights clean images most)",
             ("tests/test_weightings.py", "-k", "monotone_claims or documented_term")),
    # bookkeeping that decides what a run reports
    Mutation("pc_network_calls_miscounted", "vdm/sampling/__init__.py",
             (("{steps} steps ({nfe} network calls)\", lambda steps: 2 * steps - 1)",
               "{steps} steps ({nfe} network calls)\", lambda steps: 2 * steps)"),),
             "the predictor-corrector's NFE counts a corrector after the last step (sample-quality tables compare at NFE)",
             ("tests/test_sampler_evaluations.py",)),
    Mutation("rerun_ignores_the_seed", "vdm/training/workdirs.py",
             (('"training.max_seconds", "training.log_every",', '"training.max_seconds", "training.seed", "training.log_every",'),),
             "a workdir trained with another seed answers for this one",
             ("tests/test_rerun.py", "-k", "config_differences")),
    # faults a run meets on a cluster
    Mutation("checkpoint_checksums_not_checked", "vdm/training/checkpoint.py",
             (("        if name in recorded and recorded[name] != crc:", "        if False:"),),
             "garbled checkpoint bytes that orbax reads without error restore as silently wrong parameters",
             ("tests/test_faults.py", "-k", "recorded_crc")),
    Mutation("metrics_any_bad_last_line_is_torn", "vdm/training/outputs.py",
             (("if number == len(lines) and _is_torn_row(line, max(map(len, lines[:-1]), default=0)):",
               "if number == len(lines):"),),
             "a garbled metrics.jsonl tail is taken for a torn line and dropped (the log loses rows)",
             ("tests/test_faults.py", "-k", "metrics")),
    Mutation("results_json_read_unguarded", "vdm/training/workdirs.py",
             (('    return outputs.read_json(path, f"it is rebuilt from the checkpoint',
               '    return __import__("json").load(open(path)) or outputs.read_json(path, f"it is rebuilt from the checkpoint'),),
             "a cut-short results.json ends in json's traceback",
             ("tests/test_faults.py", "-k", "results")),
)


def missing_texts(mutation: Mutation, root: str = ROOT) -> list[str]:
    """The entry's texts that do not occur exactly once in its file (the table no longer follows the code)."""
    with open(os.path.join(root, mutation.path)) as f:
        source = f.read()
    return [text for text, _ in mutation.edits if source.count(text) != 1]


def _copy_tree(root: str, copy: str) -> None:
    for name in COPIED:
        src = os.path.join(root, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(copy, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, os.path.join(copy, name))


def run_all(mutations, root: str = ROOT):
    """Yields (mutation, 'caught' | 'NOT caught' | 'text gone' | 'control failed' | 'error <code>', seconds).

    One temporary copy of the repository serves every entry: each entry's edits are written into it, its tests
    run, and the file is put back. A test selection's control run (on the unchanged copy) happens once.
    No bytecode is written, so a put-back file is never shadowed by the mutant's cached bytecode.
    """
    with tempfile.TemporaryDirectory(prefix="vdm_mutation_") as copy:
        _copy_tree(root, copy)
        env = {**os.environ, "PYTHONPATH": copy, "PYTHONDONTWRITEBYTECODE": "1"}
        controls = {}

        def tests(selection):
            return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *selection],
                                  cwd=copy, env=env, capture_output=True, text=True).returncode

        for mutation in mutations:
            start = time.time()
            if missing_texts(mutation, root):
                yield mutation, "text gone", 0.0
                continue
            if mutation.tests not in controls:
                controls[mutation.tests] = tests(mutation.tests) == 0
            if not controls[mutation.tests]:
                yield mutation, "control failed", time.time() - start
                continue
            target = os.path.join(copy, mutation.path)
            with open(target) as f:
                original = f.read()
            source = original
            for text, replacement in mutation.edits:
                source = source.replace(text, replacement)
            try:
                with open(target, "w") as f:
                    f.write(source)
                code = tests(mutation.tests)
            finally:
                with open(target, "w") as f:
                    f.write(original)
            yield mutation, {0: "NOT caught", 1: "caught"}.get(code, f"error {code}"), time.time() - start


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
    for m, verdict, seconds in run_all(chosen):
        print(f"{verdict:10s} {seconds:6.1f} s  {m.name}: {m.stands_for}", flush=True)
        if verdict != "caught":
            failures.append(m.name)
    print(f"{len(chosen) - len(failures)} of {len(chosen)} caught in {time.time() - start:.0f} s"
          + (f"; not caught or broken: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
