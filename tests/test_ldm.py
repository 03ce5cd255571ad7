"""Latent diffusion with text on the training side: the LDM quicktest through the launcher
(latents encoded in the step, captions, decoded grid), the frozen autoencoder untouched by
training, the encoding and caption dropout of `prepare` against an independent computation,
the cache option, `load_latent_run`, and clear mismatch errors. Synthetic 8x8 IDX items and a
one-step 8-channel autoencoder (f = 4: 2x4x4 latents of the 8x16 two-item canvases)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.train.builders import build_components
from diffjax.train.components import make_loss_fn
from diffjax.train.latent import AE_KEY, LATENT_INFO_FILE, load_latent_run, make_prepare
from diffjax.train.loop import train_and_evaluate
from diffjax.train.spec import spec_from_config
from tests.helpers import tree_hash
from tests.test_autoencoder_train import ae_config, load_experiment, synthetic_idx

# Every test here needs a trained autoencoder workdir (the module fixture trains one for one
# step, then a 2-step LDM): 63 s of fixtures and up to 69 s per test measured on 2 shared cores
# at load 6-9, so the module is in the slow suite (-m slow). The default suite trains, resumes,
# samples (decoded) and evaluates the same quicktests in tests/test_latent_eval.py.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """(data dir, workdir) of a one-step autoencoder run on synthetic 8x8 items."""
    root = tmp_path_factory.mktemp("ldm")
    data = synthetic_idx(str(root / "idx"))
    work = str(root / "ae")
    train_and_evaluate(ae_config(data), work)
    return data, work


def ldm_config(data: str, ae_workdir: str, arg: str = "quicktest"):
    c = load_experiment("ldm").get_config(arg)
    c.data.data_dir = data
    c.data.prefetch = 0
    c.autoencoder.workdir = ae_workdir
    c.model.kwargs.attn_resolutions = (2,)  # 2x4 latents of the 8x16 canvases
    return c


@pytest.fixture(scope="module")
def ldm_run(ae_run, tmp_path_factory):
    """A two-step text LDM run drawing a 4-image decoded grid (the quicktest, grid on)."""
    data, ae_work = ae_run
    config = ldm_config(data, ae_work)
    config.train.num_steps = 2
    config.sample.update(num=4, steps=2)
    work = str(tmp_path_factory.mktemp("ldm_run") / "work")
    before = tree_hash(ae_work)
    state = train_and_evaluate(config, work)
    assert tree_hash(ae_work) == before  # the autoencoder's workdir is read-only
    return work, state


def test_ldm_quicktest_with_text_trains_on_latents_and_writes_a_decoded_grid(ldm_run):
    work, state = ldm_run
    assert int(state.step) == 2
    assert set(state.params) == {"denoiser", "encoder"}  # text encoder trained jointly
    info = json.load(open(os.path.join(work, LATENT_INFO_FILE)))
    assert info["latent"]["latent_shape"] == [2, 4, 4] and info["latent"]["image_shape"] == [
        8,
        8,
        1,
    ]
    assert json.load(open(os.path.join(work, "run_info.json")))["example_shape"] == [2, 4, 4]
    assert len(info["text"]["grid_captions"]) == 4
    from PIL import Image

    grid = np.asarray(Image.open(os.path.join(work, "samples_0000002.png")))
    # decoded images: one grey channel (latents have 4), tiles twice as wide as high (8x16)
    assert grid.ndim == 2 and grid.shape[1] > 1.8 * grid.shape[0]


def test_frozen_autoencoder_params_are_unchanged_by_training_steps(ae_run):
    from diffjax import parallel
    from diffjax.train.optim import make_optimizer
    from diffjax.train.state import create_train_state
    from diffjax.train.step import make_train_step

    data, ae_work = ae_run
    spec = spec_from_config(ldm_config(data, ae_work))
    c = build_components(spec)
    frozen_before = jax.tree.map(np.array, c.frozen[AE_KEY])
    tx = make_optimizer(spec.optim)
    state = create_train_state(jax.random.PRNGKey(0), c.init_params, tx)
    assert "autoencoder" not in state.params and "autoencoder" not in str(
        jax.tree_util.tree_structure(state.opt_state)
    )
    params_before = jax.tree.map(np.array, state.params)
    step = make_train_step(make_loss_fn(c, spec.cond), tx, spec.ema, parallel.make_mesh(), c.frozen)
    batches = c.batches(0)
    # three steps: the U-Net's zero-initialised output, residual and attention projections pass
    # no gradient to the text encoder before the second update
    for _ in range(3):
        state, metrics = step(state, next(batches), jax.random.PRNGKey(1))
    assert np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, c.frozen[AE_KEY], frozen_before)
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, params_before)
    assert (
        max(jax.tree.leaves(moved["encoder"])) > 0 and max(jax.tree.leaves(moved["denoiser"])) > 0
    )


def test_prepare_encodes_scales_and_drops_captions(ae_run):
    # x0 = scale * (mean + std eps) with the key `prepare` splits, computed here independently
    # from the autoencoder's moments; dropped captions are exactly the null caption.
    data, ae_work = ae_run
    config = ldm_config(data, ae_work)
    config.text.caption_dropout = 0.5
    spec = spec_from_config(config)
    c = build_components(spec)
    batch = next(c.batches(0))
    key = jax.random.PRNGKey(7)
    out, frozen, tokens = make_prepare(spec)(c.frozen, key, batch)
    assert AE_KEY not in frozen and "tokens" not in out
    moments = spec.latent.module.apply(
        {"params": c.frozen[AE_KEY]}, jnp.asarray(batch["image"]), method="encode"
    )
    z_key, drop_key = jax.random.split(key)
    eps = jax.random.normal(z_key, moments.mean.shape)
    expected = spec.latent.scale_factor * (moments.mean + np.exp(0.5 * moments.logvar) * eps)
    np.testing.assert_allclose(out["image"], expected, rtol=1e-5, atol=1e-6)
    drop = np.asarray(jax.random.bernoulli(drop_key, 0.5, (8,)))
    null = spec.text.tokenizer.encode("")
    np.testing.assert_array_equal(
        np.asarray(tokens)[drop], np.broadcast_to(null, (drop.sum(), len(null)))
    )
    np.testing.assert_array_equal(np.asarray(tokens)[~drop], batch["tokens"][~drop])


def test_cache_gives_the_moments_of_on_the_fly_encoding(ae_run):
    data, ae_work = ae_run
    config = ldm_config(data, ae_work)
    spec_fly = spec_from_config(config)
    config.autoencoder.cache = True
    spec_cache = spec_from_config(config)
    fly, cached = build_components(spec_fly), build_components(spec_cache)
    b_fly, b_cache = next(fly.batches(3)), next(cached.batches(3))
    assert "moments" in b_cache and "image" not in b_cache
    np.testing.assert_array_equal(b_fly["tokens"], b_cache["tokens"])
    key = jax.random.PRNGKey(0)
    x_fly = make_prepare(spec_fly)(fly.frozen, key, b_fly)[0]["image"]
    x_cache = make_prepare(spec_cache)(cached.frozen, key, b_cache)[0]["image"]
    np.testing.assert_allclose(x_cache, x_fly, rtol=1e-5, atol=1e-5)


def test_load_latent_run_interface(ldm_run):
    work, _ = ldm_run
    run = load_latent_run(work)
    assert run.step == 2 and run.latent_shape == (2, 4, 4) and run.image_shape == (8, 16, 1)
    images = jnp.zeros((3, 8, 16, 1))
    z = run.encode(images)
    assert z.shape == (3, 2, 4, 4)
    assert run.decode(z).shape == (3, 8, 16, 1)
    tokens = run.tokenize(["a seven to the left of a two", "zebra then one"])
    assert tokens.shape == (2, run.tokenizer.context_length) and tokens.dtype == np.int32
    assert tokens[1, 1] == run.tokenizer.unk_id  # unknown word -> <unk>
    with pytest.raises(ValueError, match="longer than the context length"):
        run.tokenize([" ".join(["one"] * 40)])
    null = run.null_cond(3)
    np.testing.assert_array_equal(null[0], run.tokenizer.encode(""))
    t = jnp.full((2,), 0.5)
    out = run.model()(z[:2], t, jnp.asarray(tokens))
    assert out.shape == (2, 2, 4, 4)
    zeroed = run.model(context_scale=0.0)(z[:2], t, jnp.asarray(tokens))
    uncond_zeroed = run.model(context_scale=0.0)(z[:2], t, null[:2])
    np.testing.assert_allclose(zeroed, uncond_zeroed, rtol=1e-5, atol=1e-6)  # text ignored
    with pytest.raises(ValueError, match=r"images must be \[B, 8, 16, 1\]"):
        run.encode(jnp.zeros((1, 8, 8, 1)))


def test_autoencoder_mismatches_are_clear_errors(ae_run, tmp_path):
    data, ae_work = ae_run
    no_scale = str(tmp_path / "ae_no_scale")
    shutil.copytree(ae_work, no_scale)
    os.remove(os.path.join(no_scale, "latent_scale.json"))
    with pytest.raises(ValueError, match="has no latent_scale.json"):
        spec_from_config(ldm_config(data, no_scale))
    config = ldm_config(data, no_scale)
    config.autoencoder.scale_factor = 0.5  # a configured factor replaces the missing one
    assert spec_from_config(config).latent.scale_factor == 0.5

    config = ldm_config(data, ae_work)
    config.model.kwargs.in_channels = 3
    with pytest.raises(ValueError, match="in_channels = 3 but the denoiser's inputs have 4"):
        spec_from_config(config)
    config = ldm_config(data, ae_work)
    config.data.image_size = 10
    with pytest.raises(ValueError, match="sides divisible by f=4"):
        spec_from_config(config)
    config = ldm_config(data, ae_work)
    config.model.kwargs.context_dim = 7
    with pytest.raises(ValueError, match="context_dim = 7 but the text encoder's width is 16"):
        spec_from_config(config)
    with pytest.raises(ValueError, match="autoencoder.workdir = '<set"):
        spec_from_config(load_experiment("ldm").get_config("quicktest"))
    config = ldm_config(data, ae_work)
    config.autoencoder.kl_weight = 1.0
    with pytest.raises(ValueError, match="autoencoder-training fields belong"):
        spec_from_config(config)


def test_training_the_autoencoder_further_does_not_change_a_trained_latent_run(ae_run, tmp_path):
    """The LDM records the autoencoder checkpoint it trained against and keeps using it (on
    resume and in load_latent_run) after the autoencoder run has moved on."""
    from diffjax.train.autoencoder import load_autoencoder

    data, ae_work = ae_run
    ae_copy = str(tmp_path / "ae")
    shutil.copytree(ae_work, ae_copy)
    config = ldm_config(data, ae_copy)
    work = str(tmp_path / "ldm")
    train_and_evaluate(config, work)
    with open(os.path.join(work, LATENT_INFO_FILE)) as f:
        pinned = json.load(f)["latent"]["autoencoder_step"]
    _, at_pinned, _ = load_autoencoder(ae_copy, step=pinned)
    more = ae_config(data)
    more.train.num_steps = pinned + 1
    more.train.keep_checkpoints = 3  # keep the pinned one (rotated out: a clear error instead)
    train_and_evaluate(more, ae_copy)  # the autoencoder trains one more step
    _, newest, newest_step = load_autoencoder(ae_copy)

    def same(a, b):
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return all(np.array_equal(x, y) for x, y in pairs)

    assert newest_step == pinned + 1 and not same(newest, at_pinned)
    run = load_latent_run(work)
    assert same(run.autoencoder_params, at_pinned)
    config.train.num_steps = 2  # a resumed run keeps the pinned autoencoder too
    train_and_evaluate(config, work)
    with open(os.path.join(work, LATENT_INFO_FILE)) as f:
        assert json.load(f)["latent"]["autoencoder_step"] == pinned
    config.autoencoder.step = pinned + 1
    with pytest.raises(ValueError, match="was trained against autoencoder checkpoint"):
        train_and_evaluate(config, work)
