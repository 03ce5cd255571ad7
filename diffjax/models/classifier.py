"""A time-conditional classifier of noisy images x_t: the U-Net's encoder half with a pooled
head (Dhariwal & Nichol 2021, sec. 4 and app. C), for classifier guidance.

The encoder is the down path and the middle block of `diffjax.models.unet.UNet` (its own
ResBlock and AttnBlock, conditioned on t through the same timestep embedding); the head pools
the 8x8-or-smaller feature map to one vector (attention pooling, as Dhariwal & Nichol's
"attention pool", or a plain spatial mean) and maps it to `num_classes` logits.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.layers import Attention, TimestepEmbedding, check_inputs
from diffjax.models.unet import AttnBlock, ResBlock, _resample, default_init
from diffjax.typing import Array

POOLS = ("attention", "mean")


class NoisyClassifier(nn.Module):
    """logits [B, num_classes] of p_phi(y | x_t, t) for x_t [B, H, W, in_channels], t [B].

    Call: `apply(variables, x_t, t, cond=None, train=False)`; `cond` is accepted (and ignored)
    so that the training layer can treat it like a denoiser: the labels are its targets.

    Attributes:
      num_classes: K.
      ch, ch_mult, num_res_blocks, attn_resolutions, dropout, num_groups, num_heads: as in the
        U-Net's down path.
      pool: 'attention' (a learned query attends over the H W positions plus their mean, the
        attention pool of Dhariwal & Nichol's classifier) or 'mean' (global average).
    References:
      Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", sec. 4.1 and
      app. C (the classifier is the U-Net's downsampling trunk with an attention pool at 8x8).
    """

    num_classes: int
    in_channels: int = 1
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    num_groups: int = 8
    num_heads: int = 1
    pool: str = "attention"
    time_scale: float = 1000.0

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if self.pool not in POOLS:
            raise ValueError(f"NoisyClassifier pool = {self.pool!r}: expected one of {POOLS}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"NoisyClassifier needs num_classes >= 2; got {self.num_classes!r}")
        for k in self.ch_mult:
            if (self.ch * k) % self.num_groups:
                raise ValueError(
                    f"width ch * mult = {self.ch * k} is not divisible by num_groups = "
                    f"{self.num_groups}"
                )
        super().__post_init__()

    def _res(self, h, temb, out_ch, train, name):
        return ResBlock(out_ch, self.dropout, self.num_groups, name=name)(h, temb, train)

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None, *, train: bool = False) -> Array:
        check_inputs(x, t, 4, self.in_channels, "NoisyClassifier")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"image size {x.shape[1]}x{x.shape[2]} is not divisible by the down-sampling "
                f"factor {factor} of ch_mult={self.ch_mult}"
            )
        temb = TimestepEmbedding(self.ch, 4 * self.ch, self.time_scale, default_init, name="temb")(
            t
        )  # [B, 4 ch]
        h = nn.Conv(self.ch, (3, 3), kernel_init=default_init, name="conv_in")(x)
        for level, mult in enumerate(self.ch_mult):
            for block in range(self.num_res_blocks):
                h = self._res(h, temb, self.ch * mult, train, f"down{level}_res{block}")
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_heads, self.num_groups, name=f"down{level}_attn{block}")(
                        h, None
                    )
            if level != len(self.ch_mult) - 1:
                h = _resample(h, True, True, f"down{level}", {})
        h = self._res(h, temb, h.shape[-1], train, "mid_res0")
        h = AttnBlock(self.num_heads, self.num_groups, name="mid_attn")(h, None)
        h = self._res(h, temb, h.shape[-1], train, "mid_res1")
        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_out")(h))  # [B, h, w, C]
        return nn.Dense(self.num_classes, name="logits")(self._pool(h)).astype(jnp.float32)

    def _pool(self, h: Array) -> Array:
        """[B, h, w, C] -> [B, C]: the spatial mean, or attention from the mean (as query,
        prepended to the positions, as in CLIP's and Dhariwal & Nichol's attention pool)."""
        b, hh, ww, c = h.shape
        flat = h.reshape(b, hh * ww, c)
        mean = jnp.mean(flat, axis=1, keepdims=True)  # [B, 1, C]
        if self.pool == "mean":
            return mean[:, 0]
        tokens = jnp.concatenate([mean, flat], axis=1)  # [B, 1 + hw, C]
        pos = self.param("pool_pos", nn.initializers.normal(c**-0.5), (1 + hh * ww, c))
        tokens = tokens + pos[None]
        out = Attention(num_heads=self.num_heads, name="pool_attn")(tokens)  # [B, 1 + hw, C]
        return out[:, 0]
