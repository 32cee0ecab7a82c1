"""Number of diffusion steps: models trained with T = 10, 100, 1000 and continuous time (paper Sec. 5, Fig. 4).

Run (2 cores, ~20 min; points already trained are skipped):
  python -m experiments.reproduce_steps
  python -m experiments.reproduce_steps --size=paper [--slurm=steps.sbatch]   # CIFAR-10, accelerators

1. Trains configs/repro.py:steps for every T and 3 seeds on equal step budgets;
   reports test bits/dim, mean ± standard error over seeds, and whether each
   difference is resolved (mean ± s.e. intervals do not overlap).
2. Evaluates one trained continuous-time model's L_T for T = 10 ... inf with the
   same noise and times for every T (common random numbers).
Writes results/steps.md, .json and .png.
"""

from __future__ import annotations

import dataclasses

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import sweep  # noqa: E402
from experiments import repro_common as rc  # noqa: E402
from vdm.data import pipeline as data
from vdm.training import workdirs
from vdm.training.evaluation import evaluate  # noqa: E402
from vdm.training.steps import make_eval_step  # noqa: E402

EVAL_T = (10, 20, 50, 100, 200, 500, 1000, 0)


def label(T) -> str:
    return "∞" if T == 0 else str(T)


def evaluate_L_T(workdir, repeats: int):
    config, model, params = workdirs.load_run(workdir)
    test = data.load_dataset(config.data.name, config.data.data_dir or None).test
    estimator = rc.estimator_of(config, repeats)
    out = {}
    for T in EVAL_T:
        step = make_eval_step(dataclasses.replace(model, num_steps=T), estimator=estimator)
        res = evaluate(step, params, test, config.eval.batch_size, jax.random.key(0), estimator.repeats)
        out[T] = (res["bpd"], res["bpd_stderr"], res["bpd_diffusion"])
        print(f"L_T of the continuous model, T={label(T)}: {rc.fmt(*out[T][:2])}", flush=True)
    return out


def main():
    args, config_arg, points, root = rc.parse_args(
        "steps", __doc__, "steps", lambda p: p.add_argument("--lt_repeats", type=int, default=0))
    rows = rc.reevaluate(rc.run_sweep(config_arg, points, root, args.parallel), points, root, args.eval_repeats)
    stats = rc.by_setting(rows, "loss.num_steps")
    order = [T for T in (10, 100, 1000, 0) if T in stats]
    lines = [
        "# Number of diffusion steps T (paper Sec. 5: more steps, better likelihood; continuous time best)",
        "",
        f"Command: `python -m experiments.reproduce_steps{'' if args.size == 'small' else ' --size=paper'}`",
        "",
        f"Config `{config_arg}`, {len(rows) // len(stats)} seeds per T, equal step budgets "
        f"({int(stats[order[0]][3])} steps). {rc.eval_note(rows)} Mean ± standard "
        "error over seeds; the seed also fixes initialisation and data order, shared across T.",
        "",
        "| trained with T | test bpd | per seed |",
        "|---|---|---|",
    ]
    for T in order:
        m, s, per_seed, _ = stats[T]
        lines.append(f"| {label(T)} | {rc.fmt(m, s)} | {', '.join(f'{b:.4f}' for b in per_seed)} |")
    lines += rc.difference_table(rows, "loss.num_steps", order, stats, label=lambda T: f"T={label(T)}")

    continuous = [p for p in points if p["loss.num_steps"] == 0][0]
    workdir = f"{root}/{sweep.point_name(continuous)}"
    L_T = evaluate_L_T(workdir, args.lt_repeats)
    lines += [
        "",
        f"L_T of one model trained in continuous time (`{sweep.point_name(continuous)}`), evaluated with T steps; "
        "the evaluation estimator with T steps (every step once where T <= eval.points_per_example, else that many "
        "stratified steps per example), the same per-example keys for every T "
        "(so the differences between rows are much more precise than the ± on each):",
        "",
        "| evaluated with T | test bpd (ELBO) | diffusion term |",
        "|---|---|---|",
        *(f"| {label(T)} | {rc.fmt(*L_T[T][:2])} | {L_T[T][2]:.4f} |" for T in EVAL_T),
        "",
        "Paper (CIFAR-10, Fig. 4 / Table 2): test bpd improves with T; the continuous-time model is best, and a "
        "continuous model evaluated with T steps approaches L_inf from above as T grows.",
    ]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = list(range(len(order)))
    ax1.errorbar(xs, [stats[T][0] for T in order], yerr=[stats[T][1] for T in order], fmt="o-", capsize=4)
    for x, T in zip(xs, order):
        ax1.scatter([x] * len(stats[T][2]), stats[T][2], s=10, color="grey", zorder=3)
    ax1.set_xticks(xs, [label(T) for T in order])
    ax1.set_xlabel("T used in training")
    ax1.set_ylabel("test bits/dim")
    ax1.set_title("trained with T steps (mean ± s.e., seeds)")
    finite = [T for T in EVAL_T if T]
    ax2.errorbar(finite, [L_T[T][0] for T in finite], yerr=[L_T[T][1] for T in finite], fmt="o-", capsize=3,
                 label="L_T")
    ax2.axhline(L_T[0][0], color="k", ls="--", label="L_∞")
    ax2.set_xscale("log")
    ax2.set_xlabel("T used in evaluation")
    ax2.set_title("one continuous-time model")
    ax2.legend()
    data_out = {
        "trained": {label(T): {"mean": stats[T][0], "stderr": stats[T][1], "per_seed": stats[T][2]} for T in order},
        "continuous_model_L_T": {label(T): {"bpd": v[0], "stderr": v[1], "diffusion": v[2]} for T, v in L_T.items()},
        "rows": rows,
    }
    rc.write_outputs(args, "steps", "\n".join(lines) + "\n", data_out, fig)


if __name__ == "__main__":
    main()
