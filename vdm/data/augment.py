"""Training-time augmentation by a group of image symmetries, told to the network (the paper's CIFAR-10 recipe).

Each training image gets a random element g of {identity, flip} or of the
dihedral group (4 rotations x flip), and the network is told which through
`cond` [B, cond_dim] = one_hot(g)[1:] — all zeros for the identity, so eval and
sampling (no `cond`) ask for un-augmented images.
"""

from __future__ import annotations

import numpy as np

from vdm.registry import Registry

# data.augmentation -> group size |G|; the network gets cond_dim = |G| - 1 conditioning inputs
AUGMENTATIONS = Registry("augmentation", {"none": 1, "flip": 2, "dihedral": 8})


def augment(element: dict, rng: np.random.Generator, group_size: int) -> dict:
    """Applies a random dihedral element g < group_size; adds 'cond' = one_hot(g)[1:] (float32)."""
    g = int(rng.integers(group_size))
    rotations, flip = (g % 4, g >= 4) if group_size == 8 else (0, g == 1)
    image = np.rot90(element["images"], rotations, axes=(0, 1))
    if flip:
        image = image[:, ::-1]
    cond = np.zeros(group_size - 1, np.float32)
    if g:
        cond[g - 1] = 1.0
    return {**element, "images": np.ascontiguousarray(image), "cond": cond}
