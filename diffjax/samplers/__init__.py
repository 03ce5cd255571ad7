"""Samplers: one solver per module, scanned by the single entry point `sample`.

`SOLVERS` maps each solver name to its `Solver` record; `time_grid` builds the sampling grid.
"""

from diffjax.samplers.api import SOLVERS, count_nfe, sample, steps_for_nfe
from diffjax.samplers.grid import default_spacing, default_t_min, t_of_log_snr, time_grid

__all__ = [
    "SOLVERS",
    "count_nfe",
    "default_spacing",
    "default_t_min",
    "sample",
    "steps_for_nfe",
    "t_of_log_snr",
    "time_grid",
]
