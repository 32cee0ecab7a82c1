"""The digit sample check: real held-out digits pass, copies of training digits and noise fail."""

import numpy as np

from vdm.data import pipeline as data
from vdm.metrics import digits_quality


def test_real_digits_pass_copies_and_noise_fail():
    ds = data.load_dataset("digits")
    real = digits_quality.sample_quality(ds.test.images, ds)
    assert digits_quality.passes(real) and abs(real["real_test_near_copy_fraction"] - 0.05) < 0.01
    copies = digits_quality.sample_quality(ds.train.images[:300], ds)
    assert copies["near_copy_fraction"] == 1.0 and not digits_quality.passes(copies)
    noise = np.random.default_rng(0).integers(0, 17, (300, 8, 8, 1))
    assert not digits_quality.passes(digits_quality.sample_quality(noise, ds))


def test_a_mode_collapsed_set_of_real_digits_fails_on_class_balance_alone():
    """Real test digits of three classes only (each sample confident, none a near-copy): only the class-balance
    rule can reject it, and it must; with every class present the same digits pass."""
    ds = data.load_dataset("digits")
    keep = np.isin(ds.test.labels, [0, 1, 2])
    collapsed = digits_quality.sample_quality(ds.test.images[keep], ds)
    assert collapsed["confident_fraction"] >= 0.8 * collapsed["real_test_confident_fraction"]
    assert collapsed["near_copy_fraction"] <= 0.10 and collapsed["min_class_fraction"] == 0.0
    assert not digits_quality.passes(collapsed)
    assert digits_quality.passes(digits_quality.sample_quality(ds.test.images, ds))


def test_the_check_exits_1_with_what_to_try_when_samples_fail(tmp_path, capsys):
    ds = data.load_dataset("digits")
    np.savez(tmp_path / "samples.npz", samples=ds.test.images)
    assert digits_quality.main([str(tmp_path)]) == 0
    assert "sample check: PASS" in capsys.readouterr().out
    np.savez(tmp_path / "samples.npz", samples=np.random.default_rng(0).integers(0, 17, (300, 8, 8, 1)))
    assert digits_quality.main([str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "sample check: FAIL" in captured.out and "Try: train longer" in captured.err
