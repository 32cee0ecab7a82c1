"""Likelihood against sample quality across loss weightings w(lambda) (Kingma & Gao 2023), on digits.

Run (2 cores, ~40 min; finished points are skipped):
  python -m experiments.reproduce_weighting

Trains configs/repro.py:weighting (16 channels x 2 blocks, the demo's fixed alpha-cosine
schedule on [-8, 5], 600 steps) with loss.weighting = elbo, sigmoid (b = -2 and 2), edm,
edm_monotonic and eps_mse (DDPM's L_simple), 2 training seeds each, the same steps and data
order per seed. For every run: test bits/dim (always the ELBO, w = 1; the evaluation estimator
with the same per-example keys for every run) and sample quality of 1000 samples of the EMA
parameters from DPM-Solver++ 2M at 20 network evaluations, the same sampling key for every
run: FD-digits and KID-digits against the 297 test digits and the digit check's confidence
ratio (`vdm.training.sample_quality`). Differences against elbo are paired by training seed.
Writes results/weighting.md, .json and .png (test bpd against FD-digits, one point per run).

Digits only: FD-digits needs the digits feature network; a CIFAR-10 version needs Inception
features (docs/sampling.md).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from experiments import repro_common as rc
from experiments import sweep

SAMPLER, NFE = "dpm_solver_pp_2m", 20


def label(point: dict) -> str:
    """'sigmoid b=-2' for a sigmoid point, else the weighting's name."""
    name = point["loss.weighting"]
    return f"{name} b={point['loss.weighting_bias']:g}" if name == "sigmoid" else name


def sample_quality(workdir: str) -> dict:
    """FD / KID / ratio of the run's EMA samples at SAMPLER and NFE (stored in the workdir, reused when there)."""
    from vdm.training import sample_quality as sq
    from vdm.training import workdirs

    path = os.path.join(workdir, "sample_quality.json")
    if os.path.exists(path):
        stored = json.load(open(path))
        rows = [r for r in stored["rows"] if r["sampler"] == SAMPLER and r["nfe"] == NFE]
        if rows and stored.get("seed") == 0:
            return {"real": stored["rows"][0], **rows[0]}
    config, _, _ = workdirs.load_run(workdir)
    result = sq.sample_quality_run(config, workdir, [SAMPLER], [NFE], seed=0)
    return {"real": result["rows"][0], **result["rows"][1]}


def paired_difference(rows, a: str, b: str, field: str):
    """Mean ± s.e. over training seeds of field(b) - field(a), runs paired by seed."""
    by_seed = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["weighting"]] = r[field]
    return sweep.mean_and_stderr([d[b] - d[a] for d in by_seed.values() if a in d and b in d])


def monotone_claim(name: str) -> str:
    from vdm.core.weightings import WEIGHTINGS

    claim = WEIGHTINGS[name].monotone
    return {True: "yes", False: "no", None: "no (under α-cosine)"}[claim]


def main():
    args, config_arg, points, root = rc.parse_args("weighting", __doc__, "weighting")
    if args.size != "small":
        sys.exit("reproduce_weighting: FD-digits is a digits measure; at CIFAR-10 size plug Inception features into "
                 "vdm.training.sample_quality.measure (docs/sampling.md)")
    bpd_rows = rc.reevaluate(rc.run_sweep(config_arg, points, root, args.parallel), points, root, args.eval_repeats)
    rows, real = [], None
    for point, bpd in zip(points, bpd_rows):
        q = sample_quality(os.path.join(root, sweep.point_name(point)))
        real = q["real"]
        rows.append({"weighting": label(point), "seed": point["training.seed"], "test_bpd": bpd["test_bpd"],
                     "test_bpd_stderr": bpd["test_bpd_stderr"], "fd": q["fd"], "kid": q["kid"],
                     "kid_stderr": q["kid_stderr"], "ratio": q["ratio"], "steps": bpd["step"]})
        print(json.dumps(rows[-1]), flush=True)

    labels = list(dict.fromkeys(r["weighting"] for r in rows))
    summary = {}
    for name in labels:
        group = [r for r in rows if r["weighting"] == name]
        summary[name] = {f: sweep.mean_and_stderr([r[f] for r in group]) for f in ("test_bpd", "fd", "kid", "ratio")}
    lines = [
        "# Loss weightings: likelihood against sample quality (Kingma & Gao 2023), digits",
        "",
        "Command: `python -m experiments.reproduce_weighting`",
        "",
        f"Config `{config_arg}`: 16 channels × 2 blocks, the fixed α-cosine schedule on [−8, 5] (the demo's), "
        f"{rows[0]['steps']} steps, the same data order and initialisation per training seed; only `loss.weighting` "
        f"differs. {rc.eval_note(bpd_rows)} Samples: 1000 from the EMA parameters, "
        f"DPM-Solver++ 2M at {NFE} network evaluations, the same sampling key for every run; FD-digits and "
        "KID-digits against the 297 test digits, the digit check's confidence ratio (1.0 = as confident as on real "
        f"digits). Real training digits at this sample size: FD {real['fd']:.3f}, KID {real['kid']:.3f}, "
        f"ratio {real['ratio']:.2f} (what a perfect generator would score). Lower bpd, FD, KID and a higher ratio "
        "are better.",
        "",
        "| weighting | monotone (ELBO of augmented data) | test bpd | FD-digits | KID-digits | digit-check ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name in labels:
        s = summary[name]
        lines.append(f"| {name} | {monotone_claim(name.split()[0])} | {rc.fmt(*s['test_bpd'])} | "
                     f"{s['fd'][0]:.3f} ± {s['fd'][1]:.3f} | {s['kid'][0]:.3f} ± {s['kid'][1]:.3f} | "
                     f"{s['ratio'][0]:.2f} ± {s['ratio'][1]:.2f} |")
    lines += ["", f"Mean ± standard error over {len(rows) // len(labels)} training seeds.", "",
              "| run | seed | test bpd | FD-digits | KID-digits ± s.e. | ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['weighting']} | {r['seed']} | {r['test_bpd']:.4f} | {r['fd']:.3f} | "
                     f"{r['kid']:.3f} ± {r['kid_stderr']:.3f} | {r['ratio']:.2f} |")
    lines += ["", "Against `elbo`, paired by training seed (difference = weighting − elbo; resolved when > 2 s.e.):", "",
              "| weighting | Δ test bpd | verdict | Δ FD-digits | verdict |", "|---|---|---|---|---|"]
    paired = {}
    for name in labels[1:]:
        db, dfd = paired_difference(rows, labels[0], name, "test_bpd"), paired_difference(rows, labels[0], name, "fd")
        paired[name] = {"test_bpd": db, "fd": dfd}
        lines.append(f"| {name} | {db[0]:+.4f} ± {db[1]:.4f} | {rc.paired_verdict(*db)} | "
                     f"{dfd[0]:+.3f} ± {dfd[1]:.3f} | {rc.paired_verdict(*dfd)} |")
    best_bpd = min(labels, key=lambda n: summary[n]["test_bpd"][0])
    best_fd = min(labels, key=lambda n: summary[n]["fd"][0])
    lines += ["", f"Best test bpd: **{best_bpd}** ({rc.fmt(*summary[best_bpd]['test_bpd'])}); best FD-digits: "
              f"**{best_fd}** ({summary[best_fd]['fd'][0]:.3f} ± {summary[best_fd]['fd'][1]:.3f}).", ""]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = "osD^vP*X"
    for i, name in enumerate(labels):
        group = [r for r in rows if r["weighting"] == name]
        ax.scatter([r["test_bpd"] for r in group], [r["fd"] for r in group], marker=markers[i % len(markers)],
                   s=45, label=name)
    ax.axhline(real["fd"], color="grey", lw=0.8, ls="--", label="real digits")
    ax.set_xlabel("test bits/dim (ELBO)")
    ax.set_ylabel(f"FD-digits ({SAMPLER}, {NFE} NFE)")
    ax.legend(fontsize=7)
    rc.write_outputs(args, "weighting", "\n".join(lines),
                     {"rows": rows, "summary": summary, "paired_vs_elbo": paired, "real": real,
                      "sampler": SAMPLER, "nfe": NFE}, fig)


if __name__ == "__main__":
    main()
