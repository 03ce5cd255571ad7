"""The ':mini' paper baselines of BASELINES.md (issue 14): each trains two steps on mock data
(the miniature runs themselves are not tests), with the paper's process, loss and sampler and
apply_mini's U-Net, whose parameter count is checked."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

from diffjax.train.config import MINI_UNET
from diffjax.train.loop import train_and_evaluate
from diffjax.train.writers import read_metrics
from tests.helpers import write_idx
from tests.test_autoencoder_train import load_experiment

# (experiment, argument, process, loss, prediction, solver)
MINIS = [
    ("mnist", "mini", "discrete", "simple", "eps", "ddim"),
    ("cifar10_ddpm", "mini", "discrete", "simple", "eps", "ddim"),
    ("cifar10_score_sde", "process=vp,mini", "vp", "dsm", "score", "pc"),
    ("cifar10_score_sde", "process=ve,mini", "ve", "dsm", "score", "pc"),
    ("cifar10_rectified_flow", "mini", "rectified_flow", "cfm", "velocity", "dopri5"),
]


def _mock_mnist(root, n=64):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    write_idx(os.path.join(root, "train-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
    write_idx(os.path.join(root, "train-labels-idx1-ubyte"), rng.integers(0, 10, n))
    return str(root)


def _mock_cifar(root, per_class=4, side=16):
    """root/train/<class>/k.jpg: two classes of random RGB images (JPEG, as the local copy)."""
    rng = np.random.default_rng(0)
    for cls in ("airplane", "cat"):
        os.makedirs(root / "train" / cls)
        for k in range(per_class):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / "train" / cls / f"{k:04d}.jpg")
    return str(root)


@pytest.mark.parametrize("name, arg, process, loss, prediction, solver", MINIS)
def test_mini_config_trains_two_steps_on_mock_data(
    name, arg, process, loss, prediction, solver, tmp_path
):
    c = load_experiment(name).get_config(arg)
    # the paper's family is kept; the size is apply_mini's
    assert (c.process.name, c.loss.name, c.prediction, c.sample.solver) == (
        process, loss, prediction, solver,
    )  # fmt: skip
    assert c.model.name == "unet" and c.data.batch_size == 64
    assert {k: c.model.kwargs[k] for k in MINI_UNET} == MINI_UNET
    assert c.train.num_steps in (6000, 8000) and c.ema.decay == 0.999
    if name == "mnist":
        c.data.data_dir = _mock_mnist(tmp_path / "mnist")
    else:
        assert c.data.name == "image_folder"  # the local CIFAR-10 JPEG copy, not TFDS
        c.data.data_dir = _mock_cifar(tmp_path / "cifar")
        c.data.image_size = 16  # mock images: the same U-Net (attention at 8 still applies)
    c.data.batch_size = 8
    c.train.update(num_steps=2, log_every=1, checkpoint_every=2, progress_bar=False)
    c.sample.num = 0
    workdir = str(tmp_path / "run")
    state = train_and_evaluate(c, workdir)
    assert int(state.step) == 2
    losses = [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
    if name == "mnist":  # the size BASELINES.md states
        count = sum(x.size for x in jax.tree.leaves(state.params))
        assert count == 280_177, count
