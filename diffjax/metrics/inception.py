"""The FID Inception-v3 network (TF 2015-12-05 graph, 2048-d pool features) in flax.linen.

This is the variant every published FID uses, which differs from torchvision's Inception-v3:
batch norm without scale (eps 1e-3), average pools in the Mixed blocks that exclude padding
from the count, a max pool in the pool branch of the last block (Mixed_7c), and inputs resized
to 299 x 299 with TF's legacy bilinear resize (no half-pixel offset) and scaled as
(p - 128) / 128 for 8-bit pixel values p. Images are NHWC. Each conv's batch norm is folded
into the conv when the weights are loaded (`diffjax.metrics.inception_weights`), so the
network here is conv + bias + ReLU throughout.

References:
  Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision" (Inception-v3);
  Heusel et al. 2017 (FID, which uses the pool_3 features of the 2015-12-05 TF graph).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
TF_INPUT_MAX = 127.0 / 128.0  # (255 - 128) / 128: the top of the TF graph's input range
_HIGHEST = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
    """Conv (batch norm folded into kernel and bias) + ReLU; `pad` is (rows, cols) per side."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    pad: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H', W', features]
        padding = ((self.pad[0], self.pad[0]), (self.pad[1], self.pad[1]))
        # HIGHEST keeps full float32 on accelerators (no TF32/bf16 passes): FID is sensitive.
        conv = nn.Conv(
            self.features, self.kernel, self.stride, padding, precision=_HIGHEST, name="conv"
        )
        return nn.relu(conv(x))


def _conv(
    name: str, features: int, kernel: int | tuple[int, int], stride: int = 1, valid: bool = False
):
    """A BasicConv with 'same' padding, or none when `valid` or stride 2 (as in the graph)."""
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (0, 0) if valid or stride != 1 else ((k[0] - 1) // 2, (k[1] - 1) // 2)
    return BasicConv(features, k, stride, pad, name=name)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # count_include_pad=False: the FID graph's average pool divides by the valid count.
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (35 x 35 grid)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv("branch1x1", 64, 1)(x)
        b5 = _conv("branch5x5_2", 64, 5)(_conv("branch5x5_1", 48, 1)(x))
        b3 = _conv("branch3x3dbl_1", 64, 1)(x)
        b3 = _conv("branch3x3dbl_3", 96, 3)(_conv("branch3x3dbl_2", 96, 3)(b3))
        bp = _conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv("branch3x3", 384, 3, stride=2)(x)
        bd = _conv("branch3x3dbl_2", 96, 3)(_conv("branch3x3dbl_1", 64, 1)(x))
        bd = _conv("branch3x3dbl_3", 96, 3, stride=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 convolutions (17 x 17 grid)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = _conv("branch1x1", 192, 1)(x)
        b7 = _conv("branch7x7_1", c7, 1)(x)
        b7 = _conv("branch7x7_3", 192, (7, 1))(_conv("branch7x7_2", c7, (1, 7))(b7))
        bd = _conv("branch7x7dbl_1", c7, 1)(x)
        bd = _conv("branch7x7dbl_3", c7, (1, 7))(_conv("branch7x7dbl_2", c7, (7, 1))(bd))
        bd = _conv("branch7x7dbl_5", 192, (1, 7))(_conv("branch7x7dbl_4", c7, (7, 1))(bd))
        bp = _conv("branch_pool", 192, 1)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = _conv("branch3x3_2", 320, 3, stride=2)(_conv("branch3x3_1", 192, 1)(x))
        b7 = _conv("branch7x7x3_1", 192, 1)(x)
        b7 = _conv("branch7x7x3_3", 192, (7, 1))(_conv("branch7x7x3_2", 192, (1, 7))(b7))
        b7 = _conv("branch7x7x3_4", 192, 3, stride=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/c: expanded filter bank (8 x 8 grid); the FID graph's Mixed_7c pools by max."""

    pool: str  # "avg" (Mixed_7b) or "max" (Mixed_7c)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = _conv("branch1x1", 320, 1)(x)
        b3 = _conv("branch3x3_1", 384, 1)(x)
        b3a = _conv("branch3x3_2a", 384, (1, 3))(b3)
        b3b = _conv("branch3x3_2b", 384, (3, 1))(b3)
        bd = _conv("branch3x3dbl_2", 384, 3)(_conv("branch3x3dbl_1", 448, 1)(x))
        bda = _conv("branch3x3dbl_3a", 384, (1, 3))(bd)
        bdb = _conv("branch3x3dbl_3b", 384, (3, 1))(bd)
        if self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = _conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 trunk up to the 2048-d average-pooled features ("pool_3").

    Input: [B, H, W, 3] already resized and scaled to the TF input range [-1, 127/128]
    (see `preprocess`); H = W = 299 for FID (any H, W >= 75 runs). Output: [B, 2048].
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = _conv("Conv2d_1a_3x3", 32, 3, stride=2)(x)
        x = _conv("Conv2d_2a_3x3", 32, 3, valid=True)(x)
        x = _conv("Conv2d_2b_3x3", 64, 3)(x)
        x = _max_pool_3x3_s2(x)
        x = _conv("Conv2d_3b_1x1", 80, 1)(x)
        x = _conv("Conv2d_4a_3x3", 192, 3, valid=True)(x)
        x = _max_pool_3x3_s2(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name)(x)
        x = InceptionB(name="Mixed_6a")(x)
        c7s = (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192))
        for name, c7 in c7s:
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)  # [B, 8, 8, 2048] at 299 x 299
        return x.mean(axis=(1, 2))  # [B, 2048]; the 8x8 average pool at 299 x 299


def _legacy_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of TF1 resize_bilinear (align_corners=False, no half-pixel).

    Output pixel j samples the input at src = j * n_in / n_out, interpolating between
    floor(src) and min(floor(src) + 1, n_in - 1).
    """
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def resize_bilinear_legacy(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """TF1-style bilinear resize of [B, H, W, C] images to [B, size, size, C].

    This is the resize inside the original FID graph (and StyleGAN2-ADA's FID code).
    """
    _, h, w, _ = images.shape
    rows = jnp.asarray(_legacy_bilinear_matrix(h, size), dtype=images.dtype)  # [size, H]
    cols = jnp.asarray(_legacy_bilinear_matrix(w, size), dtype=images.dtype)  # [size, W]
    return jnp.einsum("oh,bhwc,pw->bopc", rows, images, cols, precision=_HIGHEST)


def preprocess(
    images: jax.Array, data_range: tuple[float, float] = (-1.0, 1.0), quantize: bool = True
) -> jax.Array:
    """Map images in `data_range` to the FID network's input: [B, H, W, C] -> [B, 299, 299, 3].

    Steps (as the reference FID code): scale to 8-bit values p in [0, 255] (clipped), round
    to integers if `quantize` (what saving samples as PNG does), resize to 299 x 299 with the
    legacy TF bilinear resize, then x = p / 128 - 1, clipped to [-1, 127/128].
    Grayscale images (C = 1) are repeated to 3 channels.
    """
    lo, hi = data_range
    p = jnp.clip((images.astype(jnp.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
    if quantize:
        p = jnp.round(p)
    if p.shape[-1] == 1:
        p = jnp.repeat(p, 3, axis=-1)
    if p.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        p = resize_bilinear_legacy(p, INPUT_SIZE)
    return jnp.clip(p / 128.0 - 1.0, -1.0, TF_INPUT_MAX)


def _check_images(images, data_range) -> None:
    shape = np.shape(images)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, 1 or 3] (NHWC); got shape {shape}")
    if not data_range[1] > data_range[0]:
        raise ValueError(f"data_range must be (low, high) with high > low; got {data_range}")


@functools.partial(jax.jit, static_argnames=("data_range", "quantize"))
def _features(variables, images, data_range, quantize):
    return FIDInceptionV3().apply(variables, preprocess(images, data_range, quantize))


def inception_features(
    variables,
    images,
    *,
    data_range: tuple[float, float] = (-1.0, 1.0),
    quantize: bool = True,
) -> jax.Array:
    """FID Inception-v3 pool features of a batch of images.

    Args:
      variables: `{"params": ...}` from `load_inception_params` (or `FIDInceptionV3().init`).
      images: [B, H, W, C] with C in {1, 3}, values in `data_range` (diffjax samples are
        in [-1, 1]; uint8 images use data_range=(0, 255)).
      data_range: (low, high) of the pixel values.
      quantize: round to 8-bit levels first, as when samples are saved as PNG (default, and
        what the reference FID code does).

    Returns:
      [B, 2048] float32 features (jit-compiled; one compilation per input shape).
    """
    data_range = (float(data_range[0]), float(data_range[1]))
    _check_images(images, data_range)
    return _features(variables, jnp.asarray(images), data_range, bool(quantize))


def features_in_batches(feature_fn, images, batch_size: int = 100) -> np.ndarray:
    """Apply `feature_fn` ([b, ...] -> [b, D]) over `images` [N, ...] in fixed-size batches.

    The last batch is padded to `batch_size` (so one compilation serves all batches) and the
    padding rows are dropped. Returns [N, D] as a host numpy array.
    """
    n = len(images)
    if n == 0 or batch_size < 1:
        raise ValueError(f"need N >= 1 images and batch_size >= 1; got N = {n}, {batch_size}")
    out = []
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start : start + batch_size])
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)], axis=0)
        out.append(np.asarray(feature_fn(batch))[: batch_size - short])
    return np.concatenate(out, axis=0)
