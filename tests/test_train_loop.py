"""The training loop on a tiny in-test model and data: exact resume, EMA, optimiser, errors."""

from __future__ import annotations

import glob
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax.kernels import bcast
from diffjax.processes import vp
from diffjax.train import checkpoint
from diffjax.train.components import Components, drop_labels
from diffjax.train.config import default_config
from diffjax.train.loop import CHECKPOINT_DIR, run_training
from diffjax.train.optim import ema_decay, learning_rate_schedule, make_optimizer
from diffjax.train.spec import CondSpec, EmaSpec, OptimSpec, spec_from_config
from diffjax.train.writers import image_grid, read_metrics


class TinyMLP(nn.Module):
    """eps(x_t, t) for 2-D points; labels (if any) add an embedding."""

    @nn.compact
    def __call__(self, x, t, cond=None, train=False):
        h = jnp.concatenate([x, t[:, None]], axis=-1)  # [B, 3]
        h = nn.Dense(16)(h)
        if cond is not None:
            h = h + nn.Embed(4, 16)(cond)
        h = nn.Dropout(0.5, deterministic=not train)(nn.silu(h))
        return nn.Dense(2)(h)


def eps_mse(model, key, x0, process, *, cond=None):
    """An independent eps-MSE (Ho et al. 2020 eq. 14) so these tests need no diffjax.losses."""
    t_key, n_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=1e-3, maxval=1.0)
    eps = jax.random.normal(n_key, x0.shape)
    xt = bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps
    err = jnp.mean((model(xt, t, cond) - eps) ** 2)
    return err, {"mse": err}


DATA = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
LABELS = np.arange(64, dtype=np.int32) % 3


def batches(start, batch_size=8):
    """Deterministic stream: batch n is a function of n only (as diffjax.data's Batches)."""
    step = start
    while True:
        idx = np.random.default_rng(step).choice(64, batch_size, replace=False)
        yield {"x": DATA[idx], "label": LABELS[idx]}
        step += 1


def components(conditional=False):
    net = TinyMLP()
    x, t = jnp.zeros((1, 2)), jnp.zeros((1,))
    cond = jnp.zeros((1,), jnp.int32) if conditional else None

    def apply(params, xt, t, cond, *, train, key):
        rngs = {"dropout": key} if train else {}
        return net.apply({"params": params}, xt, t, cond, train=train, rngs=rngs)

    return Components(
        init_params=lambda k: net.init(k, x, t, cond)["params"],
        apply=apply,
        process=vp(),
        loss=eps_mse,
        loss_kwargs={},
        batches=batches,
        data_key="x",
        example_shape=(2,),
    )


def tiny_spec(num_steps, conditional=False, **loop):
    c = default_config()
    c.data.batch_size = 8
    c.train.update(num_steps=num_steps, log_every=1, checkpoint_every=1, progress_bar=False, **loop)
    c.sample.num = 0
    c.ema.update(decay=0.9, warmup=True)
    c.optim.update(learning_rate=1e-2, warmup_steps=2)
    c.cond.update(class_conditional=conditional, num_classes=3, label_dropout=0.3)
    return spec_from_config(c)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_step_compiled_beside_the_init_is_the_jitted_step(tmp_path, monkeypatch, caplog):
    """A fresh run compiles its train step on a thread during the init (issue 15): the result
    is bit for bit that of the jitted step, and a failure there falls back to the jitted step
    (which then reports any real error itself)."""
    from diffjax.train import loop, step

    c = components()
    with caplog.at_level("INFO"):
        ahead = run_training(tiny_spec(4), c, str(tmp_path / "ahead"))
    assert "train step compiled beside the init" in caplog.text
    caplog.clear()
    calls = []
    make = step.make_train_step

    def failing(*args, **kwargs):
        fn = make(*args, **kwargs)

        def precompile(*a):
            calls.append(1)
            raise RuntimeError("no compiler today")

        fn.precompile = precompile
        return fn

    monkeypatch.setattr(loop, "make_train_step", failing)
    with caplog.at_level("WARNING"):
        jitted = run_training(tiny_spec(4), c, str(tmp_path / "jitted"))
    assert calls == [1] and "no compiler today" in caplog.text
    for a, b in zip(leaves(ahead), leaves(jitted), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("conditional", [False, True])
def test_resume_equals_uninterrupted(tmp_path, conditional):
    # The state is restored bit for bit (orbax writes the raw float32 bytes) and step n's key is
    # fold_in(step_key, n), data batch n depends on n only, and the same jitted program runs: so
    # the resumed run must reproduce the uninterrupted one exactly, not just to rounding.
    c = components(conditional)
    full = run_training(tiny_spec(6, conditional), c, str(tmp_path / "full"))
    run_training(tiny_spec(3, conditional), c, str(tmp_path / "split"))
    resumed = run_training(tiny_spec(6, conditional), c, str(tmp_path / "split"))
    assert int(resumed.step) == 6
    for a, b in zip(
        leaves((full.params, full.ema_params)),
        leaves((resumed.params, resumed.ema_params)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # the params moved and the EMA differs from them (so the comparison above is not vacuous)
    assert not np.allclose(leaves(full.params)[0], leaves(full.ema_params)[0])
    records = read_metrics(str(tmp_path / "split" / "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert os.path.exists(tmp_path / "split" / "loss.png")
    assert glob.glob(str(tmp_path / "split" / "tensorboard" / "events.*"))


def test_corrupt_latest_checkpoint_resumes_from_previous(tmp_path):
    c = components()
    full = run_training(tiny_spec(3), c, str(tmp_path / "full"))
    work = tmp_path / "work"
    run_training(tiny_spec(3), c, str(work))
    ckpt = work / CHECKPOINT_DIR
    # Corrupt step 3's array data (restore fails) and drop step 2's metadata (partial write).
    for f in glob.glob(str(ckpt / "3" / "state" / "d" / "*")):
        open(f, "wb").write(b"garbage")  # noqa: SIM115
    os.remove(ckpt / "2" / checkpoint.METADATA_FILE)
    resumed = run_training(tiny_spec(3), c, str(work))
    # both bad steps were moved aside, not deleted, and step 1 was the one resumed from
    assert (ckpt / "3.corrupt").is_dir() and (ckpt / "2.corrupt").is_dir()
    assert (
        open(glob.glob(str(ckpt / "3.corrupt" / "state" / "d" / "*"))[0], "rb").read() == b"garbage"
    )
    for a, b in zip(leaves(full.params), leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(ckpt))[:3] == ["1", "2", "2.corrupt"]


def test_learning_rate_warmup_and_clipping():
    spec = OptimSpec(learning_rate=1e-3, warmup_steps=4, grad_clip=1.0)
    lr = learning_rate_schedule(spec)
    np.testing.assert_allclose([lr(n) for n in range(6)], [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    # The first Adam step (bias-corrected m = g, v = g^2) moves each coordinate by
    # -lr(0) g / (|g| + eps), with g the gradient clipped to global norm 1 (Kingma & Ba, Alg. 1).
    tx = make_optimizer(spec)
    params = {"w": jnp.zeros(3)}
    g = np.array([30.0, -40.0, 0.5])
    grads = {"w": jnp.asarray(g, jnp.float32)}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = g / np.linalg.norm(g)
    np.testing.assert_allclose(updates["w"], -2.5e-4 * g / (np.abs(g) + 1e-8), rtol=1e-5)
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update(grads, clip.init(params))
    np.testing.assert_allclose(np.linalg.norm(clipped["w"]), 1.0, rtol=1e-6)


def test_ema_decay_warmup():
    spec = EmaSpec(decay=0.99, warmup=True)
    np.testing.assert_allclose(
        [float(ema_decay(spec, n)) for n in (0, 10, 1000)], [0.1, 11 / 20, 0.99], rtol=1e-6
    )
    assert float(ema_decay(EmaSpec(decay=0.5), 0)) == 0.5


def test_label_dropout_rate(key):
    # 20000 Bernoulli(0.25) draws: std of the rate is sqrt(.25 * .75 / 20000) = 0.0031; 5 sigma.
    labels = jnp.zeros((20000,), jnp.int32)
    out = drop_labels(key, labels, CondSpec(True, num_classes=7, label_dropout=0.25))
    assert set(np.unique(out)) == {0, 7}
    assert abs(float(jnp.mean(out == 7)) - 0.25) < 5 * 0.0031


def test_image_grid_upscales_and_tiles():
    images = np.stack([np.full((8, 8, 1), v, np.float32) for v in (-1.0, 1.0, 0.0)])
    grid = image_grid(images)
    assert grid.shape == (2 * 33 + 1, 2 * 33 + 1, 1)  # 2x2 tiles of 32x32 plus borders
    assert grid[1, 1, 0] == 0 and grid[1, 34, 0] == 255 and grid[34, 1, 0] == 128


def test_unknown_config_field_in_spec():
    c = default_config()
    c.optim.momentum = 0.9
    with pytest.raises(ValueError, match="momentum"):
        spec_from_config(c)


def test_config_json_saved_with_checkpoint(tmp_path):
    run_training(tiny_spec(1), components(), str(tmp_path), {"answer": 42})
    meta = glob.glob(str(tmp_path / CHECKPOINT_DIR / "1" / "config" / "*"))
    assert any(json.load(open(m)) == {"answer": 42} for m in meta if m.endswith("metadata"))
