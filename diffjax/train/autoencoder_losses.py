"""The objectives of KL-autoencoder training (Rombach et al. 2022, sec. 3.1 and app. G; Esser et
al. 2021, sec. 3.1): reconstruction + KL weight x KL + an optional, delayed PatchGAN term with
the adaptive weight, and the discriminator's hinge loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.losses.autoencoder import (
    RECONSTRUCTIONS,
    adaptive_weight,
    delayed,
    generator_loss,
    hinge_discriminator_loss,
    reconstruction,
)
from diffjax.typing import Array


@dataclasses.dataclass(frozen=True)
class AutoencoderLoss:
    """Weights of the autoencoder objective.

    L_G = mean_B[rec(x, x_rec) + perceptual_weight d_P(x, x_rec)] + kl_weight mean_B[KL]
          + delayed(disc_factor, step, disc_start) disc_weight lambda L_GAN,
    lambda the adaptive weight at the decoder's last layer (Esser et al. 2021, eq. 7).

    Attributes:
      reconstruction: "l1" (the paper's), "l2" or "l1+l2", summed over pixels.
      kl_weight: 1e-6 in the latent-diffusion kl-f* configs.
      disc_weight, disc_factor, disc_start: the GAN term's weight, its on-value and the step
        from which it counts (the kl-f8 config: 0.5, 1.0, 50001). Used only when a
        discriminator is passed.
      perceptual: None (default, off) or a user-supplied feature function x [B, H, W, C] ->
        a pytree of features [B, ...]; d_P is then the summed per-example mean squared feature
        difference (LPIPS-like when the features are a pretrained network's). No pretrained
        feature weights can be downloaded here, so none ship with diffjax.
      perceptual_weight: weight of d_P (1.0 in the paper's LPIPS setting).
      last_layer: the path of the decoder's last-layer kernel in the autoencoder's params.
    """

    reconstruction: str = "l1"
    kl_weight: float = 1e-6
    disc_weight: float = 0.5
    disc_factor: float = 1.0
    disc_start: int = 50001
    perceptual: Callable[[Array], Any] | None = None
    perceptual_weight: float = 1.0
    last_layer: tuple[str, ...] = ("decoder", "conv_out", "kernel")

    def __post_init__(self):
        if self.reconstruction not in RECONSTRUCTIONS:
            raise ValueError(
                f"reconstruction must be one of {RECONSTRUCTIONS}; got {self.reconstruction!r}"
            )
        if min(self.kl_weight, self.disc_weight, self.perceptual_weight) < 0:
            raise ValueError(
                f"weights must be >= 0; got kl {self.kl_weight}, disc {self.disc_weight}, "
                f"perceptual {self.perceptual_weight}"
            )


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for k in path:
        if k not in tree:
            raise ValueError(f"no {k!r} on the path {path} of the params (keys {sorted(tree)})")
        tree = tree[k]
    return tree


def _set(tree: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def _perceptual(fn: Callable[[Array], Any], x: Array, x_rec: Array) -> Array:
    pairs = zip(jax.tree.leaves(fn(x)), jax.tree.leaves(fn(x_rec)), strict=True)
    return sum(jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1) for a, b in pairs)


def generator_objective(
    spec: AutoencoderLoss,
    autoencoder: nn.Module,
    discriminator: nn.Module | None,
    params: Any,
    disc_params: Any,
    x: Array,
    key: jax.Array | None,
    step: Array | int,
) -> tuple[Array, dict[str, Array]]:
    """L_G (see `AutoencoderLoss`) of the autoencoder params, and metrics; differentiate
    w.r.t. `params`. `key` draws the posterior sample (None: decode the mode); `step` may be
    traced. With `discriminator` None the GAN term and its adaptive weight are skipped."""
    path = tuple(spec.last_layer)
    last = _get(params, path)

    def parts(w):
        x_rec, posterior = autoencoder.apply({"params": _set(params, path, w)}, x, key)
        rec = reconstruction(x, x_rec, spec.reconstruction)
        if spec.perceptual is not None:
            rec = rec + spec.perceptual_weight * _perceptual(spec.perceptual, x, x_rec)
        gan = jnp.zeros(())
        if discriminator is not None:
            gan = generator_loss(discriminator.apply({"params": disc_params}, x_rec))
        return jnp.mean(rec), gan, jnp.mean(posterior.kl()), x_rec

    rec, gan, kl, x_rec = parts(last)
    loss = rec + spec.kl_weight * kl
    metrics = {"rec": rec, "kl": kl, "gan": gan, "x_rec": x_rec}
    if discriminator is not None:
        lam = adaptive_weight(
            jax.grad(lambda w: parts(w)[0])(last), jax.grad(lambda w: parts(w)[1])(last)
        )
        factor = delayed(spec.disc_factor, step, spec.disc_start)
        loss = loss + factor * spec.disc_weight * lam * gan
        metrics["adaptive_weight"] = lam
    return loss, metrics


def discriminator_objective(
    spec: AutoencoderLoss,
    discriminator: nn.Module,
    disc_params: Any,
    x: Array,
    x_rec: Array,
    step: Array | int,
) -> Array:
    """delayed(disc_factor, step, disc_start) x hinge loss of D on real x and (stopped)
    reconstructions; differentiate w.r.t. `disc_params`."""
    apply = lambda im: discriminator.apply({"params": disc_params}, im)
    hinge = hinge_discriminator_loss(apply(x), apply(jax.lax.stop_gradient(x_rec)))
    return delayed(spec.disc_factor, step, spec.disc_start) * hinge
