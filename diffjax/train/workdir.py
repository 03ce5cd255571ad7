"""What a workdir holds besides checkpoints, and loading a trained model back from it."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from diffjax import parallel
from diffjax.train import checkpoint
from diffjax.train.builders import build_model_components
from diffjax.train.components import Components
from diffjax.train.spec import ExampleSpec, TrainSpec, spec_from_config
from diffjax.typing import PyTree

CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
CHECKPOINT_DIR = "checkpoints"
# losses whose runs store a consistency model's backbone (see load_trained)
CONSISTENCY_LOSSES = ("consistency_distillation", "consistency_training")


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


@dataclasses.dataclass(frozen=True)
class Trained:
    """What sampling and evaluation read from a checkpoint: the EMA parameters only."""

    ema_params: PyTree  # the model's parameter tree (EMA of the training parameters)
    step: int  # the optimiser step of the checkpoint


def load_trained(
    workdir: str, mesh=None, *, consistency: bool = False
) -> tuple[TrainSpec, Components, Trained]:
    """(spec, model components, EMA parameters) of the newest checkpoint in `workdir`.

    Read-only: only the `ema_params` subtree is restored (no optimiser, so a changed optimiser
    config does not matter), no data is read (the example shape is in run_info.json), and
    nothing in `workdir` is created, renamed or moved.

    `consistency=True` is for callers that wrap a consistency run's backbone themselves
    (experiments/consistency.py); otherwise such a workdir is refused.

    Raises:
      FileNotFoundError: no config, run info or checkpoint in `workdir`.
      ValueError: the newest checkpoint is incomplete or unreadable (it is left in place).
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    info = _read_json(workdir, RUN_INFO_FILE)
    example = ExampleSpec(shape=tuple(info["example_shape"]), key=info["data_key"])
    config = load_config(workdir)
    if str(config.loss.name) in CONSISTENCY_LOSSES and not consistency:
        # its network is the bare backbone F, not the consistency function f = c_skip x +
        # c_out F: sampling it here would silently give wrong samples
        raise ValueError(
            f"{workdir!r} holds a consistency model (loss {config.loss.name!r}); the launch "
            "programs load bare backbones only: sample and evaluate it with "
            "experiments/consistency.py's evaluate(), which wraps it in ConsistencyModule"
        )
    spec = spec_from_config(config, example)
    c = build_model_components(spec)
    c.value_range = tuple(info["value_range"])
    abstract = jax.eval_shape(c.init_params, jax.random.PRNGKey(0))  # shapes and dtypes only
    ema_params, step = checkpoint.restore_ema(
        os.path.join(workdir, CHECKPOINT_DIR), abstract, parallel.replicated(mesh)
    )
    return spec, c, Trained(ema_params=ema_params, step=step)
