"""Datasets and the input pipeline: splits, determinism, per-process sharding, resumable state, augmentation, errors."""

import os
import types

import numpy as np
import pytest

from vdm.config.validation import load_config_file
from vdm.data import datasets, pipeline as data
from vdm.errors import DataError, DatasetNotPrepared
from vdm.training import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits_train():
    return data.Source("digits", "train")


def _rows(images, labels):
    return {im.tobytes() + bytes([int(lab)]) for im, lab in zip(images, labels)}


def test_digits_builder_keeps_the_documented_split():
    from sklearn.datasets import load_digits

    ds = data.load_dataset("digits")
    bunch = load_digits()
    images, labels = bunch.images.astype(np.uint8)[..., None], bunch.target
    perm = np.random.RandomState(0).permutation(len(images))
    assert len(ds.train) == 1500 and len(ds.test) == 297 and ds.vocab_size == 17 and ds.num_classes == 10
    assert _rows(ds.test.images, ds.test.labels) == _rows(images[perm[:297]], labels[perm[:297]])
    assert _rows(ds.train.images, ds.train.labels) == _rows(images[perm[297:]], labels[perm[297:]])


@pytest.mark.parametrize("size", [16, 32])
def test_photo_patches_come_from_disjoint_regions(size):
    from sklearn.datasets import load_sample_images

    train, test = (data.Source(f"photo_patches{size}", s).to_numpy() for s in ("train", "test"))
    assert train["images"].shape[1:] == (size, size, 3) and train["images"].dtype == np.uint8
    photos = load_sample_images().images
    expected_test = [(p[r : r + size, c : c + size], label) for label, p in enumerate(photos)
                     for r in range(0, p.shape[0] - size + 1, size) for c in range(480, 640 - size + 1, size)]
    assert _rows(test["images"], test["labels"]) == _rows(*zip(*expected_test))
    train_in_left = [(p[r : r + size, c : c + size], label) for label, p in enumerate(photos)
                     for r in range(0, p.shape[0] - size + 1, 8) for c in range(0, 480 - size + 1, 8)]
    assert _rows(train["images"], train["labels"]) == _rows(*zip(*train_in_left))
    assert set(np.unique(train["labels"])) == {0, 1}


def test_shuffling_is_a_function_of_the_seed_and_visits_every_example_once_per_epoch(digits_train):
    a, b = data.train_dataset(digits_train, 20, seed=1), data.train_dataset(digits_train, 20, seed=1)
    c = data.train_dataset(digits_train, 20, seed=2)
    np.testing.assert_array_equal(a[7]["images"], b[7]["images"])
    assert not np.array_equal(a[7]["images"], c[7]["images"])
    epoch = [a[i] for i in range(1500 // 20)]
    seen = _rows(np.concatenate([e["images"] for e in epoch]), np.concatenate([e["labels"] for e in epoch]))
    everything = digits_train.to_numpy()
    assert seen == _rows(everything["images"], everything["labels"])
    assert not np.array_equal(a[0]["images"], a[75]["images"])  # the next epoch is reshuffled


def test_each_process_reads_its_part_of_the_same_global_batch(digits_train):
    whole = data.train_dataset(digits_train, 24, seed=0)
    parts = [data.train_dataset(digits_train, 24, seed=0, process_index=p, process_count=3) for p in range(3)]
    for n in (0, 5, 80):
        glued = np.concatenate([parts[p][n]["images"] for p in range(3)])
        np.testing.assert_array_equal(glued, whole[n]["images"])
    with pytest.raises(DataError, match="'training.batch_size' = 24 is not divisible by the 5 processes"):
        data.train_dataset(digits_train, 24, seed=0, process_count=5)


def test_iterator_state_resumes_the_same_batches(digits_train):
    make = lambda: data.TrainIterator(data.train_dataset(digits_train, 16, seed=4), 17)  # noqa: E731
    it = make()
    it.next(3)
    state = it.get_state()
    expected = it.next(2)
    resumed = make()
    resumed.set_state(state)
    got = resumed.next(2)
    assert got["images"].shape == (2, 16, 8, 8, 1)
    np.testing.assert_array_equal(got["images"], expected["images"])
    np.testing.assert_array_equal(got["labels"], expected["labels"])


@pytest.mark.parametrize("kind", ["flip", "dihedral"])
def test_augmentation_conditioning_names_the_transform_applied(digits_train, kind):
    plain = data.train_dataset(digits_train, 64, seed=0)[3]
    augmented = data.train_dataset(digits_train, 64, seed=0, augmentation=kind)[3]
    size = data.AUGMENTATIONS[kind]
    assert augmented["cond"].shape == (64, size - 1)
    assert set(np.unique(augmented["cond"].sum(1))) <= {0.0, 1.0}
    seen = set()
    for x, y, cond in zip(plain["images"], augmented["images"], augmented["cond"]):
        g = int(np.argmax(cond)) + 1 if cond.any() else 0
        seen.add(g)
        rotations, flip = (g % 4, g >= 4) if size == 8 else (0, g == 1)
        undo = y[:, ::-1] if flip else y
        np.testing.assert_array_equal(np.rot90(undo, -rotations, axes=(0, 1)), x)
    assert len(seen) == size  # every group element occurs in 64 draws


def test_tfds_cifar10_path_reads_a_locally_built_dataset_with_the_real_feature_spec(tmp_path):
    """No internet: subclass tfds's own cifar10 builder, replacing only the download with synthetic images."""
    import PIL.Image
    from tensorflow_datasets.image_classification import cifar

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)

    class OfflineCifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"

        def _split_generators(self, dl_manager):
            return {"train": self._examples(range(20)), "test": self._examples(range(20, 30))}

        def _examples(self, index):
            for i in index:
                yield i, {"id": f"x{i}", "image": PIL.Image.fromarray(pixels[i]), "label": i % 10}

    with pytest.raises(DatasetNotPrepared) as info:
        data.Source("cifar10", "train", str(tmp_path))
    assert f"tfds build cifar10 --file_format=array_record --data_dir={tmp_path}" in str(info.value)
    assert f"pip install -e '{ROOT}[tfds-prepare]' && tfds build" in str(info.value)  # this checkout's extra

    OfflineCifar10(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    source = data.Source("cifar10", "train", str(tmp_path))
    assert len(source) == 20
    found = _rows(source.to_numpy()["images"], source.to_numpy()["labels"])
    assert found == _rows(pixels[:20], np.arange(20) % 10)
    batch = data.TrainIterator(data.train_dataset(source, 8, seed=0, augmentation="dihedral"), 256).next(2)
    assert batch["images"].shape == (2, 8, 32, 32, 3) and batch["cond"].shape == (2, 8, 7)


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(DataError, match="unknown dataset 'mnist' \\(config key 'data.name'\\); known: digits"):
        data.Source("mnist", "train")


def test_pixel_values_outside_the_vocabulary_are_rejected(digits_train):
    it = data.TrainIterator(data.train_dataset(digits_train, 16, seed=0), vocab_size=16)  # digits go up to 16
    with pytest.raises(DataError, match=r"pixel values span \[0, 16\] but config key 'data.vocab_size' = 16"):
        for _ in range(20):
            it.next(1)


def test_config_that_does_not_match_the_dataset_is_rejected():
    config = load_config_file("configs/tiny.py")
    config.data.name = "photo_patches16"
    with pytest.raises(DataError, match=r"'data.image_shape' = \(8, 8, 1\) but photo_patches16 images are \(16, 16, 3\)"):
        data.check_config(config)
    config = load_config_file("configs/tiny.py")
    config.data.augmentation = "dihedral"
    with pytest.raises(DataError, match="'model.cond_dim' = 1 but data.augmentation='dihedral' feeds 7"):
        data.check_config(config)


def test_batch_not_divisible_by_the_device_count():
    mesh = types.SimpleNamespace(devices=np.empty(8))
    with pytest.raises(DataError, match="'training.batch_size' = 12 is not divisible by the 8 devices; use a multiple of 8"):
        distributed.check_batch_size(12, mesh)
    distributed.check_batch_size(16, mesh)


def test_prepare_command_names_the_tfds_dataset():
    assert "tfds build downsampled_imagenet/64x64" in datasets.prepare_command("imagenet64", "/data")
