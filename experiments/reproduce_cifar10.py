"""CIFAR-10 at the paper's size: the exact configuration, what one step costs here, and what the full run needs.

Run here (random 8-bit images, no dataset needed; ~10 min on 2 cores):
  python -m experiments.reproduce_cifar10 [--batch_size=8] [--steps=2]
Reproduce the paper's 2.65 test bits/dim (accelerators, CIFAR-10 prepared with tfds):
  python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10

Reports the parameter count (official: 30,578,181), the train-step compile
time with the 32 + 33 blocks under `nn.scan` (with `model.impl=reference`, and
with the CPU forms, `model.impl=cpu`, whose convolution gradient stays fast in loops),
the step time of the latter (median of --steps), XLA's FLOP count per step,
and the compute of 10M steps at batch 128. (Unrolled, the 65 blocks took over
5 minutes and 9 GB to compile here, so that variant is not measured.)
Writes results/cifar10.md, .json and .png.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import benchmark  # noqa: E402
from vdm.config.validation import apply_overrides, load_config_file  # noqa: E402
from vdm.model import VDM  # noqa: E402
from vdm.training.run import num_parameters  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PAPER_STEPS, PAPER_BATCH = 10_000_000, 128


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after a warm-up step")
    parser.add_argument("--results", default=os.path.join(ROOT, "results"))
    args = parser.parse_args()

    config = load_config_file(os.path.join(ROOT, "configs", "cifar10.py"))
    model = VDM.from_config(config)
    n_params = num_parameters(jax.eval_shape(model.init, jax.random.key(0)))
    print(f"parameters: {n_params:,}", flush=True)
    jax.config.update("jax_enable_compilation_cache", False)  # cold compiles
    config = apply_overrides(config, {"training.batch_size": args.batch_size})
    compile_scan = benchmark.measure_compile(apply_overrides(config.copy_and_resolve_references(),
                                                             {"model.impl": "reference"}))
    print(f"compile, blocks under nn.scan (model.impl=reference): {compile_scan:.1f} s", flush=True)
    flops = benchmark.train_flops(config)
    print(f"XLA FLOPs per step: {flops:.4g}", flush=True)
    cpu = apply_overrides(config.copy_and_resolve_references(), {"model.impl": "cpu"})
    r = benchmark.measure_train(cpu, args.steps, flops)
    compile_lf, step_s = r["compile_seconds"], r["step_seconds"]
    print(f"nn.scan + loop-friendly conv: compile {compile_lf:.1f} s, step {step_s:.2f} s", flush=True)
    total_flops = flops * PAPER_BATCH / args.batch_size * PAPER_STEPS
    here_days = step_s * PAPER_BATCH / args.batch_size * PAPER_STEPS / 86400
    rates = {"1 TFLOP/s": 1e12, "10 TFLOP/s": 1e13, "100 TFLOP/s": 1e14, "1 PFLOP/s": 1e15}
    device = jax.devices()[0].device_kind
    out = {"parameters": n_params, "batch_size": args.batch_size, "compile_seconds_scan": compile_scan,
           "compile_seconds_loop_friendly": compile_lf, "step_seconds_loop_friendly": step_s,
           "images_per_second": args.batch_size / step_s, "flops_per_step": flops,
           "paper_run_flops": total_flops, "paper_run_days_here": here_days, "device": device,
           "sustained_rate_days": {k: total_flops / r / 86400 for k, r in rates.items()}}
    lines = [
        "# CIFAR-10 at the paper's size",
        "",
        "Reproduce the paper's 2.65 bits/dim (accelerators, data prepared once with "
        "`tfds build cifar10 --file_format=array_record`):",
        "",
        "    python -m vdm.main --config=configs/cifar10.py --workdir=runs/cifar10",
        "",
        "`configs/cifar10.py`: 32 ResNet blocks of 128 channels at 32×32 down, 33 up, 2 middle around one "
        "attention layer, no downsampling, Fourier features 2^6 and 2^7, dropout 0.1, learned endpoints from "
        "[−13.3, 5], AdamW 2e-4 (β = 0.9, 0.99, weight decay 0.01), EMA 0.9999, batch 128, 10M steps.",
        "",
        f"Measured here (`python -m experiments.reproduce_cifar10 --batch_size={args.batch_size} "
        f"--steps={args.steps}`, {device}, float32, random 8-bit images):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| parameters (network + 2 schedule parameters) | {n_params:,} (official: 30,578,181) |",
        f"| train-step compile, blocks under `nn.scan`, `model.impl=reference` | {compile_scan:.1f} s (official code: ~30 s) |",
        f"| train-step compile, `nn.scan` + `model.impl=cpu` | {compile_lf:.1f} s |",
        f"| train step, batch {args.batch_size}, `nn.scan` + loop-friendly conv (median of {args.steps}) | {step_s:.2f} s "
        f"({args.batch_size / step_s:.2f} img/s; official code here: 11.4 s, 0.70 img/s) |",
        f"| XLA FLOPs per step, batch {args.batch_size} | {flops / 1e12:.3f} TFLOP |",
        f"| achieved | {flops / step_s / 1e9:.0f} GFLOP/s |",
        "",
        f"The paper's run, 10M steps at batch 128: {total_flops:.3g} FLOPs "
        f"({total_flops / 1e18:.0f} EFLOP). At this machine's speed it would take {here_days:,.0f} days; at a "
        "sustained rate of " + ", ".join(f"{k}: {v:,.1f} days" for k, v in out["sustained_rate_days"].items()) + ".",
        "",
    ]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["this machine", *rates]
    days = [here_days, *out["sustained_rate_days"].values()]
    ax.bar(range(len(names)), days)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("days for 10M steps, batch 128")
    os.makedirs(args.results, exist_ok=True)
    base = os.path.join(args.results, "cifar10")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines))
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
    fig.savefig(base + ".png", dpi=120, bbox_inches="tight")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
