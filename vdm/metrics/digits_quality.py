"""Are generated digits digits? A check against sklearn's digits with stated rules.

* confidence: a logistic regression (C = 1, pixels scaled to [0, 1]) trained on
  the clean training digits; a sample counts as confident if its largest class
  probability is >= 0.9. Compared with the confident fraction on the real test
  split (0.71 for this classifier).
* class balance: the fraction of samples the classifier assigns to each class.
* near-copies: a sample is a near-copy of the training set if its Euclidean
  distance (in grey levels 0..16) to the closest training image is below the
  5th percentile of the real test digits' distances to the training set. By
  construction 5% of real held-out digits fall below it; more than twice that
  rate (10%) among the samples counts as memorising. (A rule of "closer than
  every real test digit" would fail a perfect generator with probability
  N / (N + 297) for N samples.)
"""

from __future__ import annotations

import warnings

import numpy as np

CONFIDENT = 0.9
NEAR_COPY_PERCENTILE = 5.0


def _flat(images):
    return np.asarray(images, np.float64).reshape(len(images), -1)


def _nearest_distance(a, b):
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2.min(1), 0.0))


def fit_digit_classifier(dataset):
    """Logistic regression (C = 1) on clean training digits; predict with `predict_digits`."""
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=1.0, max_iter=5000).fit(_flat(dataset.train.images) / 16.0, dataset.train.labels)


def predict_digits(clf, images):
    """Class probabilities [N, 10] for integer digits [N, 8, 8, 1]."""
    return clf.predict_proba(_flat(images) / 16.0)


def sample_quality(samples, dataset) -> dict:
    """Figures for integer samples [N, 8, 8, 1] against a digits `vdm.data.pipeline.Dataset`."""
    x_train, x_test, x_s = _flat(dataset.train.images), _flat(dataset.test.images), _flat(samples)
    clf = fit_digit_classifier(dataset)
    p_test = clf.predict_proba(x_test / 16.0)
    p_s = clf.predict_proba(x_s / 16.0)
    real_confident = float((p_test.max(1) >= CONFIDENT).mean())
    confident = float((p_s.max(1) >= CONFIDENT).mean())
    fractions = np.bincount(p_s.argmax(1), minlength=10) / len(x_s)
    test_nn = _nearest_distance(x_test, x_train)
    threshold = float(np.percentile(test_nn, NEAR_COPY_PERCENTILE))
    nn = _nearest_distance(x_s, x_train)
    return {
        "num_samples": len(x_s),
        "confident_fraction": confident,
        "real_test_confident_fraction": real_confident,
        "confidence_ratio": confident / real_confident,
        "class_fractions": fractions.tolist(),
        "min_class_fraction": float(fractions.min()),
        "max_class_fraction": float(fractions.max()),
        "near_copy_threshold": threshold,
        "min_train_distance": float(nn.min()),
        "num_near_copies": int((nn < threshold).sum()),
        "near_copy_fraction": float((nn < threshold).mean()),
        "real_test_near_copy_fraction": float((test_nn < threshold).mean()),
    }


def passes(report: dict) -> bool:
    """The acceptance rule: confident ratio >= 0.8, every class 4-20%, near-copies at most twice the real rate."""
    return (
        report["confidence_ratio"] >= 0.8
        and report["min_class_fraction"] >= 0.04
        and report["max_class_fraction"] <= 0.20
        and report["near_copy_fraction"] <= 2 * NEAR_COPY_PERCENTILE / 100
    )


def format_report(report: dict) -> str:
    fr = " ".join(f"{f:.2f}" for f in report["class_fractions"])
    return (
        f"samples confident (p>=0.9): {report['confident_fraction']:.2f} vs real test {report['real_test_confident_fraction']:.2f} "
        f"(ratio {report['confidence_ratio']:.2f}, need >= 0.80)\n"
        f"class fractions 0-9: {fr} (min {report['min_class_fraction']:.2f}, max {report['max_class_fraction']:.2f}, need 0.04-0.20)\n"
        f"near-copies: {report['num_near_copies']} of {report['num_samples']} ({report['near_copy_fraction']:.3f}) closer to "
        f"the training set than L2 {report['near_copy_threshold']:.2f}, the 5th percentile of real test digits "
        f"(real: {report['real_test_near_copy_fraction']:.3f}; need <= 0.10); closest {report['min_train_distance']:.2f}\n"
        f"sample check: {'PASS' if passes(report) else 'FAIL'}"
    )


def main(argv=None) -> int:
    """python -m vdm.metrics.digits_quality WORKDIR: checks WORKDIR/samples.npz, prints the figures, writes sample_check.json.

    Exit code 0 if the samples pass, 1 (with what to try) if they fail or samples.npz is damaged, 2 if there are none.
    """
    import json
    import os
    import sys

    from vdm.data.pipeline import load_dataset

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m vdm.metrics.digits_quality WORKDIR", file=sys.stderr)
        return 2
    path = os.path.join(args[0], "samples.npz")
    if not os.path.exists(path):
        print(f"vdm: no samples at {path}; train first (make demo)", file=sys.stderr)
        return 2
    try:
        with np.load(path) as f:
            samples = f["samples"]
    except Exception as e:  # noqa: BLE001  (a cut or garbled .npz: zipfile, zlib, pickle or key errors)
        print(f"vdm: {path} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:120]}); it is rebuilt by "
              f"`python -m vdm.main --workdir={args[0]} --mode=eval`", file=sys.stderr)
        return 1
    report = sample_quality(samples, load_dataset("digits"))
    out = os.path.join(args[0], "sample_check.json")
    with open(out + ".tmp", "w") as f:  # then renamed: a kill never leaves half a file
        json.dump(report, f, indent=2)
    os.replace(out + ".tmp", out)
    print(format_report(report))
    grid = os.path.join(args[0], "samples_final.png")
    if os.path.exists(grid):
        print(f"samples={os.path.abspath(grid)} (the first 100 of {report['num_samples']})")
    if passes(report):
        return 0
    print(f"vdm: the samples in {args[0]} fail the digit check. Try: train longer "
          "(--config.training.num_steps=N with a new --workdir), check that the run was not stopped early by "
          "training.max_seconds (metrics.jsonl, results.json 'step'), or sample with more steps "
          f"(python -m vdm.main --workdir={args[0]} --config=<its config> --mode=sample --steps=250)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
