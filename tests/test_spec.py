"""spec_from_config: the config converted once into built objects, one prediction kind for the
loss and the sampler, and every checkable field validated before any work."""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from diffjax import processes
from diffjax.kernels import bcast
from diffjax.train.config import default_config
from diffjax.train.loop import train_and_evaluate
from diffjax.train.spec import ExampleSpec, spec_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "experiments", "toy2d.py")
POINTS = ExampleSpec(shape=(2,), key="x")


def toy_config():
    """experiments/toy2d.py:quicktest, loaded the way launch/train.py loads it."""
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=fv)
    fv(["prog", f"--config={TOY}:quicktest"])
    return holder.value


def test_spec_holds_built_objects():
    spec = spec_from_config(toy_config())  # opens the toy source once for the example shape
    assert isinstance(spec.process, processes.Process)
    assert spec.example == POINTS
    assert type(spec.model).__name__ == "MLP" and spec.model.hidden == 16
    assert spec.loss.func.__name__ == "simple" and spec.loss.keywords == {}
    assert spec.data.batch_size == 8 and spec.data.name == "toy_ring"
    np.testing.assert_allclose(
        float(spec.process.alpha(0.5) ** 2 + spec.process.sigma(0.5) ** 2), 1
    )


def oracle(kind, x0, process):
    """A model that outputs the exact `kind` target of the x_t it is given (it knows x0)."""

    def model(x_t, t, cond=None):
        a, s = bcast(process.alpha(t), x0), bcast(process.sigma(t), x0)
        eps = (x_t - a * x0) / s
        return {"eps": eps, "v": a * eps - s * x0}[kind]

    return model


def test_prediction_v_with_weighted_trains_a_v_model():
    # The loss's kind is the config's: the exact v of each x_t has zero loss (to rounding) and
    # the exact eps has the loss E (v - eps)^2 > 0, so a loss that still trained eps would fail.
    c = toy_config()
    c.prediction, c.loss.name = "v", "weighted"
    spec = spec_from_config(c, POINTS)
    assert spec.loss.keywords["prediction"] == "v" == spec.prediction
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    t = jnp.linspace(0.05, 0.95, 64)
    key = jax.random.PRNGKey(1)
    loss_v, _ = spec.loss(oracle("v", x0, spec.process), key, x0, spec.process, t=t)
    loss_eps, _ = spec.loss(oracle("eps", x0, spec.process), key, x0, spec.process, t=t)
    assert float(loss_v) < 1e-10
    assert float(loss_eps) > 0.1


@pytest.mark.parametrize(
    "prediction,loss,loss_kwargs,match",
    [
        ("x0", "simple", {}, "loss 'simple' trains a 'eps' model but config.prediction = 'x0'"),
        ("eps", "cfm", {}, "loss 'cfm' trains a 'velocity' model but config.prediction = 'eps'"),
        ("v", "dsm", {}, "loss 'dsm' trains a 'score' model"),
        ("v", "weighted", {"prediction": "eps"}, "loss.kwargs.prediction = 'eps' contradicts"),
    ],
)
def test_contradictory_prediction_raises_before_training(
    tmp_path, prediction, loss, loss_kwargs, match
):
    c = toy_config()
    c.prediction, c.loss.name = prediction, loss
    c.loss.kwargs = loss_kwargs
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(c, str(work))
    assert not work.exists()  # nothing written: no config.json, no checkpoint


def override(*args):
    """The toy config with command-line overrides, parsed as launch/train.py parses them."""
    argv = ["prog", f"--config={TOY}:quicktest", *args]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file(
        "config", flag_values=fv, lock_config=False, accept_new_attributes=True, sys_argv=argv
    )
    fv(argv)
    return holder.value


def test_option_dicts_take_command_line_overrides():
    c = override("--config.sample.solver=ddim", "--config.sample.kwargs.eta=0.5")
    spec = spec_from_config(c, POINTS)
    assert spec.sample.kwargs == {"eta": 0.5}
    c = override("--config.loss.name=weighted", "--config.loss.kwargs.weighting=snr")
    assert spec_from_config(c, POINTS).loss.keywords == {"prediction": "eps", "weighting": "snr"}
    with pytest.raises(ValueError, match=r"\['etaa'\].*sample.kwargs for solver 'ddim'"):
        spec_from_config(override("--config.sample.solver=ddim", "--config.sample.kwargs.etaa=1"))


def test_data_dir_tilde_is_expanded():
    c = default_config()
    c.data.data_dir = "~/some_data"
    spec = spec_from_config(c, ExampleSpec(shape=(8, 8, 1)))
    assert spec.data.data_dir == os.path.join(os.path.expanduser("~"), "some_data")
    assert spec.model.in_channels == 1  # filled in from the example


# (field path, bad value, text the message must contain): each one a clear ValueError from
# spec_from_config, before any data is opened (no example is passed, and the data source is
# an MNIST folder that does not exist: reaching the data would raise a different error).
BAD_FIELDS = [
    ("sample.solver", "ddimm", "config.sample.solver = 'ddimm'"),
    ("prediction", "noise", "config.prediction = 'noise'"),
    ("optim.learning_rate", -1e-3, "config.optim.learning_rate = -0.001"),
    ("optim.name", "sgd", "config.optim.name = 'sgd'"),
    ("ema.decay", 1.0, "config.ema.decay = 1.0"),
    ("ema.decay", -0.1, "config.ema.decay = -0.1"),
    ("train.checkpoint_every", 0, "config.train.checkpoint_every = 0"),
    ("train.log_every", 0, "config.train.log_every = 0"),
    ("train.num_steps", -1, "config.train.num_steps = -1"),
    ("train.keep_checkpoints", 0, "config.train.keep_checkpoints = 0"),
    ("data.batch_size", 0, "config.data.batch_size = 0"),
    ("sample.steps", -2, "config.sample.steps = -2"),
    ("cond.label_dropout", 1.0, "config.cond.label_dropout = 1.0"),
    ("loss.name", "l2", "unknown loss 'l2'"),
    ("train.grad_accum", 0, "config.train.grad_accum = 0"),
    ("train.grad_accum", 3, "config.data.batch_size = 128: expected a multiple of config.train."
     "grad_accum = 3"),
    ("train.steps_per_call", 0, "config.train.steps_per_call = 0"),
    ("train.compute_dtype", "float16", "config.train.compute_dtype = 'float16'"),
    ("train.nonfinite", "ignore", "config.train.nonfinite = 'ignore'"),
    ("train.max_skipped", -1, "config.train.max_skipped = -1"),
]  # fmt: skip


@pytest.mark.parametrize("field,value,message", BAD_FIELDS)
def test_bad_field_is_a_clear_error_before_any_work(tmp_path, field, value, message):
    c = default_config()
    c.data.name, c.data.data_dir = "mnist_idx", str(tmp_path / "no_such_dir")
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        spec_from_config(c)


def test_unknown_fields_are_named():
    c = default_config()
    c.predicton = "v"  # a typo at the top level
    with pytest.raises(ValueError, match="predicton"):
        spec_from_config(c, POINTS)
    c = default_config()
    c.loss.kwargs = {"weightin": "snr"}
    c.loss.name = "weighted"
    with pytest.raises(ValueError, match="weightin"):
        spec_from_config(c, POINTS)
    c = default_config()
    c.process.name, c.process.kwargs = "vp", {"beta_mx": 20.0}
    with pytest.raises(ValueError, match="config.process.kwargs.*beta_mx"):
        spec_from_config(c, POINTS)
