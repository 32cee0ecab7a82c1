"""Variance-minimising vs ELBO-only learned schedule during training (paper appendix).

Run (2 cores, ~13 min; finished points are skipped):
  python -m experiments.reproduce_variance_training
  python -m experiments.reproduce_variance_training --size=paper [--slurm=var.sbatch]

Trains configs/repro.py:schedule (monotone-net schedule, continuous-time ELBO)
with the schedule's interior on the ELBO or on the loss variance
(schedule.interior_objective), 2 seeds each, the same wall-clock budget.
Reports the per-batch variance of the ELBO estimate over training (logged as
`bpd_variance`), the variance of the per-example diffusion loss given x on the
test set at the end, and test bits/dim. Writes results/variance_training.md,
.json and .png.
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import sweep  # noqa: E402
from experiments import repro_common as rc  # noqa: E402
from vdm.data import pipeline as data
from vdm.training import workdirs


def train_curve(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rows = [r for r in rows if r.get("split") == "train" and "bpd_variance" in r]
    return np.array([r["step"] for r in rows]), np.array([r["bpd_variance"] for r in rows])


def main():
    args, config_arg, points, root = rc.parse_args(
        "variance_training", __doc__, "schedule", lambda p: p.add_argument("--repeats", type=int, default=32))
    rows = rc.reevaluate(rc.run_sweep(config_arg, points, root, args.parallel), points, root, args.eval_repeats)
    key = "schedule.interior_objective"
    stats = rc.by_setting(rows, key)
    per_point, curves, gammas = {}, {}, {}
    t_grid = jnp.linspace(0.0, 1.0, 201)
    for point in points:
        name = sweep.point_name(point)
        workdir = os.path.join(root, name)
        config, model, params = workdirs.load_run(workdir)
        test = data.load_dataset(config.data.name, config.data.data_dir or None).test
        steps, var = train_curve(workdir)
        late = var[steps >= 0.75 * steps.max()]
        per_point[name] = {**rc.loss_variance(model, params, test, args.repeats),
                           "batch_variance_last_quarter": float(late.mean()), "steps": int(steps.max())}
        curves[name] = (steps, var)
        gammas[name] = np.asarray(model.gamma_fn(params)(t_grid))
        print(name, per_point[name], flush=True)

    lines = [
        "# Variance-minimising vs ELBO-only learned schedule, during training (paper appendix)",
        "",
        f"Command: `python -m experiments.reproduce_variance_training{'' if args.size == 'small' else ' --size=paper'}`",
        "",
        f"Config `{config_arg}`: monotone-net schedule (width 1024), continuous-time ELBO, the schedule's interior "
        "trained on the ELBO or on the variance of the per-example diffusion loss; the network and the endpoints "
        "train on the ELBO in both. Same wall-clock budget per run (`training.max_seconds`; runs of one objective "
        "train two at a time). " + rc.eval_note(rows) + " 'Batch variance' is "
        "the per-batch variance of the per-example ELBO estimate during training (bits/dim)², mean over the last "
        f"quarter of training; 'variance given x' is measured on the test set at the end ({args.repeats} draws of "
        "(t, ε) per image, EMA parameters).",
        "",
        "| interior trained on | seed | steps | batch variance (last quarter) | variance given x (test) | test bpd |",
        "|---|---|---|---|---|---|",
    ]
    for point, row in zip(points, rows):
        r = per_point[sweep.point_name(point)]
        lines.append(f"| {point[key]} | {point['training.seed']} | {r['steps']} | "
                     f"{r['batch_variance_last_quarter']:.4f} | {r['variance_within']:.4f} | {row['test_bpd']:.4f} |")
    lines += ["", "| interior trained on | test bpd, mean ± s.e. over seeds | variance given x, mean |", "|---|---|---|"]
    for value, (m, s, _, _) in stats.items():
        names = [sweep.point_name(p) for p in points if p[key] == value]
        lines.append(f"| {value} | {rc.fmt(m, s)} | {np.mean([per_point[n]['variance_within'] for n in names]):.4f} |")
    lines += rc.difference_table(rows, key, ["elbo", "variance"], stats) + [""]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = {"elbo": "tab:orange", "variance": "tab:blue"}
    for point in points:
        name = sweep.point_name(point)
        steps, var = curves[name]
        smooth = np.convolve(var, np.ones(5) / 5, mode="valid")
        ax1.plot(steps[4:], smooth, color=colors[point[key]], alpha=0.8,
                 label=f"{point[key]} (seed {point['training.seed']})")
        ax2.plot(np.asarray(t_grid), gammas[name], color=colors[point[key]], alpha=0.8)
    ax1.set_yscale("log")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("batch variance of ELBO estimate (bpd²)")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("t")
    ax2.set_ylabel("learned γ(t)")
    rc.write_outputs(args, "variance_training", "\n".join(lines), {"points": per_point, "rows": rows}, fig)


if __name__ == "__main__":
    main()
