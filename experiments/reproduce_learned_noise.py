"""Learned multivariate noise (MuLAN, Sahoo et al. 2024) against scalar VDM schedules, same network and steps.

Run (2 cores, ~75 min; finished points are skipped):
  python -m experiments.reproduce_learned_noise
  python -m experiments.reproduce_learned_noise --size=paper [--slurm=learned_noise.sbatch]   # CIFAR-10

Trains configs/repro.py:learned_noise (digits) and :learned_noise_patches
(16x16x3 photo patches, V = 256) with five schedules, 3 seeds each:
scalar log-SNR-linear with learned endpoints, scalar log-SNR-linear fixed at
[gamma_min, gamma_max] (the control: the endpoints the per-pixel schedules
keep), the scalar variance-minimising
monotone net, MuLAN's per-pixel polynomial schedule shared by every image (no
latent), and MuLAN with its top-k latent (each image its own per-pixel
schedule). Every run is re-evaluated with the same per-example keys; the
differences to the scalar schedule are paired by seed. The best model of each
data set is also evaluated through the probability-flow ODE under the three
dequantisations (`--mode=likelihood`). Pictures: gamma(t) of a few pixels of
two test images under MuLAN, and the per-pixel log-SNR at t = 1/2.
Writes results/learned_noise.md, .json and .png.
"""

from __future__ import annotations

import os

from experiments import repro_common as rc
from experiments import sweep

LABELS = {  # (schedule.name, schedule.latent) -> the table's name
    ("learned_linear", "none"): "scalar, learned endpoints",
    ("fixed_linear", "none"): "scalar, fixed endpoints (control)",
    ("monotone_net", "none"): "scalar, variance-minimising",
    ("mulan", "none"): "per-pixel, no latent",
    ("mulan", "topk"): "MuLAN (per-pixel, top-k latent)",
}
DATASETS = {"learned_noise": "digits (8×8, V = 17)", "learned_noise_patches": "photo patches (16×16×3, V = 256)"}
PAPER_CONFIG = "configs/cifar10.py:mulan"


def label(row) -> str:
    return LABELS[(row["schedule.name"], row["schedule.latent"])]


def extra_flags(parser):
    parser.add_argument("--ode_examples", type=int, default=128,
                        help="test examples of the ODE likelihood of the best digits model (0: all; ~10 min on 2 cores)")
    parser.add_argument("--ode_examples_patches", type=int, default=32,
                        help="the same for the best photo-patch model (0: all; 12x the dimensions)")


def train_and_evaluate(args, variant, config_arg, root):
    points = sweep.load_sweep(f"configs/repro.py:{variant}")
    rows = rc.reevaluate(rc.run_sweep(config_arg, points, root, args.parallel), points, root, args.eval_repeats)
    for row, point in zip(rows, points):
        row["variant"], row["workdir"] = label(row), os.path.join(root, sweep.point_name(point))
        result = sweep.collect(root, [point], fields=("test_bpd_latent",))[0]
        row["test_bpd_latent"] = result["test_bpd_latent"]
    return rows


def ode_likelihood(rows, stats, max_examples):
    """--mode=likelihood of the best variant's seed-0 run: the ELBO and the ODE under the three dequantisations
    (its likelihood.json if one over as many examples is there)."""
    import json

    from vdm.training import workdirs
    from vdm.training.evaluation import likelihood_run

    best = min(stats, key=lambda v: stats[v][0])
    row = next(r for r in rows if r["variant"] == best and r["training.seed"] == 0)
    path = os.path.join(row["workdir"], "likelihood.json")
    out = json.load(open(path)) if os.path.exists(path) else None
    if out is None or out["num_examples"] != (max_examples or out["num_examples"]):
        out = likelihood_run(workdirs.load_config(row["workdir"]), row["workdir"], max_examples=max_examples)
    return {"variant": best, "workdir": os.path.relpath(row["workdir"], rc.ROOT), **out}


def schedule_pictures(axes, rows, title):
    """gamma(t) of four pixels of two test images under MuLAN (seed 0), and log-SNR maps at t = 1/2."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from vdm.data import pipeline as data
    from vdm.training import workdirs

    def run_of(variant):
        return next(r for r in rows if r["variant"] == variant and r["training.seed"] == 0)["workdir"]

    config, model, params = workdirs.load_run(run_of(LABELS[("mulan", "topk")]))
    test = data.load_dataset(config.data.name, config.data.data_dir or None).test
    images = jnp.asarray(test.images[:2])
    latent, _ = model.draw_latent(params, images, model.latent_noise(jax.random.key(0), 2))
    gamma_fn = model.gamma_fn(params, latent)
    t = np.linspace(0, 1, 101)
    gammas = np.stack([np.asarray(gamma_fn(jnp.full((2,), s))) for s in t])  # [T, 2, H, W, C]
    flat = gammas.reshape(len(t), 2, -1)
    spread = np.std(flat[50], axis=0)  # the pixels whose gamma(1/2) differs most between the two images
    pixels = np.argsort(spread)[-4:]
    for i, p in enumerate(pixels):
        for image, style in ((0, "-"), (1, "--")):
            axes[0].plot(t, flat[:, image, p], style, color=f"C{i}", label=f"pixel {p}, image {image}")
    axes[0].plot(t, model.schedule.gamma_min + t * (model.schedule.gamma_max - model.schedule.gamma_min), ":",
                 color="gray", label="log-SNR linear")
    axes[0].set(xlabel="t", ylabel="γ(t) = −log SNR", title=f"{title}\nMuLAN: γ(t) of 4 pixels, two test images")
    axes[0].legend(fontsize=6)
    _, shared_model, shared_params = workdirs.load_run(run_of(LABELS[("mulan", "none")]))
    maps = [np.asarray(shared_model.gamma_fn(shared_params)(jnp.full((1,), 0.5)))[0], gammas[50, 0], gammas[50, 1]]
    names = ["no latent (all images)", "MuLAN, image 0", "MuLAN, image 1"]
    low, high = min(float(m.min()) for m in maps), max(float(m.max()) for m in maps)
    for ax, m, name in zip(axes[1:], maps, names):
        shown = ax.imshow(-m.mean(-1), cmap="viridis", vmin=-high, vmax=-low)  # channels averaged
        ax.set(title=f"{title}\nlog-SNR at t = 1/2: {name}", xticks=[], yticks=[])
    axes[-1].figure.colorbar(shown, ax=axes[-1], fraction=0.046)
    return {"pixels": [int(p) for p in pixels], "gamma_half": [float(flat[50, i, p]) for i in (0, 1) for p in pixels],
            "log_snr_half_range": [-high, -low]}


def table(rows, stats, dataset) -> list[str]:
    lines = [f"### {dataset}", "", "| schedule | test bpd (ELBO) | of which latent KL | per seed | steps |",
             "|---|---|---|---|---|"]
    for v, (m, s, per_seed, steps) in stats.items():
        kl = [r["test_bpd_latent"] for r in rows if r["variant"] == v and r.get("test_bpd_latent") is not None]
        lines.append(f"| {v} | {rc.fmt(m, s)} | {sum(kl) / len(kl):.4f} |" if kl else f"| {v} | {rc.fmt(m, s)} | — |")
        lines[-1] += f" {', '.join(f'{b:.4f}' for b in per_seed)} | {int(steps)} |"
    lines += ["", "Paired by seed (mean ± s.e. over 3 seeds) against the scalar schedule with learned endpoints, and the "
              "per-pixel schedules against the scalar one with their fixed endpoints:", "",
              "| comparison | paired difference | verdict (> 2 s.e.) |", "|---|---|---|"]
    base = LABELS[("learned_linear", "none")]
    for v in stats:
        if v != base:
            m, s = rc.paired(rows, "variant", base, v)
            lines.append(f"| {v} − {base} | {m:+.4f} ± {s:.4f} | {rc.paired_verdict(m, s)} |")
    control, per_pixel, mulan = (LABELS[k] for k in (("fixed_linear", "none"), ("mulan", "none"), ("mulan", "topk")))
    for name, a, b in (("same endpoints", control, per_pixel), ("same endpoints", control, mulan),
                       ("the latent", per_pixel, mulan)):
        m, s = rc.paired(rows, "variant", a, b)
        lines.append(f"| {name}: {b} − {a} | {m:+.4f} ± {s:.4f} | {rc.paired_verdict(m, s)} |")
    return lines


def ode_lines(ode) -> list[str]:
    from vdm.sampling import likelihood

    lines = ["", f"Best model by test bpd: **{ode['variant']}**, seed 0 (`{ode['workdir']}`), its first "
             f"{ode['num_examples']} test examples (± standard error over examples):", "",
             "| estimate | bits/dim | what it is |", "|---|---|---|",
             f"| ELBO | {rc.fmt(ode['elbo_bpd'], ode['elbo_bpd_stderr'])} | {ode['elbo']} |"]
    for deq in likelihood.DEQUANTIZATIONS:
        lines.append(f"| ODE, {deq} dequantisation | {rc.fmt(ode[f'ode_bpd_{deq}'], ode[f'ode_bpd_{deq}_stderr'])} "
                     f"| {ode[f'ode_{deq}_dequantization']} |")
    return lines


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    args, config_arg, _, root = rc.parse_args("learned_noise", __doc__, "learned_noise", extra_flags,
                                                 paper_config=PAPER_CONFIG)
    variants = list(DATASETS) if args.size == "small" else ["learned_noise"]
    fig, axes = plt.subplots(len(variants), 4, figsize=(20, 4.5 * len(variants)), squeeze=False)
    lines = ["# Learned multivariate noise (MuLAN) against scalar schedules", "",
             f"Command: `python -m experiments.reproduce_learned_noise{'' if args.size == 'small' else ' --size=paper'}`",
             "", "Configs `configs/repro.py:learned_noise` and `:learned_noise_patches`: 16 channels × 2 blocks, the "
             "continuous-time ELBO, ε-prediction, the schedules' shapes (and MuLAN's encoder and head) at 10× the network's learning rate and endpoints at 1×, equal step budgets; "
             "the per-pixel schedules and the control have fixed endpoints [γ_min, γ_max] ([−8, 5] on digits, [−13.3, 5] on the patches), the other scalar ones learn theirs. "
             "MuLAN's top-k latent: 3 of 8 slots (its KL is part of the test bpd).", ""]
    data = {"command": "python -m experiments.reproduce_learned_noise", "datasets": {}}
    for i, variant in enumerate(variants):
        rows = train_and_evaluate(args, variant, f"configs/repro.py:{variant}" if args.size == "small" else config_arg,
                                  root if variant == "learned_noise" else root + "_patches")
        stats = rc.by_setting(rows, "variant")
        dataset = DATASETS[variant] if args.size == "small" else "CIFAR-10"
        ode = ode_likelihood(rows, stats, args.ode_examples_patches if variant.endswith("patches") else args.ode_examples)
        pictures = schedule_pictures(axes[i], rows, dataset)
        lines += table(rows, stats, dataset) + ode_lines(ode) + [""]
        data["datasets"][variant] = {"rows": [{k: v for k, v in r.items() if k != "workdir"} for r in rows],
                                     "ode_likelihood": ode, "pictures": pictures}
    lines += [rc.eval_note(rows), "", "![schedules](learned_noise.png)", ""]
    rc.write_outputs(args, "learned_noise", "\n".join(lines), data, fig)


if __name__ == "__main__":
    main()
