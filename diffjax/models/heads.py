"""Output heads: what the last channels of a backbone mean.

Every prediction kind of `diffjax.targets` ('eps', 'x0', 'v', 'score', 'velocity') is simply
an output with the data's C channels: the backbone does not know which kind it predicts; the
loss that trains it and the `prediction=` argument of samplers say so.

The learned-variance head (Nichol & Dhariwal 2021, sec. 3.1) outputs 2C channels,
[mean prediction | v], split by `diffjax.kernels.split_learned_variance` and turned into a
log variance by `diffjax.kernels.learned_log_variance`, which interpolates between the two
extreme variances with frac = (v + 1) / 2, so v in [-1, 1] spans them. As in the improved-DDPM
and DiT papers, v is the raw network output (not squashed); `bound_variance` applies tanh for
users who want v confined to [-1, 1].
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.typing import Array


def head_channels(channels: int, learn_sigma: bool) -> int:
    """Output channels: C for any prediction kind, 2C = [mean | v] with a learned variance."""
    if channels < 1:
        raise ValueError(f"output channels must be >= 1; got {channels}")
    return 2 * channels if learn_sigma else channels


def bound_variance(out: Array) -> Array:
    """Squash the v half of a learned-variance output [..., 2C] into [-1, 1] with tanh."""
    if out.shape[-1] % 2:
        raise ValueError(f"a learned-variance output needs 2C channels; got shape {out.shape}")
    mean, v = jnp.split(out, 2, axis=-1)
    return jnp.concatenate([mean, jnp.tanh(v)], axis=-1)
