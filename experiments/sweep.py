"""Run a config's sweep (its `get_sweep()` points) and collect the results into a table.

Run:
  python -m experiments.sweep --config=configs/repro.py:steps --root=runs/sweeps/steps [--parallel=2]
  python -m experiments.sweep --config=... --root=... --slurm=sweep.sbatch [--sbatch="--gres=gpu:1"]
  python -m experiments.sweep --config=... --root=... --collect_only

Points whose workdir has results.json are skipped; interrupted ones resume.
Writes <root>/sweep.md and <root>/sweep.csv (one row per point: its overrides,
test bits/dim with its standard error, steps and training seconds). Exits 1
if a point failed (its log is <root>/<point>/sweep.log).

A sweep is a list of config overrides, run as separate `vdm.main` runs and collected into one table.
A config file may define ``get_sweep(arg=None) -> list[dict]``, each dict a
point ``{"loss.num_steps": 10, "training.seed": 0}``. Point p runs

    python -m vdm.main --config=<config> --workdir=<root>/<name(p)> --config.loss.num_steps=10 ...

and is finished when its workdir holds `results.json` (`vdm.training.loop`), so running a
sweep again skips finished points and resumes interrupted ones from their last
checkpoint. `collect` reads every point's results.json into rows; `write_table`
writes them as markdown and CSV. `slurm_script` writes an array job instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time

from vdm.config.validation import ConfigError, apply_overrides, load_config_file, load_config_module

__all__ = ["load_sweep", "point_name", "run_points", "collect", "write_table", "slurm_script", "mean_and_stderr"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: runs start in its root


def load_sweep(config_arg: str) -> list[dict]:
    """The points of `get_sweep(variant)` in the config file `path[:variant]`, each checked against the config."""
    path, _, variant = config_arg.partition(":")
    base = load_config_file(path, variant or None)
    module = load_config_module(path)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{path} defines no get_sweep(); a sweep config returns a list of override dicts")
    points = module.get_sweep(variant or None)
    if not points or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{path}: get_sweep() must return a non-empty list of dicts, got {points!r}")
    for p in points:
        apply_overrides(base.copy_and_resolve_references(), p)  # a bad key or value fails here, naming it
    names = [point_name(p) for p in points]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: get_sweep() has repeated points: {sorted(n for n in names if names.count(n) > 1)}")
    return points


def point_name(point: dict) -> str:
    """Directory name of a point: 'num_steps=10,seed=0' (last key parts; full keys where those collide)."""
    short = [k.rsplit(".", 1)[-1] for k in point]
    keys = short if len(set(short)) == len(short) else list(point)
    text = ",".join(f"{k}={_text(v)}" for k, v in zip(keys, point.values()))
    return text.replace("/", "_").replace(" ", "") or "default"


def _text(value) -> str:
    return str(value) if not isinstance(value, (tuple, list)) else "x".join(map(str, value))


def _override_args(point: dict) -> list[str]:
    return [f"--config.{k}={_text(v) if isinstance(v, str) else repr(v)}" for k, v in point.items()]


def command(config_arg: str, root: str, point: dict, python: str = sys.executable) -> list[str]:
    """The `vdm.main` command line of one point."""
    workdir = os.path.abspath(os.path.join(root, point_name(point)))
    path, sep, variant = config_arg.partition(":")
    config_arg = os.path.abspath(path) + sep + variant  # runs start in the repository root
    return [python, "-m", "vdm.main", f"--config={config_arg}", f"--workdir={workdir}", *_override_args(point)]


def point_config(config_arg: str, point: dict):
    """The resolved config a point runs: the config file `path[:variant]` with the point's overrides."""
    path, _, variant = config_arg.partition(":")
    return apply_overrides(load_config_file(path, variant or None), point)


def stale_differences(config_arg: str, root: str, point: dict) -> list:
    """`workdirs.config_differences` between the point's config and its workdir's config.json ([]: none there)."""
    from vdm.training import workdirs

    workdir = os.path.join(root, point_name(point))
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return []
    return workdirs.config_differences(point_config(config_arg, point), workdirs.load_config(workdir))


def is_finished(root: str, point: dict) -> bool:
    return os.path.exists(os.path.join(root, point_name(point), "results.json"))


def run_points(config_arg: str, points: list[dict], root: str, parallel: int = 1, env: dict | None = None,
               log=print) -> dict:
    """Runs the unfinished points, `parallel` at a time; returns {name: exit code} of those run.

    A point whose workdir holds a run of another config (`stale_differences`) is not
    run and not counted as finished: it is logged and gets exit code 1.

    Each point's output goes to <root>/<name>/sweep.log. Progress is logged one
    line per start and finish.
    """
    from vdm.training import workdirs

    os.makedirs(root, exist_ok=True)
    running, codes, todo = {}, {}, []
    for p in points:  # a workdir answers only for the config it was trained with (the rule of vdm.training.workdirs)
        differences = stale_differences(config_arg, root, p)
        if differences:
            codes[point_name(p)] = 1
            log(f"sweep: {point_name(p)} NOT RUN: {os.path.join(root, point_name(p))} holds a run of another config: "
                f"{workdirs.describe_differences(differences)}; delete it or use another --root")
        elif not is_finished(root, p):
            todo.append(p)
    skipped = len(points) - len(todo) - len(codes)
    log(f"sweep: {len(points)} points, {skipped} already finished, {len(todo)} to run, {parallel} at a time"
        + (f", {len(codes)} stale (not run)" if codes else ""))
    environment = {**os.environ, **(env or {})}  # children import the installed vdm (pip install -e . or a wheel)
    done = 0
    while todo or running:
        while todo and len(running) < parallel:
            point = todo.pop(0)
            name = point_name(point)
            os.makedirs(os.path.join(root, name), exist_ok=True)
            with open(os.path.join(root, name, "sweep.log"), "ab") as out:
                proc = subprocess.Popen(command(config_arg, root, point), stdout=out, stderr=subprocess.STDOUT,
                                        cwd=ROOT, env=environment)
            running[name] = (proc, time.time())
            log(f"sweep: started {name}")
        time.sleep(0.5)
        for name, (proc, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            done += 1
            codes[name] = proc.returncode
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {root}/{name}/sweep.log)"
            result = _read_results(os.path.join(root, name))
            bpd = f" test_bpd={result['test_bpd']:.4f}" if result and proc.returncode == 0 else ""
            log(f"sweep: [{done}/{done + len(running) + len(todo)}] {name} {status}{bpd} ({time.time() - start:.0f} s)")
    return codes


def _read_results(workdir: str):
    path = os.path.join(workdir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def collect(root: str, points: list[dict], fields=("test_bpd", "test_bpd_stderr", "step", "train_seconds"),
            config_arg: str | None = None) -> list[dict]:
    """One row per point: its overrides, then `fields` of its results.json (None where unfinished).

    With `config_arg`, a point whose workdir holds a run of another config gets None too.
    """
    rows = []
    for point in points:
        stale = config_arg is not None and stale_differences(config_arg, root, point)
        result = {} if stale else _read_results(os.path.join(root, point_name(point))) or {}
        rows.append({**point, **{f: result.get(f) for f in fields}})
    return rows


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return _text(value)


def write_table(rows: list[dict], md_path: str, csv_path: str | None = None, title: str = "") -> str:
    """Writes rows as a markdown table (and CSV); returns the markdown."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ([f"# {title}", ""] if title else []) + [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
    with open(md_path, "w") as f:
        f.write(text)
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return text


def slurm_script(config_arg: str, points: list[dict], root: str, path: str, sbatch_options=()) -> str:
    """Writes a SLURM array job (one task per point) to `path`; returns its text.

    Each task runs its point's `vdm.main` command; SLURM sends SIGTERM 120 s
    before the time limit, the run checkpoints and exits 75, and `--requeue`
    plus re-running the same script resumes it. Submit with `sbatch <path>`.
    """
    abs_root = os.path.abspath(root)
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=vdm-sweep-{os.path.basename(abs_root.rstrip('/'))}",
        f"#SBATCH --array=0-{len(points) - 1}",
        f"#SBATCH --output={abs_root}/slurm-%A_%a.out",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        *(f"#SBATCH {opt}" for opt in sbatch_options),
        "set -euo pipefail",
        f"cd {shlex.quote(ROOT)}",
        "COMMANDS=(",
        *(f"  {shlex.quote(shlex.join(command(config_arg, abs_root, p, python='python')))}" for p in points),
        ")",
        'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"',
        "",
    ]
    text = "\n".join(lines)
    with open(path, "w") as f:
        f.write(text)
    return text


def mean_and_stderr(values) -> tuple[float, float]:
    """Mean and standard error (std with ddof=1 over sqrt(n)); stderr is nan for one value."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


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
        points = load_sweep(args.config)
    except ConfigError as e:
        print(f"vdm: config error: {e}", file=sys.stderr)
        return 2
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    if args.slurm:
        os.makedirs(args.root, exist_ok=True)
        slurm_script(args.config, points, args.root, args.slurm, args.sbatch)
        print(f"wrote {args.slurm}: {len(points)} array tasks; submit with: sbatch {args.slurm}")
        return 0
    codes = {} if args.collect_only else run_points(args.config, points, args.root, args.parallel)
    rows = collect(args.root, points, config_arg=args.config)
    md = os.path.join(args.root, "sweep.md")
    print(write_table(rows, md, os.path.join(args.root, "sweep.csv"), title=f"Sweep of {args.config}"))
    print(f"wrote {md} and sweep.csv")
    failed = sorted(name for name, code in codes.items() if code != 0)
    if failed:
        print(f"sweep: {len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
