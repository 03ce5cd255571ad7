"""Diffusion Transformer (DiT) with adaLN-Zero conditioning (Peebles & Xie 2023)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.models.heads import head_channels
from diffjax.models.layers import (
    Attention,
    Dtype,
    TimestepEmbedding,
    check_inputs,
    check_labels,
    null_labels,
    split_cond,
)
from diffjax.models.text import pool_context
from diffjax.typing import Array

xavier = nn.initializers.xavier_uniform()
normal02 = nn.initializers.normal(0.02)
zeros = nn.initializers.zeros


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[sin(pos w_k), cos(pos w_k)], w_k = 10000^(-k / (dim/2)): [N] -> [N, dim] (float64)."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    args = pos.astype(np.float64)[:, None] * omega[None, :]  # [N, dim/2]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
    """Fixed 2-D sin-cos positional embedding [h w, dim]: half the width encodes the row,
    half the column (Peebles & Xie 2023, sec. 3.2; He et al. 2022, MAE)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4; got {dim}")
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # [h, w]
    emb = [sincos_1d(dim // 2, rows.ravel()), sincos_1d(dim // 2, cols.ravel())]
    return np.concatenate(emb, axis=1).astype(np.float32)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
    """adaLN: x (1 + scale) + shift, with per-example [B, D] shift and scale over tokens."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """x + g1 attn(adaLN(x)) ; x + g2 mlp(adaLN(x)), with (shift, scale, gate) x 2 regressed
    from c by a zero-initialised Dense: adaLN-Zero (Peebles & Xie 2023, sec. 3.2, fig. 3).

    With `cross_attention`, x + cross_attn(LN(x), context) sits between the two, its output
    projection zero-initialised so that a fresh block ignores the context (the cross-attention
    DiT block of Peebles & Xie 2023, fig. 3, as used by PixArt-alpha, Chen et al. 2024).
    """

    num_heads: int
    mlp_ratio: float = 4.0
    cross_attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, c: Array, context: Array | None = None) -> Array:
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mod = nn.Dense(6 * d, kernel_init=zeros, name="adaLN", **kw)(nn.silu(c))  # [B, 6D]
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod, 6, axis=-1)
        norm = lambda name: nn.LayerNorm(1e-6, use_bias=False, use_scale=False, name=name, **kw)
        h = modulate(norm("norm1")(x), shift1, scale1)
        h = Attention(self.num_heads, kernel_init=xavier, name="attn", **kw)(h)
        x = x + gate1[:, None, :] * h
        if self.cross_attention:
            q = nn.LayerNorm(1e-6, name="norm_cross", **kw)(x)
            attn = Attention(self.num_heads, True, xavier, name="cross_attn", **kw)
            x = x + attn(q, context.astype(x.dtype))
        h = modulate(norm("norm2")(x), shift2, scale2)
        h = nn.Dense(int(d * self.mlp_ratio), kernel_init=xavier, name="mlp0", **kw)(h)
        h = nn.Dense(d, kernel_init=xavier, name="mlp1", **kw)(nn.gelu(h, approximate=True))
        return x + gate2[:, None, :] * h


class DiT(nn.Module):
    """Diffusion Transformer (Peebles & Xie 2023), channels last.

    Call: `dit.apply(variables, x_t, t, cond=None, train=False)` with x_t [B, H, W, in_channels]
    (e.g. 32x32x4 latents), t [B] in [0, 1] (embedded as 1000 t) and `cond` as in
    `diffjax.models.layers.split_cond`: labels [B] with index num_classes the null label (label
    dropout for classifier-free guidance is the caller's job: replace labels by num_classes),
    y = None meaning all-null; a context [B, L, context_dim] for cross-attention (e.g. text
    token states, when `context_dim` is set); an optional concat image. With
    `pooled_embedding`, Dense(`diffjax.models.text.pool_context`(context)) is added to the
    conditioning vector c (the pooled text embedding). Returns [B, H, W, C_out] float32,
    C_out = 2 in_channels when `learn_sigma` ([mean | v], see `diffjax.models.heads`).

    Pipeline: patchify (conv, stride p) + fixed 2-D sin-cos positions -> N adaLN-Zero blocks
    conditioned on c = t_emb + y_emb -> adaLN final layer with a zero-initialised linear ->
    unpatchify. A freshly initialised DiT outputs exactly zero.

    `remat` rematerialises each DiTBlock in the backward pass (`nn.remat`): the same outputs,
    gradients and parameter tree, less activation memory, more compute.

    References:
      Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", sec. 3 and Table 1.
    """

    patch_size: int = 2
    hidden: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    in_channels: int = 4
    learn_sigma: bool = True
    num_classes: int | None = 1000
    concat_channels: int = 0
    context_dim: int | None = None
    pooled_embedding: bool = False
    freq_dim: int = 256
    time_scale: float = 1000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def __post_init__(self):
        if self.patch_size < 1 or self.depth < 1:
            raise ValueError(f"need patch_size, depth >= 1; got {self.patch_size}, {self.depth}")
        if self.hidden % self.num_heads or self.hidden % 4:
            raise ValueError(
                f"hidden={self.hidden} must be divisible by 4 and by num_heads={self.num_heads}"
            )
        if self.pooled_embedding and self.context_dim is None:
            raise ValueError("pooled_embedding=True needs cross-attention (set context_dim)")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None, *, train: bool = False) -> Array:
        y, context, concat = split_cond(cond)
        self._check_call(x, t, y, context, concat)
        b, height, width, _ = x.shape
        p, kw = self.patch_size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.concat_channels:
            x = jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)
        h = nn.Conv(
            self.hidden,
            (p, p),
            strides=p,
            padding="VALID",
            kernel_init=xavier,
            name="patch_embed",
            **kw,
        )(x)  # [B, H/p, W/p, D]
        pos = sincos_2d(self.hidden, height // p, width // p)[None]  # [1, N, D]
        h = h.reshape(b, -1, self.hidden) + pos.astype(h.dtype)
        c = TimestepEmbedding(
            self.freq_dim, self.hidden, self.time_scale, normal02, name="t_embed", **kw
        )(t)  # [B, D]
        if self.num_classes:
            labels = null_labels(y, self.num_classes, b)
            c = c + nn.Embed(
                self.num_classes + 1, self.hidden, embedding_init=normal02, name="y_embed", **kw
            )(labels)
        if self.pooled_embedding:
            pooled = pool_context(context.astype(jnp.float32))  # [B, C_ctx]
            c = c + nn.Dense(self.hidden, kernel_init=normal02, name="pooled_embed", **kw)(pooled)
        cross = self.context_dim is not None
        block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            block = block_cls(self.num_heads, self.mlp_ratio, cross, name=f"block{i}", **kw)
            h = block(h, c, context)
        c_out = head_channels(self.in_channels, self.learn_sigma)
        mod = nn.Dense(2 * self.hidden, kernel_init=zeros, name="final_adaLN", **kw)(nn.silu(c))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = modulate(nn.LayerNorm(1e-6, use_bias=False, use_scale=False, **kw)(h), shift, scale)
        h = nn.Dense(p * p * c_out, kernel_init=zeros, name="final_linear", **kw)(h)  # [B, N, ppC]
        return unpatchify(h, p, height, width).astype(jnp.float32)

    def _check_call(self, x, t, y, context, concat) -> None:
        check_inputs(x, t, 4, self.in_channels, "DiT")
        b, height, width, _ = np.shape(x)
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not divisible by patch_size={self.patch_size}"
            )
        check_labels(y, self.num_classes, b, "DiT")
        if context is not None and self.context_dim is None:
            raise ValueError("DiT has no cross-attention (context_dim=None); got a context")
        if context is None and self.context_dim is not None:
            raise ValueError(
                f"DiT has cross-attention (context_dim={self.context_dim}); no context"
            )
        if context is not None and (
            np.ndim(context) != 3 or np.shape(context)[::2] != (b, self.context_dim)
        ):
            raise ValueError(
                f"context must have shape ({b}, L, {self.context_dim}); got {np.shape(context)}"
            )
        if (concat is None) != (not self.concat_channels) or (
            concat is not None and np.shape(concat) != (b, height, width, self.concat_channels)
        ):
            raise ValueError(
                f"DiT has concat_channels={self.concat_channels}; got concat of shape "
                f"{None if concat is None else np.shape(concat)}"
            )


def unpatchify(h: Array, p: int, height: int, width: int) -> Array:
    """[B, (H/p)(W/p), p p C] tokens -> [B, H, W, C] image (inverse of the patch layout)."""
    b, _, ppc = h.shape
    c = ppc // (p * p)
    h = h.reshape(b, height // p, width // p, p, p, c)
    return h.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


# Table 1 of Peebles & Xie 2023: (hidden, depth, heads).
DIT_SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}


def dit_preset(size: str, patch_size: int, **overrides: Any) -> DiT:
    """A DiT preset of Peebles & Xie 2023 (Table 1), e.g. dit_preset("XL", 2); defaults to 32x32x4
    latents, 1000 classes and learn_sigma=True, the setting of the paper's parameter counts."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {tuple(DIT_SIZES)}")
    hidden, depth, heads = DIT_SIZES[size]
    kw = dict(patch_size=patch_size, hidden=hidden, depth=depth, num_heads=heads)
    return DiT(**{**kw, **overrides})


def dit_s2(**overrides: Any) -> DiT:
    """DiT-S/2: 33M parameters (Peebles & Xie 2023, Table 4)."""
    return dit_preset("S", 2, **overrides)


def dit_b2(**overrides: Any) -> DiT:
    """DiT-B/2: 130M parameters (Peebles & Xie 2023, Table 4)."""
    return dit_preset("B", 2, **overrides)


def dit_l2(**overrides: Any) -> DiT:
    """DiT-L/2: 458M parameters (Peebles & Xie 2023, Table 4)."""
    return dit_preset("L", 2, **overrides)


def dit_xl2(**overrides: Any) -> DiT:
    """DiT-XL/2: 675M parameters (Peebles & Xie 2023, Table 4)."""
    return dit_preset("XL", 2, **overrides)


def dit_tiny(**overrides: Any) -> DiT:
    """A tiny DiT for tests and CPU runs (hidden 32, depth 2, 2 heads, 10 classes, 8x8x4)."""
    kw = dict(patch_size=2, hidden=32, depth=2, num_heads=2, num_classes=10, freq_dim=32)
    return DiT(**{**kw, **overrides})
