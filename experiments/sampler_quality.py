"""Sample quality against network evaluations: FD-digits per sampler and NFE on the demo model.

    python -m experiments.sampler_quality [--workdir=runs/demo] [--nfes=10,20,50,100,250] [--seeds=0]
        [--more_seeds=1,2 --more_seeds_at=ancestral@250,dpm_solver_pp_2m@20,dpm_solver_pp_3m@20]

1. trains `configs/digits.py` in the workdir (what `make demo` trains; resumed, or skipped when finished);
2. for each sampler and NFE budget (each sampler runs the most steps that fit: Heun ODE NFE / 2 steps,
   predictor-corrector (NFE + 1) / 2), draws `--num_samples` samples with each sampling seed from
   the EMA parameters (one compiled program per sampler and NFE, run once per seed); every point gets
   --seeds, the points of --more_seeds_at (the acceptance comparison) also --more_seeds (on 2 shared
   CPU cores 1000 samples cost ~1 s per NFE, so 3 seeds everywhere would take ~2 hours);
3. measures each set against the 297 test digits: FD-digits, KID-digits (± s.e.), the digit check's
   confidence ratio (`vdm.training.sample_quality`), and the sampling time (compile excluded);
4. reports per sampler and NFE the mean over seeds and the standard error of that mean
   (s.d. / sqrt(seeds)) where there are several (with one seed: KID's jackknife s.e. only), next to
   `real`: as many real training digits, the value of a perfect generator at this sample size.

Writes results/sampler_quality.{md,json} and results/sampler_quality.png (FD-digits against NFE,
log x-axis, one line per sampler).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

SAMPLERS = ("ancestral", "ddim", "ode", "pc", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "ipndm", "unipc_2", "unipc_3")


def _mean_se(values):
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def measure_all(workdir: str, samplers, nfes, seeds, num_samples: int, config_file: str = "configs/digits.py",
                more_seeds=(), more_seeds_at=(), progress_path: str | None = None, extra_points=()) -> dict:
    """Rows per sampler and NFE; `more_seeds` are added at the (sampler, nfe) points in `more_seeds_at`."""
    import jax

    from vdm import sampling
    from vdm.config.validation import load_config_file
    from vdm.training import distributed, generation, loop, sample_quality, workdirs
    from vdm.training.run import Run

    config = load_config_file(config_file)
    distributed.use_cpu_devices(config.cpu.devices)
    loop.train_and_evaluate(config, workdir)
    config = workdirs.stored_config(config, workdir)
    run = Run(config, workdir)
    state = run.restore()
    features, ratio_fn, dataset = sample_quality._digits_tools(None)
    test = dataset.test.images
    real = []
    for seed in [*seeds, *more_seeds]:
        pick = np.random.default_rng(seed).permutation(len(dataset.train.images))[:num_samples]
        real.append(sample_quality.measure(dataset.train.images[pick], test, features, ratio_fn))
    rows = [{"sampler": "real", "nfe": None, "steps": None, "per_seed": real}]
    print(f"real: FD {np.mean([r['fd'] for r in real]):.2f}", flush=True)
    grid = [(name, nfe) for name in samplers for nfe in nfes]
    points = [p for p in extra_points if p not in grid] + grid  # the extra points first
    for name, nfe in points:
        entry = sampling.SAMPLERS[name]
        steps = entry.steps_for(nfe)
        if steps is None:
            continue
        per_seed = []
        compile_start = time.perf_counter()
        compiled = None
        for seed in [*seeds, *(more_seeds if (name, nfe) in more_seeds_at else ())]:
            key = jax.random.key(seed)
            if compiled is None:
                compiled = generation.sample.lower(run.model, state.ema_params, key, num_samples, name, steps,
                                                   None, 0.0, run.mesh).compile()
                compile_seconds = time.perf_counter() - compile_start
            start = time.perf_counter()
            samples = distributed.to_host(jax.block_until_ready(compiled(state.ema_params, key, None)))
            seconds = time.perf_counter() - start
            per_seed.append({**sample_quality.measure(samples, test, features, ratio_fn), "seconds": seconds,
                             "seed": seed})
        row = {"sampler": name, "nfe": entry.nfe(steps), "steps": steps, "description": entry.describe(steps),
               "compile_seconds": compile_seconds, "per_seed": per_seed}
        rows.append(row)
        if progress_path:  # the rows so far, should the run be stopped
            with open(progress_path, "w") as f:
                json.dump(rows, f)
        print(f"{name} NFE {row['nfe']}: FD {np.mean([r['fd'] for r in per_seed]):.2f} "
              f"ratio {np.mean([r['ratio'] for r in per_seed]):.2f} "
              f"{np.median([r['seconds'] for r in per_seed]):.1f} s", flush=True)
    for row in rows:
        row["num_seeds"] = len(row["per_seed"])
        for k in ("fd", "kid", "ratio"):
            row[k], row[f"{k}_se"] = _mean_se([r[k] for r in row["per_seed"]])
        row["kid_stderr_within"] = float(np.mean([r["kid_stderr"] for r in row["per_seed"]]))
        if row["sampler"] != "real":
            row["seconds"] = float(np.median([r["seconds"] for r in row["per_seed"]]))
    return {"workdir": os.path.abspath(workdir), "step": int(state.step), "num_samples": num_samples,
            "seeds": list(seeds), "more_seeds": list(more_seeds), "more_seeds_at": [f"{n}@{k}" for n, k in more_seeds_at],
            "reference": f"{len(test)} test digits", "machine": platform.machine(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "rows": rows}


def table(result) -> str:
    lines = ["| sampler | NFE | steps | seeds | FD-digits | KID-digits | digit-check ratio | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        nfe = "-" if r["nfe"] is None else r["nfe"]
        steps = "-" if r["steps"] is None else r["steps"]
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else "-"
        if r["num_seeds"] > 1:
            cells = f"{r['fd']:.3f} ± {r['fd_se']:.3f} | {r['kid']:.4f} ± {r['kid_se']:.4f} | {r['ratio']:.2f} ± {r['ratio_se']:.2f}"
        else:  # one seed: KID's own (jackknife) standard error; FD and the ratio without one
            cells = f"{r['fd']:.3f} | {r['kid']:.4f} ± {r['kid_stderr_within']:.4f} | {r['ratio']:.2f}"
        lines.append(f"| {r['sampler']} | {nfe} | {steps} | {r['num_seeds']} | {cells} | {seconds} |")
    return "\n".join(lines) + "\n"


def comparison(result) -> str:
    """DPM-Solver++ at 20 NFE against ancestral sampling at 250 NFE (the issue's acceptance line)."""
    rows = {(r["sampler"], r["nfe"]): r for r in result["rows"]}
    base = rows.get(("ancestral", 250))
    out = []
    for name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        r = rows.get((name, 20))
        if base is None or r is None:
            continue
        diff = r["fd"] - base["fd"]
        se = float(np.hypot(r["fd_se"], base["fd_se"]))
        verdict = "no worse" if diff <= 2 * se else "worse"
        out.append(f"- {name} at 20 NFE: FD-digits {r['fd']:.3f} ± {r['fd_se']:.3f} vs ancestral at 250 NFE "
                   f"{base['fd']:.3f} ± {base['fd_se']:.3f} (s.e. over {r['num_seeds']} and {base['num_seeds']} "
                   f"sampling seeds): difference {diff:+.3f} ± {se:.3f} ({verdict} within 2 s.e.)")
    return "\n".join(out) + "\n"


def plot(result, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = [n for n in dict.fromkeys(r["sampler"] for r in result["rows"]) if n != "real"]
    for name in names:
        rs = sorted((r for r in result["rows"] if r["sampler"] == name), key=lambda r: r["nfe"])
        ax.plot([r["nfe"] for r in rs], [r["fd"] for r in rs], marker="o", label=name)
        multi = [r for r in rs if r["num_seeds"] > 1]
        ax.errorbar([r["nfe"] for r in multi], [r["fd"] for r in multi], yerr=[r["fd_se"] for r in multi], fmt="none",
                    ecolor="k", capsize=3)
    real = next(r for r in result["rows"] if r["sampler"] == "real")
    ax.axhline(real["fd"], color="k", ls="--", lw=1, label="real training digits")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel(f"FD-digits ({result['num_samples']} samples vs {result['reference']})")
    ax.set_title("demo model (error bars: s.e. over sampling seeds where several)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--config", default="configs/digits.py", help="the config the workdir trains (default: the demo's)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--nfes", default="10,20,50,100,250")
    ap.add_argument("--only_at", default="", help="sampler@nfe points run in addition to --samplers x --nfes")
    ap.add_argument("--seeds", default="0", help="sampling seeds of every point")
    ap.add_argument("--more_seeds", default="1,2", help="further seeds at the points of --more_seeds_at")
    ap.add_argument("--more_seeds_at", default="ancestral@250,dpm_solver_pp_2m@20,dpm_solver_pp_3m@20")
    ap.add_argument("--num_samples", type=int, default=1000)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    start = time.time()
    result = measure_all(args.workdir, args.samplers.split(","), [int(n) for n in args.nfes.split(",")],
                         [int(s) for s in args.seeds.split(",")], args.num_samples, args.config,
                         [int(s) for s in args.more_seeds.split(",") if s],
                         [(p.split("@")[0], int(p.split("@")[1])) for p in args.more_seeds_at.split(",") if p],
                         os.path.join(args.workdir, "sampler_quality_progress.json"),
                         [(p.split("@")[0], int(p.split("@")[1])) for p in args.only_at.split(",") if p])
    result["total_seconds"] = time.time() - start
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "sampler_quality")
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=2)
    text = (f"Demo model ({result['workdir'].split(os.sep)[-1]}, step {result['step']}), {result['num_samples']} samples "
            f"per sampler, NFE and seed, against the {result['reference']}; sampling seed {result['seeds']} everywhere, "
            f"and mean ± s.e. over seeds {result['seeds'] + result['more_seeds']} at {result['more_seeds_at']} "
            f"and for 'real'. FD-digits / KID-digits: features of `vdm.metrics.digits_features`; 'real': "
            f"as many training digits. seconds: sampling only (compile excluded), median over seeds, "
            f"{result['devices']}.\n\n" + table(result) + "\n" + comparison(result))
    with open(base + ".md", "w") as f:
        f.write(text)
    plot(result, base + ".png")
    print(text, flush=True)


if __name__ == "__main__":
    main()
