"""Pictures for people: sample grids of at most 10 x 10 images, each upscaled to be seen, with separators."""

import numpy as np
from PIL import Image

from vdm.training import outputs


def test_digit_grid_shows_100_samples_at_8x_with_2px_separators(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 17, (1000, 8, 8, 1))
    path = outputs.save_image_grid(samples, 17, str(tmp_path / "grid.png"))
    picture = np.asarray(Image.open(path))
    cell = 8 * 8 + 2
    assert picture.shape == (10 * cell + 2, 10 * cell + 2)  # 100 images, not 1000; 64 px each
    # image (r, c) of the grid is sample 10 r + c, each pixel an 8 x 8 block of one grey level
    for r, c in [(0, 0), (3, 7), (9, 9)]:
        block = picture[2 + r * cell : 2 + r * cell + 64, 2 + c * cell : 2 + c * cell + 64]
        expected = np.round(samples[10 * r + c, ..., 0] * 255 / 16).astype(np.uint8)
        np.testing.assert_array_equal(block, np.kron(expected, np.ones((8, 8), np.uint8)))
    assert (picture[:2] == 128).all() and (picture[:, 64 + 2 : 64 + 4] == 128).all()  # separators


def test_grid_scale_brings_small_images_to_64_pixels():
    assert [outputs.grid_scale((s, s, 3)) for s in (8, 16, 32, 64, 128)] == [8, 4, 2, 1, 1]
    colour = np.zeros((3, 32, 32, 3), np.int64)
    assert outputs.image_grid(colour, 256, scale=2).shape == (2 * 66 + 2, 2 * 66 + 2, 3)
