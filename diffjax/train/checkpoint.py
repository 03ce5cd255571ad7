"""Orbax checkpoints of the TrainState (EMA included) plus the config as JSON.

Every save keeps the last K steps. Resuming tries the newest step first; a step whose
metadata is missing or whose restore fails is logged by name, moved aside to
`<step>.corrupt` (never deleted or overwritten) and the previous step is tried.
"""

from __future__ import annotations

import os
from typing import Any

import jax
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


def _try_restore(manager, step: int, target: Any) -> tuple[Any, str | None]:
    """(restored state, None) or (None, why it failed)."""
    path = os.path.join(str(manager.directory), str(step))
    if not os.path.exists(os.path.join(path, METADATA_FILE)):
        return None, f"metadata file {METADATA_FILE} is missing (partially written)"
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
    """
    directory = str(manager.directory)
    _warn_tmp_dirs(directory)
    target = _with_sharding(abstract_state, sharding)
    for step in sorted(manager.all_steps(), reverse=True):
        state, problem = _try_restore(manager, step, target)
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
    return None, None


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
