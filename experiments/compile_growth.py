"""Train-step compile time of the paper-width model against depth (blocks under nn.scan).

Run:
  python -m experiments.compile_growth [--blocks=4,8,16,32]
Prints one line per depth and the ratio of the deepest to the shallowest;
writes results/compile_growth.json. Cold compiles (persistent cache off).
"""

from __future__ import annotations

import argparse
import json
import os

import jax

from experiments import benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="4,8,16,32")
    parser.add_argument("--out", default=os.path.join(benchmark.ROOT, "results", "compile_growth.json"))
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    seconds = {}
    for n in (int(b) for b in args.blocks.split(",")):
        seconds[n] = benchmark.measure_compile(benchmark.bench_config("paper", {"model.num_blocks": n}))
        print(f"paper width, {n} blocks: compile {seconds[n]:.1f} s", flush=True)
    depths = sorted(seconds)
    ratio = seconds[depths[-1]] / seconds[depths[0]]
    print(f"compile time ratio {depths[-1]} / {depths[0]} blocks: {ratio:.2f}")
    with open(args.out, "w") as f:
        json.dump({"compile_seconds": seconds, "ratio": ratio, "device": str(jax.devices()[0])}, f, indent=2)


if __name__ == "__main__":
    main()
