"""diffjax: a JAX functional reference implementation of diffusion and flow-matching models.

The math (processes, kernels, targets, losses, samplers, likelihood, guidance, toy) is imported
here and needs no flax. The Flax layers are sub-packages loaded on first use:
`diffjax.models`, `diffjax.metrics`, `diffjax.data`, `diffjax.train`.
"""

import importlib

from diffjax import consistency, guidance, losses, reflow, schedules, toy
from diffjax.inpaint import inpaint
from diffjax.kernels import bcast, marginal, posterior, transition
from diffjax.likelihood import bits_per_dim, dequantize, likelihood, nll_dataset
from diffjax.processes import (
    Process,
    cosine,
    discrete,
    edm,
    get_process,
    ot_flow,
    rectified_flow,
    subvp,
    trig,
    ve,
    vp,
)
from diffjax.samplers import SOLVERS, sample, time_grid
from diffjax.targets import convert

__version__ = "0.1.0"

_LAZY_SUBPACKAGES = ("models", "metrics", "data", "train", "parallel")


def __getattr__(name):
    if name in _LAZY_SUBPACKAGES:
        return importlib.import_module(f"diffjax.{name}")
    raise AttributeError(f"module 'diffjax' has no attribute {name!r}")


__all__ = [
    "SOLVERS",
    "Process",
    "bcast",
    "bits_per_dim",
    "consistency",
    "convert",
    "cosine",
    "dequantize",
    "discrete",
    "edm",
    "get_process",
    "guidance",
    "inpaint",
    "likelihood",
    "losses",
    "marginal",
    "nll_dataset",
    "ot_flow",
    "posterior",
    "rectified_flow",
    "reflow",
    "sample",
    "schedules",
    "subvp",
    "time_grid",
    "toy",
    "transition",
    "trig",
    "ve",
    "vp",
]
