"""Distances between two sets of features: Fréchet distance (FID's formula) and kernel inception distance (KID).

Both take features [N, F] and [M, F] from any `features(images) -> [N, F]` callable: the
digits classifier of `vdm.metrics.digits_features` here, Inception-v3's pool features for
CIFAR-10 FID (docs/sampling.md, "Sample quality").

    FD   = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2))
           (Fréchet / 2-Wasserstein distance of the two Gaussians with the sets' means and covariances;
           Heusel et al. 2017). Biased upwards by finite samples: compare values at equal sizes.
    KID  = unbiased MMD^2 with the kernel k(x, y) = (x.y / F + 1)^3 (Bińkowski et al. 2018) over all
           pairs, summed in blocks, with a delete-one-block jackknife standard error.
"""

from __future__ import annotations

import numpy as np


def _mean_cov(feats):
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"features must be [N >= 2, F], got shape {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(a):
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(0.5 * (a + a.T))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu_a, cov_a, mu_b, cov_b) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), float64.

    tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2) (same eigenvalues as S_a S_b): no complex sqrtm.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0.0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_cross)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between the Gaussians fitted (mean, unbiased covariance) to feats_a [N, F] and feats_b [M, F]."""
    return frechet_from_moments(*_mean_cov(feats_a), *_mean_cov(feats_b))


def _kernel(x, y):
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 of x [m, F] and y [n, F] under the cubic kernel (diagonal terms left out of the within-set means)."""
    m, n = len(x), len(y)
    kxx, kyy = _kernel(x, x), _kernel(y, y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * _kernel(x, y).mean())


def _block_sums(x_blocks, y_blocks, drop_diagonal: bool):
    """S[a, b] = sum of k(x, y) over x in block a, y in block b [B, B]; without k(x_i, x_i) when drop_diagonal."""
    sums = np.zeros((len(x_blocks), len(y_blocks)))
    for a, x in enumerate(x_blocks):
        for b, y in enumerate(y_blocks):
            k = _kernel(x, y)
            sums[a, b] = k.sum() - (np.trace(k) if drop_diagonal and a == b else 0.0)
    return sums


def kid(feats_a, feats_b, num_blocks: int = 10, seed: int = 0) -> tuple[float, float]:
    """(KID, its standard error): the unbiased MMD^2 of all of feats_a [N, F] and feats_b [M, F], cubic kernel.

    Computed in blocks: both sets are shuffled (numpy Generator(seed)) and split into num_blocks
    nearly equal blocks; the kernel is summed block pair by block pair (memory O((N / blocks)^2)).
    The standard error is the delete-one-block jackknife's: block j of both sets left out,
    se^2 = (B - 1) / B sum_j (KID_(-j) - mean_j KID_(-j))^2. The estimate does not depend on seed.
    """
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be [N, F] and [M, F]; got {a.shape} and {b.shape}")
    if num_blocks < 2 or min(len(a), len(b)) < 2 * num_blocks:
        raise ValueError(f"KID with {num_blocks} blocks needs >= 2 blocks of >= 2 rows; got {len(a)} and {len(b)} rows")
    rng = np.random.default_rng(seed)
    xs = np.array_split(a[rng.permutation(len(a))], num_blocks)
    ys = np.array_split(b[rng.permutation(len(b))], num_blocks)
    sxx, syy, sxy = _block_sums(xs, xs, True), _block_sums(ys, ys, True), _block_sums(xs, ys, False)
    m, n = len(a), len(b)

    def mmd(txx, tyy, txy, m, n):
        return txx / (m * (m - 1)) + tyy / (n * (n - 1)) - 2.0 * txy / (m * n)

    full = mmd(sxx.sum(), syy.sum(), sxy.sum(), m, n)
    size_x, size_y = np.array([len(x) for x in xs]), np.array([len(y) for y in ys])
    diag = np.arange(num_blocks)
    loo = mmd(sxx.sum() - 2 * sxx.sum(1) + sxx[diag, diag], syy.sum() - 2 * syy.sum(1) + syy[diag, diag],
              sxy.sum() - sxy.sum(1) - sxy.sum(0) + sxy[diag, diag], m - size_x, n - size_y)
    se = np.sqrt((num_blocks - 1) / num_blocks * np.sum((loo - loo.mean()) ** 2))
    return float(full), float(se)
