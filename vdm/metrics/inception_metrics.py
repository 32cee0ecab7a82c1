"""Inception Score and precision / recall on Inception features (FID and KID: `vdm.metrics.feature_distances`).

    IS   = exp(E_x KL(p(y | x) || p(y))), p(y | x) = softmax of the 1008 logits, p(y) the split's mean;
           the mean and s.d. over 10 equal splits (Salimans et al. 2016; the TF code's convention).
    precision, recall (Kynkäänniemi et al. 2019, k = 3): each real feature r_j gets the ball of radius
           |r_j - NN_k(r_j)| (its k-th nearest other real feature), each generated one likewise;
           precision = fraction of generated features inside some real ball,
           recall    = fraction of real features inside some generated ball.

Distances are computed in blocks of rows with jnp (on the accelerator when there is one), float32:
|a|^2 + |b|^2 - 2 a.b, clipped at 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, s.d.) over `splits` equal consecutive parts of logits [N, C] of exp(mean_x KL(p(y|x) || p(y)))."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ValueError(f"the Inception Score over {splits} splits needs >= {splits} samples, got {len(logits)}")
    log_p = logits - logits.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(part).mean(0))
        scores.append(np.exp((np.exp(part) * (part - log_marginal)).sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


@jax.jit
def _squared_distances(a, b):
    d = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d, 0.0)


def _blocks(n: int, block: int):
    return [(i, min(i + block, n)) for i in range(0, n, block)]


def knn_radii(feats, k: int = 3, block: int = 1000) -> np.ndarray:
    """Squared distance of each row of feats [N, F] to its k-th nearest other row [N] (the row itself excluded)."""
    f = jnp.asarray(feats, jnp.float32)
    if len(f) <= k:
        raise ValueError(f"k = {k} nearest neighbours need more than {k} points, got {len(f)}")
    out = []
    for lo, hi in _blocks(len(f), block):
        d = _squared_distances(f[lo:hi], f)
        out.append(-np.asarray(jax.lax.top_k(-d, k + 1)[0][:, k]))  # the k + 1 smallest: the row itself, then k others
    return np.concatenate(out)


def _inside_some_ball(points, centres, radii, block: int) -> np.ndarray:
    p, c, r = (jnp.asarray(x, jnp.float32) for x in (points, centres, radii))
    return np.concatenate([np.asarray(jnp.any(_squared_distances(p[lo:hi], c) <= r[None, :], axis=1))
                           for lo, hi in _blocks(len(p), block)])


def precision_recall(real, fake, k: int = 3, block: int = 1000) -> tuple[float, float]:
    """(precision, recall) of generated features fake [M, F] against real [N, F], k-NN balls (k = 3)."""
    real_radii, fake_radii = knn_radii(real, k, block), knn_radii(fake, k, block)
    precision = float(_inside_some_ball(fake, real, real_radii, block).mean())
    recall = float(_inside_some_ball(real, fake, fake_radii, block).mean())
    return precision, recall
