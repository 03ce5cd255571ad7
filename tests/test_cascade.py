"""Cascaded super-resolution (diffjax.cascade): the low-res condition, noise-conditioning
augmentation, the U-Net's second time, the SR loss and sampler, the config boundary, and the
two-stage launch path (experiments/cascade.py, launch/sample.py --sr_workdir)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import cascade, losses
from diffjax.data import imageops
from diffjax.models.unet import UNet
from diffjax.train.spec import ExampleSpec, spec_from_config
from tests.helpers import write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "cascade.py")
AUG_PROCESSES = {
    "vp": diffjax.vp(),
    "discrete": diffjax.discrete(diffjax.schedules.linear_betas(1000)),
    "rectified_flow": diffjax.rectified_flow(),
    "ve": diffjax.ve(),
}


def load_experiment():
    spec = importlib.util.spec_from_file_location("exp_cascade", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(key, shape=(4, 8, 8, 1)):
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)


# --- filters -------------------------------------------------------------------------------


def test_bilinear_downsample_is_the_data_layers_resize(key):
    # independent implementation: Pillow's antialiased BILINEAR (diffjax.data's image_size)
    x = np.asarray(images(key, (3, 28, 28, 2))) * 127.5 + 127.5
    ours = np.asarray(cascade.downsample(x, 14, "bilinear"))
    pillow = np.stack([imageops.resize_image(im, 14) for im in x.astype(np.float32)])
    np.testing.assert_allclose(ours, pillow, atol=1e-3)  # on the 0..255 scale


def test_area_downsample_is_the_block_mean_and_nearest_upsample_repeats(key):
    x = np.asarray(images(key, (2, 6, 6, 3)))
    block = x.reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    low = cascade.downsample(x, 3, "area")
    np.testing.assert_allclose(low, block, atol=1e-6)
    up = cascade.upsample(low, 6, "nearest")
    np.testing.assert_array_equal(up, np.repeat(np.repeat(np.asarray(low), 2, 1), 2, 2))
    const = jnp.full((1, 3, 3, 1), 0.25)
    for method in cascade.UPSAMPLE:  # every filter's weights sum to one
        np.testing.assert_allclose(cascade.upsample(const, 6, method), 0.25, atol=1e-6)


# --- noise-conditioning augmentation -------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AUG_PROCESSES))
def test_level_zero_is_the_clean_low_res_image(key, name):
    process, sr = AUG_PROCESSES[name], cascade.SRConfig(low_res=4)
    x_lr = images(key, (3, 4, 4, 1))
    np.testing.assert_array_equal(cascade.augment(key, process, x_lr, 0.0), x_lr)
    cond = cascade.condition(key, process, x_lr, jnp.zeros(3), 8, sr)
    np.testing.assert_array_equal(cond["concat"], cascade.upsample(x_lr, 8, "bilinear"))
    np.testing.assert_array_equal(cond["aug_t"], jnp.zeros(3))


@pytest.mark.parametrize("name", ["vp", "discrete", "rectified_flow"])
def test_augmentation_draws_the_process_marginal(key, name):
    # z_s ~ N(alpha(s) x_lr, sigma(s)^2 I): per-example levels, n = 4096 draws per pixel of
    # each level; mean within 5 standard errors sigma / sqrt(n), variance within 5 of its
    # standard error sigma^2 sqrt(2 / n) (the normal's fourth moment)
    process, n = AUG_PROCESSES[name], 4096
    levels = jnp.array([0.1, 0.5, 0.9])
    x_lr = jnp.linspace(-1.0, 1.0, 3 * 4).reshape(3, 2, 2, 1)  # one image per level
    x_rep = jnp.tile(x_lr, (n, 1, 1, 1))  # [n * 3, 2, 2, 1], level i for rows i, i + 3, ...
    z = cascade.augment(key, process, x_rep, jnp.tile(levels, n)).reshape(n, 3, 2, 2, 1)
    alpha = np.asarray(process.alpha(levels))[:, None, None, None]
    sigma = np.asarray(process.sigma(levels))[:, None, None, None]
    mean, var = np.mean(np.asarray(z), 0), np.var(np.asarray(z), 0)
    assert np.all(np.abs(mean - alpha * np.asarray(x_lr)) < 5 * sigma / np.sqrt(n))
    assert np.all(np.abs(var - sigma**2) < 5 * sigma**2 * np.sqrt(2.0 / n))


def test_training_levels_are_uniform_on_the_range(key):
    sr, n = cascade.SRConfig(low_res=4, aug_min=0.2, aug_max=0.6), 20000
    s = np.asarray(cascade.draw_levels(key, n, sr))
    assert s.min() >= 0.2 and s.max() <= 0.6
    width = 0.4  # U[a, b]: mean (a + b) / 2, variance (b - a)^2 / 12
    assert abs(s.mean() - 0.4) < 5 * width / np.sqrt(12 * n)
    assert abs(s.var() - width**2 / 12) < 5 * width**2 / np.sqrt(180 * n) * 2


# --- the U-Net's second time ---------------------------------------------------------------


def _unet(aug_time):
    return UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                num_groups=4, in_channels=1, concat_channels=1, aug_time=aug_time)  # fmt: skip


def _random_params(shapes, key):
    # random N(0, 0.2^2) parameters of the init's shapes (the init itself zeroes conv_out, so
    # the network would output 0); no init compile needed
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    drawn = [
        0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, drawn)


def test_unet_second_time_off_is_unchanged_and_on_depends_on_it(key):
    x, t = images(key, (2, 8, 8, 1)), jnp.array([0.3, 0.7])
    concat = images(jax.random.fold_in(key, 1), (2, 8, 8, 1))
    off, on = _unet(False), _unet(True)
    cond_on = {"concat": concat, "aug_t": jnp.array([0.0, 0.4])}
    p_on = _random_params(jax.eval_shape(on.init, key, x, t, cond_on)["params"], key)
    p_off = {k: v for k, v in p_on.items() if k != "aug_temb"}
    plain = jax.eval_shape(off.init, key, x, t, concat)["params"]
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(p_off)
    # the second embedding is purely additive: with its last layer zero, the output is the
    # model without it
    aug = dict(p_on["aug_temb"])
    aug["dense1"] = jax.tree_util.tree_map(jnp.zeros_like, aug["dense1"])
    silenced = {**p_on, "aug_temb": aug}
    apply_on = jax.jit(lambda p, s: on.apply({"params": p}, x, t, {"concat": concat, "aug_t": s}))
    y_off = jax.jit(lambda p: off.apply({"params": p}, x, t, concat))(p_off)
    np.testing.assert_allclose(apply_on(silenced, cond_on["aug_t"]), y_off, atol=1e-5)
    y1, y2 = apply_on(p_on, cond_on["aug_t"]), apply_on(p_on, jnp.array([0.9, 0.1]))
    assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-3
    assert float(jnp.max(jnp.abs(y1 - y_off))) > 1e-3
    with pytest.raises(ValueError, match="aug_time=False"):
        jax.eval_shape(off.apply, {"params": p_off}, x, t, cond_on)
    with pytest.raises(ValueError, match="aug_time=True"):
        jax.eval_shape(on.apply, {"params": p_on}, x, t, concat)


# --- SR loss and sampler -------------------------------------------------------------------


def test_sr_loss_builds_the_condition_from_the_batch(key):
    process = AUG_PROCESSES["vp"]
    sr = cascade.SRConfig(low_res=4, aug_min=0.0, aug_max=0.0, downsample="area")
    x0 = images(key, (3, 8, 8, 1))

    @jax.jit
    def run(x0, key):
        seen = {}

        def model(x_t, t, cond):
            seen.update(cond)
            return jnp.zeros_like(x_t)

        value, _ = cascade.sr_loss(model, key, x0, process, loss=losses.simple, sr=sr)
        return value, seen["concat"], seen["aug_t"]

    value, concat, aug_t = run(x0, key)
    expected = cascade.upsample(cascade.downsample(x0, 4, "area"), 8, "bilinear")
    np.testing.assert_allclose(concat, expected, atol=1e-6)
    np.testing.assert_array_equal(aug_t, jnp.zeros(3))
    assert 0.5 < float(value) < 1.5  # eps MSE of a zero model: E[eps^2] = 1 over 192 values


def test_super_resolve_ends_at_the_models_x0_prediction(key):
    # an x0-model returning the upsampled condition: every solver's last step onto sigma = 0
    # returns the x0 prediction exactly, so the sample is up(x_lr) at level 0
    process = AUG_PROCESSES["discrete"]
    sr = cascade.SRConfig(low_res=4)
    x_lr = images(key, (2, 4, 4, 1))
    model = jax.tree_util.Partial(lambda x_t, t, cond: cond["concat"])
    out = cascade.super_resolve(
        key, model, process, x_lr, sr=sr, size=8, solver="ddim", steps=3, prediction="x0"
    )
    np.testing.assert_allclose(out, cascade.upsample(x_lr, 8), atol=1e-5)
    with pytest.raises(ValueError, match="4x4 low-resolution inputs; got x_lr of size 8x8"):
        cascade.super_resolve(key, model, process, out, sr=sr, size=8, solver="ddim", steps=3)


# --- config boundary -----------------------------------------------------------------------


def sr_config(**changes):
    config = load_experiment().get_config("quicktest,stage=sr")
    for field, value in changes.items():
        section, name = field.split(".")
        config[section][name] = value
    return config


def test_sr_spec_wires_model_and_loss():
    spec = spec_from_config(sr_config(), ExampleSpec(shape=(28, 28, 1)))
    assert spec.cascade == cascade.SRConfig(low_res=14, aug_min=0.0, aug_max=0.5)
    assert spec.model.concat_channels == 1 and spec.model.aug_time
    assert spec.loss.func is cascade.sr_loss
    base = spec_from_config(load_experiment().get_config("quicktest"), ExampleSpec((14, 14, 1)))
    assert base.cascade is None and not base.model.aug_time and base.data.image_size == 14


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"cascade.low_res": 28}, r"cascade.low_res = 28: expected an integer in \[1, 28\)"),
        ({"cascade.aug_max": 1.5}, "aug_min, aug_max = 0.0, 1.5"),
        ({"cascade.upsample": "lanczos"}, "cascade.upsample = 'lanczos'"),
        ({"cascade.downsample": "area", "cascade.low_res": 12}, "needs low_res to divide"),
        ({"sample.num": 4}, "sample.num = 4"),
        ({"cond.class_conditional": True, "cond.num_classes": 10}, "cond.class_conditional"),
        ({"model.name": "dit"}, "model.name = 'dit'"),
    ],
)
def test_bad_sr_config_is_a_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        spec_from_config(sr_config(**changes), ExampleSpec(shape=(28, 28, 1)))


def test_experiment_arguments():
    exp = load_experiment()
    cifar = exp.get_config("stage=sr,data=cifar10")
    assert (cifar.cascade.low_res, cifar.data.name, cifar.data.random_flip) == (
        16,
        "image_folder",
        True,
    )
    assert exp.get_config("stage=base,data=fashion_mnist").data.image_size == 14
    with pytest.raises(ValueError, match="stage='top'"):
        exp.get_config("stage=top")
    with pytest.raises(ValueError, match="data='svhn'"):
        exp.get_config("data=svhn")


# --- the launch path -----------------------------------------------------------------------


def launch(script, *args, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")  # fmt: skip
    cmd = [sys.executable, os.path.join(ROOT, "launch", script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Quicktest base and SR runs (one step each) on 16 random 28x28 IDX images."""
    root = tmp_path_factory.mktemp("cascade")
    rng = np.random.default_rng(0)
    write_idx(str(root / "train-images-idx3-ubyte"), rng.integers(0, 256, (16, 28, 28)))
    write_idx(str(root / "train-labels-idx1-ubyte"), rng.integers(0, 10, (16,)))
    dirs = {}
    for stage in ("base", "sr"):
        dirs[stage] = root / stage
        out = launch("train.py", f"--config={EXPERIMENT}:quicktest,stage={stage}",
                     f"--workdir={dirs[stage]}", f"--config.data.data_dir={root}")  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
    return dirs


@pytest.mark.slow
def test_cascade_sample_program(trained, tmp_path):
    out = launch(
        "sample.py",
        f"--workdir={trained['base']}",
        f"--sr_workdir={trained['sr']}",
        "--num=3",
        "--steps=2",
        "--sr_steps=2",
        "--aug_level=0.2",
        f"--out={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = np.load(tmp_path / "cascade_ddim_2.npz")
    assert data["base"].shape == (3, 14, 14, 1) and data["sr"].shape == (3, 28, 28, 1)
    assert np.all(np.isfinite(data["sr"])) and float(data["aug_level"]) == pytest.approx(0.2)
    assert {"cascade_ddim_2_base.png", "cascade_ddim_2_sr.png"} <= set(os.listdir(tmp_path))


@pytest.mark.slow
def test_cascade_size_mismatch_is_a_clear_error(trained, tmp_path):
    # the SR run used as the base outputs 28x28 samples; the SR stage takes 14x14 inputs
    out = launch("sample.py", f"--workdir={trained['sr']}", f"--sr_workdir={trained['sr']}",
                 f"--out={tmp_path}")  # fmt: skip
    assert out.returncode != 0
    assert "takes low-res inputs of size 14x14x1" in out.stderr
    assert "outputs 28x28x1 samples" in out.stderr
    out = launch("sample.py", f"--workdir={trained['base']}", f"--sr_workdir={trained['base']}")
    assert out.returncode != 0 and "is not an SR stage" in out.stderr
    assert os.listdir(tmp_path) == []
