"""Datasets as integer images [N, H, W, C] in {0..V-1} with integer labels [N].

For now: sklearn's bundled digits (8x8x1, V = 17, 1797 images), in memory.
Split (shared with DESIGN.md's reference numbers): test = the first 297 images of
`np.random.RandomState(0).permutation(1797)`, train = the remaining 1500.

Batches are a pure function of (seed, step): epoch e uses the permutation drawn
from (seed, e), so a resumed run sees exactly the data order of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DIGITS_TEST_SIZE = 297


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # [N, H, W, C] uint8 in {0..V-1}
    labels: np.ndarray  # [N] int32

    def __len__(self):
        return len(self.images)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    test: Split
    vocab_size: int
    num_classes: int

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])


def load_digits() -> Dataset:
    """sklearn's bundled 8x8 digits, values 0..16 (V = 17), with the fixed 1500 / 297 split."""
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    images = bunch.images.astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    perm = np.random.RandomState(0).permutation(len(images))
    test, train = perm[:DIGITS_TEST_SIZE], perm[DIGITS_TEST_SIZE:]
    return Dataset(
        name="digits",
        train=Split(images[train], labels[train]),
        test=Split(images[test], labels[test]),
        vocab_size=17,
        num_classes=10,
    )


DATASETS = {"digits": load_digits}


def load_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]()


def train_batch(split: Split, batch_size: int, seed: int, step: int):
    """The training batch of a given step: {'images': [B, H, W, C] uint8, 'labels': [B] int32}.

    Epochs are drawn without replacement (partial last batches are dropped).
    """
    per_epoch = len(split) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {len(split)} training images")
    epoch, index = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(split))
    idx = perm[index * batch_size : (index + 1) * batch_size]
    return {"images": split.images[idx], "labels": split.labels[idx]}


def train_batches(split: Split, batch_size: int, seed: int, first_step: int, num: int):
    """`num` consecutive training batches stacked: leaves [num, B, ...]."""
    batches = [train_batch(split, batch_size, seed, first_step + i) for i in range(num)]
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def eval_batches(split: Split, batch_size: int):
    """Yields padded batches covering the split once: images, labels, and a 0/1 'mask' [B]."""
    n = len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        idx = np.where(mask, idx, 0)
        yield {"images": split.images[idx], "labels": split.labels[idx], "mask": mask.astype(np.float32)}
