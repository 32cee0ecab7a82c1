"""The paper's CIFAR-10 model on this machine: parameter count, train-step compile time, step time.

Run:
  python experiments/paper_model.py [--batch_size=8] [--steps=2]
Prints one line per figure and writes them as JSON to --out (default:
results/paper_model.json). Uses random 8-bit images (no dataset needed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vdm.config_validation import load_config_file  # noqa: E402
from vdm.model import VDM  # noqa: E402
from vdm.optim import make_optimizer  # noqa: E402
from vdm.train import create_train_state, make_train_step  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the compiling one")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "paper_model.json"))
    args = parser.parse_args()

    config = load_config_file(os.path.join(ROOT, "configs", "cifar10.py"))
    model = VDM.from_config(config)
    tx, lr = make_optimizer(config.optim, config.training.num_steps)
    state = create_train_state(model, tx, jax.random.key(0))
    n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
    print(f"parameters: {n_params:,}", flush=True)
    step = make_train_step(model, tx, lr, config.optim.ema_decay)
    rng = np.random.default_rng(0)

    def batches():
        return {"images": rng.integers(0, 256, (1, args.batch_size, 32, 32, 3), dtype=np.uint8),
                "labels": np.zeros((1, args.batch_size), np.int32)}

    t0 = time.time()
    compiled = step.lower(state, batches(), jax.random.key(1)).compile()
    compile_s = time.time() - t0
    print(f"train step compile: {compile_s:.1f} s (batch {args.batch_size})", flush=True)
    state, m = compiled(state, batches(), jax.random.key(1))
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.time()
        state, m = compiled(state, batches(), jax.random.key(1))
        jax.block_until_ready(m)
        times.append(time.time() - t0)
    step_s = float(np.median(times))
    print(f"train step: {step_s:.2f} s/step median of {args.steps} -> {args.batch_size / step_s:.2f} img/s", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"parameters": n_params, "batch_size": args.batch_size, "compile_seconds": compile_s,
                   "step_seconds": step_s, "images_per_second": args.batch_size / step_s,
                   "device": str(jax.devices()[0])}, f, indent=2)


if __name__ == "__main__":
    main()
