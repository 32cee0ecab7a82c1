"""The digit sample check: real held-out digits pass, copies of training digits and noise fail."""

import numpy as np

from vdm import data, digits_quality


def test_real_digits_pass_copies_and_noise_fail():
    ds = data.load_dataset("digits")
    real = digits_quality.sample_quality(ds.test.images, ds)
    assert digits_quality.passes(real) and abs(real["real_test_near_copy_fraction"] - 0.05) < 0.01
    copies = digits_quality.sample_quality(ds.train.images[:300], ds)
    assert copies["near_copy_fraction"] == 1.0 and not digits_quality.passes(copies)
    noise = np.random.default_rng(0).integers(0, 17, (300, 8, 8, 1))
    assert not digits_quality.passes(digits_quality.sample_quality(noise, ds))
