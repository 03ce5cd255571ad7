"""What a workdir holds besides checkpoints, and loading a trained model back from it."""

from __future__ import annotations

import dataclasses
import functools
import json

import jax
import ml_collections

from diffjax import parallel
from diffjax.train import checkpoint, paths
from diffjax.train.builders import build_model_components
from diffjax.train.components import Components
from diffjax.train.spec import ExampleSpec, TrainSpec, spec_from_config
from diffjax.typing import PyTree

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
    write_workdir_json(workdir, RUN_INFO_FILE, info)


def write_workdir_json(workdir: str, name: str, value) -> None:
    """`<workdir>/<name>` as JSON, through the path layer, by the primary process only."""
    if parallel.is_primary():
        path = paths.workdir_path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        paths.write_json(path / name, value)


def _read_json(workdir: str, name: str) -> dict:
    path = paths.workdir_path(workdir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a diffjax training workdir?")
    return json.loads(path.read_text())


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The experiment config a workdir was trained with (from config.json)."""
    return ml_collections.ConfigDict(_read_json(workdir, CONFIG_FILE))


def with_consistency_section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A consistency run's config from before config.model.consistency existed (its backbone
    was wrapped by experiments/consistency.py with the loss's sigma_min, default 0.002, and
    sigma_data 0.5) with that section filled in, so it loads as it was trained; any other
    config: unchanged."""
    from diffjax.train.spec import CONSISTENCY_LOSSES

    if str(config.loss.name) not in CONSISTENCY_LOSSES or "consistency" in config.model:
        return config
    kwargs = config.loss.get("kwargs") or {}
    section = {name: kwargs[name] for name in ("sigma_min", "sigma_max") if name in kwargs}
    config.model.consistency = ml_collections.ConfigDict({"sigma_min": 0.002, **section})
    return config


@dataclasses.dataclass(frozen=True)
class Trained:
    """What sampling and evaluation read from a checkpoint: the EMA parameters only."""

    ema_params: PyTree  # the model's parameter tree (EMA of the training parameters)
    step: int  # the optimiser step of the checkpoint


def load_trained(workdir: str, mesh=None) -> tuple[TrainSpec, Components, Trained]:
    """(spec, model components, EMA parameters) of the newest checkpoint in `workdir`.

    Read-only: only the `ema_params` subtree is restored (no optimiser, so a changed optimiser
    config does not matter), no data is read (the example shape is in run_info.json), and
    nothing in `workdir` is created, renamed or moved.

    A consistency run's model is its backbone wrapped as in training (config.model.
    consistency; `with_consistency_section` for workdirs written before that field existed).

    Raises:
      FileNotFoundError: no config, run info or checkpoint in `workdir`.
      ValueError: the newest checkpoint is incomplete or unreadable (it is left in place).
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    info = _read_json(workdir, RUN_INFO_FILE)
    example = ExampleSpec(shape=tuple(info["example_shape"]), key=info["data_key"])
    config = with_consistency_section(load_config(workdir))
    if str(config.get("task", "diffusion")) == "classifier":  # not a denoiser: say so
        raise ValueError(
            f"{workdir!r} holds a noisy classifier (config.task = 'classifier'), not a "
            "diffusion model: give it to launch/sample.py as --classifier_workdir"
        )
    spec = spec_from_config(config, example)
    c = build_model_components(spec)
    c.value_range = tuple(info["value_range"])
    abstract = jax.eval_shape(c.init_params, jax.random.PRNGKey(0))  # shapes and dtypes only
    directory = str(paths.workdir_path(workdir) / CHECKPOINT_DIR)
    # config.json may have been rewritten by a later (aborted or changed) run: the network's
    # fields must agree with the config stored in the newest checkpoint (nothing is moved)
    stored_check = functools.partial(
        checkpoint.check_model_config,
        directory,
        _read_json(workdir, CONFIG_FILE),
        str(paths.workdir_path(workdir) / CONFIG_FILE),
    )
    try:
        ema_params, step = checkpoint.restore_ema(directory, abstract, parallel.replicated(mesh))
    except checkpoint.CheckpointMismatchError as err:
        stored_check(detail=str(err))  # names the differing config fields, if any
        raise
    stored_check()
    return spec, c, Trained(ema_params=ema_params, step=step)
