"""The built-in default dataset: scikit-learn's bundled 8x8 handwritten digits (no download).

1,797 grayscale images of the digits 0-9 (UCI "Optical Recognition of Handwritten Digits",
Alpaydin & Kaynak 1998), each pixel a count in 0..16. They are kept as uint8 0..16 with
`DIGITS_MAX_VALUE = 16`, so the pipeline's x / 16 * 2 - 1 maps them exactly onto [-1, 1].

Resolution: the default is the native 8x8 (one channel), small enough for the Quickstart to
train in minutes on 2 CPU cores, and already legible as digits. `image_size=16` upsamples
bilinearly (half-pixel centres, computed in float, so no extra quantisation): smoother strokes
that read more easily, at 4x the pixels; nearest-neighbour would only show bigger blocks.
There is no official split: 'train' (or 'all') is all 1,797 images.
"""

from __future__ import annotations

import numpy as np

from diffjax.data.imageops import resize_images

DIGITS_MAX_VALUE = 16.0
DIGITS_SPLITS = ("train", "all")


def load_digits_arrays(
    split: str = "train", image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images [1797, S, S, 1] on the scale 0..16 and labels int32 [1797].

    Returns uint8 at the native 8x8 (`image_size` None or 8), float32 after a bilinear resize.
    """
    from sklearn.datasets import load_digits  # local import: scikit-learn is slow to import

    if split not in DIGITS_SPLITS:
        raise ValueError(
            f"unknown digits split {split!r}; expected one of {DIGITS_SPLITS} "
            "(the 1,797 bundled digits have no held-out split)"
        )
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # [N, 8, 8, 1], values 0..16
    if image_size is not None and image_size != 8:
        images = resize_images(images.astype(np.float32), image_size)  # [N, S, S, 1]
    return images, bunch.target.astype(np.int32)
