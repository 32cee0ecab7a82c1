"""Run a config's sweep (its `get_sweep()` points) and collect the results into a table.

Run:
  python -m experiments.sweep --config=configs/repro.py:steps --root=runs/sweeps/steps [--parallel=2]
  python -m experiments.sweep --config=... --root=... --slurm=sweep.sbatch [--sbatch="--gres=gpu:1"]
  python -m experiments.sweep --config=... --root=... --collect_only

Points whose workdir has results.json are skipped; interrupted ones resume.
Writes <root>/sweep.md and <root>/sweep.csv (one row per point: its overrides,
test bits/dim with its standard error, steps and training seconds). Exits 1
if a point failed (its log is <root>/<point>/sweep.log).
"""

from __future__ import annotations

import argparse
import os
import sys

from vdm import sweeps
from vdm.errors import ConfigError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file[:variant] defining get_sweep()")
    parser.add_argument("--root", required=True, help="one workdir per point is made under this directory")
    parser.add_argument("--parallel", type=int, default=1, help="points run at the same time")
    parser.add_argument("--slurm", help="write a SLURM array job script here instead of running")
    parser.add_argument("--sbatch", action="append", default=[], help="extra #SBATCH line, e.g. --sbatch=--gres=gpu:1")
    parser.add_argument("--collect_only", action="store_true", help="only write the table of finished points")
    args = parser.parse_args(argv)
    try:
        points = sweeps.load_sweep(args.config)
    except ConfigError as e:
        print(f"vdm: config error: {e}", file=sys.stderr)
        return 2
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    if args.slurm:
        os.makedirs(args.root, exist_ok=True)
        sweeps.slurm_script(args.config, points, args.root, args.slurm, args.sbatch)
        print(f"wrote {args.slurm}: {len(points)} array tasks; submit with: sbatch {args.slurm}")
        return 0
    codes = {} if args.collect_only else sweeps.run_points(args.config, points, args.root, args.parallel)
    rows = sweeps.collect(args.root, points, config_arg=args.config)
    md = os.path.join(args.root, "sweep.md")
    print(sweeps.write_table(rows, md, os.path.join(args.root, "sweep.csv"), title=f"Sweep of {args.config}"))
    print(f"wrote {md} and sweep.csv")
    failed = sorted(name for name, code in codes.items() if code != 0)
    if failed:
        print(f"sweep: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
