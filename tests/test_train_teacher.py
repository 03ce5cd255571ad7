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
    c.model.consistency = {"sigma_min": 0.002, "sigma_max": 10.0}
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


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_init_student_starts_at_the_teachers_ema_and_never_on_resume(teacher_dir, tmp_path):
    """config.teacher.init_student: a fresh run's params and EMA are the teacher's EMA params
    bit for bit at step 0 (here with a loss that takes no teacher, as reflow's 2-rectified
    flow); a resumed run starts from its own checkpoint instead."""
    from diffjax import parallel
    from diffjax.train.loop import init_or_restore
    from diffjax.train.optim import make_optimizer

    c = toy_config()
    c.teacher.workdir, c.teacher.init_student = teacher_dir, True
    c.optim.warmup_steps = 0  # Adam's first step then moves each weight by the rate exactly
    spec = spec_from_config(c)
    comps = build_components(spec)
    assert "teacher" not in comps.frozen  # 'simple' takes no teacher: only the init
    _, _, trained = load_trained(teacher_dir)
    teacher = _leaves(trained.ema_params)
    mesh, tx = parallel.make_mesh(), make_optimizer(spec.optim)
    fresh = str(tmp_path / "fresh")
    state, manager = init_or_restore(spec, comps, fresh, mesh, tx)
    manager.close()
    assert int(state.step) == 0
    for tree in (state.params, state.ema_params):
        for a, b in zip(_leaves(tree), teacher, strict=True):
            np.testing.assert_array_equal(a, b)
    # one training step from there, then resume: the checkpoint's params, not the teacher's
    student = str(tmp_path / "student")
    trained_state = train_and_evaluate(c, student)
    assert int(trained_state.step) == 1
    moved = max(float(np.max(np.abs(a - b))) for a, b in
                zip(_leaves(trained_state.params), teacher, strict=True))  # fmt: skip
    np.testing.assert_allclose(moved, c.optim.learning_rate, rtol=0.02)  # lr g / |g|, not more
    resumed, manager = init_or_restore(spec, build_components(spec), student, mesh, tx)
    manager.close()
    assert int(resumed.step) == 1
    for a, b in zip(_leaves(resumed.params), _leaves(trained_state.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_init_student_errors(teacher_dir):
    c = toy_config()
    c.teacher.init_student = True
    with pytest.raises(ValueError, match="init_student.*teacher.workdir"):
        spec_from_config(c)
    c.teacher.workdir = teacher_dir
    c.model.kwargs.hidden = 24  # the teacher's MLP has hidden = 16
    with pytest.raises(ValueError, match="does not match") as err:
        build_components(spec_from_config(c))
    assert "kernel" in str(err.value) and "16" in str(err.value) and "24" in str(err.value)


def test_loss_options_are_checked_at_the_boundary(tmp_path):
    """Few-step loss options that would otherwise fail only inside the traced loss: ValueErrors
    naming the field, before any data are opened (the data_dir does not exist)."""
    absent = str(tmp_path / "absent")

    def config(loss, kwargs, process="rectified_flow", prediction="velocity"):
        c = toy_config(f"quicktest,process={process}")
        c.data.name, c.data.data_dir = "mnist_idx", absent
        c.loss.name, c.loss.kwargs, c.prediction = loss, kwargs, prediction
        if loss == "progressive":
            c.teacher.workdir = absent
        return c

    cases = [
        (config("progressive", {"teacher_steps": 3}, "cosine", "v"), "teacher_steps = 3"),
        (config("progressive", {"teacher_steps": 0}, "cosine", "v"), "teacher_steps = 0"),
        (config("progressive", {}, "cosine", "v"), "teacher_steps = None"),
        (config("reflow", {}, "vp"), "config.process.name = 'vp'"),
        (config("flow_distillation", {}, "cosine"), "config.process.name = 'cosine'"),
        (config("flow_distillation", {"k": 0}), r"config\.loss\.kwargs\.k = 0"),
    ]
    for c, message in cases:
        with pytest.raises(ValueError, match=message):
            spec_from_config(c)


def _launch(script, *args):
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")  # fmt: skip
    cmd = [sys.executable, os.path.join(ROOT, "launch", script), *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_consistency_run_through_the_launch_programs(tmp_path):
    """launch/train.py trains a consistency model named only by config flags, and
    launch/sample.py --solver=consistency samples it: equal to Algorithm 1 computed here by
    hand from the bare backbone (f = c_skip x + c_out F(c_in x)), with the model's sigma_min
    and t_max = t(sigma_max) that the program fills in."""
    from diffjax import consistency as cm
    from diffjax.samplers import sample

    work = str(tmp_path / "ct")
    _launch(
        "train.py", f"--config={ROOT}/experiments/toy2d.py:quicktest,process=cosine",
        f"--workdir={work}", "--config.loss.name=consistency_training", "--config.prediction=x0",
        "--config.model.consistency.sigma_min=0.002", "--config.model.consistency.sigma_max=10.0",
        "--config.train.num_steps=2",
    )  # fmt: skip
    _launch("sample.py", f"--workdir={work}", "--solver=consistency", "--steps=2", "--num=16")
    got = np.load(os.path.join(work, "samples_consistency_2.npz"))["samples"]
    spec, comps, trained = load_trained(work)
    net, proc = spec.model.backbone, spec.process

    def by_hand(x_t, t):
        alpha = proc.alpha(t)[:, None]
        x, s = x_t / alpha, (proc.sigma(t) / proc.alpha(t))
        out = net.apply({"params": trained.ema_params}, cm.c_in(s)[:, None] * x, t, None)
        return cm.c_skip(s, 0.002)[:, None] * x + cm.c_out(s, 0.002)[:, None] * out

    t_max = float(cm.t_of_sigma(proc, 10.0))
    want = sample(jax.random.PRNGKey(0), by_hand, proc, (16, 2), solver="consistency", steps=2,
                  prediction="x0", sigma_min=0.002, t_max=t_max)  # fmt: skip
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)
    # the defaults matter: starting at t = 1 (sigma ~ 2e4 on cosine) gives other samples
    other = sample(jax.random.PRNGKey(0), by_hand, proc, (16, 2), solver="consistency", steps=2,
                   prediction="x0", sigma_min=0.002)  # fmt: skip
    assert float(np.max(np.abs(got - np.asarray(other)))) > 1e-3
