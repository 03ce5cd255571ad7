"""The U-Net of Ho et al. 2020 (DDPM), with the options of later work: class labels, FiLM
(scale-shift) norm, cross-attention to a context, concatenated condition channels, bf16."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.checks import check_batch_time
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

# DDPM initialises with variance scaling (scale 1, fan_avg, uniform); "init_scale=0" is zeros.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros = nn.initializers.zeros


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> (+ Dense(temb) | FiLM) -> GroupNorm -> SiLU -> dropout ->
    conv (zero init), plus a 1x1 shortcut when the width changes (Ho et al. 2020, app. B).

    With `scale_shift` the embedding gives (scale, shift) and the second norm becomes
    norm(h) (1 + scale) + shift (Nichol & Dhariwal 2021, sec. 3; Dhariwal & Nichol 2021).
    """

    out_ch: int
    dropout: float = 0.0
    num_groups: int = 32
    scale_shift: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = lambda name, init=default_init: nn.Conv(
            self.out_ch, (3, 3), kernel_init=init, name=name, **kw
        )
        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm0", **kw)(x))
        h = conv("conv0")(h)  # [B, H, W, out]
        n_emb = 2 * self.out_ch if self.scale_shift else self.out_ch
        emb = nn.Dense(n_emb, kernel_init=default_init, name="temb", **kw)(nn.silu(temb))
        emb = emb[:, None, None, :]  # [B, 1, 1, n_emb]
        h = nn.GroupNorm(self.num_groups, name="norm1", **kw)(h if self.scale_shift else h + emb)
        if self.scale_shift:
            scale, shift = jnp.split(emb, 2, axis=-1)
            h = h * (1.0 + scale) + shift
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=not train)
        h = conv("conv1", zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, kernel_init=default_init, name="shortcut", **kw)(x)
        return x + h


class AttnBlock(nn.Module):
    """x + proj(attention(GroupNorm(x))) over the H W positions (Ho et al. 2020, app. B).

    With `context` set, the block is instead the transformer block of latent diffusion
    (Rombach et al. 2022, sec. 3.3): GroupNorm -> proj_in -> [LN, self-attn], [LN, cross-attn
    to the context], [LN, MLP] residual sub-blocks -> proj_out (zero init), plus x.
    """

    num_heads: int = 1
    num_groups: int = 32
    cross_attention: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array | None) -> Array:
        b, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        att = dict(num_heads=self.num_heads, kernel_init=default_init, **kw)
        h = nn.GroupNorm(self.num_groups, name="norm", **kw)(x).reshape(b, hh * ww, c)
        if not self.cross_attention:
            h = Attention(out_zero_init=True, name="attn", **att)(h)  # [B, HW, C]
            return x + h.reshape(x.shape)
        h = nn.Dense(c, kernel_init=default_init, name="proj_in", **kw)(h)
        h = h + Attention(name="self_attn", **att)(nn.LayerNorm(name="ln0", **kw)(h))
        h = h + Attention(name="cross_attn", **att)(nn.LayerNorm(name="ln1", **kw)(h), context)
        m = nn.Dense(4 * c, kernel_init=default_init, name="mlp0", **kw)(
            nn.LayerNorm(name="ln2", **kw)(h)
        )
        h = h + nn.Dense(c, kernel_init=default_init, name="mlp1", **kw)(nn.gelu(m))
        h = nn.Dense(c, kernel_init=zeros, name="proj_out", **kw)(h)
        return x + h.reshape(x.shape)


def _resample(x: Array, conv: bool, down: bool, name: str, kw: dict) -> Array:
    """Downsample (stride-2 conv or 2x2 average pool) or upsample (nearest, then a 3x3 conv)."""
    c = x.shape[-1]
    if down:
        if conv:
            return nn.Conv(c, (3, 3), strides=2, kernel_init=default_init, name=name, **kw)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C]
    if conv:
        x = nn.Conv(c, (3, 3), kernel_init=default_init, name=name, **kw)(x)
    return x


class UNet(nn.Module):
    """The DDPM U-Net (Ho et al. 2020, appendix B), channels last.

    Call: `unet.apply(variables, x_t, t, cond=None, train=False, rngs=...)` with x_t
    [B, H, W, in_channels], t [B] in [0, 1] (embedded as 1000 t, the paper's step scale) and
    `cond` as in `diffjax.models.layers.split_cond` (labels, context, concat image or a dict).
    Returns [B, H, W, C_out] float32, C_out = out_channels (default in_channels), doubled to
    [mean prediction | v] when `learn_sigma` (see `diffjax.models.heads`).

    Attributes:
      ch, ch_mult, num_res_blocks, attn_resolutions, dropout: the paper's hyper-parameters;
        attention is applied at the feature-map sizes (height) in `attn_resolutions`.
      resample_with_conv: strided conv / conv after upsampling (else avg-pool / plain nearest).
      num_heads: attention heads (DDPM: 1). num_groups: GroupNorm groups (DDPM: 32).
      num_classes: adds Embed(num_classes + 1) to the time embedding; index num_classes is
        the null label used when no labels are given (classifier-free guidance).
      context_dim: enables cross-attention (transformer blocks) to a context [B, L, context_dim].
      pooled_embedding: adds Dense(`diffjax.models.text.pool_context`(context)) to the time
        embedding (the pooled text embedding); needs context_dim.
      concat_channels: channels of the `concat` image joined to x_t before the first conv.
      scale_shift_norm: FiLM norm of improved DDPM.
      aug_time: a second time input, the noise-conditioning augmentation level s [B] of a
        cascade's SR stage (`diffjax.cascade`; Ho et al. 2021), given as
        cond['aug_t']; its own TimestepEmbedding is added to the time embedding. Off by
        default (no parameters, outputs as before).
      dtype / param_dtype: compute and parameter dtypes (e.g. bfloat16 / float32).
      remat: rematerialise each ResBlock and AttnBlock in the backward pass (`nn.remat`): the
        same outputs, gradients and parameter tree, less activation memory, more compute.
    References:
      Ho et al. 2020, "Denoising Diffusion Probabilistic Models", appendix B;
      Nichol & Dhariwal 2021 (learned variance, scale-shift norm); Rombach et al. 2022
      (cross-attention); Saharia et al. 2022 (SR3: concatenated low-res input).
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resample_with_conv: bool = True
    in_channels: int = 3
    out_channels: int | None = None
    learn_sigma: bool = False
    num_heads: int = 1
    num_groups: int = 32
    num_classes: int | None = None
    context_dim: int | None = None
    pooled_embedding: bool = False
    concat_channels: int = 0
    scale_shift_norm: bool = False
    time_scale: float = 1000.0
    aug_time: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    def __post_init__(self):
        # Configs may hand over lists; tuples keep the module hashable (usable as static arg).
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        _check_config(self)
        super().__post_init__()

    def _kw(self) -> dict[str, Any]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _res(self, h, temb, out_ch, train, name):
        # `train` (argument 3, counting the module) is a Python bool: static under remat
        cls = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        return cls(
            out_ch, self.dropout, self.num_groups, self.scale_shift_norm, name=name, **self._kw()
        )(h, temb, train)

    def _attn(self, h, context, name):
        cls = nn.remat(AttnBlock) if self.remat else AttnBlock
        return cls(
            self.num_heads, self.num_groups, self.context_dim is not None, name=name, **self._kw()
        )(h, context)

    def _embed(self, t: Array, y: Array | None, context: Array | None) -> Array:
        temb = TimestepEmbedding(
            self.ch, 4 * self.ch, self.time_scale, default_init, name="temb", **self._kw()
        )(t)  # [B, 4 ch]
        if self.num_classes:
            labels = null_labels(y, self.num_classes, t.shape[0])
            temb = temb + nn.Embed(
                self.num_classes + 1, 4 * self.ch, name="label_emb", **self._kw()
            )(labels)
        if self.pooled_embedding:
            pooled = pool_context(context.astype(jnp.float32))  # [B, C_ctx]
            temb = temb + nn.Dense(
                4 * self.ch, kernel_init=default_init, name="pooled_emb", **self._kw()
            )(pooled)
        return temb

    def _down(self, x: Array, temb: Array, context: Array | None, train: bool) -> list[Array]:
        """The down path; returns every feature map kept for the skip connections."""
        hs = [nn.Conv(self.ch, (3, 3), kernel_init=default_init, name="conv_in", **self._kw())(x)]
        for level, mult in enumerate(self.ch_mult):
            for block in range(self.num_res_blocks):
                h = self._res(hs[-1], temb, self.ch * mult, train, f"down{level}_res{block}")
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(h, context, f"down{level}_attn{block}")
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                conv = self.resample_with_conv
                hs.append(_resample(hs[-1], conv, True, f"down{level}", self._kw()))
        return hs

    def _up(self, h, hs, temb, context, train) -> Array:
        """The up path: each ResBlock takes [h | skip] channels (num_res_blocks + 1 per level)."""
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for block in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
                h = self._res(h, temb, self.ch * mult, train, f"up{level}_res{block}")
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(h, context, f"up{level}_attn{block}")
            if level != 0:
                h = _resample(h, self.resample_with_conv, False, f"up{level}", self._kw())
        return h

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None, *, train: bool = False) -> Array:
        cond, aug_t = _split_aug_t(cond, self.aug_time)
        y, context, concat = split_cond(cond)
        self._check_call(x, t, y, context, concat)
        if self.concat_channels:
            x = jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)  # [B, H, W, C + C']
        temb = self._embed(t, y, context)
        if self.aug_time:  # the augmentation level s as a second time (diffjax.cascade)
            check_batch_time(aug_t, t, "UNet's cond['aug_t']")
            temb = temb + TimestepEmbedding(
                self.ch, 4 * self.ch, self.time_scale, default_init, name="aug_temb", **self._kw()
            )(aug_t)
        hs = self._down(x, temb, context, train)
        h = self._res(hs[-1], temb, hs[-1].shape[-1], train, "mid_res0")
        h = self._attn(h, context, "mid_attn")
        h = self._res(h, temb, h.shape[-1], train, "mid_res1")
        h = self._up(h, hs, temb, context, train)
        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_out", **self._kw())(h))
        c_out = head_channels(self.out_channels or self.in_channels, self.learn_sigma)
        h = nn.Conv(c_out, (3, 3), kernel_init=zeros, name="conv_out", **self._kw())(h)
        return h.astype(jnp.float32)

    def _check_call(self, x, t, y, context, concat) -> None:
        check_inputs(x, t, 4, self.in_channels, "UNet")
        b, height, width, _ = np.shape(x)
        factor = 2 ** (len(self.ch_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the total down-sampling "
                f"factor {factor} of ch_mult={self.ch_mult}"
            )
        sizes = [height // 2**i for i in range(len(self.ch_mult))]
        missing = [r for r in self.attn_resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"attn_resolutions {missing} never occur; feature-map sizes are {sizes}"
            )
        check_labels(y, self.num_classes, b, "UNet")
        _check_context(context, self.context_dim, b, "UNet")
        _check_concat(concat, self.concat_channels, (b, height, width), "UNet")


def _split_aug_t(cond: Any, enabled: bool) -> tuple[Any, Array | None]:
    """(cond without 'aug_t', aug_t): the augmentation level of an `aug_time` U-Net."""
    aug_t = None
    if isinstance(cond, dict) and "aug_t" in cond:
        cond = dict(cond)
        aug_t = cond.pop("aug_t")
        cond = cond or None
    if enabled and aug_t is None:
        raise ValueError("UNet has aug_time=True: pass the augmentation level as cond['aug_t']")
    if not enabled and aug_t is not None:
        raise ValueError("UNet has aug_time=False; got cond['aug_t'] (set aug_time=True)")
    return cond, aug_t


def _check_config(m: UNet) -> None:
    """Construction-time checks of the hyper-parameters (ValueError naming the value)."""
    if not m.ch_mult or any(int(k) < 1 for k in m.ch_mult):
        raise ValueError(f"ch_mult must be a non-empty tuple of positive ints; got {m.ch_mult}")
    if m.num_res_blocks < 1:
        raise ValueError(f"num_res_blocks must be >= 1; got {m.num_res_blocks}")
    if not 0.0 <= m.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1); got {m.dropout}")
    for k in m.ch_mult:
        if (m.ch * k) % m.num_groups or (m.ch * k) % m.num_heads:
            raise ValueError(
                f"width ch*mult={m.ch * k} must be divisible by num_groups={m.num_groups} and "
                f"num_heads={m.num_heads}"
            )
    if m.pooled_embedding and m.context_dim is None:
        raise ValueError("pooled_embedding=True needs cross-attention (set context_dim)")
    if m.concat_channels < 0 or m.in_channels < 1:
        raise ValueError(
            f"need in_channels >= 1 and concat_channels >= 0; got {m.in_channels}, "
            f"{m.concat_channels}"
        )


def _check_context(context, context_dim: int | None, batch: int, what: str) -> None:
    if context is None:
        if context_dim is not None:
            raise ValueError(f"{what} has cross-attention (context_dim={context_dim}); no context")
        return
    if context_dim is None:
        raise ValueError(f"{what} has no cross-attention (context_dim=None); got a context")
    shape = np.shape(context)
    if len(shape) != 3 or shape[0] != batch or shape[2] != context_dim:
        raise ValueError(
            f"context must have shape ({batch}, L, {context_dim}); got {np.shape(context)}"
        )


def _check_concat(concat, channels: int, bhw: tuple[int, int, int], what: str) -> None:
    if concat is None:
        if channels:
            raise ValueError(f"{what} expects a concat image with {channels} channels; got none")
        return
    if not channels:
        raise ValueError(f"{what} has concat_channels=0; got a concat image")
    if np.shape(concat) != (*bhw, channels):
        raise ValueError(f"concat must have shape {(*bhw, channels)}; got {np.shape(concat)}")


def unet_ddpm_cifar10(**overrides: Any) -> UNet:
    """DDPM CIFAR-10 (32x32x3): ch 128, ch_mult (1, 2, 2, 2), 2 res blocks, attention at 16x16,
    dropout 0.1; 35.7M parameters (Ho et al. 2020, sec. 4 and app. B)."""
    kw = dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    return UNet(**{**kw, **overrides})


def unet_ddpm_256(**overrides: Any) -> UNet:
    """DDPM CelebA-HQ / LSUN 256x256 (church, cat): ch 128, ch_mult (1, 1, 2, 2, 4, 4),
    2 res blocks, attention at 16x16, dropout 0.0; 114M parameters (Ho et al. 2020, app. B)."""
    kw = dict(
        ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0
    )
    return UNet(**{**kw, **overrides})


def unet_tiny(**overrides: Any) -> UNet:
    """A tiny U-Net for tests and CPU runs on 16x16 images (two levels, attention at 8x8)."""
    kw = dict(
        ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, num_groups=8
    )
    return UNet(**{**kw, **overrides})


def unet_small(**overrides: Any) -> UNet:
    """A small U-Net for CPU training on 32x32 images (attention at 8x8); for 28x28 pass
    `attn_resolutions=(7,)`."""
    kw = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)
    return UNet(**{**kw, **overrides})
