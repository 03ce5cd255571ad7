"""Every bad input is a clear error: a table of bad calls across the public API, the config
boundary and the launch programs. Each row asserts that the message names the offending value
and what was expected, and that it is raised by diffjax's own checks (the innermost frame is a
diffjax file, not JAX's tracing machinery) before any expensive work."""

from __future__ import annotations

import os
import subprocess
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import guidance, losses, processes, schedules
from diffjax.kernels import marginal, posterior
from diffjax.targets import convert
from diffjax.train import checkpoint
from diffjax.train.config import default_config
from diffjax.train.spec import spec_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)
X = jnp.ones((2, 3))
T = jnp.full((2,), 0.5)
VP = processes.vp()


def eps_model(x, t):
    return jnp.zeros_like(x)


def cond_model(x, t, c):
    return jnp.zeros_like(x)


def config(**changes):
    """The default config with `section.field=value` changes (fields that spec_from_config
    checks before opening any data)."""
    c = default_config()
    for field, value in changes.items():
        target = c
        *sections, name = field.split(".")
        for part in sections:
            target = target[part]
        target[name] = value
    return c


# (id, thunk, exception type(s), regex the message must match: the value and the expectation)
CASES = [
    # processes and schedules
    ("vp_beta_min_negative", lambda: processes.vp(beta_min=-0.1), ValueError, r"beta_min.*-0\.1"),
    ("vp_beta_nan", lambda: processes.vp(beta_max=float("nan")), ValueError, r"beta_max.*nan"),
    ("vp_beta_string", lambda: processes.vp(beta_min="0.1"), ValueError, r"beta_min.*'0\.1'"),
    ("ve_sigma_min_zero", lambda: processes.ve(sigma_min=0.0), ValueError, r"sigma_min.*0"),
    ("ve_swapped", lambda: processes.ve(sigma_min=50.0, sigma_max=0.01), ValueError, r"50"),
    ("subvp_negative", lambda: processes.subvp(beta_min=-1.0), ValueError, r"beta_min.*-1"),
    (
        "cosine_swapped_log_snr",
        lambda: processes.cosine(log_snr_min=20.0, log_snr_max=-20.0),
        ValueError,
        r"log_snr_min < log_snr_max.*20",
    ),
    ("cosine_s_negative", lambda: processes.cosine(s=-0.1), ValueError, r"s.*-0\.1"),
    ("ot_flow_sigma_min_1", lambda: processes.ot_flow(sigma_min=1.0), ValueError, r"sigma_min"),
    (
        "discrete_2d_betas",
        lambda: processes.discrete(np.full((10, 2), 0.01)),
        ValueError,
        r"1-D.*\(10, 2\)",
    ),
    ("discrete_negative_beta", lambda: processes.discrete([0.1, -0.2]), ValueError, r"-0\.2"),
    ("discrete_beta_above_1", lambda: processes.discrete([0.1, 1.5]), ValueError, r"1\.5"),
    ("unknown_process", lambda: processes.get_process("vpp"), ValueError, r"'vpp'.*vp"),
    ("linear_betas_T_0", lambda: schedules.linear_betas(0), ValueError, r"T.*0"),
    (
        "linear_betas_end_2",
        lambda: schedules.linear_betas(10, 1e-4, 2.0),
        ValueError,
        r"end = 2\.0",
    ),
    # kernels and targets
    ("marginal_t_above_1", lambda: marginal(KEY, VP, X, T * 3), ValueError, r"\[0, 1\].*1\.5"),
    (
        "marginal_t_shape",
        lambda: marginal(KEY, VP, X, jnp.full((3,), 0.5)),
        ValueError,
        r"\(batch,\).*\(3,\)",
    ),
    (
        "marginal_int_x0",
        lambda: marginal(KEY, VP, jnp.ones((2, 3), jnp.int32), T),
        TypeError,
        r"x0 must be a floating.*int32",
    ),
    (
        "posterior_s_after_t",
        lambda: posterior(VP, X, X, jnp.full((2,), 0.8), T),
        ValueError,
        r"s <= t.*0\.8",
    ),
    (
        "posterior_shape",
        lambda: posterior(VP, X, jnp.ones((2, 4)), T * 0.5, T),
        ValueError,
        r"\(2, 3\).*\(2, 4\)",
    ),
    (
        "convert_unknown_kind",
        lambda: convert(X, "eps", "noise", X, T, VP),
        ValueError,
        r"'noise'.*expected",
    ),
    (
        "convert_same_kind_shape",
        lambda: convert(X, "eps", "eps", jnp.ones((2, 4)), T, VP),
        ValueError,
        r"\(2, 3\) and \(2, 4\)",
    ),
    (
        "convert_same_kind_t",
        lambda: convert(X, "x0", "x0", X, T * 4, VP),
        ValueError,
        r"\[0, 1\].*2\.",
    ),
    # samplers
    (
        "sample_unknown_solver",
        lambda: diffjax.sample(KEY, eps_model, VP, (2, 3), solver="ddimm", steps=2),
        ValueError,
        r"'ddimm'",
    ),
    (
        "sample_steps_0",
        lambda: diffjax.sample(KEY, eps_model, VP, (2, 3), solver="ddim", steps=0),
        ValueError,
        r"steps.*>= 1.*0",
    ),
    (
        "sample_unknown_prediction",
        lambda: diffjax.sample(
            KEY, eps_model, VP, (2, 3), solver="ddim", steps=2, prediction="epsilon"
        ),
        ValueError,
        r"'epsilon'.*eps",
    ),
    (
        "sample_int_x_init",
        lambda: diffjax.sample(
            KEY, eps_model, VP, (2, 3), solver="ddim", steps=2, x_init=jnp.ones((2, 3), jnp.int32)
        ),
        TypeError,
        r"x_init.*int32",
    ),
    (
        "sample_unknown_option",
        lambda: diffjax.sample(KEY, eps_model, VP, (2, 3), solver="ddim", steps=2, etaa=0.5),
        ValueError,
        r"etaa",
    ),
    (
        "sample_t_max_above_1",
        lambda: diffjax.sample(KEY, eps_model, VP, (2, 3), solver="ddim", steps=2, t_max=1.5),
        ValueError,
        r"t_max.*1\.5",
    ),
    (
        "sample_ts_increasing",
        lambda: diffjax.sample(
            KEY, eps_model, VP, (2, 3), solver="ddim", ts=jnp.array([0.1, 0.5, 1.0])
        ),
        ValueError,
        r"decreasing",
    ),
    (
        "sample_model_output_shape",
        lambda: diffjax.sample(KEY, lambda x, t: x[:, :2], VP, (2, 3), solver="ddim", steps=2),
        ValueError,
        r"\(2, 2\).*\(2, 3\)",
    ),
    # guidance
    (
        "cfg_shapes_differ",
        lambda: guidance.cfg(
            cond_model, jnp.zeros((3,), jnp.int32), jnp.zeros((2,), jnp.int32), 2.0
        ),
        ValueError,
        r"\(3,\) and \(2,\)",
    ),
    (
        "cfg_structures_differ",
        lambda: guidance.cfg(cond_model, {"a": X}, X, 2.0),
        ValueError,
        r"same structure",
    ),
    # likelihood
    (
        "likelihood_nan_x",
        lambda: diffjax.likelihood(KEY, eps_model, VP, X.at[0, 1].set(jnp.nan)),
        ValueError,
        r"x must be finite.*1 NaN",
    ),
    (
        "likelihood_int_x",
        lambda: diffjax.likelihood(KEY, eps_model, VP, jnp.ones((2, 3), int)),
        ValueError,
        r"float.*int",
    ),
    (
        "likelihood_unknown_trace",
        lambda: diffjax.likelihood(KEY, eps_model, VP, X, trace="hutch"),
        ValueError,
        r"'hutch'",
    ),
    (
        "likelihood_rtol_0",
        lambda: diffjax.likelihood(KEY, eps_model, VP, X, rtol=0.0),
        ValueError,
        r"rtol.*0\.0",
    ),
    (
        "bits_per_dim_bins",
        lambda: diffjax.bits_per_dim(jnp.ones(2), (3,), num_bins=1),
        ValueError,
        r"num_bins.*1",
    ),
    # losses
    (
        "weighted_unknown_weighting",
        lambda: losses.weighted(eps_model, KEY, X, VP, weighting="snrr"),
        ValueError,
        r"'snrr'",
    ),
    (
        "weighted_unknown_prediction",
        lambda: losses.weighted(eps_model, KEY, X, VP, prediction="noise"),
        ValueError,
        r"'noise'",
    ),
    (
        "simple_x0_rank_1",
        lambda: losses.simple(eps_model, KEY, jnp.ones(3), VP),
        ValueError,
        r"x0 must have shape \[B, \.\.\.\].*\(3,\)",
    ),
    (
        "vlb_needs_discrete",
        lambda: losses.vlb(eps_model, KEY, X, VP),
        ValueError,
        r"discrete",
    ),
    # the config boundary (before any data is opened)
    (
        "config_batch_size_0",
        lambda: spec_from_config(config(**{"data.batch_size": 0})),
        ValueError,
        r"data\.batch_size = 0.*>= 1",
    ),
    (
        "config_checkpoint_every_0",
        lambda: spec_from_config(config(**{"train.checkpoint_every": 0})),
        ValueError,
        r"checkpoint_every = 0.*>= 1",
    ),
    (
        "config_log_every_0",
        lambda: spec_from_config(config(**{"train.log_every": 0})),
        ValueError,
        r"log_every = 0.*>= 1",
    ),
    (
        "config_lr_negative",
        lambda: spec_from_config(config(**{"optim.learning_rate": -1e-3})),
        ValueError,
        r"learning_rate = -0\.001.*>= 0",
    ),
    (
        "config_ema_decay_1",
        lambda: spec_from_config(config(**{"ema.decay": 1.0})),
        ValueError,
        r"ema\.decay = 1\.0.*\[0, 1\)",
    ),
    (
        "config_unknown_solver",
        lambda: spec_from_config(config(**{"sample.solver": "ddm"})),
        ValueError,
        r"sample\.solver = 'ddm'.*one of",
    ),
    (
        "config_unknown_prediction",
        lambda: spec_from_config(config(prediction="noise")),
        ValueError,
        r"prediction = 'noise'.*one of",
    ),
    (
        "config_unknown_sampler_option",
        lambda: spec_from_config(config(**{"sample.kwargs": {"etaa": 0.5}})),
        ValueError,
        r"etaa.*ddim",
    ),
    (
        "config_loss_prediction_clash",
        lambda: spec_from_config(config(prediction="v")),
        ValueError,
        r"'simple'.*'eps'.*'v'",
    ),
]


def innermost_is_diffjax(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}diffjax{os.sep}" in frames[-1].filename


@pytest.mark.parametrize("thunk, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(thunk, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        thunk()
    assert innermost_is_diffjax(info.value), traceback.format_tb(info.value.__traceback__)[-1]


def test_table_has_at_least_40_rows_with_unique_ids():
    ids = [c[0] for c in CASES]
    assert len(CASES) >= 40 and len(set(ids)) == len(ids)


def test_sample_kwargs_override_reaches_the_spec():
    # --config.sample.kwargs.eta=0.5 (launch/train.py accepts new keys in option dicts)
    c = config()
    c.sample.kwargs.eta = 0.5
    c.data.name, c.data.data_dir = "mnist_idx", "~/no-such-mnist-dir"
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        spec_from_config(c)  # the data dir is missing: '~' was expanded in the message
    assert os.path.expanduser("~/no-such-mnist-dir") in str(info.value)
    c.data.name, c.data.data_dir = "toy_ring", None
    assert spec_from_config(c).sample.kwargs == {"eta": 0.5}


# --- the launch programs (one subprocess each) ----------------------------------------------


def run(script, *args, timeout=240):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


TOY = os.path.join(ROOT, "experiments", "toy2d.py")


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
    """A 1-step toy2d run, trained in-process (train_and_evaluate)."""
    from diffjax.train.loop import train_and_evaluate
    from tests.helpers import config_from_file

    work = tmp_path_factory.mktemp("toy")
    train_and_evaluate(config_from_file(f"{TOY}:quicktest"), str(work))
    return work


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, pattern",
    [
        (
            "train.py",
            [
                "--config=experiments/digits.py:quicktest",
                "--config.data.name=mnist_idx",
                "--config.data.data_dir=/no/such/dir",
            ],
            r"/no/such/dir",
        ),
        (
            "train.py",
            [f"--config={TOY}:quicktest", "--workdir=nosuch://bucket/run"],
            r"unsupported filesystem scheme 'nosuch'",
        ),
        ("sample.py", ["--workdir=WORK_EMPTY"], r"not found.*diffjax training workdir"),
        ("evaluate.py", ["--workdir=WORK_EMPTY"], r"not found.*diffjax training workdir"),
    ],
)
def test_launch_programs_fail_clearly(tmp_path, script, args, pattern):
    args = [a.replace("WORK_EMPTY", str(tmp_path / "empty")) for a in args]
    if script == "train.py" and not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path / 'w'}")
    out = run(script, *args)
    assert out.returncode != 0
    assert __import__("re").search(pattern, out.stderr), out.stderr[-2000:]


@pytest.mark.slow
def test_launch_train_with_changed_config_is_one_message(toy_workdir, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(toy_workdir, work)
    out = run("train.py", f"--config={TOY}:quicktest", f"--workdir={work}", "--config.seed=5")
    assert out.returncode == 1
    assert "error: the config differs" in out.stderr and "seed: stored 0, now 5" in out.stderr
    assert "Traceback" not in out.stderr
    assert sorted(os.listdir(work / "checkpoints")) == ["1"]
    out = run("sample.py", f"--workdir={tmp_path / 'nothing'}")
    assert out.returncode != 0


def test_no_checkpoint_for_sampling_is_a_clear_error(tmp_path):
    os.makedirs(tmp_path / "checkpoints")
    abstract = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*checkpoints: train first"):
        checkpoint.restore_ema(str(tmp_path / "checkpoints"), abstract)
