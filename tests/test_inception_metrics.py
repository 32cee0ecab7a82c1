"""Inception FID / KID / IS / precision-recall: closed forms on features, and --mode=sample_quality --metric=inception.

The network's equality with pytorch-fid is tests/test_inception.py; here the measures on its features.
"""

import json
import os

import jax
import numpy as np
import pytest
import scipy.linalg

from conftest import ROOT, main_in_process, tiny_config
from vdm.errors import ConfigError
from vdm.metrics import feature_distances, inception, inception_metrics, inception_weights
from vdm.training import inception_quality

TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def random_network():
    names = inception_weights.network_names_and_shapes()
    return inception_weights.variables_from_state_dict(inception_weights.random_state_dict(names, 0))


def _frechet_by_sqrtm(a, b):
    """The textbook formula with scipy's matrix square root (pytorch-fid's calculate_frechet_distance)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))


def test_fid_of_two_halves_of_cifar_shaped_data_is_the_frechet_formula(random_network):
    """32 synthetic 32x32x3 images (smooth random fields), split in two halves of different brightness, through the
    network (stand-in weights): our FID (eigenvalues of S_a^1/2 S_b S_a^1/2) equals the sqrtm formula on the same
    features. 16 points in 2048 dimensions give singular covariances, where sqrtm is unreliable: the formulas are
    compared on a random 12-dimensional projection of the pool features (full rank there)."""
    rng = np.random.default_rng(0)
    coarse = rng.uniform(size=(32, 4, 4, 3))
    images = np.array(jax.image.resize(coarse, (32, 32, 32, 3), "bilinear"), np.float32)
    images[16:] = np.clip(images[16:] * 0.7 + 0.2, 0, 1)
    pool, _ = jax.jit(inception.FIDInceptionV3().apply)(random_network, images)
    pool = np.asarray(pool, np.float64)
    project = np.linalg.qr(rng.normal(size=(2048, 12)))[0]
    a, b = pool[:16] @ project, pool[16:] @ project
    ours = feature_distances.frechet_distance(a, b)
    np.testing.assert_allclose(ours, _frechet_by_sqrtm(a, b), rtol=1e-6)
    assert ours > 0.01 * np.trace(np.cov(a, rowvar=False))  # the halves differ
    assert abs(feature_distances.frechet_distance(a, a)) < 1e-9 * ours


def test_inception_score_is_one_for_one_class_and_the_class_count_for_balanced_certain_classes():
    one_class = np.zeros((100, 1008))
    one_class[:, 7] = 40.0
    assert inception_metrics.inception_score(one_class) == pytest.approx((1.0, 0.0), abs=1e-9)
    certain = np.full((200, 1008), -40.0)
    certain[np.arange(200), np.arange(200) % 20] = 40.0  # 20 classes, each split holds each class once
    mean, sd = inception_metrics.inception_score(certain, splits=10)
    assert mean == pytest.approx(20.0, rel=1e-9) and sd < 1e-9
    with pytest.raises(ValueError, match="needs >= 10 samples"):
        inception_metrics.inception_score(one_class[:5])


def _brute_precision_recall(real, fake, k=3):
    d_rr = ((real[:, None] - real[None]) ** 2).sum(-1)
    d_ff = ((fake[:, None] - fake[None]) ** 2).sum(-1)
    d_fr = ((fake[:, None] - real[None]) ** 2).sum(-1)
    r_real, r_fake = np.sort(d_rr, 1)[:, k], np.sort(d_ff, 1)[:, k]
    return (d_fr <= r_real[None]).any(1).mean(), (d_fr.T <= r_fake[None]).any(1).mean()


def test_precision_recall_is_one_one_against_itself_and_falls_with_a_shift():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 8)).astype(np.float32)
    assert inception_metrics.precision_recall(real, real) == (1.0, 1.0)
    previous = (1.0, 1.0)
    for shift in (1.0, 1.5, 2.0, 3.0):  # in every one of the 8 dimensions (measured: (0.59, 0.49) ... (0, 0))
        fake = real + np.float32(shift)
        p, r = inception_metrics.precision_recall(real, fake, block=128)  # several blocks
        bp, br = _brute_precision_recall(real.astype(np.float64), fake.astype(np.float64))
        assert abs(p - bp) <= 2 / 400 and abs(r - br) <= 2 / 400, (shift, p, bp, r, br)  # float32 ties at the radius
        assert (p < previous[0] and r < previous[1]) or previous == (p, r) == (0.0, 0.0), (shift, p, r, previous)
        previous = (p, r)
    assert previous == (0.0, 0.0)
    # a generator that covers only half the data: every sample is realistic, a quarter of the data is missed
    half = real[real[:, 0] > 0]  # (its k-NN balls are larger than the data's: measured recall 0.745)
    p, r = inception_metrics.precision_recall(real, half)
    assert p == 1.0 and 0.5 < r < 0.85, (p, r)


def test_inception_metric_without_weights_stops_with_one_line_naming_the_file(finished_tiny_run, tmp_path, capsys,
                                                                              monkeypatch):
    _, workdir = finished_tiny_run
    absent = tmp_path / "nowhere" / inception_weights.CONVERTED_FILE
    monkeypatch.setenv(inception_weights.ENV_VAR, str(absent))
    with pytest.raises(ConfigError, match=f"no Inception weights at {absent}: download .*{inception_weights.REFERENCE_FILE}"):
        main_in_process([f"--config={TINY}", f"--workdir={workdir}", "--mode=sample_quality", "--metric=inception"],
                        capsys)
    with pytest.raises(ConfigError, match="--metric=digits measures digits"):
        from vdm.training import sample_quality

        sample_quality.resolve_metric("cifar10", "digits")
    assert sample_quality.resolve_metric("photo_patches32", "auto") == "inception"


@pytest.mark.slow  # trains a tiny 32x32x3 run and runs Inception on CPU (~3 min on 2 cores)
def test_inception_sample_quality_runs_end_to_end_on_photo_patches32(tmp_path, capsys, monkeypatch):
    from vdm.training import loop

    config = tiny_config(data__name="photo_patches32", data__image_shape=(32, 32, 3), data__vocab_size=256,
                         eval__num_samples=4)
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config, workdir)
    weights = tmp_path / "w.npz"
    assert inception_weights.main(["--random=0", f"--out={weights}"]) == 0
    monkeypatch.setenv(inception_weights.ENV_VAR, str(weights))
    args = [f"--workdir={workdir}", "--mode=sample_quality", "--metric=inception", "--samples=20",
            "--reference_images=40", "--sampler=ddim", "--steps=3"]
    out = main_in_process(args, capsys)
    assert inception_quality.TABLE_HEAD.splitlines()[0] in out, out
    result = json.loads(open(os.path.join(workdir, "sample_quality.json")).read())
    assert result["metric"] == "inception" and result["num_samples"] == 20
    [row] = result["rows"]
    assert row["sampler"] == "ddim" and row["nfe"] == 3
    assert row["fid"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and row["inception_score"] >= 1
    digest = inception_weights.sha256(str(weights))[:12]
    name = f"photo_patches32-1.0.0_train_40_resize299-bilinear_w{digest}.npz"
    assert name in result["reference"]
    cache = os.path.join(os.environ["TFDS_DATA_DIR"], "vdm_inception_stats", name)
    stamp = os.path.getmtime(cache)
    again = main_in_process(args, capsys)  # the reference statistics come from the cache; same samples, same FID
    assert os.path.getmtime(cache) == stamp
    assert json.loads(open(os.path.join(workdir, "sample_quality.json")).read())["rows"][0]["fid"] == pytest.approx(
        row["fid"], rel=1e-6), again
