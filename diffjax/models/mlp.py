"""A residual MLP with a sinusoidal time embedding for low-dimensional data (toy distributions)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from diffjax.models.heads import head_channels
from diffjax.models.layers import (
    Dtype,
    TimestepEmbedding,
    check_inputs,
    check_labels,
    null_labels,
    split_cond,
)
from diffjax.typing import Array


class MLP(nn.Module):
    """Residual MLP denoiser for x [B, D].

    h = Dense(x); for each block h += Dense(SiLU(Dense(SiLU(LN(h))) + Dense(emb))); out =
    Dense(SiLU(LN(h))) with D outputs (2D = [mean | v] with `learn_sigma`). emb is the
    sinusoidal embedding of 1000 t through a two-layer MLP (Ho et al. 2020), plus a label
    embedding (index num_classes = null) when `num_classes` is set. `cond` follows
    `diffjax.models.layers.split_cond`; only labels apply here.

    References:
      Ho et al. 2020 (time embedding); Vaswani et al. 2017 (sinusoids).
    """

    hidden: int = 128
    depth: int = 3
    time_dim: int = 64
    num_classes: int | None = None
    learn_sigma: bool = False
    time_scale: float = 1000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if self.hidden < 1 or self.depth < 0 or self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(
                f"need hidden >= 1, depth >= 0 and an even time_dim >= 2; got hidden="
                f"{self.hidden}, depth={self.depth}, time_dim={self.time_dim}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None, *, train: bool = False) -> Array:
        y, context, concat = split_cond(cond)
        check_inputs(x, t, 2, None, "MLP")
        check_labels(y, self.num_classes, x.shape[0], "MLP")
        if context is not None or concat is not None:
            raise ValueError("MLP takes only class labels as conditioning; got context/concat")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        emb = TimestepEmbedding(self.time_dim, self.hidden, self.time_scale, name="temb", **kw)(t)
        if self.num_classes:
            labels = null_labels(y, self.num_classes, x.shape[0])
            emb = emb + nn.Embed(self.num_classes + 1, self.hidden, name="label_emb", **kw)(labels)
        h = nn.Dense(self.hidden, name="dense_in", **kw)(x)  # [B, hidden]
        for i in range(self.depth):
            u = nn.Dense(self.hidden, name=f"block{i}_dense0", **kw)(
                nn.silu(nn.LayerNorm(name=f"block{i}_norm", **kw)(h))
            )
            u = u + nn.Dense(self.hidden, name=f"block{i}_temb", **kw)(emb)
            h = h + nn.Dense(self.hidden, name=f"block{i}_dense1", **kw)(nn.silu(u))
        h = nn.silu(nn.LayerNorm(name="norm_out", **kw)(h))
        out = nn.Dense(head_channels(x.shape[-1], self.learn_sigma), name="dense_out", **kw)(h)
        return out.astype(jnp.float32)  # [B, D] or [B, 2D]


def mlp_toy(**overrides: Any) -> MLP:
    """The default toy-data MLP: hidden 128, 3 residual blocks (~0.1M parameters in 2-D)."""
    return MLP(**{**dict(hidden=128, depth=3, time_dim=64), **overrides})
