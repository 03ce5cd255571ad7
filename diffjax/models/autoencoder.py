"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022), its diagonal Gaussian
posterior, the PatchGAN discriminator used to train it, and the latent scale factor."""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.layers import Attention, Dtype
from diffjax.typing import Array, ArrayLike

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
"""The clamp on the posterior log-variance in the latent-diffusion code (Rombach et al. 2022)."""


class DiagonalGaussian(NamedTuple):
    """q(z | x) = N(mean, diag(exp(logvar))), mean and logvar [B, h, w, c]; a pytree.

    Build it with `DiagonalGaussian.from_moments` (or `diagonal_gaussian`), which clamps the
    log-variance to [LOGVAR_MIN, LOGVAR_MAX] as the paper's code does (exp(20) and exp(-30)
    bound the variance so that neither exp nor log overflows).
    """

    mean: Array  # [B, h, w, c]
    logvar: Array  # [B, h, w, c], already clamped

    @classmethod
    def from_moments(cls, moments: Array) -> DiagonalGaussian:
        """Split encoder moments [B, h, w, 2c] into (mean, logvar) along channels, clamping."""
        if moments.shape[-1] % 2:
            raise ValueError(f"moments need an even channel count; got shape {moments.shape}")
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return diagonal_gaussian(mean, logvar)

    @property
    def std(self) -> Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> Array:
        """z = mean + std eps, eps ~ N(0, I) (reparameterised, differentiable in mean, logvar)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> Array:
        return self.mean

    def kl(self) -> Array:
        """KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar) over latent dims: [B]
        (Kingma & Welling 2014, appendix B)."""
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms.reshape(terms.shape[0], -1), axis=-1)


def diagonal_gaussian(mean: ArrayLike, logvar: ArrayLike) -> DiagonalGaussian:
    """A `DiagonalGaussian` with logvar clamped to [LOGVAR_MIN, LOGVAR_MAX]."""
    mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {mean.shape} and logvar {logvar.shape} must have one shape")
    return DiagonalGaussian(mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))


def latent_scale_factor(latents: ArrayLike) -> Array:
    """1 / std of latents over every element, so that scale * z has unit variance; Stable
    Diffusion's 0.18215 was computed this way from posterior samples of a training batch
    (Rombach et al. 2022, app. G, "rescaling the latent space")."""
    latents = jnp.asarray(latents, jnp.float32)
    if latents.size < 2:
        raise ValueError(f"need at least two latent values for a std; got shape {latents.shape}")
    return 1.0 / jnp.std(latents)


def encoded_latent_scale(
    key: jax.Array, autoencoder: AutoencoderKL, variables: Any, images: ArrayLike, batch: int = 64
) -> Array:
    """`latent_scale_factor` of posterior samples z ~ q(z | x) of `images` [N, H, W, C] (a sample
    of the training set, in the autoencoder's input range), encoded `batch` at a time."""
    images = jnp.asarray(images)
    # The variables are a traced argument (not constants baked into the compiled program).
    encode = jax.jit(lambda v, k, x: autoencoder.apply(v, x, method="encode").sample(k))
    keys = jax.random.split(key, -(-images.shape[0] // batch))
    zs = [encode(variables, k, images[i * batch : (i + 1) * batch]) for i, k in enumerate(keys)]
    return latent_scale_factor(jnp.concatenate(zs))


# ----------------------------------------------------------------------------------------------
# Encoder and decoder (Rombach et al. 2022, the "kl-f*" first stages; Esser et al. 2021).


def _norm(groups: int, name: str, kw: dict) -> nn.GroupNorm:
    return nn.GroupNorm(groups, epsilon=1e-6, name=name, **kw)


class AEResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> dropout -> conv3x3, plus x (a 1x1
    shortcut when the width changes). No time embedding: the autoencoder is unconditional."""

    out_ch: int
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.Conv(self.out_ch, (3, 3), name="conv0", **kw)(
            nn.silu(_norm(self.num_groups, "norm0", kw)(x))
        )
        h = nn.silu(_norm(self.num_groups, "norm1", kw)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = nn.Conv(self.out_ch, (3, 3), name="conv1", **kw)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Conv(self.out_ch, (1, 1), name="shortcut", **kw)(x)
        return x + h


class AEAttnBlock(nn.Module):
    """x + attention(GroupNorm(x)) over the h w positions, one head (q, k, v, out: 1x1 maps)."""

    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = _norm(self.num_groups, "norm", kw)(x).reshape(b, hh * ww, c)
        return x + Attention(1, name="attn", **kw)(h).reshape(x.shape)


def _downsample(x: Array, name: str, kw: dict) -> Array:
    """Stride-2 3x3 conv after zero padding one row/column at the bottom/right (the paper's
    code): h -> h/2 for even h."""
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=2, padding="VALID", name=name, **kw)(x)


def _upsample(x: Array, name: str, kw: dict) -> Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest, [B, 2h, 2w, C]
    return nn.Conv(x.shape[-1], (3, 3), name=name, **kw)(x)


class _AEBase(nn.Module):
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _res(self, h, out_ch, train, name):
        return AEResBlock(out_ch, self.num_groups, self.dropout, name=name, **self._kw())(h, train)

    def _attn(self, h, name):
        return AEAttnBlock(self.num_groups, name=name, **self._kw())(h)

    def _mid(self, h, train):
        h = self._res(h, h.shape[-1], train, "mid_res0")
        h = self._attn(h, "mid_attn")
        return self._res(h, h.shape[-1], train, "mid_res1")


class Encoder(_AEBase):
    """x [B, H, W, C] -> moments [B, H/f, W/f, 2 z_channels] (or z_channels without double_z),
    f = 2^(len(ch_mult) - 1). Attention in the mid block and at the feature-map heights listed
    in `attn_resolutions`."""

    z_channels: int = 4
    double_z: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        h = nn.Conv(self.ch, (3, 3), name="conv_in", **self._kw())(x)
        for level, mult in enumerate(self.ch_mult):
            for block in range(self.num_res_blocks):
                h = self._res(h, self.ch * mult, train, f"down{level}_res{block}")
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(h, f"down{level}_attn{block}")
            if level != len(self.ch_mult) - 1:
                h = _downsample(h, f"down{level}", self._kw())
        h = self._mid(h, train)
        h = nn.silu(_norm(self.num_groups, "norm_out", self._kw())(h))
        out = 2 * self.z_channels if self.double_z else self.z_channels
        return nn.Conv(out, (3, 3), name="conv_out", **self._kw())(h)


class Decoder(_AEBase):
    """z [B, h, w, z_channels] -> image [B, f h, f w, out_channels]; the mirror of `Encoder`
    with num_res_blocks + 1 blocks per level. The adaptive GAN weight differentiates w.r.t.
    the last layer, `conv_out` (Esser et al. 2021, eq. 7)."""

    out_channels: int = 3

    @nn.compact
    def __call__(self, z: Array, train: bool = False) -> Array:
        h = nn.Conv(self.ch * self.ch_mult[-1], (3, 3), name="conv_in", **self._kw())(z)
        h = self._mid(h, train)
        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for block in range(self.num_res_blocks + 1):
                h = self._res(h, self.ch * mult, train, f"up{level}_res{block}")
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn(h, f"up{level}_attn{block}")
            if level != 0:
                h = _upsample(h, f"up{level}", self._kw())
        h = nn.silu(_norm(self.num_groups, "norm_out", self._kw())(h))
        return nn.Conv(self.out_channels, (3, 3), name="conv_out", **self._kw())(h)


class AutoencoderKL(nn.Module):
    """The KL autoencoder of latent diffusion (Rombach et al. 2022, sec. 3.1 and app. G).

    `apply(v, x, key)` -> (reconstruction [B, H, W, C], posterior `DiagonalGaussian`), decoding a
    posterior sample (or the mode when key is None); `apply(v, x, method="encode")` ->
    posterior, `apply(v, z, method="decode")` -> image. The 1x1 `quant_conv` (moments) and
    `post_quant_conv` (latents) of the paper's code sit between the encoder, the posterior
    and the decoder. Images are H, W divisible by f = 2^(len(ch_mult) - 1), e.g. 28x28 at f = 4
    gives 7x7 latents (28 is not divisible by 8).

    Attributes:
      ch, ch_mult, num_res_blocks, attn_resolutions, dropout: encoder/decoder sizes;
        `attn_resolutions` are feature-map heights with attention besides the mid block.
      z_channels: latent channels (4 in Stable Diffusion). in_channels, out_channels (default
        in_channels): image channels. num_groups: GroupNorm groups (32 in the paper).
    References:
      Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models";
      Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis".
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 4
    in_channels: int = 3
    out_channels: int | None = None
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.ch_mult or any(int(k) < 1 for k in self.ch_mult) or self.num_res_blocks < 1:
            raise ValueError(
                f"need a non-empty ch_mult of positive ints and num_res_blocks >= 1; got "
                f"{self.ch_mult}, {self.num_res_blocks}"
            )
        bad = [self.ch * k for k in self.ch_mult if (self.ch * k) % self.num_groups]
        if bad or self.ch % self.num_groups:
            raise ValueError(f"widths {bad or [self.ch]} not divisible by {self.num_groups} groups")
        super().__post_init__()

    @property
    def factor(self) -> int:
        """The spatial down-sampling factor f."""
        return 2 ** (len(self.ch_mult) - 1)

    def setup(self):
        kw = dict(
            ch=self.ch,
            ch_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            attn_resolutions=self.attn_resolutions,
            num_groups=self.num_groups,
            dropout=self.dropout,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        self.encoder = Encoder(z_channels=self.z_channels, **kw)
        self.decoder = Decoder(out_channels=self.out_channels or self.in_channels, **kw)
        ckw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.quant_conv = nn.Conv(2 * self.z_channels, (1, 1), **ckw)
        self.post_quant_conv = nn.Conv(self.z_channels, (1, 1), **ckw)

    def encode(self, x: Array, train: bool = False) -> DiagonalGaussian:
        if np.ndim(x) != 4 or np.shape(x)[-1] != self.in_channels:
            raise ValueError(
                f"AutoencoderKL expects images [B, H, W, {self.in_channels}]; got {np.shape(x)}"
            )
        if np.shape(x)[1] % self.factor or np.shape(x)[2] % self.factor:
            raise ValueError(
                f"image size {np.shape(x)[1]}x{np.shape(x)[2]} is not divisible by the "
                f"down-sampling factor f={self.factor} of ch_mult={self.ch_mult}"
            )
        moments = self.quant_conv(self.encoder(x, train))
        return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

    def decode(self, z: Array, train: bool = False) -> Array:
        if np.ndim(z) != 4 or np.shape(z)[-1] != self.z_channels:
            raise ValueError(f"latents must be [B, h, w, {self.z_channels}]; got {np.shape(z)}")
        return self.decoder(self.post_quant_conv(z), train).astype(jnp.float32)

    def __call__(
        self, x: Array, key: jax.Array | None = None, *, train: bool = False
    ) -> tuple[Array, DiagonalGaussian]:
        posterior = self.encode(x, train)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z, train), posterior


def kl_f8(**overrides: Any) -> AutoencoderKL:
    """The published kl-f8 first stage of latent / Stable Diffusion v1: ch 128, ch_mult
    (1, 2, 4, 4), 2 res blocks, attention only in the mid blocks, 4 latent channels, RGB;
    83,653,863 parameters (the Stable Diffusion v1 VAE, as counted by diffusers)."""
    kw = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(), z_channels=4)
    return AutoencoderKL(**{**kw, **overrides})


def kl_f4_28(**overrides: Any) -> AutoencoderKL:
    """A small f = 4 autoencoder for 28x28 grey images (MNIST): 7x7x4 latents."""
    kw = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, in_channels=1)
    return AutoencoderKL(**{**kw, **dict(num_groups=8), **overrides})


def kl_f4_32(**overrides: Any) -> AutoencoderKL:
    """A small f = 4 autoencoder for 32x32 RGB images (CIFAR-10): 8x8x4 latents."""
    kw = dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, in_channels=3)
    return AutoencoderKL(**{**kw, **dict(num_groups=8), **overrides})


# ----------------------------------------------------------------------------------------------
# PatchGAN discriminator (Isola et al. 2017; the n_layers = 3 "NLayerDiscriminator" of taming).


class PatchDiscriminator(nn.Module):
    """x [B, H, W, C] -> logits [B, h, w, 1], one per overlapping patch (70x70 receptive field
    at n_layers = 3): conv4x4/2 + LeakyReLU(0.2), then (n_layers - 1) conv4x4/2 + norm +
    LeakyReLU with widths ndf min(2^n, 8), a stride-1 conv of the same form, and a stride-1
    conv to one channel (Isola et al. 2017, app. 6.1.2; Esser et al. 2021).

    Deviation: GroupNorm replaces BatchNorm, so the discriminator is a pure function of its
    parameters (no batch statistics to carry through training state).
    """

    ndf: int = 64
    n_layers: int = 3
    num_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=self.param_dtype)
        init = nn.initializers.normal(0.02)  # the DCGAN init of pix2pix / taming
        h = nn.Conv(self.ndf, (4, 4), 2, kernel_init=init, name="conv0", **kw)(x)
        h = nn.leaky_relu(h, 0.2)
        for n in range(1, self.n_layers + 1):
            stride = 2 if n < self.n_layers else 1
            width = self.ndf * min(2**n, 8)
            h = nn.Conv(
                width, (4, 4), stride, use_bias=False, kernel_init=init, name=f"conv{n}", **kw
            )(h)
            h = nn.GroupNorm(min(self.num_groups, width), name=f"norm{n}")(h)
            h = nn.leaky_relu(h, 0.2)
        h = nn.Conv(1, (4, 4), 1, kernel_init=init, name="conv_out", **kw)(h)
        return h.astype(jnp.float32)
