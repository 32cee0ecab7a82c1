"""Classifier-free and classifier guidance on digits: requested-class accuracy per guidance weight.

    python -m experiments.guidance_digits [--workdir=runs/digits_conditional] [--per_class=100]
        [--sampler=dpm_solver_pp_2m --steps=20 --weights=0,3 --scales=]

1. trains `configs/digits.py:conditional` in the workdir (resumes it; skipped when finished);
2. classifier-free guidance: for each w, `per_class` samples of every class with
   ε̃ = (1 + w) ε̂(z, y) − w ε̂(z, ∅);
3. classifier guidance: trains a noise-conditional classifier p(y | z_t, γ_t) on
   noisy training digits (the model's own schedule), then samples the model's
   unconditional mode (null label) with ε̃ = ε̂(z, ∅) − s σ_t ∇ log p(y | z_t);
4. judges every sample with a logistic regression trained on clean digits
   (`vdm.metrics.digits_quality`): the fraction assigned the requested class, with its
   binomial standard error.

Writes results/guidance_digits.{md,json} and one PNG grid per setting
(results/guidance_digits_<kind>_<weight>.png: 10 samples of each class, one class per row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm import sampling
from vdm.config.validation import load_config_file
from vdm.data import pipeline as data
from vdm.metrics import digits_quality
from vdm.sampling import guidance
from vdm.training import classifier, distributed, loop, outputs, workdirs


def _generate(model, eps_hat_fn, params, key, n, steps, sampler="ancestral"):
    k_sample, k_decode = jax.random.split(key)
    z_0 = sampling.get_sampler(sampler)(k_sample, eps_hat_fn, model.gamma_fn(params), (n, *model.image_shape), steps)
    return sampling.decode(z_0, model.gamma_fn(params)(jnp.zeros((1,)))[0], model.vocab_size, k_decode)


def _judge(clf, samples, labels):
    predicted = digits_quality.predict_digits(clf, samples).argmax(1)
    hits = predicted == labels
    per_class = [float(hits[labels == k].mean()) for k in range(10)]
    p = float(hits.mean())
    return {"accuracy": p, "stderr": float(np.sqrt(p * (1 - p) / len(hits))), "min_class_accuracy": min(per_class),
            "per_class": per_class}


def _grid(samples, labels, path):
    rows = np.concatenate([samples[labels == k][:10] for k in range(10)])
    outputs.save_image_grid(rows, 17, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="runs/digits_conditional")
    ap.add_argument("--per_class", type=int, default=100)
    ap.add_argument("--sampler", default="ancestral", help="a name in vdm.sampling.SAMPLERS (e.g. dpm_solver_pp_2m)")
    ap.add_argument("--steps", type=int, default=100, help="sampler steps (DPM-Solver++: network evaluations)")
    ap.add_argument("--weights", default="0,1,3", help="classifier-free weights w")
    ap.add_argument("--scales", default="0,1,3", help="classifier-guidance scales s")
    ap.add_argument("--classifier_steps", type=int, default=1500)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    config = load_config_file("configs/digits.py", "conditional")
    distributed.use_cpu_devices(config.cpu.devices)  # before any JAX computation (cpu.devices = 2 since 2026-12-02)
    start = time.time()
    results = loop.train_and_evaluate(config, args.workdir)
    _, model, params = workdirs.load_run(args.workdir)
    ds = data.load_dataset("digits")
    clf = digits_quality.fit_digit_classifier(ds)
    real = _judge(clf, ds.test.images, ds.test.labels)
    labels = np.repeat(np.arange(10), args.per_class)
    os.makedirs(args.out, exist_ok=True)
    rows = []

    def guided_row(kind, symbol, weight, eps, picture):
        """Samples of every requested class with the guided eps, judged; a grid PNG; one row appended and printed."""
        t = time.time()
        samples = np.asarray(jax.jit(lambda k: _generate(model, eps, params, k, len(labels), args.steps,
                                                         args.sampler))(jax.random.key(1)))
        res = _judge(clf, samples, labels)
        _grid(samples, labels, os.path.join(args.out, picture))
        rows.append({"kind": kind, "weight": weight, **res, "seconds": time.time() - t})
        print(f"{kind}{' guidance' if kind == 'classifier' else ''} {symbol}={weight:g}: requested class "
              f"{res['accuracy']:.3f} ± {res['stderr']:.3f} (worst class {res['min_class_accuracy']:.2f}), "
              f"{time.time() - t:.0f} s", flush=True)

    for w in [float(x) for x in args.weights.split(",")]:
        guided_row("classifier-free", "w", w, model.guided_eps_hat_fn(params, jnp.asarray(labels), w),
                   f"guidance_digits_cfg_w{w:g}.png")

    scales = [float(x) for x in args.scales.split(",") if x]
    noisy_accuracy = {}
    if scales:  # classifier guidance: a noise-conditional classifier first
        t = time.time()
        net, clf_params = classifier.train_noisy_classifier(
            jax.random.key(2), ds.train.images, ds.train.labels, 17, model.gamma_fn(params), 10,
            num_steps=args.classifier_steps, gamma_min=config.schedule.gamma_min, gamma_max=config.schedule.gamma_max)
        noisy_accuracy = {f"t={tt}": classifier.classifier_accuracy(net, clf_params, ds.test.images, ds.test.labels, 17,
                                                                  model.gamma_fn(params), tt, jax.random.key(3))
                          for tt in (0.0, 0.3, 0.5, 0.7, 0.9)}
        print(f"noise-conditional classifier: test accuracy {noisy_accuracy} ({time.time() - t:.0f} s)", flush=True)
        log_prob = classifier.noisy_classifier_log_prob_fn(net, clf_params)
        for s in scales:
            eps = guidance.classifier_guided_eps_hat_fn(model.eps_hat_fn(params), log_prob, jnp.asarray(labels), s)
            guided_row("classifier", "s", s, eps, f"guidance_digits_classifier_s{s:g}.png")

    summary = {"rows": rows, "real_test_digits_accuracy": real["accuracy"], "model_test_bpd": results["test_bpd"],
               "noisy_classifier_accuracy": noisy_accuracy, "samples_per_class": args.per_class,
               "sampler": f"{args.sampler}, {args.steps} steps", "seconds": time.time() - start,
               "command": "python -m experiments.guidance_digits " + " ".join(sys.argv[1:])}
    outputs.write_json(os.path.join(args.out, "guidance_digits.json"), summary)
    lines = [
        "# Guidance on digits: does the sample show the requested class?",
        "",
        f"Model: `configs/digits.py:conditional` (test bpd {results['test_bpd']:.3f}, labels dropped 15% of the time). "
        f"{args.per_class} samples per class per row, sampler {args.sampler} with {args.steps} steps. Judge: logistic "
        f"regression on clean training digits, which labels {real['accuracy']:.3f} of the real test digits correctly.",
        "",
        "| guidance | weight | requested class | ± s.e. | worst class |",
        "|---|---|---|---|---|",
        *[f"| {r['kind']} | {r['weight']:g} | {r['accuracy']:.3f} | {r['stderr']:.3f} | {r['min_class_accuracy']:.2f} |"
          for r in rows],
        "",
        "Classifier-free: ε̃ = (1 + w) ε̂(z, y) − w ε̂(z, ∅); w = 0 is the plain conditional model. "
        "Classifier: ε̃ = ε̂(z, ∅) − s σ_t ∇ log p(y | z_t); s = 0 is the unconditional model "
        "(so its accuracy is the chance that an unconditional sample happens to show the requested class).",
        "",
        "Noise-conditional classifier test accuracy by t: "
        + ", ".join(f"{k} {v:.2f}" for k, v in noisy_accuracy.items()),
        "",
        f"Command: `{summary['command']}` ({summary['seconds'] / 60:.0f} min on this machine, training included).",
    ]
    with open(os.path.join(args.out, "guidance_digits.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
