"""What a workdir holds besides checkpoints, and loading a trained model back from it."""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from diffjax import parallel
from diffjax.train import checkpoint
from diffjax.train.builders import build_model_components
from diffjax.train.components import Components
from diffjax.train.optim import make_optimizer
from diffjax.train.spec import TrainSpec, spec_from_config
from diffjax.train.state import TrainState, abstract_train_state

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
CHECKPOINT_DIR = "checkpoints"


def write_run_info(workdir: str, c: Components) -> None:
    """Facts about the data that sampling needs without reading the data again."""
    info = {
        "example_shape": list(c.example_shape),
        "data_key": c.data_key,
        "value_range": list(c.value_range),
    }
    with open(os.path.join(workdir, RUN_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)


def _read_json(workdir: str, name: str) -> dict:
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a diffjax training workdir?")
    with open(path) as f:
        return json.load(f)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config a workdir was trained with (from config.json)."""
    return ml_collections.ConfigDict(_read_json(workdir, CONFIG_FILE))


def load_trained(workdir: str, mesh=None) -> tuple[TrainSpec, Components, TrainState]:
    """(spec, model components, state) of the latest good checkpoint in `workdir`.

    Raises:
      FileNotFoundError: no config, run info or restorable checkpoint in `workdir`.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    spec = spec_from_config(load_config(workdir))
    info = _read_json(workdir, RUN_INFO_FILE)
    c = build_model_components(spec, tuple(info["example_shape"]), info["data_key"])
    c.value_range = tuple(info["value_range"])
    tx = make_optimizer(spec.optim)
    abstract = abstract_train_state(_shape_key(spec), c.init_params, tx)
    manager = checkpoint.make_manager(
        os.path.join(workdir, CHECKPOINT_DIR), spec.loop.keep_checkpoints
    )
    state, step = checkpoint.restore_latest(manager, abstract, parallel.replicated(mesh))
    manager.close()
    if state is None:
        raise FileNotFoundError(
            f"no restorable checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}"
        )
    return spec, c, state


def _shape_key(spec: TrainSpec):
    return jax.random.PRNGKey(spec.seed)  # any key: only shapes and dtypes are used
