"""The pure math of autoencoder training (Rombach et al. 2022; Esser et al. 2021): per-example
reconstruction, hinge GAN losses, the adaptive GAN weight and the delayed start of the GAN."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from diffjax.typing import Array, ArrayLike

RECONSTRUCTIONS = ("l1", "l2", "l1+l2")


def reconstruction(x: ArrayLike, x_rec: ArrayLike, kind: str = "l1") -> Array:
    """Per-example reconstruction error summed over pixels: [B].

    kind: "l1" sum |x - x_rec| (the latent-diffusion autoencoders), "l2" sum (x - x_rec)^2,
    or "l1+l2" their sum. Summed (not averaged) over pixels, as in the paper's code, so that
    a KL weight such as 1e-6 keeps its published meaning.
    """
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction {kind!r}; expected one of {RECONSTRUCTIONS}")
    x, x_rec = jnp.asarray(x), jnp.asarray(x_rec)
    if x.shape != x_rec.shape:
        raise ValueError(f"x {x.shape} and reconstruction {x_rec.shape} differ in shape")
    d = (x - x_rec).reshape(x.shape[0], -1)
    l1, l2 = jnp.sum(jnp.abs(d), axis=-1), jnp.sum(jnp.square(d), axis=-1)
    return {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[kind]


def psnr(x: ArrayLike, x_rec: ArrayLike, data_range: float = 2.0) -> Array:
    """Peak signal-to-noise ratio per example, 10 log10(range^2 / MSE), in dB: [B]. The
    default range 2 is for images in [-1, 1]."""
    d = (jnp.asarray(x) - jnp.asarray(x_rec)).reshape(jnp.shape(x)[0], -1)
    return 10.0 * jnp.log10(data_range**2 / jnp.mean(jnp.square(d), axis=-1))


def hinge_discriminator_loss(logits_real: ArrayLike, logits_fake: ArrayLike) -> Array:
    """1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]), a scalar (Lim & Ye 2017; Esser et al.
    2021's default discriminator loss)."""
    real = jnp.mean(jax.nn.relu(1.0 - jnp.asarray(logits_real)))
    fake = jnp.mean(jax.nn.relu(1.0 + jnp.asarray(logits_fake)))
    return 0.5 * (real + fake)


def generator_loss(logits_fake: ArrayLike) -> Array:
    """-E[D(x_rec)], the generator side of the hinge GAN: a scalar."""
    return -jnp.mean(jnp.asarray(logits_fake))


def _norm(tree: Any) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


def adaptive_weight(grad_rec: Any, grad_gan: Any, max_weight: float = 1e4) -> Array:
    """lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_GAN|| + 1e-4), clipped to [0, max_weight]
    and stopped from gradients, where G_L is the decoder's last layer (Esser et al. 2021,
    eq. 7). The gradients may be arrays or pytrees (their global norms are used)."""
    lam = _norm(grad_rec) / (_norm(grad_gan) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(lam, 0.0, max_weight))


def delayed(weight: float | ArrayLike, step: ArrayLike, start: int) -> Array:
    """`weight` from step `start` on, 0 before (the GAN is switched on late: Esser et al.
    2021; the latent-diffusion configs start it after 50001 steps). Traceable in step."""
    return jnp.where(jnp.asarray(step) >= start, jnp.asarray(weight, jnp.float32), 0.0)
