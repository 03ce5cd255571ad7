"""Cascaded super-resolution: the low-resolution condition of an SR stage and its
noise-conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models"; Saharia et al.
2022, Imagen).

An SR stage models p(x_hr | z_s, s): x_hr is the high-resolution image, z_s the low-resolution
image corrupted by the forward process at the augmentation level s,

    z_s = alpha(s) x_lr + sigma(s) eps,   eps ~ N(0, I),   x_lr = down(x_hr),

and s is given to the network as a second conditioning time. During training s is drawn per
example, uniformly on [aug_min, aug_max] (Ho et al. 2021, Gaussian conditioning augmentation);
at sampling it is a user choice. s = 0 means no augmentation: z_0 = x_lr exactly, for every
process (so also for VE, whose sigma(0) > 0). The network sees up(z_s), resized to the high
resolution and concatenated to x_t along channels (SR3, Saharia et al. 2021).

Filters (all from `jax.image.resize`, half-pixel centres):
  down 'bilinear': antialiased bilinear (a triangle filter widened by the factor), the same
    filter as Pillow's BILINEAR resize that `diffjax.data` uses for `image_size`, so a base
    stage trained on `data.image_size = low_res` sees the images an SR stage is conditioned on
    (up to the data layer's rounding to 8 bits);
  down 'area': the mean over each factor x factor block (box filter; needs an integer factor);
  up 'bilinear' | 'nearest' | 'bicubic' (Keys cubic, a = -0.5).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.kernels import bcast
from diffjax.processes import Process
from diffjax.typing import Array, ArrayLike

DOWNSAMPLE = ("bilinear", "area")
UPSAMPLE = ("bilinear", "nearest", "bicubic")


@dataclasses.dataclass(frozen=True)
class SRConfig:
    """What an SR stage is conditioned on (hashable; `config.cascade` of a training config).

    Attributes:
      low_res: side of the low-resolution image (the base stage's output size).
      aug_min, aug_max: training augmentation levels s ~ U[aug_min, aug_max], in [0, 1].
      downsample: the filter making x_lr from x_hr in training (one of DOWNSAMPLE).
      upsample: the filter resizing z_s to the high resolution (one of UPSAMPLE).
    """

    low_res: int
    aug_min: float = 0.0
    aug_max: float = 0.5
    downsample: str = "bilinear"
    upsample: str = "bilinear"

    def check(self, example_shape: tuple[int, ...], where: str = "config.cascade") -> None:
        """ValueError naming the field unless this fits high-resolution examples [H, W, C]."""
        if len(example_shape) != 3 or example_shape[0] != example_shape[1]:
            raise ValueError(
                f"{where}: an SR stage needs square images [H, H, C]; got examples of shape "
                f"{tuple(example_shape)}"
            )
        size = example_shape[0]
        if not isinstance(self.low_res, int) or not 1 <= self.low_res < size:
            raise ValueError(
                f"{where}.low_res = {self.low_res!r}: expected an integer in [1, {size}) (the "
                f"high-resolution side is {size})"
            )
        if not 0.0 <= self.aug_min <= self.aug_max <= 1.0:
            raise ValueError(
                f"{where}.aug_min, aug_max = {self.aug_min!r}, {self.aug_max!r}: expected "
                "0 <= aug_min <= aug_max <= 1"
            )
        if self.downsample not in DOWNSAMPLE:
            raise ValueError(
                f"{where}.downsample = {self.downsample!r}: expected one of {DOWNSAMPLE}"
            )
        if self.upsample not in UPSAMPLE:
            raise ValueError(f"{where}.upsample = {self.upsample!r}: expected one of {UPSAMPLE}")
        if self.downsample == "area" and size % self.low_res:
            raise ValueError(
                f"{where}.downsample = 'area' needs low_res to divide the image side {size}; "
                f"got low_res = {self.low_res}"
            )

    def example_cond(self, example_shape: tuple[int, ...], batch: int = 1) -> dict[str, Array]:
        """A zero condition of the right shapes (for initialising the SR network)."""
        return {
            "concat": jnp.zeros((batch, *example_shape), jnp.float32),
            "aug_t": jnp.zeros((batch,), jnp.float32),
        }


def _check_images(x: ArrayLike, what: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{what} must be images [B, H, W, C]; got shape {x.shape}")
    return x


def downsample(x: ArrayLike, size: int, method: str = "bilinear") -> Array:
    """x [B, H, W, C] -> [B, size, size, C] with the filter `method` (see the module doc)."""
    x = _check_images(x, "downsample's input")
    b, h, w, c = x.shape
    if method not in DOWNSAMPLE:
        raise ValueError(f"downsample method {method!r}: expected one of {DOWNSAMPLE}")
    if not 1 <= size <= min(h, w):
        raise ValueError(f"downsample size {size} must lie in [1, {min(h, w)}] for {h}x{w} images")
    if method == "area":
        if h % size or w % size:
            raise ValueError(f"'area' downsampling needs size {size} to divide {h}x{w}")
        blocks = x.reshape(b, size, h // size, size, w // size, c)
        return jnp.mean(blocks, axis=(2, 4))
    return jax.image.resize(x, (b, size, size, c), "bilinear", antialias=True)


def upsample(x: ArrayLike, size: int, method: str = "bilinear") -> Array:
    """x [B, h, w, C] -> [B, size, size, C] with the filter `method` (see the module doc)."""
    x = _check_images(x, "upsample's input")
    b, h, w, c = x.shape
    if method not in UPSAMPLE:
        raise ValueError(f"upsample method {method!r}: expected one of {UPSAMPLE}")
    if size < max(h, w):
        raise ValueError(f"upsample size {size} is smaller than the {h}x{w} input")
    method = "cubic" if method == "bicubic" else method
    return jax.image.resize(x, (b, size, size, c), method)


def augment(key: Array, process: Process, x_lr: ArrayLike, level: ArrayLike) -> Array:
    """z_s = alpha(s) x_lr + sigma(s) eps, eps ~ N(0, I): the forward marginal at level s.

    Args:
      key: PRNG key of the noise.
      process: the forward process (the SR stage's own).
      x_lr: low-resolution images [B, h, w, C].
      level: s, a scalar or per-example [B] in [0, 1]; s = 0 returns x_lr itself.
    Returns:
      z_s [B, h, w, C] (Ho et al. 2021, conditioning augmentation).
    """
    x_lr = _check_images(x_lr, "augment's x_lr")
    level = jnp.broadcast_to(jnp.asarray(level, x_lr.dtype), x_lr.shape[:1])  # [B]
    eps = jax.random.normal(key, x_lr.shape, x_lr.dtype)
    z = bcast(process.alpha(level), x_lr) * x_lr + bcast(process.sigma(level), x_lr) * eps
    return jnp.where(bcast(level == 0, x_lr), x_lr, z)


def draw_levels(key: Array, batch: int, sr: SRConfig, dtype=jnp.float32) -> Array:
    """Training augmentation levels s ~ U[aug_min, aug_max], one per example: [batch]."""
    return jax.random.uniform(key, (batch,), dtype, sr.aug_min, sr.aug_max)


def condition(
    key: Array, process: Process, x_lr: ArrayLike, level: ArrayLike, size: int, sr: SRConfig
) -> dict[str, Array]:
    """The SR network's condition {'concat': up(z_s) [B, size, size, C], 'aug_t': s [B]}."""
    x_lr = _check_images(x_lr, "condition's x_lr")
    level = jnp.broadcast_to(jnp.asarray(level, x_lr.dtype), x_lr.shape[:1])
    z = augment(key, process, x_lr, level)
    return {"concat": upsample(z, size, sr.upsample), "aug_t": level}


def sr_loss(
    model, key: Array, x0: ArrayLike, process: Process, *, loss, sr: SRConfig, cond=None, **kw
) -> tuple[Array, dict]:
    """The SR stage's training loss: `loss` on the high-resolution x0 [B, H, H, C], with the
    condition built from the batch itself: down(x0) -> augment at s ~ U[aug_min, aug_max] ->
    up -> concatenated, and s as the second time (Ho et al. 2021, conditioning augmentation).

    `cond` (class labels [B], if any) is passed on as the condition's 'y'; `kw` go to `loss`.
    """
    x0 = _check_images(x0, "the SR stage's x0")
    level_key, aug_key, loss_key = jax.random.split(key, 3)
    x_lr = downsample(x0, sr.low_res, sr.downsample)  # [B, h, h, C]
    level = draw_levels(level_key, x0.shape[0], sr, x0.dtype)
    full: dict[str, Any] = condition(aug_key, process, x_lr, level, x0.shape[1], sr)
    if cond is not None:
        full["y"] = cond
    return loss(model, loss_key, x0, process, cond=full, **kw)


def _with_cond(model, cond, x_t, t):
    return model(x_t, t, cond)


def super_resolve(
    key: Array,
    model,
    process: Process,
    x_lr: ArrayLike,
    *,
    sr: SRConfig,
    size: int,
    level: float = 0.0,
    solver: str,
    steps: int | None = None,
    prediction: str = "eps",
    **options,
) -> Array:
    """Sample x_hr [B, size, size, C] ~ p(x_hr | z_s, s) from an SR model(x_t, t, cond).

    x_lr [B, low_res, low_res, C] (e.g. a base stage's samples) is augmented at `level` s
    (0: used as is), upsampled with `sr.upsample` and concatenated; `options` go to
    `diffjax.sample`. The model stays a pytree: its leaves and the condition are traced.
    """
    from diffjax.samplers import sample

    x_lr = _check_images(x_lr, "super_resolve's x_lr")
    if x_lr.shape[1:3] != (sr.low_res, sr.low_res):
        raise ValueError(
            f"the SR model takes {sr.low_res}x{sr.low_res} low-resolution inputs; got x_lr of "
            f"size {x_lr.shape[1]}x{x_lr.shape[2]}"
        )
    if not 0.0 <= float(level) <= 1.0:
        raise ValueError(f"augmentation level {level!r} must lie in [0, 1]")
    aug_key, sample_key = jax.random.split(key)
    cond = condition(aug_key, process, x_lr, level, size, sr)
    bound = jax.tree_util.Partial(_with_cond, model, cond)
    shape = (x_lr.shape[0], size, size, x_lr.shape[3])
    return sample(
        sample_key,
        bound,
        process,
        shape,
        solver=solver,
        steps=steps,
        prediction=prediction,
        **options,
    )
