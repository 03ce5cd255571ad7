"""The autoencoder -> latent diffusion quicktests in the default suite, and sampling and evaluating
a latent run on DECODED images (what launch/sample.py and launch/evaluate.py do without
prompts: `latent.load_for_sampling`, `LatentRun.sampler`, `evaluate.evaluate_solvers(run=...)`).

One module fixture trains the experiments' quicktest configs on synthetic 8x8 IDX items: the
autoencoder (experiments/autoencoder.py:quicktest, 8 channels, one step; f = 4) and the text LDM
(experiments/ldm.py:quicktest, one step, then resumed to two) on 2x4x4 latents of 8x16 two-item
canvases, with a 4-image decoded grid. Every assertion below that names a shape would fail if
latents (2x4x4, four channels) were passed where images (8x16, one channel) belong.

The launchers themselves (subprocesses) and the ldm256 preset's parameter count are in the slow
suite (-m slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffjax.train import evaluate, latent, sampling
from diffjax.train.loop import train_and_evaluate
from diffjax.train.writers import read_metrics
from tests.helpers import install_path_guard
from tests.test_autoencoder_train import ae_config, load_experiment, synthetic_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = (8, 16, 1)  # a decoded two-item canvas
LATENT = (2, 4, 4)  # its latent


def ldm_config(data: str, ae_workdir: str, arg: str = "quicktest"):
    c = load_experiment("ldm").get_config(arg)
    c.data.data_dir = data
    c.data.prefetch = 0
    c.autoencoder.workdir = ae_workdir
    # 2x4 latents of the 8x16 canvases; the text reaches the U-Net through the mid block's
    # cross-attention and the pooled embedding only (fewer blocks to trace: a faster test)
    c.model.kwargs.attn_resolutions = ()
    c.sample.update(num=4, steps=2)  # a decoded 4-image grid at the end of a run
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(data dir, autoencoder workdir, LDM workdir, LDM config): the quicktests trained, the
    LDM for one step (no grid) and then resumed to step two (with the decoded grid)."""
    root = tmp_path_factory.mktemp("latent_eval")
    data = synthetic_idx(str(root / "idx"))
    ae, ldm = str(root / "ae"), str(root / "ldm")
    train_and_evaluate(ae_config(data), ae)  # one step
    config = ldm_config(data, ae)
    config.sample.num = 0
    train_and_evaluate(config, ldm)  # one step
    config.train.num_steps, config.sample.num = 2, 4
    state = train_and_evaluate(config, ldm)  # resumed
    assert int(state.step) == 2
    return data, ae, ldm, config


@pytest.fixture(scope="module")
def loaded(runs):
    """latent.load_for_sampling of the LDM run, shared so its sampler's trace is reused."""
    return latent.load_for_sampling(runs[2])


def test_quicktests_train_resume_and_write_a_decoded_grid(runs):
    _, ae, ldm, _ = runs
    for name in ("latent_scale.json", "reconstructions.png", "checkpoints"):
        assert os.path.exists(os.path.join(ae, name)), name
    assert [r["step"] for r in read_metrics(os.path.join(ldm, "metrics.jsonl"))] == [1, 2]
    assert sorted(os.listdir(os.path.join(ldm, "checkpoints"))) == ["2"]
    info = latent.read_latent_info(ldm)
    assert info["latent"]["latent_shape"] == list(LATENT)
    assert info["latent"]["autoencoder_step"] == 1
    # the grid of decoded canvases: 4 tiles of 8x16 grey images (latents would be 2x4 RGBA)
    grid = np.asarray(Image.open(os.path.join(ldm, "samples_0000002.png")))
    assert grid.ndim == 2, grid.shape
    assert grid.shape[1] > 1.8 * grid.shape[0]


# ---------------------------------------------------------------------------- the path layer
@pytest.fixture
def guard(monkeypatch):
    """(watch(folder), violations): open / os.* / os.path.* calls on a watched folder made
    directly by diffjax or launch code (not through diffjax/train/paths.py)."""
    watched: list[str] = []
    violations = install_path_guard(monkeypatch, watched)
    return watched.append, violations


def test_guard_sees_direct_calls(guard, tmp_path):
    watch, violations = guard
    watch(tmp_path)
    code = compile("import os\nos.path.exists(W)", "<diffjax-probe>", "exec")
    exec(code, {"__name__": "diffjax.probe", "W": str(tmp_path)})  # noqa: S102
    assert violations == [f"os.path.exists({str(tmp_path)!r}) from diffjax.probe:2"]


def test_sampling_a_latent_run_decodes_with_the_pinned_autoencoder(
    runs, loaded, guard, tmp_path, monkeypatch
):
    from diffjax import parallel

    _, _, ldm, _ = runs
    watch, violations = guard
    out = tmp_path / "out"
    watch(ldm)
    watch(out)
    # what launch/sample.py does without prompts; the decoder spied on: its inputs are latents
    decoded = []
    real_decode = latent.make_decode

    def spy_decode(lat):
        fn = real_decode(lat)
        return lambda p, z: decoded.append((p, z)) or fn(p, z)

    monkeypatch.setattr(latent, "make_decode", spy_decode)
    spec, c, state, run = loaded
    assert latent.is_latent_workdir(ldm) and run is not None
    assert tuple(c.example_shape) == LATENT and run.image_shape == IMAGE
    stored = latent.read_latent_info(ldm)["latent"]
    assert run.spec.latent.scale_factor == stored["scale_factor"] == run.scale_factor
    assert run.spec.latent.step == stored["autoencoder_step"]
    sspec = dataclasses.replace(spec.sample, num=4, steps=2)
    images = np.asarray(run.sampler(sspec, 4)(state.ema_params, jax.random.PRNGKey(3)))
    assert images.shape == (4, *IMAGE)
    # an independent second computation of the decoding: LatentRun.decode (its own jitted
    # decoder, the scale factor of latent_info.json) of the latents the sampler drew
    ((params, z),) = decoded
    assert z.shape == (4, *LATENT)
    assert params is run.autoencoder_params
    np.testing.assert_allclose(images, np.asarray(run.decode(z)), rtol=1e-5, atol=1e-5)
    stem = str(out / "samples_ddim_2")
    sampling.write_sample_files(stem, images, c, step=state.step)
    assert np.load(stem + ".npz")["samples"].shape == (4, *IMAGE)
    grid = np.asarray(Image.open(stem + ".png"))
    assert grid.ndim == 2  # grey decoded canvases (4-channel latents could not be grey)
    with pytest.raises(ValueError, match=r"caption tokens must be \[num=4, L\]"):
        run.sampler(sspec, 4, tokens=np.zeros((3, run.tokenizer.context_length), np.int32))
    # a secondary process samples too, but writes nothing
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    sampling.write_sample_files(str(out / "other"), images, c, step=state.step)
    assert sorted(os.listdir(out)) == ["samples_ddim_2.npz", "samples_ddim_2.png"]
    assert violations == []


def test_evaluate_compares_decoded_images_with_real_compositions(runs, loaded, guard, monkeypatch):
    from diffjax import parallel

    _, _, ldm, _ = runs
    watch, violations = guard
    watch(ldm)
    spec, c, state, run = loaded
    seen = []
    real_metrics = evaluate.image_metrics

    def spy(key, samples, data, *args, **kwargs):
        seen.append((np.shape(samples), np.shape(data), float(np.min(data)), float(np.max(data))))
        return real_metrics(key, samples, data, *args, **kwargs)

    monkeypatch.setattr(evaluate, "image_metrics", spy)
    num, small = 4, {"num_train": 64, "steps": 20, "batch_size": 16}  # a quick classifier
    rows = evaluate.evaluate_solvers(
        jax.random.PRNGKey(0), spec, c, state, [("ddim", 2)], num, False, ldm, run=run,
        classifier_options=small,
    )  # fmt: skip
    # pixel-space arrays of the data's shape on both sides: the real compositions are 8x16
    # canvases in [-1, 1] (the synthetic items hold 0 and 255)
    assert seen == [((num, *IMAGE), (num, *IMAGE), -1.0, 1.0)]
    (row,) = rows
    assert np.isfinite(row["sw_pixels"]) and row["sw_pixels"] > 0
    assert np.isfinite(row["fd_classifier"]) and row["fd_classifier"] >= 0
    # the cached reference statistics of the compositions: both halves' features (F = 128 each,
    # classifier.train_classifier's default hidden width), through the path layer
    stats = np.load(os.path.join(ldm, f"pairs_wide_classifier_stats_{num}.npz"))
    assert stats["mu"].shape == (2 * 128,) and stats["sigma"].shape == (256, 256)
    real, tokens = latent.evaluation_examples(spec, num, seed=0)
    assert real.shape == (num, *IMAGE) and tokens.shape == (num, run.tokenizer.context_length)
    # latents where images belong: refused, naming both shapes
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4\) cannot be compared .* \(8, 16, 1\)"):
        evaluate.check_same_shape(np.zeros((num, *LATENT)), real)
    assert violations == []
    # a secondary process computes the statistics but writes no cache
    monkeypatch.setattr(parallel, "is_primary", lambda: False)
    x = np.random.default_rng(0).normal(size=(6, 3))
    mu, _ = evaluate.reference_statistics(os.path.join(ldm, "w"), "x", lambda a: a, x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    assert not os.path.exists(os.path.join(ldm, "w"))


# ---------------------------------------------------------------------------- slow: launchers
def _launch(script, *args, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")  # fmt: skip
    cmd = [sys.executable, os.path.join(ROOT, "launch", script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # two launcher subprocesses: their start-up and compiles, 30-60 s under load
def test_sample_and_evaluate_programs_on_a_latent_run(runs, loaded, tmp_path):
    _, _, ldm, _ = runs
    out = _launch("sample.py", f"--workdir={ldm}", "--num=4", "--steps=2", f"--out={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    data = np.load(tmp_path / "samples_ddim_2.npz")
    assert data["samples"].shape == (4, *IMAGE) and np.all(np.isfinite(data["samples"]))
    assert list(data["captions"]) == latent.grid_captions(4, loaded[3].text)
    grid = np.asarray(Image.open(tmp_path / "samples_ddim_2.png"))
    assert grid.ndim == 2  # grey decoded canvases
    out = _launch("evaluate.py", f"--workdir={ldm}", "--solvers=ddim:2", "--num=8",
                  "--noinception")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(os.path.join(ldm, "eval_0000002.json")))
    (row,) = result["rows"]
    assert row["num"] == 8 and np.isfinite(row["fd_classifier"]) and row["sw_pixels"] > 0
    out = _launch("evaluate.py", f"--workdir={ldm}", "--solvers=ddim:2", "--num=8",
                  "--noinception", "--elbo_num=4")  # fmt: skip
    assert out.returncode != 0 and "--elbo_num" in out.stderr


# ---------------------------------------------------------------------------- slow: ldm256
# Stable Diffusion v1's U-Net: 859.52M parameters (model card; Rombach et al. 2022), exactly
# 859,520,964. It has cross-attention to 768-wide CLIP token states in all 16 transformer blocks
# (down 2 x {320, 640, 1280}, mid 1280, up 3 x {1280, 640, 320}); ldm256 is unconditional.
SD_V1_UNET = 859_520_964
SD_TRANSFORMER_WIDTHS = (320,) * 5 + (640,) * 5 + (1280,) * 6


def _unet_count(**extra) -> int:
    from diffjax.models.unet import UNet

    kwargs = dict(load_experiment("ldm").get_config("preset=ldm256").model.kwargs)
    net = UNet(in_channels=4, **kwargs, **extra)  # kl-f8 latents: 32x32x4 for 256x256 images
    x, t = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,))
    ctx = None if "context_dim" not in extra else jnp.zeros((1, 77, extra["context_dim"]))
    shapes = jax.eval_shape(lambda k: net.init(k, x, t, ctx), jax.random.PRNGKey(0))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


@pytest.mark.slow  # two abstract inits of ~0.8B-parameter nets: 8-20 s of tracing
def test_ldm256_unet_parameter_count_against_stable_diffusion_v1():
    """Our transformer block differs from SD's in two places, each an exact count per block of
    width c: SD's feed-forward is GEGLU, Dense(c, 8c) then Dense(4c, c), ours Dense(c, 4c) then
    Dense(4c, c): SD has 4c^2 + 4c more; SD's q, k, v projections have no bias, ours do: SD has
    6c fewer (self- and cross-attention). The rest (ResBlocks, GroupNorm + 1x1 proj_in /
    proj_out, LayerNorms, cross-attention k, v of 768 inputs, time embedding 320 -> 1280) is
    the same, so the context_dim=768 variant plus sum(4c^2 - 2c) must be SD's count EXACTLY."""
    ours = _unet_count()
    with_context = _unet_count(context_dim=768)
    derived = with_context + sum(4 * c * c - 2 * c for c in SD_TRANSFORMER_WIDTHS)
    assert derived == SD_V1_UNET
    assert abs(derived / 1e6 - 859.52) < 0.005  # the published 859.52M, to its rounding
    # the unconditional preset (641,918,084 measured) has a plain attention block (GroupNorm,
    # q, k, v, out) where the variant has a transformer block; per block of width c the variant
    # adds proj_in, proj_out (c^2 + c each), three LayerNorms (2c each), cross-attention (q, out:
    # c^2 + c each; k, v: 768 c + c each) and the MLP (c -> 4c -> c: 8c^2 + 5c)
    assert with_context - ours == sum(12 * c * c + 1553 * c for c in SD_TRANSFORMER_WIDTHS)
