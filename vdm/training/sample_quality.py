"""--mode=sample_quality: a number for sample quality next to bits/dim, per sampler and number of network evaluations.

For each sampler and each budget of network evaluations (NFE; the sampler runs the most
steps that fit, `vdm.sampling.Sampler.steps_for`), a checkpoint's EMA parameters draw
eval.num_samples samples, and these are compared with the test split in a feature space:

    FD   Fréchet distance of the features (`vdm.metrics.feature_distances.frechet_distance`)
    KID  unbiased MMD^2, cubic kernel, 10 disjoint blocks, ± its standard error (raw units)
    ratio  the digits check's confidence ratio (`vdm.metrics.digits_quality`; digits only)
    seconds  sampling time, compile excluded (an ahead-of-time compiled program, run once)

On digits the features are `vdm.metrics.digits_features` (FD-digits, KID-digits). The first
row, `real`, is the same measure for as many real training digits as samples (at most the
1500 there are): the value of a perfect generator at this sample size, since FD is biased
upwards by finite samples. Other datasets take any features(images) -> [N, F] through
`measure` (docs/sampling.md: Inception features for CIFAR-10 FID).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import sampling
from vdm.config.validation import sampler_schedule_problem
from vdm.errors import ConfigError
from vdm.metrics import feature_distances
from vdm.training import distributed, generation, outputs
from vdm.training.run import Run


def measure(samples, reference, features, ratio_fn=None) -> dict:
    """{'fd', 'kid', 'kid_stderr'[, 'ratio']} of integer samples [N, ...] against reference images via features().

    KID over 10 disjoint blocks (fewer when a set has under 20 images: blocks of >= 2).
    """
    fs, fr = features(samples), features(reference)
    kid, kid_se = feature_distances.kid(fs, fr, num_blocks=min(10, len(fs) // 2, len(fr) // 2))
    out = {"fd": feature_distances.frechet_distance(fs, fr), "kid": kid, "kid_stderr": kid_se}
    if ratio_fn is not None:
        out["ratio"] = ratio_fn(samples)
    return out


def _digits_tools(data_dir):
    """(features, ratio_fn, dataset) for digits: the feature classifier and the digit check's confidence ratio."""
    from vdm.data.pipeline import load_dataset
    from vdm.metrics import digits_features, digits_quality

    dataset = load_dataset("digits", data_dir)
    clf = digits_quality.fit_digit_classifier(dataset)
    real = float((digits_quality.predict_digits(clf, dataset.test.images).max(1) >= digits_quality.CONFIDENT).mean())

    def ratio(samples):
        return float((digits_quality.predict_digits(clf, samples).max(1) >= digits_quality.CONFIDENT).mean()) / real

    return digits_features.digits_features(data_dir), ratio, dataset


def timed_samples(run: Run, params, key, n: int, sampler: str, steps: int, labels=None, guidance: float = 0.0):
    """(samples on the host, seconds of the sampling itself): `generation.sample` compiled ahead of time, run once."""
    compiled = generation.sample.lower(run.model, params, key, n, sampler, steps, labels, guidance, run.mesh).compile()
    start = time.perf_counter()
    samples = jax.block_until_ready(compiled(params, key, labels))
    seconds = time.perf_counter() - start
    return distributed.to_host(samples), seconds


def format_row(r: dict) -> str:
    ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
    seconds = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
    return (f"| {r['sampler']} | {r['nfe'] if r['nfe'] is not None else '-'} | {r['fd']:.2f} | "
            f"{r['kid']:.2f} ± {r['kid_stderr']:.2f} | {ratio} | {seconds} |")


TABLE_HEAD = "| sampler | NFE | FD | KID ± s.e. | digit-check ratio | seconds |\n|---|---|---|---|---|---|"


METRICS = ("auto", "digits", "inception")


def resolve_metric(dataset: str, metric: str) -> str:
    """'auto' -> 'digits' on digits (FD-digits), 'inception' elsewhere; 'digits' needs the digits dataset."""
    if metric not in METRICS:
        raise ConfigError(f"--metric={metric!r}; expected one of {list(METRICS)}")
    if metric == "auto":
        return "digits" if dataset == "digits" else "inception"
    if metric == "digits" and dataset != "digits":
        raise ConfigError(f"--metric=digits measures digits; for {dataset!r} use --metric=inception")
    return metric


def sample_quality_run(config, workdir: str, samplers, nfes, step: int | None = None, seed: int = 0,
                       guidance: float = 0.0, metric: str = "auto", num_samples: int | None = None,
                       reference_images: int = 50_000) -> dict:
    """Prints a table per sampler and NFE, writes sample_quality.json in the workdir.

    metric 'digits' (digits' default): FD, KID ± s.e., digit-check ratio, seconds against the test digits, with
    eval.num_samples samples (or num_samples); 'inception' (every other dataset's default): FID, KID, IS,
    precision / recall against the train split's Inception statistics (`vdm.training.inception_quality`),
    num_samples (default 50,000) each, reference_images train images in the reference. samplers: names in
    `vdm.sampling.SAMPLERS`; nfes: budgets of network evaluations. Samplers whose evaluations are not fixed
    (ode_adaptive) or exceed a budget are reported and skipped.
    """
    unknown = [s for s in samplers if s not in sampling.SAMPLERS]
    if unknown:
        raise ConfigError(f"--sampler={','.join(unknown)}; expected names from {list(sampling.SAMPLERS)}")
    problems = [p for p in (sampler_schedule_problem(config.schedule.name, s) for s in samplers) if p]
    if problems:
        raise ConfigError(f"--sampler={problems[0]}")
    metric = resolve_metric(config.data.name, metric)
    network = None
    if metric == "inception":
        from vdm.training import inception_quality

        network = inception_quality.Network.load(config.data.data_dir or None)  # before anything slow
    run = Run(config, workdir)
    state = run.restore(step)
    n = num_samples or (config.eval.num_samples if metric == "digits" else 50_000)
    labels = None
    if run.model.class_conditional:
        labels = jnp.asarray(np.arange(n) % run.model.num_classes, jnp.int32)
    elif guidance:
        raise ConfigError("--guidance needs a class-conditional model (model.class_conditional=True)")
    if metric == "digits":
        rows, head, measure_point, fmt, reference = _digits_measure(config, run, n, seed, labels, guidance)
    else:
        rows, head, measure_point, fmt, reference = _inception_measure(config, run, n, network, guidance, reference_images)
    if run.main:
        print("\n".join([head, *map(fmt, rows)]), flush=True)
    for name in samplers:
        entry = sampling.SAMPLERS[name]
        for nfe in nfes:
            steps = entry.steps_for(nfe)
            if steps is None:
                if run.main:
                    print(f"| {name} | {nfe} | skipped: {entry.describe(1)} does not fit {nfe} evaluations |", flush=True)
                continue
            row = {"sampler": name, "nfe": entry.nfe(steps), "steps": steps, "description": entry.describe(steps),
                   **measure_point(state.ema_params, jax.random.key(seed), name, steps)}
            rows.append(row)
            if run.main:
                print(fmt(row), flush=True)
    result = {"workdir": os.path.abspath(workdir), "step": int(state.step), "metric": metric, "num_samples": n,
              "seed": seed, "guidance": guidance, "reference": reference, "rows": rows}
    if run.main:
        path = os.path.join(workdir, "sample_quality.json")
        outputs.write_json(path, result)
        print(f"sample_quality={os.path.abspath(path)}", flush=True)
    return result


def _digits_measure(config, run, n, seed, labels, guidance):
    """FD-digits: (first rows, table head, measure(params, key, sampler, steps) -> row fields, format, reference)."""
    features, ratio_fn, dataset = _digits_tools(config.data.data_dir or None)
    test = dataset.test.images
    real = dataset.train.images[np.random.default_rng(seed).permutation(len(dataset.train.images))[:n]]
    rows = [{"sampler": "real", "nfe": None, "steps": None, "seconds": None, **measure(real, test, features, ratio_fn)}]
    head = (f"{n} samples each against the {len(test)} test digits (FD-digits, KID-digits); "
            f"'real': {len(real)} training digits\n{TABLE_HEAD}")

    def measure_point(params, key, sampler, steps):
        samples, seconds = timed_samples(run, params, key, n, sampler, steps, labels, float(guidance))
        return {"seconds": seconds, **measure(samples, test, features, ratio_fn)}

    return rows, head, measure_point, format_row, f"{len(test)} test digits"


def _inception_measure(config, run, n, network, guidance, reference_images):
    """Inception FID / KID / IS / precision-recall: the same five things as `_digits_measure`."""
    from vdm.training import inception_quality as iq

    reference = iq.reference_statistics(config, network, run.mesh, reference_images, show=run.main)
    labels_for = None
    if run.model.class_conditional:
        def labels_for(lo, hi):
            return jnp.asarray(np.arange(lo, hi) % run.model.num_classes, jnp.int32)

    def measure_point(params, key, sampler, steps):
        pool, logits, seconds = iq.sample_features(run, params, key, n, sampler, steps, labels_for or (lambda *_: None),
                                                   float(guidance), network, show=run.main)
        return {"seconds": seconds, **iq.inception_measures(pool, logits, reference)}

    described = iq.describe(reference, network, n)
    return [], f"{described}\n{iq.TABLE_HEAD}", measure_point, iq.format_row, described
