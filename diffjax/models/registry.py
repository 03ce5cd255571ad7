"""Names of backbone presets (an explicit dict) and `bind`, which turns a Flax backbone and its
variables into a model function `model(x_t, t, cond=None)` for losses, samplers and guidance."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax

from diffjax.models import autoencoder as ae_lib
from diffjax.models import dit as dit_lib
from diffjax.models import mlp as mlp_lib
from diffjax.models import unet as unet_lib
from diffjax.typing import Array, ModelFn

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": unet_lib.UNet,  # the class itself: DDPM CIFAR-10 defaults, every field settable
    "dit": dit_lib.DiT,  # DiT-S/2 sizes by default
    "unet_ddpm_cifar10": unet_lib.unet_ddpm_cifar10,
    "unet_ddpm_256": unet_lib.unet_ddpm_256,
    "unet_ddpm_celebahq_256": unet_lib.unet_ddpm_256,
    "unet_ddpm_lsun_256": unet_lib.unet_ddpm_256,
    "unet_small": unet_lib.unet_small,
    "unet_tiny": unet_lib.unet_tiny,
    "dit_s2": dit_lib.dit_s2,
    "dit_b2": dit_lib.dit_b2,
    "dit_l2": dit_lib.dit_l2,
    "dit_xl2": dit_lib.dit_xl2,
    "dit_tiny": dit_lib.dit_tiny,
    "mlp": mlp_lib.mlp_toy,
    # First stages of latent diffusion (not denoisers: apply(v, x, key) -> (x_rec, posterior)).
    "autoencoder": ae_lib.AutoencoderKL,
    "autoencoder_kl_f8": ae_lib.kl_f8,
    "autoencoder_kl_f4_28": ae_lib.kl_f4_28,
    "autoencoder_kl_f4_32": ae_lib.kl_f4_32,
}
"""Preset name -> constructor taking keyword overrides of the module's fields."""

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "unet": unet_lib.UNet,
    "dit": dit_lib.DiT,
    "mlp": mlp_lib.MLP,
    "autoencoder": ae_lib.AutoencoderKL,
}
"""Family (the name's prefix before "_") -> module class, whose dataclass fields are the
options `get_model` accepts."""


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the preset `name` of `MODELS`, overriding fields with `kwargs`.

    Raises:
      ValueError: for an unknown name or a keyword that is not a field of the backbone.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODEL_CLASSES[name.split("_")[0]]
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {name!r}; fields: {sorted(fields)}"
        )
    return MODELS[name](**kwargs)


def bind(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    train: bool = False,
    rngs: jax.Array | Mapping[str, jax.Array] | None = None,
) -> ModelFn:
    """Bind a backbone and its variables into `model(x_t, t, cond=None) -> prediction`.

    Computes what `functools.partial(module.apply, variables)` computes (with `train` and `rngs`
    fixed), but the result is a pytree (a `jax.tree_util.Partial` over a module-level function)
    whose leaves are the variables (and the rngs keys); the module and `train` are static. So
    `sample`, `likelihood`, `inpaint`, the guidance transformers and the losses trace the
    variables: binding a new parameter set (a checkpoint, an EMA copy) reuses the compiled
    program, and the parameters are never baked into it as constants. `cond` follows
    `diffjax.models.layers.split_cond`: None, int labels [B], a context [B, L, C], a concat
    image [B, H, W, C'] or a dict of these.

    Args:
      module: a `UNet`, `DiT` or `MLP` (or any module with the same call signature).
      variables: `{"params": ...}` from `module.init`, or the bare params tree.
      train: enable dropout; then `rngs` (a key, used as the "dropout" stream, or a dict of
        streams) is required when the module has dropout > 0. Bind inside the training step
        with that step's key, since the same key is reused on every call.
    Returns:
      model(x_t [B, ...], t [B], cond=None) -> [B, ...] float32.
    """
    if "params" not in variables:
        variables = {"params": variables}
    if rngs is not None and not isinstance(rngs, Mapping):
        rngs = {"dropout": rngs}
    if train and rngs is None and getattr(module, "dropout", 0.0) > 0.0:
        raise ValueError(f"train=True with dropout={module.dropout} needs rngs (a dropout key)")

    return jax.tree_util.Partial(_apply_bound, module, variables, rngs, train=train)


def _apply_bound(module, variables, rngs, x_t: Array, t: Array, cond: Any = None, *, train):
    """The function `bind` partially applies (module-level, so its identity never changes)."""
    return module.apply(variables, x_t, t, cond, train=train, rngs=rngs)
