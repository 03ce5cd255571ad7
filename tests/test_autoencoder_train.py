"""Autoencoder training through the launcher path (config.task='autoencoder'): checkpoints,
resume, the reconstruction grid, the latent scale factor (scaled latents have unit std), and
clear config errors. Synthetic 8x8 IDX data and an 8-channel autoencoder keep it fast."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from diffjax.train.autoencoder import (
    SCALE_FILE,
    _first_images,
    autoencoder_spec_from_config,
    finish,
    load_autoencoder,
)
from diffjax.train.loop import train_and_evaluate
from diffjax.train.writers import read_metrics
from tests.helpers import write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name}", os.path.join(ROOT, "experiments", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_idx(root: str, n: int = 32, side: int = 8, seed: int = 0) -> str:
    """Label-coded items: label k is a bright k-th row band on noise (so items differ)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, side, side))
    for i, k in enumerate(labels):
        images[i, k % side] = 255
        images[i, :, (k * 3) % side] = 200
    os.makedirs(root, exist_ok=True)
    write_idx(os.path.join(root, "train-images-idx3-ubyte"), images)
    write_idx(os.path.join(root, "train-labels-idx1-ubyte"), labels)
    return root


def ae_config(data_dir: str, **overrides):
    c = load_experiment("autoencoder").get_config("quicktest")
    c.data.data_dir = data_dir
    c.data.prefetch = 0
    c.model.kwargs.update(ch=8, num_groups=4)
    for field, value in overrides.items():
        section, name = field.split(".")
        c[section][name] = value
    return c


@pytest.mark.slow  # two launcher runs with their compiles: 55 s on 2 shared cores at load 6-9
def test_quicktest_trains_resumes_and_writes_scale(tmp_path):
    data = synthetic_idx(str(tmp_path / "idx"))
    work = str(tmp_path / "ae")
    config = ae_config(data, **{"train.num_steps": 2})
    state = train_and_evaluate(config, work)
    assert int(state.step) == 2
    for name in ("config.json", "run_info.json", SCALE_FILE, "reconstructions.png"):
        assert os.path.isfile(os.path.join(work, name)), name
    assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2"]
    first = read_metrics(os.path.join(work, "metrics.jsonl"))
    assert [r["step"] for r in first] == [1, 2] and all(np.isfinite(r["rec"]) for r in first)
    # resume: one more step continues from the checkpoint (no step is repeated)
    config.train.num_steps = 3
    state = train_and_evaluate(config, work)
    assert int(state.step) == 3
    assert [r["step"] for r in read_metrics(os.path.join(work, "metrics.jsonl"))] == [1, 2, 3]
    spec, params, step = load_autoencoder(work)
    assert step == 3 and spec.model.factor == 4

    # The stored factor makes posterior samples of the training sample unit-std: draw fresh
    # samples (another key) of the same images; with n = 32 x 2 x 2 x 4 = 512 values the std's
    # relative standard error is about 1 / sqrt(2 n) = 3%, so 15% is a 5-sigma bound.
    info = json.load(open(os.path.join(work, SCALE_FILE)))
    images = _first_images(spec, spec.options.scale_samples)
    posterior = spec.model.apply({"params": params}, images, method="encode")
    z = np.asarray(posterior.sample(jax.random.PRNGKey(123)))
    assert z.shape == (16, 2, 2, 4) and info["latent_shape"] == [2, 2, 4]
    np.testing.assert_allclose(np.std(info["scale_factor"] * z), 1.0, rtol=0.15)
    np.testing.assert_allclose(info["scale_factor"], 1.0 / info["std"], rtol=1e-6)


def test_fixed_scale_factor_overrides_the_computed_one(tmp_path):
    data = synthetic_idx(str(tmp_path / "idx"))
    config = ae_config(data, **{"autoencoder.scale_factor": 0.25})
    spec = autoencoder_spec_from_config(config)
    params = jax.eval_shape(spec.model.init, jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)))
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), params)["params"]
    os.makedirs(tmp_path / "w")
    spec = type(spec)(**{**spec.__dict__, "options": spec.options.__class__(
        **{**spec.options.__dict__, "grid_num": 0})})  # fmt: skip
    info = finish(str(tmp_path / "w"), spec, params, 0, jax.random.PRNGKey(0))
    assert info["scale_factor"] == 0.25 and info["source"] == "config.autoencoder.scale_factor"
    assert info["computed_scale_factor"] > 0


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"model.name": "unet"}, "trains an 'autoencoder\\*' model"),
        ({"autoencoder.workdir": "/somewhere"}, "names a trained autoencoder"),
        ({"autoencoder.kl_weight": -1.0}, "kl_weight = -1.0"),
        ({"autoencoder.scale_factor": 0.0}, "scale_factor = 0.0"),
        ({"autoencoder.recon": "l1"}, "unknown field"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, overrides, match):
    config = ae_config(synthetic_idx(str(tmp_path / "idx")), **overrides)
    with pytest.raises(ValueError, match=match):
        autoencoder_spec_from_config(config)


def test_image_size_not_divisible_by_the_factor_is_an_error(tmp_path):
    config = ae_config(synthetic_idx(str(tmp_path / "idx"), side=10))
    with pytest.raises(ValueError, match="divisible by 4"):
        autoencoder_spec_from_config(config)


@pytest.mark.slow
def test_discriminator_step_updates_both_networks(tmp_path):
    from diffjax import parallel
    from diffjax.train.autoencoder import create_state, make_step, make_tx

    c = load_experiment("autoencoder").get_config("quicktest,disc")
    c.data.data_dir = synthetic_idx(str(tmp_path / "idx"))
    spec = autoencoder_spec_from_config(c)
    assert spec.discriminator is not None and spec.loss.disc_start == 0
    tx, mesh = make_tx(spec), parallel.make_mesh()
    state = create_state(jax.random.PRNGKey(0), spec, tx)
    before = jax.tree.map(np.asarray, state.params)
    batch = {"image": _first_images(spec, 8)}
    state, metrics = make_step(spec, tx, mesh)(state, batch, jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["disc_loss"])) and float(metrics["adaptive_weight"]) >= 0
    for name in ("autoencoder", "discriminator"):
        moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params[name],
                             before[name])  # fmt: skip
        assert max(jax.tree.leaves(moved)) > 0, name
