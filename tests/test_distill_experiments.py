"""experiments/distill.py (progressive distillation rounds) and experiments/consistency.py
(consistency distillation / training): each quicktest runs one step on the digits from a
tiny teacher workdir made here by a one-step quicktest run; the student starts exactly at
the teacher's EMA weights; an odd teacher step count and a missing sigma_min raise before
anything is built."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import consistency as cm
from diffjax import processes
from diffjax.train import checkpoint
from diffjax.train.loop import train_and_evaluate
from diffjax.train.spec import spec_from_config
from diffjax.train.workdir import load_trained
from diffjax.train.writers import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name}", os.path.join(ROOT, "experiments", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DISTILL, CONSISTENCY = load("distill"), load("consistency")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A one-step quicktest v-prediction teacher on the cosine process (digits)."""
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(DISTILL.get_config("quicktest"), workdir)
    return workdir


def _one_loss(workdir):
    (record,) = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert np.isfinite(record["loss"]) and record["loss"] > 0
    return record["loss"]


def test_progressive_round_starts_at_the_teacher_and_runs(teacher, tmp_path):
    student = str(tmp_path / "student")
    DISTILL.init_student(teacher, student, "quicktest,teacher_steps=2")
    _, _, trained = load_trained(teacher)
    abstract = jax.eval_shape(lambda: trained.ema_params)
    restored, step = checkpoint.restore_ema(os.path.join(student, "checkpoints"), abstract)
    assert step == 0
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(trained.ema_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bit for bit
    with pytest.raises(ValueError, match="already holds checkpoints"):
        DISTILL.init_student(teacher, student, "quicktest,teacher_steps=2")
    config = DISTILL.get_config("quicktest,teacher_steps=2")
    config.teacher.workdir = teacher
    state = train_and_evaluate(config, student)
    assert int(state.step) == 1
    _one_loss(student)
    # Adam's first step moves a weight by exactly lr g / |g| (bias-corrected moments): the
    # largest move from the teacher's weights is the rate 5e-4 (far larger if the student had
    # not started at the teacher)
    moved = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(state.params), jax.tree.leaves(trained.ema_params), strict=True
        )
    )
    np.testing.assert_allclose(moved, config.optim.learning_rate, rtol=0.02)


@pytest.mark.parametrize("bad", ["3", "7", "0", "x"])
def test_odd_teacher_steps_raise_before_anything_is_built(bad, tmp_path):
    with pytest.raises(ValueError, match="even integer"):
        DISTILL.get_config(f"quicktest,teacher_steps={bad}")


def test_distillation_needs_a_teacher():
    with pytest.raises(ValueError, match="needs a teacher"):
        spec_from_config(DISTILL.get_config("quicktest,teacher_steps=4"))
    with pytest.raises(ValueError, match="needs a teacher"):
        spec_from_config(CONSISTENCY.get_config("quicktest,distill"))


def test_round_settings():
    c = DISTILL.get_config("teacher_steps=8")
    assert c.loss.kwargs.teacher_steps == 8 and c.sample.steps == 4 and c.prediction == "v"
    assert c.loss.kwargs.weighting == "truncated_snr" and c.sample.kwargs.t_min == 0.0


def test_consistency_module_boundary_condition_and_sigma_min():
    """The wrapped U-Net is f(x, s) with f(x, sigma_min) = x: model(alpha_t x, t) = x at the t
    of sigma_min, whatever the weights; and c_skip/c_out match the closed forms elsewhere."""
    from diffjax.models import bind, get_model

    proc = processes.cosine()
    net = get_model("unet_tiny", ch=8, ch_mult=(1, 2), attn_resolutions=(4,), num_groups=4,
                    in_channels=1)  # fmt: skip
    with pytest.raises(ValueError, match="sigma_min"):
        cm.ConsistencyModule(net, proc, None)
    module = cm.ConsistencyModule(net, proc, 0.002)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    t = jnp.full((3,), float(cm.t_of_sigma(proc, 0.002)))
    variables = module.init(jax.random.PRNGKey(1), x, t)
    model = bind(module, variables)
    alpha = proc.alpha(t)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(model(alpha * x, t)), np.asarray(x), atol=1e-5)
    t = jnp.full((3,), 0.5)
    s = float(cm.sigma_of_t(proc, t)[0])
    raw = net.apply(variables, float(cm.c_in(s)) * x, t)
    want = float(cm.c_skip(s, 0.002)) * x + float(cm.c_out(s, 0.002)) * raw
    alpha = proc.alpha(t)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(model(alpha * x, t)), np.asarray(want), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("arg", [
    "quicktest,distill",
    pytest.param("quicktest,distill,solver=euler", marks=pytest.mark.slow),
    pytest.param("quicktest,training", marks=pytest.mark.slow),
])  # fmt: skip
def test_consistency_quicktest_runs_one_step(teacher, tmp_path, arg):
    config = CONSISTENCY.get_config(arg)
    if "distill" in arg:
        config.teacher.workdir = teacher
    state = train_and_evaluate(config, str(tmp_path / "cd"))  # launch/train.py's entry point
    assert int(state.step) == 1
    _one_loss(str(tmp_path / "cd"))


def test_consistency_evaluate_samples_one_and_two_steps(teacher, tmp_path):
    """launch/evaluate.py's path (load_trained + evaluate_solvers) on a CD workdir: the loaded
    model is the wrapped one, and the solver options come from config.model.consistency."""
    from diffjax.train import evaluate as ev

    workdir = str(tmp_path / "cd")
    config = CONSISTENCY.get_config("quicktest,distill")
    config.teacher.workdir = teacher
    train_and_evaluate(config, workdir)
    spec, c, trained = load_trained(workdir)
    assert isinstance(spec.model, cm.ConsistencyModule) and spec.model.sigma_min == 0.002
    pairs = ev.parse_solvers("consistency:1,consistency:2")
    rows = ev.evaluate_solvers(jax.random.PRNGKey(0), spec, c, trained, pairs, 16, False)
    assert [(r["solver"], r["steps"]) for r in rows] == [("consistency", 1), ("consistency", 2)]
    for row in rows:
        assert np.isfinite(row["sw_pixels"]) and row["sw_pixels"] > 0


def test_consistency_arguments():
    with pytest.raises(ValueError, match="solver"):
        CONSISTENCY.get_config("solver=rk4")
    with pytest.raises(ValueError, match="num_scales"):
        CONSISTENCY.get_config("num_scales=1")
    c = CONSISTENCY.get_config("distill,num_scales=40")
    assert c.loss.name == "consistency_distillation" and c.loss.kwargs.num_scales == 40
    assert c.sample.solver == "consistency" and c.model.consistency.sigma_min == 0.002
    # the spec's sampling start is the largest trained level sigma_max = 80
    from diffjax.train.spec import ExampleSpec

    c.teacher.workdir = "unused"  # the spec checks that a teacher is named, not its files
    t_max = spec_from_config(c, ExampleSpec((8, 8, 1))).sample.kwargs["t_max"]
    np.testing.assert_allclose(float(cm.sigma_of_t(processes.cosine(), t_max)), 80.0, rtol=1e-3)


def test_consistency_config_errors_before_anything_is_built(tmp_path):
    """A consistency loss without config.model.consistency, a wrapper without (or with a bad)
    sigma_min, a non-x0 prediction, a loss level contradicting the model's: ValueErrors naming
    the field, raised before the data are opened (the data_dir does not exist) or anything is
    written."""
    cases = [
        ({"model.consistency": {}}, "config.model.consistency"),
        ({"model.consistency": {"sigma_data": 0.5}}, "model.consistency.sigma_min"),
        ({"model.consistency": {"sigma_min": 0.0}}, "model.consistency.sigma_min"),
        ({"model.consistency": {"sigma_min": 0.1, "sigma_max": 0.05}}, "sigma_max"),
        ({"model.consistency": {"sigma_min": 0.002, "sigma_mn": 1}}, "sigma_mn"),
        ({"prediction": "eps"}, "config.prediction"),
        ({"loss.kwargs": {"sigma_min": 0.01}}, "loss.kwargs.sigma_min"),
        ({"loss.kwargs": {"num_scales": 1}}, "loss.kwargs.num_scales"),
        ({"loss.kwargs": {"num_scales": 18.5}}, "loss.kwargs.num_scales"),
        ({"loss.kwargs": {"rho": 0.0}}, "loss.kwargs.rho"),
    ]
    for changes, message in cases:
        config = CONSISTENCY.get_config("quicktest,training")
        config.data.name, config.data.data_dir = "mnist_idx", str(tmp_path / "absent")
        for field, value in changes.items():
            section, name = field.split(".") if "." in field else (None, field)
            setattr(config[section] if section else config, name, value)
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            train_and_evaluate(config, str(tmp_path / "work"))
        assert not (tmp_path / "work").exists()
    config = CONSISTENCY.get_config("quicktest,distill")
    config.loss.kwargs.solver = "rk4"
    config.teacher.workdir = str(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"loss\.kwargs\.solver"):
        spec_from_config(config)


def test_consistency_model_from_config_keeps_the_boundary_condition():
    """The model built from the config (no hand wrapping) is f(x, s) with f(x, sigma_min) = x
    at the t of sigma_min whatever its random weights, and not the identity elsewhere; the
    loss and the sampler get the model's sigma_min and sigma_max = s(t_max)."""
    from diffjax.train.builders import build_model_components
    from diffjax.train.spec import ExampleSpec

    spec = spec_from_config(CONSISTENCY.get_config("quicktest,training"), ExampleSpec((8, 8, 1)))
    assert isinstance(spec.model, cm.ConsistencyModule)
    assert (spec.model.sigma_min, spec.model.sigma_max, spec.model.sigma_data) == (0.002, 80, 0.5)
    assert spec.loss.keywords["sigma_min"] == 0.002 and spec.loss.keywords["sigma_max"] == 80.0
    kwargs = spec.sample.kwargs
    assert spec.sample.solver == "consistency" and kwargs["sigma_min"] == 0.002
    np.testing.assert_allclose(float(cm.sigma_of_t(spec.process, kwargs["t_max"])), 80.0,
                               rtol=1e-3)  # fmt: skip
    c = build_model_components(spec)
    params = c.init_params(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    for s, exact in ((0.002, True), (1.0, False)):
        t = jnp.full((3,), float(cm.t_of_sigma(spec.process, s)))
        alpha = spec.process.alpha(t)[:, None, None, None]
        out = c.apply(params, alpha * x, t, None, train=False, key=None)
        if exact:
            np.testing.assert_allclose(np.asarray(out), np.asarray(x), atol=1e-5)
        else:
            assert float(jnp.max(jnp.abs(out - x))) > 1e-2


def test_workdir_from_before_the_config_field_loads_wrapped():
    """A consistency config.json without config.model.consistency (written by the earlier
    hand-wrapping helpers) gets the wrapper it was trained with: the loss's sigma_min."""
    from diffjax.train.spec import ExampleSpec
    from diffjax.train.workdir import with_consistency_section

    config = CONSISTENCY.get_config("quicktest,training")
    del config.model["consistency"]
    config.loss.kwargs.sigma_min = 0.01
    spec = spec_from_config(with_consistency_section(config), ExampleSpec((8, 8, 1)))
    assert isinstance(spec.model, cm.ConsistencyModule) and spec.model.sigma_min == 0.01
    teacher_config = CONSISTENCY.get_config("quicktest")  # no consistency loss: unchanged
    assert with_consistency_section(teacher_config).model.consistency.to_dict() == {}
