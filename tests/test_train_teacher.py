"""The training side of distillation: a teacher workdir bound into the loss, the EMA target
network of the consistency losses, and the checks on teacher / loss combinations."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses, modeltree
from diffjax.train.builders import build_components
from diffjax.train.components import make_loss_fn
from diffjax.train.loop import train_and_evaluate
from diffjax.train.spec import spec_from_config
from diffjax.train.workdir import load_trained
from tests.helpers import tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_config(arg="quicktest,process=cosine"):
    spec = importlib.util.spec_from_file_location(
        "toy2d", os.path.join(ROOT, "experiments/toy2d.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(toy_config(), workdir)
    return workdir


def progressive_config(teacher_dir):
    c = toy_config()
    c.loss.name = "progressive"
    c.loss.kwargs = {"teacher_steps": 4}
    c.prediction = "v"
    c.teacher.workdir = teacher_dir
    return c


def _batch_and_params(spec, comps):
    batch = next(comps.batches(0))
    params = comps.init_params(jax.random.PRNGKey(3))
    return batch, params


def test_teacher_is_bound_into_the_loss(teacher_dir):
    """The loss the train step sees equals `progressive` called by hand with the teacher's EMA
    model (its eps prediction kind taken from the teacher's config), to float32 rounding."""
    spec = spec_from_config(progressive_config(teacher_dir))
    comps = build_components(spec)
    t_spec, t_comps, trained = load_trained(teacher_dir)
    assert comps.loss_kwargs["teacher_prediction"] == "eps" == t_spec.prediction
    arrays, static = modeltree.split(comps.frozen["teacher"])
    for a, b in zip(arrays, jax.tree.leaves(trained.ema_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch, params = _batch_and_params(spec, comps)
    key = jax.random.PRNGKey(4)
    got, _ = jax.jit(make_loss_fn(comps, spec.cond))(params, key, batch)

    def student(x, t, cond=None):
        return comps.apply(params, x, t, cond, train=True, key=jax.random.split(key, 3)[1])

    def teacher(x, t, cond=None):
        return t_comps.apply(trained.ema_params, x, t, cond, train=False, key=None)

    want, _ = losses.progressive(
        student, jax.random.split(key, 3)[2], jnp.asarray(batch["x"]), spec.process,
        teacher=teacher, teacher_steps=4, teacher_prediction="eps", prediction="v",
    )  # fmt: skip
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    # a different teacher (the student's own init) changes the value: the teacher is used
    other = {"teacher": modeltree.join([jnp.zeros_like(a) for a in arrays], static)}
    changed, _ = make_loss_fn(comps, spec.cond)(params, key, batch, frozen=other)
    assert abs(float(changed) - float(got)) > 1e-4


def test_distillation_run_leaves_the_teacher_untouched(teacher_dir, tmp_path):
    before = tree_hash(teacher_dir)
    state = train_and_evaluate(progressive_config(teacher_dir), str(tmp_path / "student"))
    assert int(state.step) == 1
    assert tree_hash(teacher_dir) == before


def test_teacher_and_loss_must_agree(teacher_dir):
    c = toy_config()
    c.teacher.workdir = teacher_dir
    with pytest.raises(ValueError, match="takes no teacher"):
        spec_from_config(c)
    c = progressive_config(teacher_dir)
    c.teacher.workdir = None
    with pytest.raises(ValueError, match="needs a teacher"):
        spec_from_config(c)
    c = progressive_config(teacher_dir)
    c.loss.kwargs = {"teacher_steps": 4, "teacher": 1}
    with pytest.raises(ValueError, match="training layer fills"):
        spec_from_config(c)


def test_target_model_is_the_ema():
    """consistency_training through make_loss_fn uses the EMA parameters, under
    stop_gradient, as its target network: equal to the hand call, and no gradient flows into
    the EMA copy."""
    c = toy_config()
    c.loss.name, c.prediction = "consistency_training", "x0"
    c.loss.kwargs = {"sigma_max": 10.0}
    spec = spec_from_config(c)
    comps = build_components(spec)
    batch, params = _batch_and_params(spec, comps)
    ema = comps.init_params(jax.random.PRNGKey(5))
    key = jax.random.PRNGKey(6)
    loss_fn = make_loss_fn(comps, spec.cond)
    got, _ = loss_fn(params, key, batch, ema_params=ema)

    def model_at(p, train, k=None):
        return lambda x, t, cond=None: comps.apply(p, x, t, cond, train=train, key=k)

    dropout_key, loss_key = jax.random.split(key, 3)[1:]
    want, _ = losses.LOSSES["consistency_training"](
        model_at(params, True, dropout_key), loss_key, jnp.asarray(batch["x"]), spec.process,
        target_model=model_at(ema, False), sigma_max=10.0,
    )  # fmt: skip
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    grad_ema = jax.grad(lambda e: loss_fn(params, key, batch, ema_params=e)[0])(ema)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grad_ema))
    with pytest.raises(ValueError, match="ema_params"):
        loss_fn(params, key, batch)
