"""Orbax checkpoints of the TrainState (EMA included) plus the config as JSON, with checksums.

Every save keeps the last K steps. When a step's asynchronous write has finished, a manifest
`diffjax_manifest.json` with the sha256 of every file of the step is written into it (the step is
"sealed"); every restore verifies it, so silently changed bytes are detected. Resuming training
tries the newest step first; a step whose metadata is missing, whose checksums disagree or whose
restore fails is unreadable. If an older step restores, the unreadable newer ones are logged by
name and moved aside to `<step>.corrupt` (never deleted or overwritten); if none restores, the
run stops with one message (and trains from step 0 only when told to, `allow_fresh_start`). A
readable step whose arrays, or whose stored config, do not fit the current config is an error
naming the differences, and stays where it is (`check_config`). Read-only commands (sampling,
evaluation) use `restore_ema`: it reads only the `ema_params` subtree of the newest step,
verifies it, and raises on a bad step (nothing renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import Sharding

from diffjax import parallel
from diffjax.train import paths

# Orbax writes this file last when it finalises a step; a step without it is incomplete.
METADATA_FILE = "_CHECKPOINT_METADATA"
CORRUPT_SUFFIX = ".corrupt"
TMP_MARKER = ".orbax-checkpoint-tmp"
# Written by `seal` after orbax has finished a step: {"format": 1, "files": {relpath: sha256}}.
MANIFEST_FILE = "diffjax_manifest.json"
# The JSON config item of a step (orbax's JsonCheckpointHandler stores it in this file).
CONFIG_ITEM = os.path.join("config", "metadata")
# Config fields that may change when a run resumes: how long and how often (not what) it trains,
# how grids are drawn, where the data lives. Everything else must match the stored config.
RESUMABLE_FIELDS = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.sample_every", "train.progress_bar", "sample", "data.data_dir", "data.prefetch",
    # how many steps one jitted call takes and when skipping stops: the same state (to ~1e-6)
    "train.steps_per_call", "train.max_skipped",
)  # fmt: skip
# Config fields that decide what a stored network computes (sampling and evaluation).
MODEL_FIELDS = ("task", "prediction", "model", "process", "cond", "loss.name", "data.image_size")


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit the current config (never set aside)."""


class ConfigMismatchError(CheckpointMismatchError):
    """The config differs from the one stored with the checkpoints (names the fields)."""


class NoReadableCheckpointError(RuntimeError):
    """Every checkpoint of a workdir is unreadable; training refuses to restart from step 0."""


class NonFiniteError(FloatingPointError):
    """The loss or the parameters became NaN or infinite (training stops before saving)."""


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(
        x.dtype, jnp.inexact)]  # fmt: skip
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def require_finite(state: Any, history: list[dict], step: int) -> None:
    """Raise NonFiniteError if a loss in `history` (the metrics of the steps up to `step`) or a
    parameter of `state` (params, EMA) is NaN or infinite; called before every save, so a bad
    state never becomes a checkpoint and never rotates a good one out."""
    losses = np.asarray(jax.device_get([h["loss"] for h in history if "loss" in h]), np.float64)
    bad = np.flatnonzero(~np.isfinite(losses))
    what = None
    if bad.size:
        first = step - len(losses) + int(bad[0]) + 1
        what = f"the loss is {losses[bad[0]]} at step {first}"
    elif not bool(_all_finite((state.params, state.ema_params))):
        what = f"the parameters hold NaN or inf after step {step}"
    if what is not None:
        raise NonFiniteError(
            f"{what}: training stopped before writing a checkpoint (the checkpoints already "
            "written are finite and kept). Lower optim.learning_rate, set optim.grad_clip, "
            "or check the data for NaN"
        )


def _file_digests(step_dir: str) -> dict[str, str]:
    """{relative path: sha256 hex} of every file under `step_dir` except the manifest."""
    digests, root = {}, epath.Path(step_dir)  # through the path layer (any filesystem)
    for folder, _, files in root.walk():
        for name in files:
            path = epath.Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST_FILE:
                continue
            h = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(block)
            digests[rel] = h.hexdigest()
    return digests


def seal(step_dir: str) -> None:
    """Write the manifest of a finished step (atomically: a temp file renamed into place)."""
    manifest = {"format": 1, "files": _file_digests(step_dir)}
    text = json.dumps(manifest, indent=0, sort_keys=True)
    paths.write_text_atomic(epath.Path(step_dir) / MANIFEST_FILE, text)


def verify(step_dir: str) -> str | None:
    """None if every file listed in the step's manifest has its recorded sha256 (or the step has
    no manifest: written by an older diffjax, or interrupted between the write and the seal,
    which is logged); otherwise why not."""
    path = epath.Path(step_dir) / MANIFEST_FILE
    if not path.exists():
        logging.warning("checkpoint %s has no %s: its bytes are not verified", step_dir, path)
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"manifest unreadable: {type(err).__name__}: {err}"
    actual = _file_digests(step_dir)
    missing = sorted(set(files) - set(actual))
    if missing:
        return f"file(s) missing: {missing[:5]}"
    changed = sorted(k for k in files if files[k] != actual[k])
    if changed:
        return f"sha256 mismatch (bytes changed since the save) in {changed[:5]}"
    return None


class Manager:
    """An orbax CheckpointManager whose finished steps get a checksum manifest (`seal`).

    Orbax writes a step asynchronously; the step saved last is sealed when the next save starts
    (orbax waits for the previous write then anyway), on `wait_until_finished` and on `close`.
    Every other attribute is the orbax manager's."""

    def __init__(self, manager: ocp.CheckpointManager):
        self.orbax = manager
        self.unsealed: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.orbax, name)

    def seal_finished(self) -> None:
        self.orbax.wait_until_finished()
        if jax.process_index() == 0:
            for step in self.unsealed:
                step_dir = epath.Path(self.orbax.directory) / str(step)
                if (step_dir / METADATA_FILE).exists():
                    seal(step_dir)
        self.unsealed = []

    def wait_until_finished(self) -> None:
        self.seal_finished()

    def close(self) -> None:
        self.seal_finished()
        self.orbax.close()


def make_manager(directory: str, keep: int) -> Manager:
    """A (sealing) CheckpointManager in `directory` keeping the last `keep` steps."""
    if keep < 1:
        raise ValueError(f"keep_checkpoints must be >= 1; got {keep}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return Manager(ocp.CheckpointManager(paths.absolute(directory), options=options))


def open_read_only(directory: str) -> ocp.CheckpointManager:
    """A CheckpointManager that never creates, deletes or renames anything in `directory`."""
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False
    )
    return ocp.CheckpointManager(paths.absolute(directory), options=options)


def _metadata_reader(directory: str) -> ocp.CheckpointManager:
    """A read-only manager that knows the 'state' item's handler, to read its tree metadata."""
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, cleanup_tmp_directories=False
    )
    handlers = {"state": ocp.StandardCheckpointHandler()}
    return ocp.CheckpointManager(paths.absolute(directory), options=options, item_handlers=handlers)


def save(manager: Manager | ocp.CheckpointManager, step: int, state: Any, config: dict) -> None:
    """Save `state` and the JSON-able `config` at `step` (asynchronous; the step is sealed with
    its checksums once written: see `Manager`)."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
    if not isinstance(manager, Manager):  # a bare orbax manager: write and seal now
        manager.save(int(step), args=args, force=True)
        sealing = Manager(manager)
        sealing.unsealed = [int(step)]
        sealing.seal_finished()
        return
    manager.seal_finished()
    manager.orbax.save(int(step), args=args, force=True)
    manager.unsealed.append(int(step))


def _with_sharding(abstract_state: Any, sharding: Sharding | None) -> Any:
    if sharding is None:
        return abstract_state
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state
    )


def move_aside(path: str) -> str:
    """Rename `path` to `path.corrupt` (or `.corrupt-1`, ... if taken); return the new path."""
    path = os.fspath(path)
    target, n = path + CORRUPT_SUFFIX, 0
    while epath.Path(target).exists():
        n += 1
        target = f"{path}{CORRUPT_SUFFIX}-{n}"
    epath.Path(path).rename(target)
    return target


def _leaf_shapes(tree: Any) -> dict[str, tuple]:
    """{'ema_params/dense/kernel': (shape, dtype)} for a state or its orbax metadata."""

    def name(path) -> str:
        keys = (getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
        return "/".join(str(k) for k in keys)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {name(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


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
    if not (epath.Path(path) / METADATA_FILE).exists():
        return None, f"metadata file {METADATA_FILE} is missing (partially written)"
    problem = verify(path)
    if problem is not None:
        return None, problem
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
    for name in sorted(p.name for p in epath.Path(directory).iterdir()):
        if TMP_MARKER in name:
            logging.warning(
                "ignoring unfinished checkpoint %s (left in place)", os.path.join(directory, name)
            )


def _set_aside(directory: str, bad: list[tuple[int, str]], then: str) -> None:
    # every process finds the same `bad` steps; one renames them, the others wait for it
    for step, problem in bad:
        path = os.path.join(directory, str(step))
        if not parallel.is_primary():
            continue
        moved = move_aside(path)
        logging.error("checkpoint %s is unreadable (%s); moved it to %s; %s", path, problem,
                      moved, then)  # fmt: skip
    if bad:
        parallel.sync("diffjax_checkpoint_set_aside")


def restore_latest(
    manager: Manager | ocp.CheckpointManager,
    abstract_state: Any,
    sharding: Sharding | None = None,
    *,
    allow_fresh_start: bool = False,
) -> tuple[Any, int] | tuple[None, None]:
    """The newest restorable state and its step, or (None, None) if there is no checkpoint.

    Unreadable steps newer than the one restored are moved aside (never deleted). If there are
    steps but none is readable, nothing is moved and `NoReadableCheckpointError` is raised,
    unless `allow_fresh_start`: then they are all moved aside and (None, None) is returned.

    Args:
      manager: the checkpoint manager of the workdir.
      abstract_state: a pytree of ShapeDtypeStruct (e.g. from `jax.eval_shape`) to restore into.
      sharding: placement of every restored leaf (e.g. replicated over the mesh).
      allow_fresh_start: train from step 0 when every checkpoint is unreadable.
    Raises:
      CheckpointMismatchError: a readable step does not fit `abstract_state` (e.g. the model
        config changed); nothing is moved.
      NoReadableCheckpointError: every step is unreadable (one message listing each reason).
    """
    directory = str(manager.directory)
    _warn_tmp_dirs(directory)
    target = _with_sharding(abstract_state, sharding)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None, None
    reader = _metadata_reader(directory)
    bad: list[tuple[int, str]] = []
    try:
        for step in steps:
            state, problem = _try_restore(manager, reader, step, target)
            if problem is None:
                _set_aside(directory, bad, f"resuming from step {step}")
                manager.reload()
                logging.info("restored checkpoint %s", os.path.join(directory, str(step)))
                return state, step
            bad.append((step, problem))
    finally:
        reader.close()
    if not allow_fresh_start:
        listed = "; ".join(f"step {s}: {p[:200]}" for s, p in bad)
        raise NoReadableCheckpointError(
            f"none of the {len(bad)} checkpoint(s) in {directory} can be read ({listed}). "
            "Nothing was moved or deleted. To train from step 0 anyway, pass "
            "--allow_fresh_start (the unreadable steps are then renamed *.corrupt, not "
            "deleted), or train in a new --workdir"
        )
    _set_aside(directory, bad, "training from step 0 (allow_fresh_start)")
    manager.reload()
    return None, None


def restore_ema(
    directory: str, abstract_ema: Any, sharding: Sharding | None = None, step: int | None = None
) -> tuple[Any, int]:
    """(EMA parameters, step) of the newest checkpoint in `directory` (or of checkpoint `step`),
    read-only.

    Only the `ema_params` and `step` leaves are read (an orbax partial restore), so neither the
    optimiser nor its config has to match the run's. The step's checksums are verified first.
    Nothing in `directory` is changed.

    Raises:
      FileNotFoundError: no finished checkpoint in `directory`.
      CheckpointMismatchError: its EMA parameters do not fit the config (names the arrays).
      ValueError: the newest checkpoint is incomplete, altered or unreadable (names the step
        and why).
    """
    manager = open_read_only(directory)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise FileNotFoundError(
                f"no checkpoint in {directory}: train first (launch/train.py) or pass the "
                "workdir of a finished run"
            )
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no checkpoint {step} in {directory} (it has {steps}): the run that uses it "
                "was trained against that step, which is no longer there"
            )
        path = os.path.join(str(manager.directory), str(step))
        if not (epath.Path(path) / METADATA_FILE).exists():
            raise ValueError(f"checkpoint {path} is incomplete: {METADATA_FILE} is missing")
        problem = verify(path)
        if problem is None:
            reader = _metadata_reader(directory)
            try:
                problem = _check_fits(
                    reader, step, path, {"ema_params": abstract_ema}, "ema_params/"
                )
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


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'optim.learning_rate': 2e-4, ...} of a nested JSON dict."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, name))
        else:
            out[name] = v
    return out


def _under(field: str, prefixes: Iterable[str]) -> bool:
    return any(field == p or field.startswith(p + ".") for p in prefixes)


def stored_config(directory: str) -> tuple[dict, int] | tuple[None, None]:
    """(config, step) stored with the newest step that has a readable config, else (None, None).
    Reads files only (no orbax manager, nothing created)."""
    root = epath.Path(directory)
    if not root.is_dir():
        return None, None
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
    for step in steps:
        try:
            config = json.loads((root / str(step) / CONFIG_ITEM).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and config:
            return config, step
    return None, None


def _default_fields() -> dict[str, Any]:
    """The dotted fields of today's default config (diffjax/train/config.py), as JSON values."""
    from diffjax.train.config import default_config

    return _flatten(json.loads(default_config().to_json_best_effort(sort_keys=True)))


def config_differences(
    stored: dict, current: dict, *, only: Iterable[str] | None = None, ignore: Iterable[str] = ()
) -> list[tuple[str, Any, Any]]:
    """[(field, stored value, current value)] of the dotted fields that differ, restricted to
    those under `only` (None: all) and leaving out those under `ignore`.

    A field that a newer diffjax added to the default config (so a config written before it
    existed lacks it) counts as set to its default value: the run was trained without the
    feature, which is what the default means, and resuming it must not be called a change.
    """
    a, b = _flatten(stored), _flatten(current)
    defaults = _default_fields()
    for side in (a, b):  # either may predate a field (config.json and checkpoints alike)
        for field, value in defaults.items():
            # absent, and neither inside nor around a given field (a default `{}` options
            # dict is a leaf here, while one with entries is flattened into its entries)
            if field not in side and not any(
                _under(field, (k,)) or _under(k, (field,)) for k in side
            ):
                side[field] = value
    missing = object()
    fields = sorted(set(a) | set(b))
    if only is not None:
        fields = [f for f in fields if _under(f, tuple(only))]
    fields = [f for f in fields if not _under(f, tuple(ignore))]
    return [
        (f, a.get(f, "absent"), b.get(f, "absent"))
        for f in fields
        if a.get(f, missing) != b.get(f, missing)
    ]


def _format_differences(diff: list[tuple[str, Any, Any]]) -> str:
    shown = "; ".join(f"{f}: stored {s!r}, now {c!r}" for f, s, c in diff[:8])
    return shown + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")


def check_resume_config(directory: str, config: dict, allow: Iterable[str] = ()) -> None:
    """Raise ConfigMismatchError if `config` differs from the config stored with the newest
    checkpoint in `directory` in a field outside RESUMABLE_FIELDS and the dotted prefixes
    `allow` (e.g. ('optim.learning_rate',)). Nothing in `directory` is changed."""
    stored, step = stored_config(directory)
    if stored is None or not config:
        return
    diff = config_differences(stored, config, ignore=RESUMABLE_FIELDS + tuple(allow))
    if diff:
        raise ConfigMismatchError(
            f"the config differs from the one stored with checkpoint {directory}/{step} in "
            f"{len(diff)} field(s): {_format_differences(diff)}. The checkpoints are left in "
            "place. Resume with the config they were trained with; or, for a deliberate "
            "change, pass --allow_config_change="
            + ",".join(f for f, _, _ in diff)
            + "; or start over in a new --workdir"
        )


def check_model_config(directory: str, config: dict, where: str, detail: str = "") -> None:
    """Raise ConfigMismatchError if `config` (e.g. a workdir's config.json, named by `where`)
    differs from the newest checkpoint's stored config in a field that decides what the stored
    network computes (MODEL_FIELDS); `detail` (e.g. the differing arrays) is appended."""
    stored, step = stored_config(directory)
    if stored is None:
        return
    diff = config_differences(stored, config, only=MODEL_FIELDS)
    if diff:
        raise ConfigMismatchError(
            f"{where} disagrees with the config stored in checkpoint {directory}/{step} in "
            f"{len(diff)} field(s): {_format_differences(diff)}. Nothing was changed or moved "
            f"(checkpoints are left in place); restore {where} to the stored config (a copy is "
            f"in {os.path.join(directory, str(step), CONFIG_ITEM)})"
            + (f". {detail}" if detail else "")
        )


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
