"""Building blocks shared by the backbones: time embedding, attention, and the one
conditioning convention (`split_cond`)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checks import check_batch_time, is_concrete
from diffjax.typing import Array, ArrayLike

Dtype = Any

COND_KEYS = ("y", "context", "concat")
"""Keys of a conditioning dict: class labels [B] int, a context sequence [B, L, C_ctx] for
cross-attention, and an image [B, H, W, C'] concatenated to the input channels."""


def split_cond(cond: Any) -> tuple[Array | None, Array | None, Array | None]:
    """Split the `cond` argument of every backbone into (y, context, concat).

    The convention, shared by `UNet`, `DiT` and `MLP` (and so by `bind`):
      * None: unconditional (a class-conditional model then uses the null label).
      * an integer array [B]: class labels y, with index `num_classes` the null label.
      * a float array [B, L, C_ctx]: a context sequence for cross-attention.
      * a float array [B, H, W, C']: an image concatenated to x_t along channels
        (super-resolution low-res input, inpainting mask + masked image).
      * a dict with any of the keys "y", "context", "concat" holding the above.

    Raises:
      ValueError: for unknown dict keys or an array that fits none of the forms.
    """
    if cond is None:
        return None, None, None
    if isinstance(cond, dict):
        unknown = set(cond) - set(COND_KEYS)
        if unknown:
            raise ValueError(f"unknown conditioning keys {sorted(unknown)}; expected {COND_KEYS}")
        return cond.get("y"), cond.get("context"), cond.get("concat")
    cond = jnp.asarray(cond)
    if jnp.issubdtype(cond.dtype, jnp.integer) and cond.ndim == 1:
        return cond, None, None
    if jnp.issubdtype(cond.dtype, jnp.floating) and cond.ndim == 3:
        return None, cond, None
    if jnp.issubdtype(cond.dtype, jnp.floating) and cond.ndim == 4:
        return None, None, cond
    raise ValueError(
        f"cond must be None, int labels [B], a float context [B, L, C], a float image "
        f"[B, H, W, C] or a dict of these; got dtype {cond.dtype} and shape {cond.shape}"
    )


def check_inputs(x: ArrayLike, t: ArrayLike, ndim: int, channels: int | None, what: str) -> None:
    """Raise ValueError unless x has rank `ndim`, `channels` last (when given) and t is [B]."""
    if np.ndim(x) != ndim:
        raise ValueError(f"{what} expects x of rank {ndim}; got shape {np.shape(x)}")
    if channels is not None and np.shape(x)[-1] != channels:
        raise ValueError(
            f"{what} was built for {channels} input channels; got x of shape {np.shape(x)}"
        )
    check_batch_time(t, x)


def check_labels(y: ArrayLike | None, num_classes: int | None, batch: int, what: str) -> None:
    """Raise ValueError for labels given to an unconditional model, of the wrong shape, or
    (when concrete) outside [0, num_classes], index num_classes being the null label."""
    if y is None:
        return
    if not num_classes:
        raise ValueError(f"{what} has no class embedding (num_classes={num_classes}); got labels")
    if np.shape(y) != (batch,) or not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        raise ValueError(f"labels must be int of shape ({batch},); got {np.shape(y)}")
    if is_concrete(y):
        bad = (np.asarray(y) < 0) | (np.asarray(y) > num_classes)
        if bad.any():
            raise ValueError(
                f"labels must lie in [0, {num_classes}] ({num_classes} = null); got "
                f"{np.asarray(y)[bad][:5]}"
            )


def null_labels(y: Array | None, num_classes: int, batch: int) -> Array:
    """The labels to embed: y, or the null label `num_classes` for every example if y is None."""
    if y is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    return y


def sinusoidal_embedding(
    t: ArrayLike, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0
) -> Array:
    """Sinusoidal embedding of a scalar per example (Vaswani et al. 2017, sec. 3.5).

    emb = [sin(s t w_k), cos(s t w_k)], w_k = max_period^(-k / (dim/2)), k = 0..dim/2 - 1,
    with s = `scale` (1000 maps t in [0, 1] to the step index range of Ho et al. 2020).
    (Ho et al.'s code uses exponents k / (dim/2 - 1), a marginally different frequency ladder,
    and DiT's orders [cos, sin], a permutation of features: immaterial when training from
    scratch, relevant only to loading their released weights.)

    Args:
      t: [B] times.
      dim: even embedding width.
    Returns:
      [B, dim] float32.
    References:
      Vaswani et al. 2017; Ho et al. 2020, appendix B (the timestep embedding of the U-Net).
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding width must be even; got dim={dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = scale * jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]  # [B, half]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class TimestepEmbedding(nn.Module):
    """t [B] -> sinusoidal(freq_dim) -> Dense(dim) -> SiLU -> Dense(dim) -> [B, dim]."""

    freq_dim: int
    dim: int
    scale: float = 1000.0
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: Array) -> Array:
        emb = sinusoidal_embedding(t, self.freq_dim, scale=self.scale)  # [B, F]
        kw = dict(kernel_init=self.kernel_init, dtype=self.dtype, param_dtype=self.param_dtype)
        emb = nn.Dense(self.dim, name="dense0", **kw)(emb)
        return nn.Dense(self.dim, name="dense1", **kw)(nn.silu(emb))  # [B, dim]


class Attention(nn.Module):
    """Multi-head dot-product attention of x [B, N, C] to itself or to a context [B, L, C_ctx].

    softmax(q k^T / sqrt(d_head)) v with q, k, v and the output projection Dense layers
    (Vaswani et al. 2017). Logits and softmax are computed in float32 for bfloat16 stability.
    """

    num_heads: int = 1
    out_zero_init: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array | None = None) -> Array:
        b, n, c = x.shape
        if c % self.num_heads:
            raise ValueError(f"channels {c} are not divisible by num_heads={self.num_heads}")
        kv = x if context is None else context
        d = c // self.num_heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = lambda name, init=self.kernel_init: nn.Dense(c, name=name, kernel_init=init, **kw)
        q = dense("q")(x).reshape(b, n, self.num_heads, d)  # [B, N, H, D]
        k = dense("k")(kv).reshape(b, kv.shape[1], self.num_heads, d)  # [B, L, H, D]
        v = dense("v")(kv).reshape(b, kv.shape[1], self.num_heads, d)  # [B, L, H, D]
        logits = jnp.einsum("bnhd,blhd->bhnl", q, k, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits / math.sqrt(d), axis=-1).astype(v.dtype)  # [B, H, N, L]
        h = jnp.einsum("bhnl,blhd->bnhd", weights, v).reshape(b, n, c)  # [B, N, C]
        out_init = nn.initializers.zeros if self.out_zero_init else self.kernel_init
        return dense("out", out_init)(h)
