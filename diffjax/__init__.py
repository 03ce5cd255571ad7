"""diffjax: a JAX functional reference implementation of diffusion and flow-matching models."""

from diffjax import guidance, schedules
from diffjax.inpaint import inpaint
from diffjax.kernels import bcast, marginal, posterior, transition
from diffjax.processes import (
    Process,
    cosine,
    discrete,
    get_process,
    ot_flow,
    rectified_flow,
    subvp,
    trig,
    ve,
    vp,
)
from diffjax.targets import convert

__version__ = "0.1.0"

__all__ = [
    "Process",
    "bcast",
    "convert",
    "cosine",
    "discrete",
    "get_process",
    "guidance",
    "inpaint",
    "marginal",
    "ot_flow",
    "posterior",
    "rectified_flow",
    "schedules",
    "subvp",
    "transition",
    "trig",
    "ve",
    "vp",
]
