"""The benchmark's results as markdown, and merging a run's rows into an earlier results file.

`table(results)` renders what `python -m experiments.benchmark` measured (rows per config x
impl x dtype, the official side by side, steps timed in turn, the ablation); `merge(path, new)`
adds a run's rows to a results JSON of the same device (`--merge`).
"""

from __future__ import annotations

import json


def merge(path: str, new: dict) -> dict:
    """`new`'s rows added to the results stored at `path` (rows of the same name replaced); refuses another device."""
    with open(path) as f:
        old = json.load(f)
    if old.get("device") != new["device"]:
        raise SystemExit(f"--merge: {path} was measured on {old.get('device')!r}, this is {new['device']!r}")
    for key in ("configs", "ablation", "official", "interleaved"):
        old.setdefault(key, {}).update(new[key])
    return old


def _per_nfe(r) -> str:
    per = r.get("sampler_ms_per_nfe") or {}
    return " / ".join(f"{per[k]:.1f}" for k in ("dpm_solver_pp_2m", "dpm_solver_pp_3m") if k in per) or "-"


def table(results) -> str:
    lines = [f"Device: {results['device']}, jax {results.get('jax', '?')}; float32 peaks: matmul "
             f"{results['peaks']['matmul_gflops']:.0f} GFLOP/s, 3x3 conv {results['peaks']['conv3x3_gflops']:.0f} GFLOP/s",
             "", "| config | impl | dtype | img/s | compile s | GFLOP/s | of conv peak | peak MB | sampler ms/step "
             "| DPM-Solver++ 2M / 3M ms/NFE | eval img/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["configs"].items():
        lines.append(f"| {name.split()[0]} | {r.get('impl', '')} | {r.get('dtype', 'float32')} | "
                     f"{r['images_per_second']:.2f} | {r['compile_seconds']:.1f} | {r['gflops_per_second']:.0f} | "
                     f"{r['conv_peak_fraction']:.0%} | {r['peak_bytes'] / 2**20:.0f} | {r['sampler_ms_per_step']:.1f} | "
                     f"{_per_nfe(r)} | {r['eval_images_per_second']:.0f} |")
    if results.get("official"):
        lines += ["", "Official implementation side by side (same machine, same sitting, calls interleaved):", "",
                  "| config | ours img/s | official img/s | ratio |", "|---|---|---|---|"]
        for name, o in results["official"].items():
            lines.append(f"| {name} | {o['ours_images_per_second']:.2f} | {o['official_images_per_second']:.2f} | "
                         f"{o['ratio']:.2f}x |")
    if results.get("interleaved"):
        lines += ["", "Train steps timed in turn (one compiled call of each setting in turn, median; ratios to the "
                  "float32 setting of the same impl, else to the first):", "", "| config | setting | img/s | ratio |",
                  "|---|---|---|---|"]
        for name, entry in results["interleaved"].items():
            rates = entry["images_per_second"]
            base = [r for label, r in rates.items() if label.endswith("float32")]
            first = base[0] if len(base) == 1 else next(iter(rates.values()))
            for label, rate in rates.items():
                lines.append(f"| {name} | {label} | {rate:.2f} | {rate / first:.2f}x |")
    if results["ablation"]:
        lines += ["", "| config | switch | img/s on | img/s off | compile s on | compile s off |", "|---|---|---|---|---|---|"]
        for name, switches in results["ablation"].items():
            for switch, row in switches.items():
                lines.append(f"| {name} | {switch} | {row['on']['images_per_second']:.2f} | "
                             f"{row['off']['images_per_second']:.2f} | {row['on']['compile_seconds']:.1f} | "
                             f"{row['off']['compile_seconds']:.1f} |")
    return "\n".join(lines) + "\n"
