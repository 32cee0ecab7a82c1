"""Schedule invariance and loss variance (paper Sec. 5.3 / appendix): one trained model, five schedules.

Run (2 cores, ~5 min after reproduce_steps.py has trained its models):
  python -m experiments.reproduce_schedules [--workdir=runs/repro/steps/num_steps=0,seed=0]

For a model trained in continuous time, the expected diffusion loss L_inf
depends on the schedule only through its endpoints gamma_0, gamma_1 (paper
Eq. 16). Keeping the trained endpoints, this evaluates L_inf under
log-SNR-linear, beta-linear, alpha-cosine and two monotone-net schedules
trained here with the network frozen: one on the ELBO alone (the interior's
expected gradient is zero, so it only drifts), one on the variance of the loss
(`vdm.core.losses.variance_minimizing_value_and_grad`). Each schedule's test
bits/dim is estimated with its own t-sampling (the evaluation estimator with
eval.time_density = schedule: stratified t per example) and compared with the
reference that samples log-SNR uniformly between the same endpoints (the
default estimator, the same number for every schedule): equal within
Monte-Carlo error if the invariance holds. The variance columns are of the
*training loss* (one independent t per example, R times): what the schedule
changes.
Writes results/schedules.md, .json and .png.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import repro_common as rc  # noqa: E402
from vdm.core import schedules  # noqa: E402
from vdm.data import pipeline as data
from vdm.training import workdirs  # noqa: E402
from vdm.training.evaluation import evaluate  # noqa: E402
from vdm.training.steps import make_eval_step  # noqa: E402

FIXED = {"log-SNR linear": schedules.FixedLinear, "β-linear": schedules.BetaLinear,
         "α-cosine": schedules.AlphaCosine}
PAPER_VARIANCE = {"learned (variance)": 0.53, "log-SNR linear": 6.35, "β-linear": 31.6, "α-cosine": 31.1}


def train_interior(model, net_params, schedule, objective, train, steps, batch_size, seed, lr):
    """Trains only the monotone net's interior (network and endpoints frozen); returns its schedule params."""
    sched_params = schedule.init(jax.random.key(seed))
    vmodel = dataclasses.replace(model, schedule=schedule, interior_objective=objective)
    tx = optax.adam(lr)
    opt_state = tx.init(sched_params["interior"])

    @jax.jit
    def step(sched_params, opt_state, images, key):
        params = {"net": net_params, "schedule": sched_params}
        _, grads = vmodel.loss_and_grads(params, {"images": images}, key)  # ELBO, or variance for the interior
        updates, opt_state = tx.update(grads["schedule"]["interior"], opt_state)
        return {**sched_params, "interior": optax.apply_updates(sched_params["interior"], updates)}, opt_state

    rng = np.random.default_rng(seed)
    for i in range(steps):
        idx = rng.choice(len(train), batch_size, replace=False)
        sched_params, opt_state = step(sched_params, opt_state, train.images[idx], jax.random.key(1000 * seed + i))
    return sched_params


def main():
    def extra(p):
        p.add_argument("--workdir", default=f"{rc.ROOT}/runs/repro/steps/num_steps=0,seed=0")
        p.add_argument("--repeats", type=int, default=64)
        p.add_argument("--schedule_steps", type=int, default=1000)
        p.add_argument("--schedule_lr", type=float, default=3e-2)

    args, _, _, _ = rc.parse_args("schedules", __doc__, "steps", extra)
    config, model, params = workdirs.load_run(args.workdir)
    g0, g1 = (float(v) for v in model.gamma_fn(params)(jnp.array([0.0, 1.0])))
    dataset = data.load_dataset(config.data.name, config.data.data_dir or None)
    print(f"model {args.workdir}: gamma_0={g0:.4f} gamma_1={g1:.4f}", flush=True)

    candidates = {name: (cls(gamma_min=g0, gamma_max=g1), {}) for name, cls in FIXED.items()}
    for objective in ("elbo", "variance"):
        sched = schedules.MonotoneNet(gamma_min=g0, gamma_max=g1, width=1024)
        sp = train_interior(model, params["net"], sched, objective, dataset.train, args.schedule_steps,
                            config.training.batch_size, seed=1, lr=args.schedule_lr)
        candidates[f"learned ({objective})"] = (sched, sp)
        print(f"trained the monotone net's interior on the {objective}", flush=True)

    def test_bpd(m, p, estimator):
        res = evaluate(make_eval_step(m, estimator=estimator), p, dataset.test, config.eval.batch_size,
                       jax.random.key(0), estimator.repeats)
        return res["bpd"], res.get("bpd_mc_stderr", float("nan"))

    reference_estimator = dataclasses.replace(rc.estimator_of(config, args.eval_repeats), density="log_snr_uniform")
    own_t = dataclasses.replace(reference_estimator, density="schedule")
    reference = test_bpd(model, params, reference_estimator)
    print(f"reference ({reference_estimator.describe()}): {rc.fmt(*reference)}", flush=True)
    results, curves = {}, {}
    t_grid = jnp.linspace(0.0, 1.0, 201)
    for name, (sched, sp) in candidates.items():
        m = dataclasses.replace(model, schedule=sched)
        p = {"net": params["net"], "schedule": sp}
        results[name] = rc.loss_variance(m, p, dataset.test, args.repeats)
        results[name]["eval_bpd"], results[name]["eval_bpd_mc_stderr"] = test_bpd(m, p, own_t)
        curves[name] = np.asarray(sched(sp, t_grid))
        print(f"{name}: {results[name]}", flush=True)

    lines = [
        "# Schedule invariance and the variance of the loss (paper Sec. 5.3 and appendix)",
        "",
        "Command: `python -m experiments.reproduce_schedules` (after `python -m experiments.reproduce_steps`)",
        "",
        f"One model (`{args.workdir.split('runs/')[-1]}`, trained in continuous time, learned endpoints "
        f"γ_0 = {g0:.3f}, γ_1 = {g1:.3f}), on the {len(dataset.test)} test digits. Every schedule has the "
        f"trained endpoints; the two monotone nets were trained here for {args.schedule_steps} Adam steps "
        f"(lr {args.schedule_lr}) with the network frozen.",
        "",
        f"Test bpd under each schedule's own t-sampling: {own_t.describe()}; ± its Monte-Carlo standard error "
        f"(the test digits held fixed). Reference, the same for every schedule since it depends only on the "
        f"endpoints: {reference_estimator.describe()}, {rc.fmt(*reference)}. The same per-example keys everywhere.",
        "",
        f"Training-loss variance (a different quantity: one t ~ U[0, 1) per example, as in training, "
        f"{args.repeats} independent (t, ε) per test digit): of the per-example diffusion loss in (bits/dim)²; "
        "'given x' averages Var over (t, ε) for each test image (the part a schedule can change), 'total' also "
        "includes the spread between images.",
        "",
        "| schedule | test bpd, its own t | Δ vs reference (errors in quadrature) | diffusion term | training-loss variance given x "
        "| training-loss variance total | paper variance (CIFAR-10) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        delta, delta_se = r["eval_bpd"] - reference[0], np.hypot(r["eval_bpd_mc_stderr"], reference[1])
        paper = PAPER_VARIANCE.get(name, "—")
        lines.append(f"| {name} | {rc.fmt(r['eval_bpd'], r['eval_bpd_mc_stderr'])} | {delta:+.4f} ± {delta_se:.4f} | "
                     f"{r['bpd_diffusion']:.4f} | {r['variance_within']:.4f} | {r['variance_total']:.4f} | {paper} |")
    order = sorted(results, key=lambda n: results[n]["variance_within"])
    lines += ["", f"Ordering by variance given x (lowest first): {' < '.join(order)}.",
              "Paper ordering: learned (variance) ≪ log-SNR linear ≪ β-linear ≈ α-cosine.", ""]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(results)
    ax1.bar(range(len(names)), [results[n]["variance_within"] for n in names], color="tab:blue")
    ax1.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax1.set_yscale("log")
    ax1.set_ylabel("Var of diffusion loss given x (bpd²)")
    for n in names:
        ax2.plot(np.asarray(t_grid), curves[n], label=n)
    ax2.set_xlabel("t")
    ax2.set_ylabel("γ(t) = −log SNR")
    ax2.legend(fontsize=7)
    rc.write_outputs(args, "schedules", "\n".join(lines), {"model": args.workdir, "gamma_0": g0, "gamma_1": g1,
                                                           "reference_bpd": reference,
                                                           "reference_estimator": reference_estimator.describe(),
                                                           "own_t_estimator": own_t.describe(),
                                                           "schedules": results}, fig)


if __name__ == "__main__":
    main()
