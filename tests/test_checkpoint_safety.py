"""A run's checkpoints are never thrown away by a mistake (issue #13's list, one test each).

Changed configs are errors naming the fields (nothing renamed); only unreadable or altered
checkpoints (sha256 manifest) are set aside; NaN never reaches a checkpoint; when no checkpoint
is readable the run stops with one message unless `allow_fresh_start`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from diffjax.train import checkpoint
from diffjax.train.config import default_config
from diffjax.train.loop import CHECKPOINT_DIR, run_training, train_and_evaluate
from diffjax.train.spec import spec_from_config
from diffjax.train.workdir import CONFIG_FILE, load_trained
from tests.helpers import tree_hash
from tests.test_train_loop import DATA, LABELS, components, leaves, tiny_spec


def toy_config(**changes):
    """A 2-step toy2d-like run of a 16-wide MLP (a ConfigDict, as launch/train.py builds)."""
    c = default_config()
    c.data.name, c.data.batch_size, c.data.prefetch = "toy_ring", 8, 0
    c.model.name = "mlp"
    c.model.kwargs.update(hidden=16, depth=1, time_dim=8)
    c.process.name, c.process.kwargs = "vp", {}
    c.loss.name = "simple"
    c.train.update(num_steps=2, log_every=1, checkpoint_every=1, keep_checkpoints=3)
    c.train.progress_bar = False
    c.sample.num = 0
    for field, value in changes.items():
        section, _, name = field.rpartition(".")
        target = c
        for part in section.split(".") if section else []:
            target = target[part]
        target[name] = value
    return c


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("toy")
    train_and_evaluate(toy_config(), str(work))
    return work


def copy(src, tmp_path, name="work"):
    target = tmp_path / name
    shutil.copytree(src, target)
    return target


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.kwargs.hidden", 32),  # another width
        ("cond.class_conditional", True),  # class conditioning switched on
        ("optim.learning_rate", 1e-3),
        ("seed", 7),
        ("data.batch_size", 16),
    ],
)
def test_changed_config_is_an_error_naming_the_field(toy_run, tmp_path, field, value):
    work = copy(toy_run, tmp_path)
    before = tree_hash(work)
    changes = {field: value}
    if field == "cond.class_conditional":
        changes["cond.num_classes"] = 3
    with pytest.raises(checkpoint.ConfigMismatchError) as info:
        train_and_evaluate(toy_config(**changes), str(work), allow_config_change=())
    message = str(info.value)
    assert field in message and repr(value) in message and "left in place" in message
    assert f"--allow_config_change={field}" in message
    # nothing renamed, config.json not rewritten, nothing written at all
    assert tree_hash(work) == before
    assert sorted(os.listdir(work / CHECKPOINT_DIR)) == ["1", "2"]


def test_original_command_and_benign_changes_resume(toy_run, tmp_path):
    # a longer run (num_steps), other logging and sampling options are not config changes
    work = copy(toy_run, tmp_path)
    config = toy_config(**{"train.num_steps": 3, "train.log_every": 2, "sample.steps": 9})
    state = train_and_evaluate(config, str(work))
    assert int(state.step) == 3
    assert sorted(os.listdir(work / CHECKPOINT_DIR)) == ["1", "2", "3"]


def test_deliberate_change_is_accepted_when_named(toy_run, tmp_path):
    work = copy(toy_run, tmp_path)
    config = toy_config(**{"optim.learning_rate": 1e-3, "train.num_steps": 3})
    state = train_and_evaluate(config, str(work), allow_config_change=("optim",))
    assert int(state.step) == 3
    stored, step = checkpoint.stored_config(str(work / CHECKPOINT_DIR))
    assert step == 3 and stored["optim"]["learning_rate"] == 1e-3
    assert json.loads((work / CONFIG_FILE).read_text())["optim"]["learning_rate"] == 1e-3


def test_sample_on_a_rewritten_config_json_is_an_error_and_nothing_moves(toy_run, tmp_path):
    # An aborted run with another width: its config must not reach config.json (it is
    # written only after validation), and a config.json that disagrees with the checkpoints
    # makes loading (launch/sample.py, launch/evaluate.py) an error, with nothing renamed.
    work = copy(toy_run, tmp_path)
    config_json = (work / CONFIG_FILE).read_text()
    with pytest.raises(checkpoint.ConfigMismatchError):
        train_and_evaluate(toy_config(**{"model.kwargs.hidden": 32}), str(work))
    assert (work / CONFIG_FILE).read_text() == config_json
    config = json.loads(config_json)
    config["process"]["name"] = "subvp"  # same arrays, another network meaning
    (work / CONFIG_FILE).write_text(json.dumps(config))
    before = tree_hash(work)
    with pytest.raises(checkpoint.ConfigMismatchError, match=r"process\.name: stored 'vp', now"):
        load_trained(str(work))
    assert tree_hash(work) == before
    config["process"]["name"], config["model"]["kwargs"]["hidden"] = "vp", 32
    (work / CONFIG_FILE).write_text(json.dumps(config))
    before = tree_hash(work)
    with pytest.raises(checkpoint.ConfigMismatchError, match=r"model\.kwargs\.hidden: stored 16"):
        load_trained(str(work))
    assert tree_hash(work) == before


def garble(step_dir, nbytes=64):
    """Overwrite `nbytes` bytes in the middle of the step's largest array-data file, in place
    (same size: orbax's own checks see a well-formed file)."""
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
    path = max(files, key=os.path.getsize)
    data = bytearray(open(path, "rb").read())  # noqa: SIM115
    mid = len(data) // 2 - nbytes // 2
    data[mid : mid + nbytes] = bytes((b + 1) % 256 for b in data[mid : mid + nbytes])
    with open(path, "wb") as f:
        f.write(bytes(data))
    return path


def test_manifest_records_every_file_and_detects_64_changed_bytes(tmp_path):
    run_training(tiny_spec(2), components(), str(tmp_path))
    step_dir = str(tmp_path / CHECKPOINT_DIR / "2")
    files = json.load(open(os.path.join(step_dir, checkpoint.MANIFEST_FILE)))["files"]
    on_disk = {
        os.path.relpath(os.path.join(r, n), step_dir)
        for r, _, ns in os.walk(step_dir)
        for n in ns
        if n != checkpoint.MANIFEST_FILE
    }
    assert set(files) == on_disk and checkpoint.verify(step_dir) is None
    path = garble(step_dir)
    problem = checkpoint.verify(step_dir)
    assert "sha256 mismatch" in problem and os.path.relpath(path, step_dir) in problem


def test_garbled_latest_is_set_aside_and_previous_used(tmp_path):
    c = components()
    ref = run_training(tiny_spec(3), c, str(tmp_path / "ref"))
    work = tmp_path / "work"
    run_training(tiny_spec(3), c, str(work))
    ckpt = work / CHECKPOINT_DIR
    garble(str(ckpt / "3"))
    # sampling refuses the altered step (read-only: nothing moves)
    abstract = jax.eval_shape(c.init_params, jax.random.PRNGKey(0))
    before = tree_hash(work)
    with pytest.raises(ValueError, match=r"checkpoints/3 cannot be read \(sha256 mismatch"):
        checkpoint.restore_ema(str(ckpt), abstract)
    assert tree_hash(work) == before
    # training sets it aside and redoes step 3 from step 2: the uninterrupted result, exactly
    resumed = run_training(tiny_spec(3), c, str(work))
    assert (ckpt / "3.corrupt").is_dir()
    for a, b in zip(leaves(ref.params), leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.verify(str(ckpt / "3")) is None  # the new step 3 is sealed


def test_step_without_manifest_still_restores(tmp_path):
    # a checkpoint of an older diffjax (or one killed between write and seal) is complete
    c = components()
    ref = run_training(tiny_spec(3), c, str(tmp_path / "ref"))
    work = tmp_path / "work"
    run_training(tiny_spec(2), c, str(work))
    os.remove(work / CHECKPOINT_DIR / "2" / checkpoint.MANIFEST_FILE)
    resumed = run_training(tiny_spec(3), c, str(work))
    assert sorted(os.listdir(work / CHECKPOINT_DIR)) == ["1", "2", "3"]
    for a, b in zip(leaves(ref.params), leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)


def nan_components(from_step):
    """The tiny model, with NaN data in every batch from step `from_step` on."""
    c = components()

    def batches(start, batch_size=8):
        step = start
        while True:
            idx = np.random.default_rng(step).choice(64, batch_size, replace=False)
            x = DATA[idx] * (np.nan if step >= from_step else 1.0)
            yield {"x": x.astype(np.float32), "label": LABELS[idx]}
            step += 1

    c.batches = batches
    return c


@pytest.mark.parametrize("log_every", [1, 4])
def test_nonfinite_loss_stops_before_a_checkpoint(tmp_path, log_every):
    # steps 1-3 are finite, step 4's loss is NaN: the run stops, naming step 4, with
    # checkpoints 2, 3 (keep 2) untouched: no NaN checkpoint rotates a good one out.
    spec = tiny_spec(8)
    loop = dataclasses.replace(spec.loop, log_every=log_every, keep_checkpoints=2)
    spec = dataclasses.replace(spec, loop=loop)
    with pytest.raises(checkpoint.NonFiniteError, match=r"loss is nan at step 4"):
        run_training(spec, nan_components(3), str(tmp_path))
    ckpt = tmp_path / CHECKPOINT_DIR
    assert sorted(os.listdir(ckpt)) == ["2", "3"]
    for step in ("2", "3"):
        assert checkpoint.verify(str(ckpt / step)) is None
        assert os.path.exists(ckpt / step / checkpoint.MANIFEST_FILE)
    abstract = jax.eval_shape(components().init_params, jax.random.PRNGKey(0))
    ema, step = checkpoint.restore_ema(str(ckpt), abstract)
    assert step == 3 and all(np.isfinite(x).all() for x in leaves(ema))


def test_every_checkpoint_unreadable_stops_with_one_message(tmp_path):
    c = components()
    run_training(tiny_spec(2), c, str(tmp_path))
    ckpt = tmp_path / CHECKPOINT_DIR
    for step in ("1", "2"):
        garble(str(ckpt / step))
    before = tree_hash(tmp_path)
    with pytest.raises(checkpoint.NoReadableCheckpointError) as info:
        run_training(tiny_spec(3), c, str(tmp_path))
    message = str(info.value)
    assert "step 2: sha256 mismatch" in message and "step 1: sha256 mismatch" in message
    assert "--allow_fresh_start" in message and "\n" not in message
    assert tree_hash(tmp_path) == before  # nothing moved, nothing written
    state = run_training(tiny_spec(1), c, str(tmp_path), allow_fresh_start=True)
    assert int(state.step) == 1
    assert sorted(os.listdir(ckpt)) == ["1", "1.corrupt", "2.corrupt"]


def test_mismatched_arrays_are_never_set_aside(tmp_path):
    # direct run_training with another network (no stored config to compare): the array check
    c = components()
    run_training(tiny_spec(2), c, str(tmp_path))
    with pytest.raises(checkpoint.CheckpointMismatchError, match="left in place"):
        run_training(tiny_spec(3, conditional=True), components(True), str(tmp_path))
    assert sorted(os.listdir(tmp_path / CHECKPOINT_DIR)) == ["1", "2"]


def test_config_check_happens_before_any_data_or_compile(toy_run, tmp_path, monkeypatch):
    work = copy(toy_run, tmp_path)
    import diffjax.train.builders as builders

    def fail(spec):
        raise AssertionError("built components before checking the config")

    monkeypatch.setattr(builders, "build_components", fail)
    with pytest.raises(checkpoint.ConfigMismatchError, match="seed"):
        train_and_evaluate(toy_config(seed=3), str(work))
    assert spec_from_config(toy_config(seed=3)).seed == 3


def test_a_field_added_to_the_defaults_later_is_not_a_change():
    """A workdir written before a field existed (stored config lacks it) resumes when the
    field is at its default, and is still a change when the user sets it."""
    import json

    from diffjax.train.checkpoint import config_differences
    from diffjax.train.config import default_config

    current = json.loads(default_config().to_json_best_effort(sort_keys=True))
    old = json.loads(json.dumps(current))
    del old["task"], old["teacher"]["init_student"]
    assert config_differences(old, current) == []
    changed = json.loads(json.dumps(current))
    changed["task"] = "classifier"
    assert config_differences(old, changed) == [("task", "diffusion", "classifier")]
