"""Losses over model functions: regression objectives (L_simple, weighted, DSM, flow matching)
and likelihood bounds (discrete VLB, hybrid, continuous VDM bound).

Every loss is `fn(model, key, x0, process, *, cond=None, t=None, ...) -> (scalar, aux)` with the
scalar the batch mean and aux holding at least 'per_example' [B] and 't' [B].
"""

from __future__ import annotations

from diffjax.losses import consistency as _consistency
from diffjax.losses.decoders import discretized_log_likelihood, normal_kl
from diffjax.losses.distill import flow_distillation, progressive
from diffjax.losses.reflow import reflow
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
    "reflow": reflow,
    "progressive": progressive,  # needs config.teacher (a trained DDIM-samplable model)
    "flow_distillation": flow_distillation,  # k-step distillation on reflow pairs
    # x0-models that are consistency functions; target_model = the run's EMA (Song et al. 2023)
    "consistency_distillation": _consistency.consistency_distillation,  # needs config.teacher
    "consistency_training": _consistency.consistency_training,
}

# The prediction kind a loss fixes for itself (its target is always of this kind). The other
# losses take a `prediction` argument, which the training layer fills from config.prediction.
LOSS_PREDICTION = {
    "simple": "eps",  # ||eps - eps_hat||^2 (Ho et al. 2020, eq. 14)
    "hybrid": "eps",  # L_simple on the eps half + lam L_vlb (Nichol & Dhariwal 2021)
    "dsm": "score",  # denoising score matching (Song et al. 2021, eq. 7)
    "cfm": "velocity",  # flow matching on dx_t/dt (Lipman et al. 2023)
    "reflow": "velocity",  # rectified-flow regression on given pairs (Liu et al. 2022)
    "flow_distillation": "velocity",  # the student's k-step Euler map of its velocity
    "consistency_distillation": "x0",  # f(x, s) read as the x0 end of the ODE path
    "consistency_training": "x0",
}


def get_loss(name: str):
    """The loss function registered under `name` in `LOSSES`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {tuple(LOSSES)}")
    return LOSSES[name]


__all__ = [
    "LOSSES",
    "LOSS_PREDICTION",
    "WEIGHTINGS",
    "cfm",
    "continuous_vlb",
    "default_t_min",
    "discretized_log_likelihood",
    "flow_distillation",
    "dsm",
    "get_loss",
    "hybrid",
    "native_weight",
    "normal_kl",
    "ot_pairing",
    "progressive",
    "reflow",
    "simple",
    "vlb",
    "weighted",
]
