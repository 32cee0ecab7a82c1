"""Fréchet distance and KID against closed forms, and the digits features they are measured in."""

import numpy as np
import pytest
import scipy.linalg

from vdm.metrics import digits_features, feature_distances as fd

MU_1, MU_2 = np.array([0.0, 1.0, -0.5, 2.0]), np.array([0.5, 0.0, -0.5, 1.0])
A = np.array([[1.0, 0.3, 0.0, 0.1], [0.0, 0.8, 0.4, 0.0], [0.2, 0.0, 0.6, 0.3], [0.0, 0.1, 0.0, 0.9]])
COV_1, COV_2 = A @ A.T, np.diag([0.5, 2.0, 1.0, 0.3]) + 0.2


def closed_form(mu_1, cov_1, mu_2, cov_2):
    """‖μ₁−μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), with scipy's sqrtm (independent of the code under test)."""
    root = np.real(scipy.linalg.sqrtm(cov_1))
    cross = np.real(scipy.linalg.sqrtm(root @ cov_2 @ root))
    return float(np.sum((mu_1 - mu_2) ** 2) + np.trace(cov_1 + cov_2 - 2 * cross))


def test_frechet_of_the_true_moments_is_the_closed_form():
    assert fd.frechet_from_moments(MU_1, COV_1, MU_2, COV_2) == pytest.approx(closed_form(MU_1, COV_1, MU_2, COV_2), rel=1e-10)
    # commuting (diagonal) covariances: Σ (√a − √b)², and 0 for a distribution against itself
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    assert fd.frechet_from_moments(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(4 + 1, abs=1e-12)
    assert fd.frechet_from_moments(MU_1, COV_1, MU_1, COV_1) == pytest.approx(0.0, abs=1e-10)


def test_frechet_of_large_samples_matches_the_closed_form_within_sampling_error():
    """Two sets of 40,000 draws; the spread of the estimate over 8 repeats (~0.01) sets the tolerance."""
    truth = closed_form(MU_1, COV_1, MU_2, COV_2)
    rng = np.random.default_rng(0)
    estimates = [fd.frechet_distance(rng.multivariate_normal(MU_1, COV_1, 40_000), rng.multivariate_normal(MU_2, COV_2, 40_000))
                 for _ in range(8)]
    spread = np.std(estimates, ddof=1)
    assert abs(np.mean(estimates) - truth) < 4 * spread / np.sqrt(8) + 2e-3, (estimates, truth)  # bias O(F / N)
    assert spread < 0.05 * truth, (spread, truth)


def test_shifting_one_set_moves_fd_by_the_closed_form_amount():
    """FD(a + c, b) − FD(a, b) = ‖c‖² + 2 c·(μ_a − μ_b): the covariances are unchanged, exactly."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 4)) @ A.T, rng.normal(size=(300, 4)) + MU_2
    c = np.array([0.3, -1.0, 0.5, 2.0])
    moved = fd.frechet_distance(a + c, b) - fd.frechet_distance(a, b)
    assert moved == pytest.approx(c @ c + 2 * c @ (a.mean(0) - b.mean(0)), rel=1e-9)
    assert fd.frechet_distance(a, b) == pytest.approx(fd.frechet_distance(b, a), rel=1e-9)


def test_mmd_is_the_unbiased_double_sum():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.5
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(xi, yj) for xi in x for yj in y) / 35
    assert fd.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_kid_in_blocks_is_the_unbiased_mmd_of_all_pairs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(103, 5)), rng.normal(size=(41, 5)) * 1.2
    for blocks, seed in ((2, 0), (10, 1), (20, 2)):
        assert fd.kid(x, y, num_blocks=blocks, seed=seed)[0] == pytest.approx(fd.mmd2_unbiased(x, y), rel=1e-10, abs=1e-12)


def test_kid_is_zero_within_its_error_for_one_distribution_and_not_for_two():
    """The jackknife standard error is calibrated: |KID| / s.e. < 2 in ~95% of repeats (measured 96% of 200)."""
    rng = np.random.default_rng(3)
    same = [fd.kid(rng.normal(size=(1000, 8)), rng.normal(size=(300, 8)), seed=s) for s in range(20)]
    z = np.array([m / s for m, s in same])
    assert np.mean(np.abs(z) < 2) >= 0.8, z  # a biased estimator, or a too small s.e., drifts away from this
    assert 0.5 < np.std(z) < 1.6, z  # a too large s.e. shrinks z towards 0
    assert abs(np.mean([m for m, _ in same])) < 3 * np.std([m for m, _ in same]) / np.sqrt(20)
    m, s = fd.kid(rng.normal(size=(1000, 8)) + 0.3, rng.normal(size=(300, 8)))
    assert m > 4 * s, (m, s)


def test_digits_features_classify_the_test_split_and_give_near_zero_distances_between_real_halves():
    """The cached classifier's accuracy >= 97%; real digits against real digits: FD near 0, KID within 2 s.e. of 0."""
    from vdm.data.pipeline import load_dataset

    data = load_dataset("digits")
    accuracy = float((digits_features.digits_logits(data.test.images).argmax(1) == data.test.labels).mean())
    assert accuracy >= 0.97, accuracy
    features = digits_features.digits_features()
    train = features(data.train.images)
    assert train.shape == (len(data.train.images), 64)
    order = np.random.default_rng(0).permutation(len(train))
    half_a, half_b = train[order[:750]], train[order[750:]]
    even = np.isin(data.train.labels, [0, 2, 4, 6, 8])
    real_difference = fd.frechet_distance(train[even], train[~even])  # a real change of distribution
    halves = fd.frechet_distance(half_a, half_b)  # measured 0.21, vs 18.9 for even vs odd digits
    assert halves < 0.02 * real_difference, (halves, real_difference)
    m, s = fd.kid(half_a, half_b)
    assert abs(m) <= 2 * s, (m, s)
    m_diff, s_diff = fd.kid(train[even], train[~even])
    assert m_diff > 4 * s_diff, (m_diff, s_diff)


@pytest.mark.parametrize("num_blocks, sizes", [(10, (103, 97)), (4, (40, 57))])
def test_kid_standard_error_is_the_delete_one_block_jackknife(num_blocks, sizes):
    """The s.e. recomputed by brute force: the same shuffle and blocks, KID of both sets with block j left out
    (the unbiased MMD^2 of all remaining pairs), se^2 = (B - 1)/B sum_j (KID_-j - mean)^2, to 1e-10."""
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(sizes[0], 5)), rng.normal(0.3, 1.2, size=(sizes[1], 5))
    _, se = fd.kid(a, b, num_blocks=num_blocks, seed=3)
    shuffle = np.random.default_rng(3)
    xs = np.array_split(a[shuffle.permutation(len(a))], num_blocks)
    ys = np.array_split(b[shuffle.permutation(len(b))], num_blocks)
    loo = np.array([fd.mmd2_unbiased(np.concatenate(xs[:j] + xs[j + 1:]), np.concatenate(ys[:j] + ys[j + 1:]))
                    for j in range(num_blocks)])
    expected = np.sqrt((num_blocks - 1) / num_blocks * np.sum((loo - loo.mean()) ** 2))
    assert se == pytest.approx(expected, rel=1e-10, abs=1e-14)
