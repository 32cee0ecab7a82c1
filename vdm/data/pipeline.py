"""Input pipeline: tfds data sources -> grain, sharded per process, resumable, checked.

Training data order is a pure function of (seed, global batch index): grain's
`MapDataset` shuffles the whole training split with a fresh permutation each
epoch, repeats forever and cuts it into *global* batches of B. Process p of P
reads local batch p of every global batch, so the global batch at step n is the
same whatever the number of processes or devices. The iterator state (the next
index) is saved with each checkpoint (`vdm.training.checkpoint`), so a resumed run reads
exactly the batches an uninterrupted one would have.

Augmentations (`data.augmentation`) are `vdm.data.augment`.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from vdm.data.augment import AUGMENTATIONS, augment
from vdm.data.datasets import Source, get_spec
from vdm.errors import DataError


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # [N, H, W, C] uint8 in {0..V-1}
    labels: np.ndarray  # [N] int32

    def __len__(self):
        return len(self.images)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset held in memory (small ones, evaluation splits)."""

    name: str
    train: Split
    test: Split
    vocab_size: int
    num_classes: int

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Both splits in memory (meant for small datasets such as digits)."""
    spec = get_spec(name)
    splits = {s: Source(name, s, data_dir).to_numpy() for s in ("train", "test")}
    return Dataset(name, *(Split(splits[s]["images"], splits[s]["labels"]) for s in ("train", "test")),
                   spec.vocab_size, spec.num_classes)


def check_config(config) -> None:
    """DataError if config.data does not describe the dataset it names."""
    spec = get_spec(config.data.name)
    d = config.data
    if tuple(d.image_shape) != spec.image_shape:
        raise DataError(f"config key 'data.image_shape' = {tuple(d.image_shape)} but {d.name} images are "
                        f"{spec.image_shape}; set --config.data.image_shape='{spec.image_shape}'")
    if d.vocab_size != spec.vocab_size:
        raise DataError(f"config key 'data.vocab_size' = {d.vocab_size} but {d.name} has V = {spec.vocab_size}")
    if config.model.class_conditional and not spec.num_classes:
        raise DataError(f"config key 'model.class_conditional' is set but {d.name} has no labels")
    need = AUGMENTATIONS[d.augmentation] - 1
    if need and config.model.cond_dim != need:
        raise DataError(f"config key 'model.cond_dim' = {config.model.cond_dim} but data.augmentation="
                        f"'{d.augmentation}' feeds {need} conditioning inputs; set --config.model.cond_dim={need}")


def check_values(images: np.ndarray, vocab_size: int, where: str) -> None:
    """DataError if any pixel is outside {0..V-1}."""
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi >= vocab_size:
        raise DataError(f"{where}: pixel values span [{lo}, {hi}] but config key 'data.vocab_size' = {vocab_size} "
                        f"needs them in [0, {vocab_size - 1}]")


def train_dataset(source, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  augmentation: str = "none") -> grain.MapDataset:
    """Infinite MapDataset of this process's local batches; item n is its part of global batch n."""
    if global_batch_size % process_count:
        raise DataError(f"config key 'training.batch_size' = {global_batch_size} is not divisible by the "
                        f"{process_count} processes")
    if global_batch_size > len(source):
        raise DataError(f"config key 'training.batch_size' = {global_batch_size} exceeds the {len(source)} training images")
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None)
    if augmentation != "none":
        size = AUGMENTATIONS[augmentation]
        ds = ds.random_map(lambda e, rng: augment(e, rng, size))
    local = global_batch_size // process_count
    return ds.batch(local)[process_index::process_count]


class TrainIterator:
    """Local training batches; `next(k)` -> leaves [k, B_local, ...]. State: grain's {'next_index': n}."""

    def __init__(self, dataset: grain.MapDataset, vocab_size: int, prefetch: int = 4, threads: int = 2):
        self.vocab_size = vocab_size
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch)
        self.iterator = iter(dataset.to_iter_dataset(options))

    def next(self, num: int = 1) -> dict:
        batches = [next(self.iterator) for _ in range(num)]
        out = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
        check_values(out["images"], self.vocab_size, f"training batch {self.get_state()['next_index'] - 1}")
        return out

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)


def make_train_iterator(config, process_index: int = 0, process_count: int = 1) -> TrainIterator:
    d, t = config.data, config.training
    source = Source(d.name, "train", d.data_dir or None)
    ds = train_dataset(source, t.batch_size, t.seed, process_index, process_count, d.augmentation)
    return TrainIterator(ds, d.vocab_size)


def eval_batches(split: Split, batch_size: int):
    """Padded global batches covering the split once: images, labels, 'index' (each row's example index in the
    split, int32 [B]) and a 0/1 'mask' [B] (padding rows repeat example 0 with mask 0)."""
    n = len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        idx = np.where(mask, idx, 0)
        yield {"images": split.images[idx], "labels": split.labels[idx], "index": idx.astype(np.int32),
               "mask": mask.astype(np.float32)}


def local_part(batch: dict, process_index: int, process_count: int, axis: int = 0) -> dict:
    """This process's contiguous part of a global batch (numpy leaves, batch on `axis`)."""
    def part(x):
        n = x.shape[axis] // process_count
        return np.take(x, np.arange(process_index * n, (process_index + 1) * n), axis=axis)

    return {k: part(v) for k, v in batch.items()}
