"""Speed of training, sampling and evaluation on whatever devices JAX sees; writes a table and JSON.

Run:
  python -m experiments.benchmark                     # all configurations, ~15 min on 2 cores
  python -m experiments.benchmark --configs=digits --ablation
  python -m experiments.benchmark --impls=reference,cpu --dtypes=float32,bfloat16 --out=results/benchmark_impls.json
  python -m experiments.benchmark --official_dir=PATH/TO/google-research-vdm --configs=cifar-small
  python -m experiments.benchmark --configs=paper --merge          # add rows to the existing table
  python -m experiments.benchmark --impls=cpu --dtypes=float32,bfloat16 --interleaved --merge   # ratios, in turn
  python -m experiments.benchmark --out=results/benchmark_gpu.json   # on an accelerator
(from the repository root, vdm installed: make install)

Configurations (the settings the official implementation's reference figures
were measured with: Fourier features, dropout 0.1, continuous time, learned
endpoints, AdamW + EMA inside the step; blocks counted as N down, N + 1 up, 2 middle):
  cifar-small  32x32x3, 32 channels, 4 blocks, batch 16
  digits       8x8x1 (V = 17), 64 channels, 8 blocks, batch 64
  paper        32x32x3, 128 channels, 32 blocks, batch 8
For each: compile time (persistent cache off), train-step throughput (median
of >= 10 steps after warm-up), XLA's FLOP count per step and the achieved
GFLOP/s against a float32 matmul and a 3x3 convolution measured in the same
process, peak memory (XLA's buffer sizes), ancestral sampler time per step,
eval throughput; one row per configuration x --impls (model.impl) x --dtypes
(model.dtype). --ablation times each speed setting on and off, the others at
their fast setting (median of 3 repeats of --steps steps; on cifar-small and
digits, and on paper with --ablation_paper). --official_dir times the official
implementation's train step (its model_vdm.py imported from a checkout of
google-research/vdm; nothing of it is part of this project) interleaved with
ours on the same machine, same shapes and settings, and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmark_report import merge, table
from vdm import sampling
from vdm.config.schema import base_config
from vdm.config.validation import apply_overrides
from vdm.core.elbo_estimator import ElboEstimator
from vdm.model import VDM
from vdm.training.optim import make_optimizer
from vdm.training.steps import create_train_state, make_eval_step, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = {"model.fourier_features": True, "model.dropout": 0.1, "loss.num_steps": 0,
          "schedule.name": "learned_linear", "loss.weighting": "elbo", "model.attention_per_block": False}
# Speed settings: the base config's defaults (model.impl = auto: the CPU forms on a CPU) and 4 optimizer
# steps per compiled call.
FAST = {"model.scan_blocks": True, "model.impl": "auto", "model.recompute": True, "loss.decoder_window": 3,
        "training.donate_state": True, "training.steps_per_call": 4}
CONFIGS = {
    "cifar-small": {"data.image_shape": (32, 32, 3), "data.vocab_size": 256, "model.channels": 32,
                    "model.num_blocks": 4, "training.batch_size": 16},
    "digits": {"data.image_shape": (8, 8, 1), "data.vocab_size": 17, "model.channels": 64, "model.num_blocks": 8,
               "training.batch_size": 64},
    "paper": {"data.image_shape": (32, 32, 3), "data.vocab_size": 256, "model.channels": 128,
              "model.num_blocks": 32, "training.batch_size": 8, "training.steps_per_call": 1},  # 9 s steps: no call overhead
}
# Speed settings: (config overrides when on, when off).
SWITCHES = {
    "impl=cpu": ({"model.impl": "cpu"}, {"model.impl": "reference"}),
    "recompute": ({"model.recompute": True}, {"model.recompute": False}),
    "decoder_window": ({"loss.decoder_window": 3}, {"loss.decoder_window": 0}),
    "scan_blocks": ({"model.scan_blocks": True}, {"model.scan_blocks": False}),
    "donate_state": ({"training.donate_state": True}, {"training.donate_state": False}),
    "steps_per_call=4": ({"training.steps_per_call": 4}, {"training.steps_per_call": 1}),
}


def bench_config(name: str, overrides: dict | None = None):
    return apply_overrides(base_config(), {**COMMON, **FAST, **CONFIGS[name], **(overrides or {})})


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peaks() -> dict:
    """float32 GFLOP/s of a 2048^3 matmul and of a 3x3 128->128 conv at 32x32, batch 8."""
    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(a).block_until_ready()
    mm_s = _median_seconds(lambda: mm(a), 5)
    x, w = jnp.ones((8, 32, 32, 128)), jnp.ones((3, 3, 128, 128))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    conv(x, w).block_until_ready()
    conv_s = _median_seconds(lambda: conv(x, w), 5)
    return {"matmul_gflops": 2 * 2048**3 / mm_s / 1e9, "conv3x3_gflops": 2 * 8 * 32 * 32 * 9 * 128 * 128 / conv_s / 1e9}


def _cost(compiled) -> tuple[float, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    peak = float("nan")
    if mem is not None:
        peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                - getattr(mem, "alias_size_in_bytes", 0))
    return float(cost.get("flops", float("nan"))), peak


def _compiled_train_step(config):
    """(compiled train step, state, batch, compile seconds) on random data of the config's shape."""
    model = VDM.from_config(config)
    tx, lr = make_optimizer(config.optim, config.training.num_steps)
    state = create_train_state(model, tx, jax.random.key(0))
    step = make_train_step(model, tx, lr, config.optim.ema_decay, donate=config.training.donate_state)
    k = config.training.steps_per_call
    b, shape, v = config.training.batch_size, tuple(config.data.image_shape), config.data.vocab_size
    rng = np.random.default_rng(0)
    batch = {"images": jnp.asarray(rng.integers(0, v, (k, b, *shape)), jnp.int32),
             "labels": jnp.zeros((k, b), jnp.int32)}
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
    return compiled, state, batch, time.perf_counter() - t0, model


def measure_compile(config) -> float:
    """Seconds to compile the config's train step."""
    return _compiled_train_step(config)[3]


def train_flops(config) -> float:
    """FLOPs of one optimizer step by XLA's cost analysis.

    XLA counts a while loop's body once, so for blocks under nn.scan this
    compiles the unrolled network with 1 and 2 blocks (cheap) and extrapolates
    linearly in the number of blocks (exact: every block is the same).
    """
    n = config.model.num_blocks
    if not config.model.scan_blocks and config.training.steps_per_call == 1:
        return _cost(_compiled_train_step(config)[0])[0]
    flops = []
    for blocks in (1, 2):
        small = apply_overrides(config.copy_and_resolve_references(), {
            "model.num_blocks": blocks, "model.scan_blocks": False, "training.steps_per_call": 1,
            "training.log_every": 1, "training.eval_every": 1, "checkpoint.every_steps": 1, "training.num_steps": 1})
        flops.append(_cost(_compiled_train_step(small)[0])[0])
    return flops[0] + (n - 1) * (flops[1] - flops[0])


def measure_train(config, steps: int, flops: float | None = None, repeats: int = 1, warmup: int = 2) -> dict:
    """Compile time, step time (median over `repeats` of the median of `steps` steps), throughput, FLOP rate, peak bytes."""
    compiled, state, batch, compile_s, model = _compiled_train_step(config)
    k, b = config.training.steps_per_call, config.training.batch_size
    peak = _cost(compiled)[1]
    flops = train_flops(config) if flops is None else flops
    for _ in range(warmup):
        state, m = compiled(state, batch, jax.random.key(1))
    jax.block_until_ready(m)
    medians = []
    for r in range(repeats):
        times = []
        for i in range(max(1, -(-steps // k))):
            t0 = time.perf_counter()
            state, m = compiled(state, batch, jax.random.key(2 + i))
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / k)
        medians.append(float(np.median(times)))
    step_s = float(np.median(medians))
    return {"compile_seconds": compile_s, "step_seconds": step_s, "images_per_second": b / step_s,
            "flops_per_step": flops, "gflops_per_second": flops / step_s / 1e9, "peak_bytes": peak,
            "model": model, "params": state.ema_params}


def interleaved(configs: dict, steps: int) -> dict:
    """{label: images per second} of several configs' train steps, one compiled call of each in turn.

    On a machine whose speed drifts (a shared VM), rows timed one after another differ by more than
    the settings do; taking turns gives every setting the same conditions, so the ratios hold.
    """
    built = {label: _compiled_train_step(config) for label, config in configs.items()}
    states = {label: b[1] for label, b in built.items()}
    times = {label: [] for label in configs}
    for i in range(steps + 1):  # the first turn warms up
        for label, (compiled, _, batch, _, _) in built.items():
            t0 = time.perf_counter()
            states[label], m = compiled(states[label], batch, jax.random.key(2 + i))
            jax.block_until_ready(m)
            if i:
                times[label].append((time.perf_counter() - t0) / configs[label].training.steps_per_call)
    return {label: configs[label].training.batch_size / float(np.median(t)) for label, t in times.items()}


def measure_sampler(model, params, batch: int, steps: int = 20, repeats: int = 3) -> float:
    """Milliseconds per ancestral step (a T-step scan, compiled once, median of `repeats` runs)."""
    eps_hat_fn = model.eps_hat_fn(params)
    fn = jax.jit(lambda key: sampling.ancestral_sample(key, eps_hat_fn, model.gamma_fn(params),
                                                       (batch, *model.image_shape), steps))
    fn(jax.random.key(0)).block_until_ready()
    return 1000 * _median_seconds(lambda: fn(jax.random.key(1)), repeats) / steps


def measure_sampler_per_nfe(model, params, batch: int, names=("dpm_solver_pp_2m", "dpm_solver_pp_3m"),
                            nfe: int = 20, repeats: int = 3) -> dict:
    """Milliseconds per network evaluation of samplers in `vdm.sampling.SAMPLERS` at `nfe` NFE (median of `repeats` runs)."""
    eps_hat_fn, gamma_fn = model.eps_hat_fn(params), model.gamma_fn(params)
    out = {}
    for name in names:
        entry = sampling.SAMPLERS[name]
        steps = entry.steps_for(nfe)
        fn = jax.jit(lambda key, f=entry.fn, s=steps: f(key, eps_hat_fn, gamma_fn, (batch, *model.image_shape), s))
        fn(jax.random.key(0)).block_until_ready()
        out[name] = 1000 * _median_seconds(lambda: fn(jax.random.key(1)), repeats) / entry.nfe(steps)
    return out


def measure_eval(model, params, batch: int, vocab: int) -> float:
    """ELBO evaluations per second with one network call per image (1 point, 1 repeat of the evaluation estimator;
    the default estimator makes points_per_example x num_repeats calls per test image)."""
    step = make_eval_step(model, estimator=ElboEstimator(points=1, repeats=1))
    images = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (batch, *model.image_shape)), jnp.int32)
    b = {"images": images, "labels": jnp.zeros((batch,), jnp.int32), "index": jnp.arange(batch, dtype=jnp.int32)}
    jax.block_until_ready(step(params, b, jax.random.key(0)))
    return batch / _median_seconds(lambda: step(params, b, jax.random.key(1)), 5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="cifar-small,digits,paper")
    parser.add_argument("--impls", default="auto", help="model.impl values, comma-separated (auto, reference, cpu)")
    parser.add_argument("--dtypes", default="float32", help="model.dtype values, comma-separated")
    parser.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
    parser.add_argument("--repeats", type=int, default=1, help="repeats of --steps steps per row (median of medians)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed compiled calls before the timed ones")
    parser.add_argument("--sampler_nfe", type=int, default=20,
                        help="network evaluations of each timed sampler run (ancestral steps, DPM-Solver++ NFE)")
    parser.add_argument("--sampler_repeats", type=int, default=3, help="timed sampler runs (median)")
    parser.add_argument("--ablation", action="store_true", help="time every switch on and off, 3 repeats each")
    parser.add_argument("--ablation_paper", action="store_true", help="also at paper size (~1 hour on 2 cores)")
    parser.add_argument("--interleaved", action="store_true",
                        help="time the --impls x --dtypes train steps of each config in turn (ratios on a drifting machine)")
    parser.add_argument("--official_dir", default="", help="a checkout of google-research/vdm to time side by side")
    parser.add_argument("--set", action="append", default=[], help="extra override KEY=VALUE for every config")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "benchmark.json"))
    parser.add_argument("--merge", action="store_true",
                        help="add the rows to an existing --out file (same device) instead of replacing it")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are cold compiles
    extra = dict(s.split("=", 1) for s in args.set)
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})"
    print(f"devices: {device}", flush=True)
    p = peaks()
    print(f"peaks: matmul {p['matmul_gflops']:.0f} GFLOP/s, 3x3 conv {p['conv3x3_gflops']:.0f} GFLOP/s", flush=True)
    results = {"device": device, "jax": jax.__version__, "peaks": p, "configs": {}, "ablation": {}, "official": {},
               "interleaved": {}}
    impls, dtypes = args.impls.split(","), args.dtypes.split(",")
    for name in args.configs.split(",") if args.interleaved else ():
        configs = {f"{impl} {dtype}": bench_config(name, {**extra, "model.impl": impl, "model.dtype": dtype})
                   for impl in impls for dtype in dtypes}
        results["interleaved"][name] = {"images_per_second": interleaved(configs, args.steps), "steps": args.steps}
        print(f"{name} interleaved: {json.dumps(results['interleaved'][name])}", flush=True)
    for name in args.configs.split(",") if not args.interleaved else ():
        flops = None
        for impl in impls:
            for dtype in dtypes:
                config = bench_config(name, {**extra, "model.impl": impl, "model.dtype": dtype})
                r = measure_train(config, args.steps, flops, args.repeats, args.warmup)
                flops = r["flops_per_step"]  # the same network: count once
                model, params = r.pop("model"), r.pop("params")
                r["impl"], r["dtype"] = model.net.ops.name, dtype
                b = config.training.batch_size
                r["sampler_ms_per_step"] = measure_sampler(model, params, b, args.sampler_nfe, args.sampler_repeats)
                r["sampler_ms_per_nfe"] = measure_sampler_per_nfe(model, params, b, nfe=args.sampler_nfe,
                                                                  repeats=args.sampler_repeats)
                r["timing"] = {"steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                               "sampler_nfe": args.sampler_nfe, "sampler_repeats": args.sampler_repeats}
                r["eval_images_per_second"] = measure_eval(model, params, config.training.batch_size,
                                                           config.data.vocab_size)
                r["matmul_peak_fraction"] = r["gflops_per_second"] / p["matmul_gflops"]
                r["conv_peak_fraction"] = r["gflops_per_second"] / p["conv3x3_gflops"]
                row = f"{name} {r['impl']} {dtype}"
                results["configs"][row] = r
                print(f"{row}: {json.dumps(r)}", flush=True)
        if args.official_dir and CONFIGS[name]["data.image_shape"][-1] != 3:
            print(f"{name}: no official side by side (the official decoder is written for 3 image channels)")
        elif args.official_dir:
            from experiments import official_timing

            config = bench_config(name, extra)
            results["official"][name] = official_timing.side_by_side(
                args.official_dir, config, lambda: _compiled_train_step(config), args.steps)
            print(f"{name} official side by side: {json.dumps(results['official'][name])}", flush=True)
        if args.ablation and (name != "paper" or args.ablation_paper):
            results["ablation"][name] = {}
            for switch, (on, off) in SWITCHES.items():
                if name == "paper" and switch == "scan_blocks":
                    continue  # unrolled, the 65 blocks take over 5 minutes and 9 GB to compile here
                row = {}
                for label, overrides in (("on", on), ("off", off)):
                    x = measure_train(bench_config(name, {**extra, **overrides}), args.steps, flops, 3)
                    row[label] = {"images_per_second": x["images_per_second"], "compile_seconds": x["compile_seconds"]}
                results["ablation"][name][switch] = row
                print(f"  {switch}: {row}", flush=True)
    if args.merge and os.path.exists(args.out):
        results = merge(args.out, results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(table(results))
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table(results))


if __name__ == "__main__":
    main()
