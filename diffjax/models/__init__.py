"""Flax backbones (U-Net, DiT, MLP), their presets, and `bind` into model functions."""

from diffjax.models.autoencoder import (
    AutoencoderKL,
    DiagonalGaussian,
    PatchDiscriminator,
    diagonal_gaussian,
    encoded_latent_scale,
    kl_f4_28,
    kl_f4_32,
    kl_f8,
    latent_scale_factor,
)
from diffjax.models.dit import DiT, dit_b2, dit_l2, dit_preset, dit_s2, dit_tiny, dit_xl2
from diffjax.models.heads import bound_variance, head_channels
from diffjax.models.layers import sinusoidal_embedding, split_cond
from diffjax.models.mlp import MLP, mlp_toy
from diffjax.models.registry import MODEL_CLASSES, MODELS, bind, get_model
from diffjax.models.text import FrozenEncoder, TextEncoder, pool_context, text_tiny
from diffjax.models.unet import UNet, unet_ddpm_256, unet_ddpm_cifar10, unet_small, unet_tiny

__all__ = [
    "MLP",
    "AutoencoderKL",
    "DiagonalGaussian",
    "FrozenEncoder",
    "PatchDiscriminator",
    "TextEncoder",
    "diagonal_gaussian",
    "encoded_latent_scale",
    "kl_f4_28",
    "kl_f4_32",
    "kl_f8",
    "latent_scale_factor",
    "pool_context",
    "text_tiny",
    "MODELS",
    "MODEL_CLASSES",
    "DiT",
    "UNet",
    "bind",
    "bound_variance",
    "dit_b2",
    "dit_l2",
    "dit_preset",
    "dit_s2",
    "dit_tiny",
    "dit_xl2",
    "get_model",
    "head_channels",
    "mlp_toy",
    "sinusoidal_embedding",
    "split_cond",
    "unet_ddpm_256",
    "unet_ddpm_cifar10",
    "unet_small",
    "unet_tiny",
]
