"""The runs that train a model other runs use (config.task 'autoencoder' and 'classifier') keep
the diffusion loop's safety rules (issue #13): a second process on a workdir in use is refused
before any write; a resumed run's config must match the stored one unless the field is allowed;
SIGTERM saves the step reached and the resumed run ends bit-identical to an uninterrupted one;
a NaN stops the run before a save; a non-primary process writes nothing but its part of the
orbax checkpoints. Tiny networks (4 channels) on 8x8 images keep each run to a few steps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal

import numpy as np
import pytest

from diffjax import parallel
from diffjax.train import checkpoint
from diffjax.train.autoencoder import train_autoencoder
from diffjax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError
from diffjax.train.noisy_classifier import train_noisy_classifier
from tests.helpers import tree_hash
from tests.test_autoencoder_train import synthetic_idx
from tests.test_fault import _our_threads, assert_bit_identical, leaves, metric_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("autoencoder", "classifier")
TRAIN = {"autoencoder": train_autoencoder, "classifier": train_noisy_classifier}


def experiment(name: str, arg: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, f"experiments/{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_config(task: str, data_dir: str, num_steps: int = 3):
    """A `num_steps` quicktest of `task` with a 4-channel network, checkpointed at the end only
    (checkpoint_every 1000), one metrics row per step."""
    if task == "autoencoder":
        c = experiment("autoencoder", "quicktest")
        c.data.data_dir, c.data.prefetch = data_dir, 0
        c.model.kwargs.update(ch=4, ch_mult=(1, 2), num_res_blocks=1, num_groups=2)
        c.autoencoder.update(grid_num=0, scale_samples=8)
    else:
        c = experiment("noisy_classifier", "quicktest")  # the built-in 8x8 digits
        c.model.kwargs.update(ch=4, ch_mult=(1,), num_groups=2, pool="mean")
    c.train.update(num_steps=num_steps, log_every=1, checkpoint_every=1000, keep_checkpoints=5)
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return synthetic_idx(str(tmp_path_factory.mktemp("idx")), n=16)


def _notice_at_call(monkeypatch, call: int) -> None:
    """SIGTERM to this process when the training loop shards its `call`-th batch (the handler
    runs in the main thread before that step's pre-emption check: the notice lands at that
    step, deterministically)."""
    calls, shard = [], parallel.shard_batch

    def shard_then_notice(batch, mesh):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return shard(batch, mesh)

    monkeypatch.setattr(parallel, "shard_batch", shard_then_notice)


@pytest.fixture(scope="module", params=TASKS)
def runs(request, tmp_path_factory, data_dir) -> dict:
    """Per task: an uninterrupted 3-step run, and a run pre-empted at step 2 then resumed to 3
    (with what the workdir held in between)."""
    task, root = request.param, tmp_path_factory.mktemp(request.param)
    out = {"task": task, "whole": str(root / "whole"), "work": str(root / "work")}
    out["whole_state"] = TRAIN[task](tiny_config(task, data_dir), out["whole"])
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _notice_at_call(monkeypatch, 2)
        with pytest.raises(parallel.Preempted) as stopped:
            TRAIN[task](tiny_config(task, data_dir, num_steps=100), out["work"])
    out["stopped_at"] = stopped.value.step
    out["handler_restored"] = signal.getsignal(signal.SIGTERM) is previous
    out["threads"] = _our_threads()
    out["after_stop"] = sorted(os.listdir(out["work"]))
    out["steps_after_stop"] = sorted(os.listdir(os.path.join(out["work"], "checkpoints")))
    out["metrics_after_stop"] = metric_steps(out["work"])
    out["resumed_state"] = TRAIN[task](tiny_config(task, data_dir), out["work"])
    return out


@pytest.mark.slow  # three short trainings per task with their compiles (~1 min per task loaded)
def test_sigterm_saves_the_step_reached_and_the_resumed_run_is_exact(runs):
    assert runs["stopped_at"] == 2
    assert runs["steps_after_stop"] == ["2"]  # saved though no checkpoint was due (every 1000)
    assert runs["metrics_after_stop"] == [1, 2]
    assert LOCK_FILE not in runs["after_stop"] and "config.json" in runs["after_stop"]
    assert runs["handler_restored"] and runs["threads"] == []
    assert_bit_identical(leaves(runs["resumed_state"]), leaves(runs["whole_state"]))
    assert metric_steps(runs["work"]) == [1, 2, 3]  # each step once after the resume
    assert sorted(os.listdir(os.path.join(runs["work"], "checkpoints"))) == ["2", "3"]


@pytest.mark.slow  # uses the trained runs of `runs`; the check itself compiles nothing
def test_changed_config_is_refused_unless_the_field_is_allowed(runs, data_dir, tmp_path):
    task, work = runs["task"], str(tmp_path / "copy")
    shutil.copytree(runs["whole"], work)
    before = tree_hash(work)
    changed = tiny_config(task, data_dir)
    changed.optim.learning_rate = 0.123
    with pytest.raises(checkpoint.ConfigMismatchError) as info:
        TRAIN[task](changed, work)
    assert "optim.learning_rate: stored" in str(info.value)
    assert "--allow_config_change=optim.learning_rate" in str(info.value)
    assert tree_hash(work) == before  # nothing written, renamed or moved
    with pytest.raises(checkpoint.ConfigMismatchError, match="optim.learning_rate"):
        TRAIN[task](changed, work, allow_config_change=("optim.b1",))  # another field allowed
    state = TRAIN[task](changed, work, allow_config_change=("optim.learning_rate",))
    assert int(state.step) == 3  # resumed (nothing left to train)
    with open(os.path.join(work, "config.json")) as f:
        assert json.load(f)["optim"]["learning_rate"] == 0.123


@pytest.mark.parametrize("task", TASKS)
def test_second_run_on_a_workdir_in_use_is_refused_before_any_write(task, data_dir, tmp_path):
    from diffjax.train.loop import train_and_evaluate

    work = tmp_path / "run"
    with WorkdirLock(work):
        with pytest.raises(WorkdirLockedError, match=f"in use by training process {os.getpid()}"):
            TRAIN[task](tiny_config(task, data_dir), str(work))
        with pytest.raises(WorkdirLockedError):  # the launcher's path (config.task dispatch)
            train_and_evaluate(tiny_config(task, data_dir), str(work))
        assert os.listdir(work) == [LOCK_FILE]


@pytest.mark.slow  # one 1-step training per task
@pytest.mark.parametrize("task", TASKS)
def test_non_primary_process_writes_only_checkpoints(task, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "is_primary", lambda: False)  # process 1 of a cluster
    work = str(tmp_path / "run")
    TRAIN[task](tiny_config(task, data_dir, num_steps=1), work)
    assert os.listdir(work) == ["checkpoints"]  # orbax: every host takes part
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["1"]


@pytest.mark.slow  # one 2-step training per task
@pytest.mark.parametrize("task", TASKS)
def test_nan_stops_the_run_before_a_save(task, data_dir, tmp_path, monkeypatch):
    calls, shard = [], parallel.shard_batch

    def nan_at_step_2(batch, mesh):  # the second batch's images are NaN: so is its loss
        calls.append(1)
        if len(calls) == 2:
            batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
        return shard(batch, mesh)

    monkeypatch.setattr(parallel, "shard_batch", nan_at_step_2)
    work = str(tmp_path / "run")
    config = tiny_config(task, data_dir, num_steps=3)
    config.train.checkpoint_every = 1
    with pytest.raises(checkpoint.NonFiniteError, match="at step 2"):
        TRAIN[task](config, work)
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["1"]
    assert metric_steps(work) == [1]
    assert not os.path.exists(os.path.join(work, LOCK_FILE))


def test_pair_chunks_are_written_by_the_primary_process_only(tmp_path, monkeypatch):
    from diffjax.data.pairs_source import NpzChunkWriter, load_pairs

    z, x = np.arange(12.0).reshape(3, 4), -np.arange(12.0).reshape(3, 4)
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    NpzChunkWriter(tmp_path / "other")(0, z, x)  # process 1 of a cluster
    assert not (tmp_path / "other").exists()
    monkeypatch.setattr(parallel, "is_primary", lambda: True)
    writer = NpzChunkWriter(tmp_path / "pairs")
    writer(1, z[1:], x[1:])
    writer(0, z[:1], x[:1])
    assert sorted(os.listdir(tmp_path / "pairs")) == ["pairs_000000.npz", "pairs_000001.npz"]
    z_read, x_read = load_pairs(str(tmp_path / "pairs"))  # chunks in index order
    np.testing.assert_array_equal(z_read, z)
    np.testing.assert_array_equal(x_read, x)
