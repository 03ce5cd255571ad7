"""Prompts and editing from the command line (launch/sample.py --prompt, --negative_prompt,
--init_image/--strength, --mask, --invert) end to end on tiny workdirs made here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffjax.train import edit_sample as es

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _experiment(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A one-step class-conditional 8x8 digits run (experiments/digits.py:quicktest)."""
    from diffjax.train.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("digits")
    train_and_evaluate(_experiment("digits.py").get_config("quicktest"), str(workdir))
    return str(workdir)


def _png(path, array):
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.full((8, 8), 255, np.uint8)
    mask[:, 4:] = 0  # keep the left half, generate the right half
    return {
        "init": _png(tmp_path / "init.png", rng.integers(0, 256, (8, 8))),
        "mask": _png(tmp_path / "mask.png", mask),
        "big": _png(tmp_path / "big.png", rng.integers(0, 256, (16, 16))),
        "out": str(tmp_path / "out"),
    }


@pytest.mark.parametrize(
    "req,match",
    [
        (es.EditRequest(strength=0.5), "--init_image"),
        (es.EditRequest(mask="m.png"), "--init_image"),
        (es.EditRequest(invert=True), "--init_image"),
        (es.EditRequest(init_image="a.png", strength=1.5), "strength"),
        (es.EditRequest(init_image="a.png", strength=0.5, mask="m.png"), "choose one"),
        (es.EditRequest(init_image="a.png", invert=True, prompts=("a", "b")), "at most one"),
        (es.EditRequest(num=0), "--num"),
        (es.EditRequest(prompts=(" ",)), "empty"),
    ],
)
def test_inconsistent_requests_are_refused_before_loading(req, match):
    with pytest.raises(ValueError, match=match):
        es.run_request("/nonexistent/workdir", req)


def test_pixel_run_bad_inputs_are_clear_errors(digits_run, images):
    bad = [
        (es.EditRequest(prompts=("a seven",)), "text conditioning"),
        (es.EditRequest(negative_prompt="a seven"), "text conditioning"),
        (es.EditRequest(init_image=images["big"], strength=0.5), "16x16 .* images are 8x8"),
        (es.EditRequest(init_image=images["init"], mask=images["big"]), "--mask=.*16x16"),
        (es.EditRequest(init_image="missing.png", strength=0.5), "no such file"),
        (es.EditRequest(class_label=10), "class_label=10"),
    ]
    run = es.load_run(digits_run)
    for req, match in bad:
        with pytest.raises(ValueError, match=match):
            es.run_request(digits_run, req, run)


def _init_pixels(path):
    return np.asarray(Image.open(path), np.float32)[..., None] / 255.0 * 2 - 1


def test_pixel_run_strength_zero_and_inpainting(digits_run, images):
    """Strength 0 returns the init image exactly (no model call); inpainting keeps the white
    half of the mask exactly and fills the black half."""
    pixels = _init_pixels(images["init"])
    req = dict(init_image=images["init"], num=2, out=images["out"], steps=4)
    out = es.run_request(digits_run, es.EditRequest(strength=0.0, **req))
    got = np.load(out["npz"])["samples"]
    assert got.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(got, np.broadcast_to(pixels, got.shape))
    out = es.run_request(digits_run, es.EditRequest(mask=images["mask"], **req))
    filled = np.load(out["npz"])["samples"]
    np.testing.assert_array_equal(filled[:, :, :4], np.broadcast_to(pixels[:, :4], (2, 8, 4, 1)))
    assert np.all(np.isfinite(filled)) and not np.allclose(filled[:, :, 4:], pixels[:, 4:])
    assert os.path.exists(out["png"])


@pytest.mark.slow
def test_pixel_run_sdedit_and_inversion(digits_run, images):
    """SDEdit at strength 0.6 gives finite edits of the image's shape; DDIM inversion with 3
    fixed-point iterations reconstructs the image (it inverts the sampler's own steps;
    measured rmse ~1e-7 on this model)."""
    req = dict(init_image=images["init"], out=images["out"])
    out = es.run_request(digits_run, es.EditRequest(strength=0.6, num=2, steps=4, **req))
    edited = np.load(out["npz"])["samples"]
    assert edited.shape == (2, 8, 8, 1) and np.all(np.isfinite(edited))
    out = es.run_request(
        digits_run, es.EditRequest(invert=True, invert_fixed_point=3, steps=8, **req)
    )
    assert out["latent_rmse"] < 1e-3 and out["pixel_rmse_vs_input"] < 1e-3, out
    rec = np.load(out["npz"])
    assert rec["noise"].shape == (1, 8, 8, 1) and rec["reconstruction"].shape == (1, 8, 8, 1)


def test_latent_mask_is_the_min_over_each_block():
    m = np.ones((8, 8), np.float32)
    m[0, 0] = 0.0  # one generated pixel: its whole 4x4 block is generated
    got = es.latent_mask(m, 4)
    np.testing.assert_array_equal(got[..., 0], [[0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="tile"):
        es.latent_mask(np.ones((6, 8)), 4)


def _run_sample(*args):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1"
    )
    cmd = [sys.executable, os.path.join(ROOT, "launch", "sample.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_sample_program_edit_flags(digits_run, images):
    """The flags reach edit_sample: --init_image with --strength=0 writes the image itself."""
    out = _run_sample(f"--workdir={digits_run}", f"--init_image={images['init']}",
                      "--strength=0", "--num=2", f"--out={images['out']}")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = np.load(os.path.join(images["out"], "sdedit_0.00_ddim_2.npz"))["samples"]
    np.testing.assert_array_equal(got, np.broadcast_to(_init_pixels(images["init"]), got.shape))


@pytest.mark.slow
def test_sample_program_refuses_a_prompt_without_text(digits_run):
    out = _run_sample(f"--workdir={digits_run}", "--prompt=a seven then a two")
    assert out.returncode != 0 and "text conditioning" in out.stderr, out.stderr[-2000:]


# ----------------------------------------------------------------------------- latent text runs
@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory):  # used by slow tests only
    """tests/test_ldm.py's runs: a one-step autoencoder on synthetic 8x8 IDX items, then a
    two-step text LDM on their 8x16 two-item canvases (f = 4: 2x4x4 latents)."""
    from diffjax.train.loop import train_and_evaluate
    from tests.test_autoencoder_train import ae_config, synthetic_idx
    from tests.test_ldm import ldm_config

    root = tmp_path_factory.mktemp("ldm")
    data = synthetic_idx(str(root / "idx"))
    train_and_evaluate(ae_config(data), str(root / "ae"))
    config = ldm_config(data, str(root / "ae"))
    config.train.num_steps = 2
    state = train_and_evaluate(config, str(root / "work"))
    return str(root / "work"), state


@pytest.fixture
def canvas_images(tmp_path):
    rng = np.random.default_rng(1)
    mask = np.full((8, 16), 255, np.uint8)
    mask[:, 8:] = 0  # keep the left item, generate the right one
    mask[0, 0] = 0  # one generated pixel: its whole 4x4 latent block is generated
    return {
        "init": _png(tmp_path / "canvas.png", rng.integers(0, 256, (8, 16))),
        "mask": _png(tmp_path / "mask.png", mask),
        "small": _png(tmp_path / "small.png", rng.integers(0, 256, (8, 8))),
        "out": str(tmp_path / "out"),
    }


@pytest.mark.slow  # trains an autoencoder and an LDM (minutes under load)
def test_latent_text_run_prompts_and_bad_inputs(ldm_run, canvas_images):
    """Several prompts (one grid row each), a negative prompt, and clear errors for a prompt
    longer than the context, a wrong-size init image and a class label on a text run."""
    work, _ = ldm_run
    imgs = canvas_images
    out = es.run_request(work, es.EditRequest(
        prompts=("a one to the left of a two", "three then four"), negative_prompt="five then five",
        guidance_scale=2.0, num=2, steps=2, out=imgs["out"]))  # fmt: skip
    data = np.load(out["npz"])
    assert data["samples"].shape == (4, 8, 16, 1) and np.all(np.isfinite(data["samples"]))
    assert data["latents"].shape == (4, 2, 4, 4)
    assert list(data["prompts"]) == ["a one to the left of a two", "three then four"]
    bad = [
        (es.EditRequest(prompts=(" ".join(["one"] * 40),)), "longer than the context"),
        (es.EditRequest(init_image=imgs["small"], strength=0.5), "8x8 .* images are 8x16"),
        (es.EditRequest(class_label=1), "--class_label"),
    ]
    run = es.load_run(work)
    for req, match in bad:
        with pytest.raises(ValueError, match=match):
            es.run_request(work, req, run)


@pytest.mark.slow  # trains an autoencoder and an LDM (minutes under load)
def test_latent_run_editing_in_latent_space(ldm_run, canvas_images):
    """Strength 0 is the autoencoder's round trip of the init image; the mask is taken to the
    latent grid by the min over 4x4 blocks and the kept latents are pasted exactly; DDIM
    inversion with fixed-point refinement reconstructs the latent."""
    from diffjax.train.latent import load_latent_run

    work, _ = ldm_run
    imgs = canvas_images
    run = load_latent_run(work)
    pixels = np.asarray(Image.open(imgs["init"]), np.float32)[None, ..., None] / 255.0 * 2 - 1
    z0 = np.asarray(run.encode(pixels))
    req = dict(init_image=imgs["init"], num=2, steps=2, out=imgs["out"], prompts=("one then two",))
    out = np.load(es.run_request(work, es.EditRequest(strength=0.0, **req))["npz"])
    np.testing.assert_allclose(out["latents"], np.broadcast_to(z0, (2, 2, 4, 4)), atol=1e-6)
    np.testing.assert_allclose(out["samples"][:1], np.asarray(run.decode(z0)), atol=1e-5)
    out = np.load(es.run_request(work, es.EditRequest(mask=imgs["mask"], **req))["npz"])
    np.testing.assert_array_equal(out["latent_mask"][..., 0], [[0, 1, 0, 0], [1, 1, 0, 0]])
    keep = out["latent_mask"][..., 0] > 0  # [2, 4]
    np.testing.assert_array_equal(out["latents"][:, keep], np.broadcast_to(z0[:, keep], (2, 3, 4)))
    req.update(num=1, steps=6)
    result = es.run_request(work, es.EditRequest(invert=True, invert_fixed_point=3, **req))
    assert result["latent_rmse"] < 1e-3, result
    assert np.isfinite(result["pixel_rmse_vs_input"])


@pytest.mark.slow  # trains an autoencoder and an LDM (minutes under load)
@pytest.mark.filterwarnings("ignore:feature_statistics")  # N = 6 << D
def test_adherence_report_on_a_latent_text_run(ldm_run, tmp_path):
    """The report runs end to end on a tiny run (its numbers are those of a 2-step model, so
    only their definitions are checked): chance levels, rates in [0, 1], both-in-order <=
    each position, one row per scale plus the zeroed-text row, and the negative rows."""
    from diffjax.train import adherence as adh

    work, _ = ldm_run
    report = adh.adherence_report(work, scales=(1.0, 3.0), num=6, cache_dir=str(tmp_path),
                                  negative_items=2, steps=2, classifier_steps=20)  # fmt: skip
    assert report["chance"]["accuracy"] == pytest.approx(1 / 100)
    assert [r["setting"] for r in report["rows"]] == ["prompt", "prompt", "text zeroed"]
    for r in report["rows"]:
        assert 0 <= r["accuracy"] <= min(r["left"], r["right"]) <= 1 and r["n"] == 6
        assert np.isfinite(r["fd_pairs"])
    assert len(report["negative"]) == 2 and report["negative"][0]["negative_prompt"] == (
        "zero then zero"
    )
    assert 0 <= report["classifier"]["held_out_accuracy"] <= 1
    assert os.path.isdir(tmp_path / "adherence_wide")  # the cached classifier
    assert "text zeroed" in adh.format_report(report)
