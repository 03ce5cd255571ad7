"""Image decoding and resizing shared by the loaders (numpy + Pillow, no TensorFlow).

Resizing is bilinear with half-pixel centres (the convention of PIL, TF2 `tf.image.resize` and
`jax.image.resize`), computed in float32 per channel with Pillow's 'F' mode; Pillow widens the
filter when shrinking, so downscaling is antialiased. uint8 input is rounded back to uint8.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def center_crop_square(image: np.ndarray) -> np.ndarray:
    """The largest centred square of an image [H, W, C]."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of one image [H, W, C] to [size, size, C]; non-square input is first
    centre-cropped to a square. Keeps the dtype (uint8 is rounded and clipped)."""
    if size < 1:
        raise ValueError(f"image_size must be a positive integer; got {size}")
    image = center_crop_square(image)
    if image.shape[0] == size:
        return image
    channels = [
        np.asarray(
            Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
                (size, size), Image.Resampling.BILINEAR
            )
        )
        for c in range(image.shape[-1])
    ]
    out = np.stack(channels, axis=-1)  # [size, size, C] float32
    if image.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(image.dtype)


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """Resize a stack [N, H, W, C] to [N, size, size, C]; `size=None` returns it unchanged."""
    if size is None or (images.shape[1] == size and images.shape[2] == size):
        return images
    return np.stack([resize_image(im, size) for im in images])


def to_array(img: Image.Image, channels: int) -> np.ndarray:
    """A PIL image as uint8 [H, W, channels] (1 = grayscale 'L', 3 = 'RGB')."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels}")
    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
    return arr[..., None] if channels == 1 else arr


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode encoded image bytes (PNG, JPEG, ...), raising ValueError that names the file."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # Pillow raises several types for bad files
        raise ValueError(f"cannot decode image {name}: {err}") from err
    return img


def channels_of(img: Image.Image) -> int:
    """1 for grayscale images ('L', '1', 'I;16', 'I', 'F'), 3 for everything else."""
    return 1 if img.mode in ("L", "1", "I;16", "I", "F") else 3
