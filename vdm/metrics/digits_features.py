"""Features of 8x8 digits for FD-digits and KID-digits: the penultimate layer of a small classifier.

The classifier is an MLP 64 -> 128 -> 64 -> 10 (ReLU) on pixels / 16, trained once on the
digits training split with full-batch AdamW (2000 steps, learning rate 1e-3, weight decay 1e-3)
from jax.random.key(0): the same weights on every run of a machine. It classifies 98.0% of
the 297 test digits correctly (291; measured 2026-12-03) (`test_accuracy` in its cache; tests require >= 97%). Its weights are cached
as `vdm_digits_features_v2.npz` in the data dir (TFDS_DATA_DIR or ~/tensorflow_datasets, as the
dataset), so every measurement uses the same features. The features are divided by one constant,
their root-mean-square over the training digits, so a real digit's features have mean square ~1
per dimension: the scale at which KID's kernel (x.y / F + 1)^3 is not dominated by the largest norms.

    features = digits_features()          # callable: integer images [N, 8, 8, 1] in 0..16 -> [N, 64]
    fd = frechet_distance(features(samples), features(test_images))
"""

from __future__ import annotations

import functools
import os

import numpy as np

CACHE_NAME = "vdm_digits_features_v2.npz"
HIDDEN = (128, 64)
STEPS, LEARNING_RATE, WEIGHT_DECAY, SEED = 2000, 1e-3, 1e-3, 0
VOCAB = 17


def _flat(images):
    return np.asarray(images, np.float32).reshape(len(images), -1) / (VOCAB - 1)


def _forward(params, x):
    """(logits [N, 10], penultimate features [N, 64]) of pixels x [N, 64] in [0, 1]; params: a list of (w, b)."""
    import jax

    h = x
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b, h


def train_classifier(images, labels):
    """MLP weights [(w, b), ...] (numpy float32) for integer digits [N, 8, 8, 1] and labels [N]; deterministic."""
    import jax
    import jax.numpy as jnp
    import optax

    x, y = jnp.asarray(_flat(images)), jnp.asarray(labels, jnp.int32)
    sizes = (x.shape[1], *HIDDEN, 10)
    keys = jax.random.split(jax.random.key(SEED), len(sizes) - 1)
    params = [(jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i), jnp.zeros(o)) for k, i, o in zip(keys, sizes, sizes[1:])]
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_forward(p, x)[0], y).mean()

    @jax.jit
    def fit(params):
        def step(carry, _):
            p, s = carry
            updates, s = tx.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (params, tx.init(params)), None, length=STEPS)[0][0]

    return [(np.asarray(w), np.asarray(b)) for w, b in fit(params)]


def _predict(params, images, scale: float = 1.0):
    """(logits [N, 10], features [N, 64] / scale) of integer digits."""
    logits, feats = _forward([(np.asarray(w), np.asarray(b)) for w, b in params], _flat(images))
    return np.asarray(logits), np.asarray(feats, np.float64) / scale


def cache_path(data_dir: str | None = None) -> str:
    from vdm.data.datasets import default_data_dir

    return os.path.join(data_dir or default_data_dir(), CACHE_NAME)


@functools.lru_cache(maxsize=4)
def load_classifier(data_dir: str | None = None):
    """(params, feature scale, test accuracy): from the cache in the data dir, or trained on the digits
    training split and cached."""
    path = cache_path(data_dir)
    if os.path.exists(path):
        try:
            with np.load(path) as f:
                n = len(HIDDEN) + 1
                return [(f[f"w{i}"], f[f"b{i}"]) for i in range(n)], float(f["scale"]), float(f["test_accuracy"])
        except Exception as e:  # noqa: BLE001  (a cut or garbled cache: zipfile, zlib or key errors) -> rebuilt
            import sys

            print(f"vdm: {path} is damaged ({type(e).__name__}); training the digits classifier again to rebuild it",
                  file=sys.stderr, flush=True)
    from vdm.data.pipeline import load_dataset

    data = load_dataset("digits", data_dir)
    params = train_classifier(data.train.images, data.train.labels)
    scale = float(np.sqrt(np.mean(np.square(_predict(params, data.train.images)[1]))))
    accuracy = float((_predict(params, data.test.images)[0].argmax(1) == data.test.labels).mean())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, test_accuracy=accuracy, scale=scale,
             **{f"{k}{i}": a for i, wb in enumerate(params) for k, a in zip("wb", wb)})
    os.replace(tmp, path)  # atomic: concurrent writers leave one complete file
    return params, scale, accuracy


def digits_features(data_dir: str | None = None):
    """features(images [N, 8, 8, 1] ints 0..16) -> [N, 64] float64: the classifier's penultimate layer."""
    params, scale, _ = load_classifier(data_dir)
    return lambda images: _predict(params, images, scale)[1]


def digits_logits(images, data_dir: str | None = None):
    """The classifier's logits [N, 10] (its accuracy is the check that the features mean something)."""
    return _predict(load_classifier(data_dir)[0], images)[0]
