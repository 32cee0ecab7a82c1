"""What every experiments/reproduce_*.py shares: sizes, running its sweep, seed statistics, outputs.

The scripts run from the repository root as `python -m experiments.reproduce_<name>`.

--size=small runs configs/repro.py:<variant> here (2 cores); --size=paper runs
the same sweep points on configs/cifar10.py (accelerators and the prepared
CIFAR-10 data needed), or writes them as a SLURM array job with --slurm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
PAPER_CONFIG = "configs/cifar10.py"


def parse_args(name: str, doc: str, variant: str, extra=None, paper_config: str = PAPER_CONFIG):
    """Common flags; returns (args, config_arg, points, root). paper_config: what --size=paper trains."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", choices=("small", "paper"), default="small")
    parser.add_argument("--root", help="sweep workdirs (default runs/repro[_paper]/<name>)")
    parser.add_argument("--parallel", type=int, default=2, help="sweep points trained at the same time")
    parser.add_argument("--slurm", help="paper size: write a SLURM array job here and stop")
    parser.add_argument("--results", default=RESULTS, help="where <name>.md / .png / .json go")
    parser.add_argument("--eval_repeats", type=int, default=0,
                        help="repeats of the evaluation estimator when re-evaluating (0: the config's eval.num_repeats)")
    if extra:
        extra(parser)
    args = parser.parse_args()
    points = sweep.load_sweep(f"configs/repro.py:{variant}")
    config_arg = f"configs/repro.py:{variant}" if args.size == "small" else paper_config
    root = args.root or os.path.join(ROOT, "runs", "repro" if args.size == "small" else "repro_paper", name)
    if args.slurm:
        sweep.slurm_script(config_arg, points, root, args.slurm)
        print(f"wrote {args.slurm}; after `sbatch {args.slurm}` finishes, run this script again to write the results")
        sys.exit(0)
    return args, config_arg, points, root


def run_sweep(config_arg, points, root, parallel):
    """Runs the unfinished points; exits with a message if any failed."""
    start = time.time()
    codes = sweep.run_points(config_arg, points, root, parallel)
    failed = [n for n, c in codes.items() if c != 0]
    if failed:
        sys.exit(f"points failed: {failed}; see {root}/<point>/sweep.log, then run again (finished points are kept)")
    print(f"sweep finished in {time.time() - start:.0f} s", flush=True)
    return sweep.collect(root, points, fields=("test_bpd", "test_bpd_stderr", "step", "train_seconds", "gamma_0",
                                                "gamma_1"))


def estimator_of(config, repeats: int = 0):
    """The config's evaluation estimator (`vdm.core.elbo_estimator.ElboEstimator`), with `repeats` if > 0."""
    import dataclasses

    from vdm.core.elbo_estimator import ElboEstimator

    estimator = ElboEstimator.from_config(config.eval)
    return dataclasses.replace(estimator, repeats=repeats) if repeats else estimator


def reevaluate(rows, points, root, repeats: int = 0):
    """Test bpd of every point's EMA parameters again with the evaluation estimator, the same key for all points.

    The same key gives every model the same per-example noise and times (common random numbers), so
    differences between settings are measured more precisely than the absolute values. Updates rows in
    place (test_bpd, test_bpd_stderr, test_bpd_mc_stderr, estimator); repeats: 0 = the config's.
    """
    import jax

    from vdm.data import pipeline as data
    from vdm.training import workdirs
    from vdm.training.evaluation import evaluate
    from vdm.training.steps import make_eval_step

    splits = {}
    for row, point in zip(rows, points):
        config, model, params = workdirs.load_run(os.path.join(root, sweep.point_name(point)))
        name = config.data.name
        if name not in splits:
            splits[name] = data.load_dataset(name, config.data.data_dir or None).test
        estimator = estimator_of(config, repeats)
        res = evaluate(make_eval_step(model, estimator=estimator), params, splits[name], config.eval.batch_size,
                       jax.random.key(0), estimator.repeats)
        row["test_bpd"], row["test_bpd_stderr"] = res["bpd"], res["bpd_stderr"]
        row["test_bpd_mc_stderr"] = res.get("bpd_mc_stderr")
        row["estimator"] = estimator.describe(model.num_steps)
        print(f"re-evaluated {sweep.point_name(point)}: {fmt(res['bpd'], res['bpd_stderr'])}", flush=True)
    return rows


def paired(rows, key, a, b, seed_key="training.seed"):
    """Mean and standard error over seeds of bpd(key = b) - bpd(key = a), pairing runs that share a seed."""
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r[seed_key], {})[r[key]] = r["test_bpd"]
    diffs = [d[b] - d[a] for d in by_seed.values() if a in d and b in d]
    return sweep.mean_and_stderr(diffs)


def paired_verdict(mean, se) -> str:
    """'resolved' if |mean difference| > 2 standard errors, else 'unresolved'."""
    return "resolved" if abs(mean) > 2 * se else "unresolved"


def by_setting(rows, key):
    """{value of key: (mean test bpd over seeds, standard error over seeds, [per-seed bpd], mean steps)}."""
    groups = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    out = {}
    for value, group in groups.items():
        bpd = [r["test_bpd"] for r in group]
        mean, se = sweep.mean_and_stderr(bpd)
        out[value] = (mean, se, bpd, sum(r["step"] for r in group) / len(group))
    return out


def resolved(a, b) -> str:
    """'resolved' if the intervals mean ± s.e. do not overlap, else 'unresolved'."""
    (ma, sa), (mb, sb) = a, b
    return "resolved" if abs(ma - mb) > sa + sb else "unresolved"


def eval_note(rows) -> str:
    """What the tables' test bits/dim are: the distinct estimators of `rows` (see `reevaluate`)."""
    estimators = "; ".join(dict.fromkeys(r["estimator"] for r in rows))
    return (f"Test bits/dim of the EMA parameters ({estimators}), the same per-example keys for every run (common "
            "random numbers).")


def difference_table(rows, key, values, stats, label=str) -> list[str]:
    """Markdown rows: each pair's difference, unpaired (intervals mean ± s.e. overlap?) and paired by seed."""
    lines = ["", "| comparison | difference | unpaired verdict (intervals mean ± s.e.) | paired by seed, mean ± s.e. "
             "| paired verdict (> 2 s.e.) |", "|---|---|---|---|---|"]
    for i, a in enumerate(values):
        for b in values[i + 1:]:
            m, s = paired(rows, key, a, b)
            lines.append(f"| {label(b)} − {label(a)} | {stats[b][0] - stats[a][0]:+.4f} | "
                         f"{resolved(stats[a][:2], stats[b][:2])} "
                         f"| {m:+.4f} ± {s:.4f} | {paired_verdict(m, s)} |")
    return lines


def write_outputs(args, name: str, markdown: str, data: dict, figure=None):
    """results/<name>.md, <name>.json and (a matplotlib figure) <name>.png."""
    os.makedirs(args.results, exist_ok=True)
    base = os.path.join(args.results, name if args.size == "small" else f"{name}_paper")
    with open(base + ".md", "w") as f:
        f.write(markdown)
    with open(base + ".json", "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    if figure is not None:
        figure.savefig(base + ".png", dpi=120, bbox_inches="tight")
    print(markdown)
    print(f"wrote {base}.md, .json" + (", .png" if figure is not None else ""))


def fmt(mean, se) -> str:
    return f"{mean:.4f} ± {se:.4f}"


def loss_variance(model, params, split, repeats: int, seed: int = 0) -> dict:
    """ELBO of a split with independent t ~ U[0, 1) per example and repeat, and the variance of its estimate.

    Returns bpd (mean total), bpd_diffusion, mc_stderr (Monte-Carlo standard error
    of bpd: sqrt(mean_x Var[L | x] / (N R))), variance_within (mean over examples
    of Var over (t, eps) of the per-example diffusion loss, bits/dim squared) and
    variance_total (its variance over examples and (t, eps) together).
    """
    import jax
    import numpy as np

    from vdm.core import losses

    @jax.jit
    def one(images, key):
        k_t, k = jax.random.split(key)
        t = jax.random.uniform(k_t, (images.shape[0],))
        noise = losses.elbo_noise(jax.random.split(k, 3)[0], images.shape, t=t)  # the draws of before, at t
        terms = model.elbo_terms(params, {"images": images}, k, noise=noise)
        return terms["bpd_diffusion"], terms["bpd"]

    out = [one(split.images, jax.random.key(seed * 7919 + r)) for r in range(repeats)]
    diff = np.stack([np.asarray(d) for d, _ in out])  # [R, N]
    total = np.stack([np.asarray(b) for _, b in out])
    return {
        "bpd": float(total.mean()),
        "bpd_diffusion": float(diff.mean()),
        "mc_stderr": float(np.sqrt(np.mean(np.var(total, axis=0, ddof=1)) / total.size)),
        "variance_within": float(np.mean(np.var(diff, axis=0, ddof=1))),
        "variance_total": float(np.var(diff, ddof=1)),
    }


def compare_settings(args, name: str, title: str, command: str, config_arg: str, points, root: str, key: str,
                     description: str, paper: str) -> dict:
    """Trains every point, then writes results/<name>.md/.json/.png: test bpd per value of `key` over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = reevaluate(run_sweep(config_arg, points, root, args.parallel), points, root, args.eval_repeats)
    stats = by_setting(rows, key)
    values = list(stats)
    lines = [f"# {title}", "", f"Command: `{command}{'' if args.size == 'small' else ' --size=paper'}`", "",
             f"Config `{config_arg}`. {description} {eval_note(rows)} Mean ± standard "
             f"error over {len(rows) // len(stats)} seeds.", "",
             f"| {key} | test bpd | per seed | steps |", "|---|---|---|---|"]
    for v in values:
        m, s, per_seed, steps = stats[v]
        lines.append(f"| {v} | {fmt(m, s)} | {', '.join(f'{b:.4f}' for b in per_seed)} | {int(steps)} |")
    lines += difference_table(rows, key, values, stats)
    lines += ["", paper, ""]
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    xs = range(len(values))
    ax.errorbar(xs, [stats[v][0] for v in values], yerr=[stats[v][1] for v in values], fmt="o", capsize=5)
    for x, v in zip(xs, values):
        ax.scatter([x] * len(stats[v][2]), stats[v][2], s=10, color="grey", zorder=3)
    ax.set_xticks(list(xs), [str(v) for v in values])
    ax.set_xlabel(key)
    ax.set_ylabel("test bits/dim")
    ax.set_title(title.split(":")[0], fontsize=9)
    summary = {str(v): {"mean": stats[v][0], "stderr": stats[v][1], "per_seed": stats[v][2]} for v in values}
    write_outputs(args, name, "\n".join(lines), {"settings": summary, "rows": rows}, fig)
    return stats
