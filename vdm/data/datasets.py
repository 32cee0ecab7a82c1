"""Datasets through tensorflow-datasets: bundled ones built offline, real ones prepared once.

Every dataset is read with `tfds.data_source` (array_record files, random
access, no TensorFlow) and yields {'images': uint8 [H, W, C] in {0..V-1},
'labels': int32 scalar (0 where the dataset has no labels)}.

| name                   | images      | V   | classes | where it comes from                      |
|------------------------|-------------|-----|---------|------------------------------------------|
| digits                 | 8x8x1       | 17  | 10      | sklearn's bundled digits (built offline) |
| photo_patches16 / 32   | 16x16x3 ... | 256 | 2       | sklearn's two bundled photographs        |
| cifar10                | 32x32x3     | 256 | 10      | tfds, prepared once (needs internet)     |
| imagenet32 / imagenet64| 32x32x3 ... | 256 | -       | tfds downsampled_imagenet, prepared once |

Bundled datasets are prepared into the tfds data dir on first use (under a file
lock, so parallel processes do not race). The others raise `DatasetNotPrepared`
with the one command that prepares them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shlex

import numpy as np

from vdm.errors import DataError, DatasetNotPrepared

DIGITS_TEST_SIZE = 297
PATCH_TEST_COLUMNS = 160  # photo patches: train from columns [0, 480), test from [480, 640) of each photo
PATCH_TRAIN_STRIDE = 8


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    tfds_name: str  # name[/config] for tfds.builder
    image_shape: tuple
    vocab_size: int
    num_classes: int  # 0: no labels
    train_split: str = "train"
    test_split: str = "test"
    bundled: bool = False  # built here from files shipped with a package


DATASETS = {
    "digits": DatasetSpec("vdm_digits", (8, 8, 1), 17, 10, bundled=True),
    "photo_patches16": DatasetSpec("vdm_photo_patches/16", (16, 16, 3), 256, 2, bundled=True),
    "photo_patches32": DatasetSpec("vdm_photo_patches/32", (32, 32, 3), 256, 2, bundled=True),
    "cifar10": DatasetSpec("cifar10", (32, 32, 3), 256, 10),
    "imagenet32": DatasetSpec("downsampled_imagenet/32x32", (32, 32, 3), 256, 0, test_split="validation"),
    "imagenet64": DatasetSpec("downsampled_imagenet/64x64", (64, 64, 3), 256, 0, test_split="validation"),
}


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (config key 'data.name'); known: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _prepare_install_command() -> str:
    """How to install what `tfds build` needs: this checkout's tfds-prepare extra, or (installed vdm) its content."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above vdm/data/
    if os.path.exists(os.path.join(root, "pyproject.toml")):  # running from a checkout
        return f"pip install -e {shlex.quote(root + '[tfds-prepare]')}"
    return "pip install 'tensorflow>=2.16'"  # the tfds-prepare extra of pyproject.toml


def prepare_command(name: str, data_dir: str) -> str:
    spec = get_spec(name)
    return (f"{_prepare_install_command()} && tfds build {spec.tfds_name} "
            f"--file_format=array_record --data_dir={data_dir}")


def _builders():
    """The tfds builders of the bundled datasets (defined lazily: importing tfds takes a second)."""
    import tensorflow_datasets as tfds

    class VdmDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """sklearn's 8x8 digits, values 0..16; test = first 297 of RandomState(0).permutation(1797)."""

        name = "vdm_digits"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            from sklearn.datasets import load_digits

            bunch = load_digits()
            images, labels = bunch.images.astype(np.uint8)[..., None], bunch.target
            perm = np.random.RandomState(0).permutation(len(images))
            test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
            return {"train": self._generate_examples(images, labels, train),
                    "test": self._generate_examples(images, labels, test)}

        def _generate_examples(self, images, labels, index):
            for i in index:
                yield int(i), {"image": images[i], "label": int(labels[i])}

    class VdmPhotoPatches(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Patches of sklearn's two photographs (label = which photo), 8-bit RGB.

        Train: every patch at stride 8 inside columns [0, 480); test: the
        non-overlapping patch grid inside columns [480, 640). Regions are disjoint.
        """

        name = "vdm_photo_patches"
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="16"), tfds.core.BuilderConfig(name="32")]

        def _info(self):
            p = int(self.builder_config.name)
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(p, p, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=["china", "flower"]),
                }),
            )

        def _split_generators(self, dl_manager):
            from sklearn.datasets import load_sample_images

            photos = load_sample_images().images
            return {"train": self._generate_examples(photos, "train"), "test": self._generate_examples(photos, "test")}

        def _generate_examples(self, photos, split):
            p = int(self.builder_config.name)
            for label, photo in enumerate(photos):
                height, width = photo.shape[:2]
                boundary = width - PATCH_TEST_COLUMNS
                if split == "train":
                    rows, cols, offset = range(0, height - p + 1, PATCH_TRAIN_STRIDE), range(0, boundary - p + 1, PATCH_TRAIN_STRIDE), 0
                else:
                    rows, cols, offset = range(0, height - p + 1, p), range(0, PATCH_TEST_COLUMNS - p + 1, p), boundary
                for r in rows:
                    for c in cols:
                        yield f"{label}_{r}_{c + offset}", {"image": photo[r : r + p, c + offset : c + offset + p], "label": label}

    return {"vdm_digits": VdmDigits, "vdm_photo_patches": VdmPhotoPatches}


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def builder(name: str, data_dir: str | None = None):
    """The tfds builder of a dataset; bundled ones are prepared here on first use."""
    import tensorflow_datasets as tfds

    spec = get_spec(name)
    data_dir = data_dir or default_data_dir()
    if spec.bundled:
        cls_name, _, config = spec.tfds_name.partition("/")
        kwargs = {"config": config} if config else {}
        b = _builders()[cls_name](data_dir=data_dir, file_format="array_record", **kwargs)
        if not b.is_prepared():
            with _file_lock(os.path.join(data_dir, f".{cls_name}.lock")):
                b = _builders()[cls_name](data_dir=data_dir, file_format="array_record", **kwargs)
                if not b.is_prepared():
                    from vdm import console

                    tfds.disable_progress_bar()
                    with console.silenced_stdout():  # tfds prints "Downloading and preparing ..." for a local build
                        b.download_and_prepare()
        return b
    b = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if not b.is_prepared():
        raise DatasetNotPrepared(
            f"dataset {name!r} is not prepared in {data_dir} (tfds {spec.tfds_name}); prepare it once with: "
            f"{prepare_command(name, data_dir)}"
        )
    if str(b.info.file_format.value) != "array_record":
        raise DatasetNotPrepared(
            f"dataset {name!r} in {data_dir} is stored as {b.info.file_format.value}, but vdm reads array_record "
            f"(random access, no TensorFlow); rebuild with: {prepare_command(name, data_dir)}"
        )
    return b


class Source:
    """Random-access split: len(source), source[i] -> {'images': uint8 [H,W,C], 'labels': int32}.

    Bundled datasets (a few MB) are held in memory after the first read; the
    others are read from their array_record files on demand.
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        self.name, self.split = name, split
        self.spec = get_spec(name)
        tfds_split = self.spec.train_split if split == "train" else self.spec.test_split
        b = builder(name, data_dir)
        self.version = str(b.info.version)  # the tfds version of the prepared files
        self._source = b.as_data_source(split=tfds_split)
        self._arrays = self._read_all() if self.spec.bundled else None

    def __len__(self):
        return len(self._source)

    def _record(self, index):
        record = self._source[index]
        label = record.get("label", 0) if self.spec.num_classes else 0
        return {"images": np.asarray(record["image"], np.uint8), "labels": np.int32(label)}

    def _read_all(self):
        records = [self._record(i) for i in range(len(self))]
        return {k: np.stack([r[k] for r in records]) for k in ("images", "labels")}

    def __getitem__(self, index):
        if self._arrays is not None:
            return {k: v[index] for k, v in self._arrays.items()}
        return self._record(index)

    def to_numpy(self):
        """The whole split in memory: {'images': [N, H, W, C] uint8, 'labels': [N] int32}."""
        return self._arrays if self._arrays is not None else self._read_all()
