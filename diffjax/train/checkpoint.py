"""Orbax checkpoints of the TrainState (EMA included) plus the config as JSON.

Every save keeps the last K steps. Resuming training tries the newest step first; a step whose
metadata is missing or whose restore fails is logged by name, moved aside to
`<step>.corrupt` (never deleted or overwritten) and the previous step is tried. A readable
step whose arrays do not fit the current config is an error, and stays where it is. Read-only
commands (sampling, evaluation) use `restore_ema`: it opens the directory read-only, reads
only the `ema_params` subtree of the newest step, and raises on a bad step (nothing renamed).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Sharding

# Orbax writes this file last when it finalises a step; a step without it is incomplete.
METADATA_FILE = "_CHECKPOINT_METADATA"
CORRUPT_SUFFIX = ".corrupt"
TMP_MARKER = ".orbax-checkpoint-tmp"


def make_manager(directory: str, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager in `directory` keeping the last `keep` steps."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1; got {keep}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def open_read_only(directory: str) -> ocp.CheckpointManager:
    """A CheckpointManager that never creates, deletes or renames anything in `directory`."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def _metadata_reader(directory: str) -> ocp.CheckpointManager:
    """A read-only manager that knows the 'state' item's handler, to read its tree metadata."""
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False
    )
    handlers = {"state": ocp.StandardCheckpointHandler()}
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_handlers=handlers
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
    """Save `state` and the JSON-able `config` at `step` (asynchronous; see `wait`)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    manager.save(int(step), args=args, force=True)


def _with_sharding(abstract_state: Any, sharding: Sharding | None) -> Any:
    if sharding is None:
        return abstract_state
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state
    )


def move_aside(path: str) -> str:
    """Rename `path` to `path.corrupt` (or `.corrupt-1`, ... if taken); return the new path."""
    target, n = path + CORRUPT_SUFFIX, 0
    while os.path.exists(target):
        n += 1
        target = f"{path}{CORRUPT_SUFFIX}-{n}"
    os.rename(path, target)
    return target


def _leaf_shapes(tree: Any) -> dict[str, tuple]:
    """{'ema_params/dense/kernel': (shape, dtype)} for a state or its orbax metadata."""

    def name(path) -> str:
        keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
        return "/".join(str(k) for k in keys)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {name(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit the current config (never set aside)."""


def _check_fits(reader, step: int, path: str, target: Any, only: str = "") -> str | None:
    """None if the stored state's leaves (those under `only`, e.g. 'ema_params/') match
    `target`'s; a reason if its metadata is unreadable; CheckpointMismatchError (naming the
    differing leaves) if they differ."""
    try:
        stored = _leaf_shapes(reader.item_metadata(step)["state"])
    except Exception as err:  # unreadable metadata means a damaged checkpoint
        return f"metadata unreadable: {type(err).__name__}: {str(err)[:300]}"
    stored = {k: v for k, v in stored.items() if k.startswith(only)}
    wanted = _leaf_shapes(target)
    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if differ:
        fmt = lambda v: "absent" if v is None else f"{v[1]}{list(v[0])}"
        shown = "; ".join(
            f"{k}: stored {fmt(stored.get(k))}, config {fmt(wanted.get(k))}" for k in differ[:5]
        )
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the current config ({len(differ)} differing "
            f"array(s): {shown}). It is left in place: resume with the config it was trained "
            "with, or train in a new workdir"
        )
    return None


def _try_restore(manager, reader, step: int, target: Any) -> tuple[Any, str | None]:
    """(restored state, None) or (None, why it is unreadable)."""
    path = os.path.join(str(manager.directory), str(step))
    if not os.path.exists(os.path.join(path, METADATA_FILE)):
        return None, f"metadata file {METADATA_FILE} is missing (partially written)"
    problem = _check_fits(reader, step, path, target)
    if problem is not None:
        return None, problem
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    try:
        state = manager.restore(step, args=args)["state"]
    except Exception as err:  # orbax/tensorstore raise many kinds; all mean "unreadable"
        return None, f"restore failed: {type(err).__name__}: {str(err)[:300]}"
    restored_step = int(jax.device_get(state.step)) if hasattr(state, "step") else step
    if restored_step != step:
        return None, f"state.step = {restored_step} does not match the directory name {step}"
    return state, None


def _warn_tmp_dirs(directory: str) -> None:
    for name in sorted(os.listdir(directory)):
        if TMP_MARKER in name:
            logging.warning(
                "ignoring unfinished checkpoint %s (left in place)", os.path.join(directory, name)
            )


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, sharding: Sharding | None = None
) -> tuple[Any, int] | tuple[None, None]:
    """The newest restorable state and its step, or (None, None) if there is none.

    Args:
      manager: the checkpoint manager of the workdir.
      abstract_state: a pytree of ShapeDtypeStruct (e.g. from `jax.eval_shape`) to restore into.
      sharding: placement of every restored leaf (e.g. replicated over the mesh).
    Raises:
      CheckpointMismatchError: the newest readable step does not fit `abstract_state` (e.g. the
        model config changed); nothing is moved.
    """
    directory = str(manager.directory)
    _warn_tmp_dirs(directory)
    target = _with_sharding(abstract_state, sharding)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None, None
    reader = _metadata_reader(directory)
    try:
        for step in steps:
            state, problem = _try_restore(manager, reader, step, target)
            if problem is None:
                logging.info("restored checkpoint %s", os.path.join(directory, str(step)))
                return state, step
            bad = os.path.join(directory, str(step))
            moved = move_aside(bad)
            logging.error(
                "checkpoint %s is corrupt or partially written (%s); moved it to %s and "
                "resuming from the previous checkpoint",
                bad,
                problem,
                moved,
            )
            manager.reload()
            reader.reload()
    finally:
        reader.close()
    return None, None


def restore_ema(
    directory: str, abstract_ema: Any, sharding: Sharding | None = None
) -> tuple[Any, int]:
    """(EMA parameters, step) of the newest checkpoint in `directory`, read-only.

    Only the `ema_params` and `step` leaves are read (an orbax partial restore), so neither the
    optimiser nor its config has to match the run's. Nothing in `directory` is changed.

    Raises:
      FileNotFoundError: no finished checkpoint in `directory`.
      CheckpointMismatchError: its EMA parameters do not fit the config (names the arrays).
      ValueError: the newest checkpoint is incomplete or unreadable (names the step and why).
    """
    manager = open_read_only(directory)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        step = steps[-1]
        path = os.path.join(str(manager.directory), str(step))
        if not os.path.exists(os.path.join(path, METADATA_FILE)):
            raise ValueError(f"checkpoint {path} is incomplete: {METADATA_FILE} is missing")
        reader = _metadata_reader(directory)
        try:
            problem = _check_fits(reader, step, path, {"ema_params": abstract_ema}, "ema_params/")
        finally:
            reader.close()
        if problem is not None:
            raise ValueError(f"checkpoint {path} cannot be read ({problem}); left in place")
        target = {"ema_params": _with_sharding(abstract_ema, sharding), "step": 0}
        restore_args = {
            "ema_params": jax.tree.map(
                lambda _: ocp.ArrayRestoreArgs(sharding=sharding), abstract_ema
            ),
            "step": ocp.RestoreArgs(restore_type=np.ndarray),
        }
        args = ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True)
        try:
            state = manager.restore(step, args=ocp.args.Composite(state=args))["state"]
        except Exception as err:  # orbax/tensorstore raise many kinds; all mean "unreadable"
            raise ValueError(
                f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:300]}); "
                "left in place: sampling and evaluation never move checkpoints"
            ) from err
    finally:
        manager.close()
    if int(state["step"]) != step:
        raise ValueError(f"checkpoint {path} holds step {int(state['step'])}, not {step}")
    return state["ema_params"], step


class _DropOrbaxInfo:
    """A logging filter that drops orbax's INFO records (dozens per save) but keeps warnings."""

    def filter(self, record) -> bool:
        import logging as py_logging

        return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logging() -> None:
    """Silence orbax's per-save INFO chatter in absl logs (warnings and errors still show)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _DropOrbaxInfo) for f in handler.filters):
        handler.addFilter(_DropOrbaxInfo())
