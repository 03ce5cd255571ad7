"""Sampling and evaluating a workdir read it and never change it: only the EMA parameters are
restored (the optimiser config may differ), and a bad checkpoint is a clear error, left in place."""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from diffjax.train import checkpoint, evaluate
from diffjax.train.loop import train_and_evaluate
from diffjax.train.workdir import CHECKPOINT_DIR, CONFIG_FILE, load_trained
from tests.helpers import config_from_file, tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "experiments", "toy2d.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step toy2d run with checkpoints at steps 1 and 2; (workdir, final state)."""
    config = config_from_file(f"{TOY}:quicktest")
    config.train.update(num_steps=2, keep_checkpoints=2)
    workdir = tmp_path_factory.mktemp("toy")
    state = train_and_evaluate(config, str(workdir))
    return workdir, state


def copy(workdir, tmp_path):
    target = tmp_path / "work"
    shutil.copytree(workdir, target)
    return target


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_load_and_evaluate_leave_the_workdir_unchanged(trained, tmp_path):
    workdir, state = trained
    work = copy(workdir, tmp_path)
    before = tree_hash(work)
    spec, c, restored = load_trained(str(work))
    # the newest step's EMA parameters, bit for bit (and they differ from the raw params)
    assert restored.step == 2
    for a, b in zip(leaves(restored.ema_params), leaves(state.ema_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(leaves(state.params)[0], leaves(state.ema_params)[0])
    rows = evaluate.evaluate_solvers(
        jax.random.PRNGKey(0), spec, c, restored, [("euler", 2)], num=32, workdir=str(work)
    )
    assert np.isfinite(rows[0]["sliced_wasserstein"])
    assert tree_hash(work) == before


def test_bad_latest_checkpoint_is_an_error_and_nothing_moves(trained, tmp_path):
    work = copy(trained[0], tmp_path)
    ckpt = work / CHECKPOINT_DIR
    for f in glob.glob(str(ckpt / "2" / "state" / "d" / "*")):
        with open(f, "wb") as fh:
            fh.write(b"garbage")
    before = tree_hash(work)
    with pytest.raises(ValueError, match=r"checkpoints/2 cannot be read.*left in place"):
        load_trained(str(work))
    assert tree_hash(work) == before and sorted(os.listdir(ckpt)) == ["1", "2"]
    os.remove(ckpt / "2" / checkpoint.METADATA_FILE)  # now a partially written step
    before = tree_hash(work)
    with pytest.raises(ValueError, match=r"checkpoints/2 is incomplete"):
        load_trained(str(work))
    assert tree_hash(work) == before


def test_restore_with_another_optimizer_config(trained, tmp_path):
    # The optimiser state of adamw + clipping has another structure than adam's: a restore of
    # the whole TrainState would fail; the EMA-only restore does not read it. (launch/sample.py
    # on such a workdir: tests/test_launch.py::test_sample_program.)
    workdir, state = trained
    work = copy(workdir, tmp_path)
    path = work / CONFIG_FILE
    config = json.loads(path.read_text())
    config["optim"].update(name="adamw", learning_rate=0.5, grad_clip=0.0, weight_decay=0.1)
    path.write_text(json.dumps(config))
    before = tree_hash(work)
    spec, _, restored = load_trained(str(work))
    assert spec.optim.name == "adamw" and restored.step == 2
    for a, b in zip(leaves(restored.ema_params), leaves(state.ema_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert tree_hash(work) == before


def test_config_that_does_not_fit_is_named_and_nothing_moves(trained, tmp_path):
    # config.json says hidden=32 while the checkpoints hold hidden=16 weights: a clear error
    # naming the arrays, both for sampling (EMA only) and for resumed training.
    work = copy(trained[0], tmp_path)
    path = work / CONFIG_FILE
    config = json.loads(path.read_text())
    config["model"]["kwargs"]["hidden"] = 32
    path.write_text(json.dumps(config))
    before = tree_hash(work)
    with pytest.raises(
        checkpoint.CheckpointMismatchError,
        match=r"ema_params/block0_dense0/bias: stored float32\[16\], config float32\[32\]",
    ):
        load_trained(str(work))
    assert tree_hash(work) == before
    from ml_collections import ConfigDict

    with pytest.raises(checkpoint.CheckpointMismatchError, match="left in place"):
        train_and_evaluate(ConfigDict(config), str(work))
    assert sorted(os.listdir(work / CHECKPOINT_DIR)) == ["1", "2"]  # nothing set aside
