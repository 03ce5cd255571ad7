"""Text encoders for cross-attention conditioning: a small pre-LN transformer trained with the
denoiser, and `FrozenEncoder`, the interface for a user-supplied (e.g. pretrained) one."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import Dtype
from diffjax.typing import Array

TokenEncoderFn = Callable[[Array], Array]
"""The protocol of a user-supplied encoder: tokens int [B, L] -> states float [B, L, C]."""


def pool_context(context: Array) -> Array:
    """The pooled embedding [B, C] of a context [B, L, C]: the mean over its non-zero rows.

    Convention: a row that is exactly zero is padding (`TextEncoder` and `FrozenEncoder` zero
    the states at <pad> tokens), so this is the masked mean over real tokens, and the plain
    mean for a context without zero rows. A context of only zero rows pools to zero.
    """
    mask = jnp.any(context != 0, axis=-1).astype(context.dtype)  # [B, L]
    total = jnp.einsum("bl,blc->bc", mask, context)
    return total / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1.0)


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention of x [B, L, C] in which no query attends to a padded key."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        b, n, c = x.shape
        d, kw = c // self.num_heads, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q, k, v = (
            nn.Dense(c, name=name, **kw)(x).reshape(b, n, self.num_heads, d) for name in "qkv"
        )
        logits = jnp.einsum("bnhd,blhd->bhnl", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :], logits / math.sqrt(d), -1e30)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # [B, H, N, L]
        h = jnp.einsum("bhnl,blhd->bnhd", weights, v).reshape(b, n, c)
        return nn.Dense(c, name="out", **kw)(h)


class TextEncoder(nn.Module):
    """Token ids [B, L] -> (token states [B, L, width], pooled [B, width]).

    Token embedding + learned positional embedding -> `depth` pre-LN transformer blocks
    (x + attn(LN x), x + MLP(LN x); Xiong et al. 2020) with a padding mask -> final LN. States at
    <pad> positions (id `pad_id`) are set to zero (see `pool_context`); pooled is the masked
    mean over real tokens ("mean") or the state at the last real token ("eos": the <eos> state
    of a `WordTokenizer` with add_bos_eos, as CLIP pools). Bidirectional (no causal mask).
    """

    vocab_size: int
    context_length: int = 16
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    pad_id: int = 0
    pooling: str = "mean"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} not divisible by num_heads {self.num_heads}")
        if self.pooling not in ("mean", "eos"):
            raise ValueError(f"pooling must be 'mean' or 'eos'; got {self.pooling!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, tokens: Array) -> tuple[Array, Array]:
        if np.ndim(tokens) != 2 or np.shape(tokens)[1] != self.context_length:
            raise ValueError(
                f"tokens must be [B, {self.context_length}]; got shape {np.shape(tokens)}"
            )
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        mask = tokens != self.pad_id  # [B, L]
        init = nn.initializers.normal(0.02)
        h = nn.Embed(self.vocab_size, self.width, embedding_init=init, name="tok", **kw)(tokens)
        pos = self.param("pos", init, (self.context_length, self.width), self.param_dtype)
        h = h + pos[None].astype(h.dtype)
        for i in range(self.depth):
            h = h + MaskedSelfAttention(self.num_heads, name=f"attn{i}", **kw)(
                nn.LayerNorm(name=f"ln{i}a", **kw)(h), mask
            )
            m = nn.Dense(int(self.mlp_ratio * self.width), name=f"mlp{i}a", **kw)(
                nn.LayerNorm(name=f"ln{i}b", **kw)(h)
            )
            h = h + nn.Dense(self.width, name=f"mlp{i}b", **kw)(nn.gelu(m))
        h = nn.LayerNorm(name="ln_out", **kw)(h).astype(jnp.float32)
        h = jnp.where(mask[..., None], h, 0.0)
        return h, _pool(h, mask, self.pooling)


def _pool(states: Array, mask: Array, pooling: str) -> Array:
    if pooling == "mean":
        m = mask.astype(states.dtype)
        return jnp.einsum("bl,blc->bc", m, states) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    last = jnp.maximum(jnp.sum(mask, axis=-1) - 1, 0)  # index of the last real token
    return jnp.take_along_axis(states, last[:, None, None], axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class FrozenEncoder:
    """A user-supplied text encoder, frozen: `fn(tokens [B, L]) -> states [B, L, C]`.

    Calling it returns (states, pooled) like `TextEncoder`, with gradients stopped and states
    at <pad> positions zeroed (so `pool_context` and the masked-mean pooled embedding agree).
    Wrap a pretrained text tower (e.g. CLIP's, loaded by the user: none can be downloaded here)
    behind the same tokens the tokenizer produces. `fn` is called eagerly or under the
    caller's jit; its parameters should be closed over (they are constants here).
    """

    fn: TokenEncoderFn
    pad_id: int = 0

    def __call__(self, tokens: Array) -> tuple[Array, Array]:
        states = jnp.asarray(self.fn(tokens), jnp.float32)
        if states.ndim != 3 or states.shape[:2] != np.shape(tokens):
            raise ValueError(
                f"the encoder must map tokens {np.shape(tokens)} to [B, L, C]; got {states.shape}"
            )
        mask = jnp.asarray(tokens) != self.pad_id
        states = jax.lax.stop_gradient(jnp.where(mask[..., None], states, 0.0))
        return states, _pool(states, mask, "mean")


def text_tiny(vocab_size: int, **overrides: Any) -> TextEncoder:
    """A tiny text encoder for tests and CPU runs: width 32, depth 2, 2 heads."""
    kw = dict(width=32, depth=2, num_heads=2)
    return TextEncoder(vocab_size, **{**kw, **overrides})


class TextConditioned(nn.Module):
    """A denoiser conditioned on captions through a text encoder trained jointly with it:

        model(x_t, t, tokens [B, L]) = denoiser(x_t, t, {"context": s * encoder(tokens)})

    the token states [B, L, width] fed to the denoiser's cross-attention (and, with its
    `pooled_embedding`, their masked mean to its time embedding), as in latent diffusion's
    text-to-image models (Rombach et al. 2022, sec. 3.3) with a small encoder in place of
    BERT/CLIP. `cond` None means the null caption `null_tokens` (the tokenisation of "", the
    caption that classifier-free guidance training drops to), so `model(x_t, t)` is the
    unconditional model. `cond` may also be a dict {"tokens": [B, L], "y": labels [B]}.

    Attributes:
      denoiser: a backbone with cross-attention (UNet or DiT with context_dim = encoder width).
      encoder: a `TextEncoder` (its params, "encoder", are trained with the denoiser's).
      null_tokens: the ids of the null caption, length encoder.context_length.
      context_scale: s; 0 zeroes the text encoder's output (an ablation of the text path).
    """

    denoiser: nn.Module
    encoder: nn.Module
    null_tokens: tuple[int, ...]
    context_scale: float = 1.0

    def null(self, batch: int) -> Array:
        """The null caption's tokens for `batch` examples: int32 [B, L]."""
        return jnp.broadcast_to(
            jnp.asarray(self.null_tokens, jnp.int32), (batch, len(self.null_tokens))
        )

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Any = None, *, train: bool = False) -> Array:
        tokens, y = (cond.get("tokens"), cond.get("y")) if isinstance(cond, dict) else (cond, None)
        if tokens is None:
            tokens = self.null(np.shape(x)[0])
        if np.ndim(tokens) != 2 or not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
            raise ValueError(
                f"TextConditioned takes int token ids [B, L] as cond; got {np.shape(tokens)}"
            )
        states, _ = self.encoder(tokens)
        context = {"context": self.context_scale * states}
        if y is not None:
            context["y"] = y
        return self.denoiser(x, t, context, train=train)
