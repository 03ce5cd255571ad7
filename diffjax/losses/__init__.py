"""Losses over model functions: regression objectives (L_simple, weighted, DSM, flow matching)
and likelihood bounds (discrete VLB, hybrid, continuous VDM bound).

Every loss is `fn(model, key, x0, process, *, cond=None, t=None, ...) -> (scalar, aux)` with the
scalar the batch mean and aux holding at least 'per_example' [B] and 't' [B].
"""

from __future__ import annotations

from diffjax.losses.decoders import discretized_log_likelihood, normal_kl
from diffjax.losses.regression import cfm, dsm, ot_pairing, simple, weighted
from diffjax.losses.vdm import continuous_vlb, default_t_min
from diffjax.losses.vlb import hybrid, vlb
from diffjax.losses.weighting import WEIGHTINGS, native_weight

LOSSES = {
    "simple": simple,
    "weighted": weighted,
    "dsm": dsm,
    "vlb": vlb,
    "hybrid": hybrid,
    "continuous_vlb": continuous_vlb,
    "cfm": cfm,
}


def get_loss(name: str):
    """The loss function registered under `name` in `LOSSES`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {tuple(LOSSES)}")
    return LOSSES[name]


__all__ = [
    "LOSSES",
    "WEIGHTINGS",
    "cfm",
    "continuous_vlb",
    "default_t_min",
    "discretized_log_likelihood",
    "dsm",
    "get_loss",
    "hybrid",
    "native_weight",
    "normal_kl",
    "ot_pairing",
    "simple",
    "vlb",
    "weighted",
]
