"""The noisy classifier for guidance: its loss, its training run through the launch entry point
(train_and_evaluate with experiments/noisy_classifier.py:quicktest), guided sampling from the
resulting workdir, the mismatch errors, and guided sampling of a Gaussian mixture with its
exact Bayes classifier landing on the class-conditional distribution."""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import guidance, kernels, processes
from diffjax.train import noisy_classifier as nc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name[:-3]}", os.path.join(ROOT, "experiments", name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_cross_entropy_is_the_cross_entropy_at_x_t(key):
    p = processes.vp()
    x0 = jax.random.normal(key, (5, 3))
    t = jnp.linspace(0.1, 0.9, 5)
    w = jax.random.normal(jax.random.fold_in(key, 1), (3, 4))
    model = lambda x_t, t_: x_t @ w + t_[:, None]  # noqa: E731
    y = jnp.array([0, 1, 2, 3, 1])
    loss, aux = nc.noisy_cross_entropy(model, key, x0, p, cond=y, t=t)
    x_t, _ = kernels.marginal(jax.random.split(key)[1], p, x0, t)
    logits = np.asarray(model(x_t, t), np.float64)
    ref = -(logits[np.arange(5), y] - np.log(np.exp(logits).sum(-1)))
    np.testing.assert_allclose(aux["per_example"], ref, rtol=1e-5)
    np.testing.assert_allclose(loss, ref.mean(), rtol=1e-5)
    assert float(aux["accuracy"]) == np.mean(logits.argmax(-1) == np.asarray(y))
    with pytest.raises(ValueError, match="labels"):
        nc.noisy_cross_entropy(model, key, x0, p)


def test_classifier_times_follow_the_process(key):
    chain = processes.discrete(diffjax.schedules.linear_betas(50, 1e-4, 0.02))
    t = np.asarray(nc.classifier_times(key, chain, 4000))
    n = t * 50
    np.testing.assert_allclose(n, np.round(n), atol=1e-4)  # on the grid n / T, n in 1..T
    assert n.min() >= 1 - 1e-4 and n.max() <= 50 + 1e-4 and len(np.unique(np.round(n))) == 50
    vp = processes.vp()
    t = np.asarray(nc.classifier_times(key, vp, 4000))
    assert t.min() >= vp.loss_t_min and t.max() <= 1.0
    assert abs(t.mean() - (1 + vp.loss_t_min) / 2) < 4 * np.sqrt(1 / 12 / 4000)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """A 2-step noisy-classifier quicktest and a 1-step unconditional digits quicktest, trained
    through train_and_evaluate (launch/train.py's one call), and the classifier resumed once."""
    from diffjax.train.loop import train_and_evaluate

    root = tmp_path_factory.mktemp("d2")
    clf, ddpm = str(root / "clf"), str(root / "ddpm")
    config = load_experiment("noisy_classifier.py").get_config("quicktest")
    train_and_evaluate(config, clf)
    config.train.num_steps = 2  # resumes from the step-1 checkpoint
    train_and_evaluate(config, clf)
    train_and_evaluate(load_experiment("digits.py").get_config("quicktest,unconditional"), ddpm)
    return clf, ddpm


@pytest.mark.slow  # three short trainings and three sampler compiles: ~1-2 min on 2 cores
def test_classifier_run_trains_resumes_and_guides(workdirs, key):
    from diffjax.train.sampling import make_sampler
    from diffjax.train.workdir import load_trained
    from diffjax.train.writers import read_metrics

    clf, ddpm = workdirs
    run = nc.load_noisy_classifier(clf)
    assert run.step == 2 and run.num_classes == 10
    assert sorted(os.listdir(os.path.join(clf, "checkpoints"))) == ["2"]
    steps = [m["step"] for m in read_metrics(os.path.join(clf, "metrics.jsonl"))]
    assert steps == [1, 2]  # the second call resumed at step 1
    spec, c, state = load_trained(ddpm)
    nc.check_classifier_fits(run, spec, clf, ddpm)
    sspec = dataclasses.replace(spec.sample, solver="ddim", steps=2, num=4, kwargs={})
    labels = jnp.array([0, 1, 2, 3])
    guided = nc.guided_sampler(run, c, sspec, spec, labels, 0.0)(state.ema_params, key)
    plain = make_sampler(c, sspec, spec.cond, spec.prediction, 4)(state.ema_params, key)
    np.testing.assert_allclose(guided, plain, atol=1e-5)  # scale 0 is the plain model
    # scale s: each DDIM step's eps moves by -s sigma_t grad log p(y | x_t, t) (Alg. 2)
    x = jax.random.normal(key, (4, *c.example_shape))
    t = jnp.full((4,), 0.7)
    eps = lambda x_, t_: c.apply(state.ema_params, x_, t_, None, train=False, key=None)  # noqa
    g = guidance.classifier(eps, run.log_prob(), labels, 3.0, process=c.process, prediction="eps")
    grad = jax.grad(lambda z: jnp.sum(run.log_prob()(z, t, labels)))(x)
    ref = eps(x, t) - 3.0 * c.process.sigma(t)[:, None, None, None] * grad
    np.testing.assert_allclose(g(x, t), ref, rtol=1e-4, atol=1e-5)
    moved = nc.guided_sampler(run, c, sspec, spec, labels, 3.0)(state.ema_params, key)
    assert np.all(np.isfinite(moved)) and not np.allclose(moved, plain)


def test_mismatched_classifier_is_refused(tmp_path):
    from diffjax.train.spec import ExampleSpec, spec_from_config
    from diffjax.train.workdir import CONFIG_FILE

    example = ExampleSpec(shape=(8, 8, 1))
    cspec = nc.classifier_spec_from_config(
        load_experiment("noisy_classifier.py").get_config("quicktest"), example
    )
    run = nc.NoisyClassifierRun(cspec, None, 0)
    digits = load_experiment("digits.py").get_config("quicktest,unconditional")
    spec = spec_from_config(digits, example)
    nc.check_classifier_fits(run, spec, "CLF", "DIR")  # the same chain: fits
    other = dataclasses.replace(spec, process=processes.get_process("discrete", schedule="cosine"))
    with pytest.raises(ValueError, match=r"trained for process Discrete\(T=1000.*uses Discrete"):
        nc.check_classifier_fits(run, other, "CLF", "DIR")
    cond = dataclasses.replace(spec.cond, class_conditional=True, num_classes=5)
    with pytest.raises(ValueError, match="has 10 classes; the class-conditional model .* has 5"):
        nc.check_classifier_fits(run, dataclasses.replace(spec, cond=cond), "CLF", "DIR")
    small = dataclasses.replace(spec, example=ExampleSpec(shape=(16, 16, 1)))
    with pytest.raises(ValueError, match=r"shape \(8, 8, 1\).*draws \(16, 16, 1\)"):
        nc.check_classifier_fits(run, small, "CLF", "DIR")
    (tmp_path / CONFIG_FILE).write_text(digits.to_json())
    with pytest.raises(ValueError, match="not a noisy-classifier run: its config.task = 'diff"):
        nc.load_noisy_classifier(str(tmp_path))


def test_classifier_config_is_validated():
    config = load_experiment("noisy_classifier.py").get_config("quicktest")
    config.loss.name = "simple"
    with pytest.raises(ValueError, match="config.loss.name = 'simple'"):
        nc.classifier_spec_from_config(config)
    config = load_experiment("noisy_classifier.py").get_config("quicktest")
    config.cond.num_classes = 1
    with pytest.raises(ValueError, match="cond.num_classes = 1"):
        nc.classifier_spec_from_config(config)
    config = load_experiment("noisy_classifier.py").get_config("quicktest")
    config.model.kwargs.pool = "max"
    with pytest.raises(ValueError, match="pool = 'max'"):
        nc.classifier_spec_from_config(config)


def test_bayes_guided_sampling_draws_the_class_conditional(key):
    """1-D mixture 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2) under VP: the exact score guided by the
    exact p_t(y = 1 | x_t) at scale 1 is the class-1 score (Bayes' rule), so DDIM (eta = 0) draws
    N(2, 0.5^2): its mean and standard deviation within sampling error (N = 2000)."""
    p = processes.vp()
    mu, s = jnp.array([-2.0, 2.0]), 0.5

    def log_joint(x, t):  # [B, 2]: log 0.5 N(x; alpha mu_k, alpha^2 s^2 + sigma^2)
        a, sg = p.alpha(t)[:, None], p.sigma(t)[:, None]
        var = a**2 * s**2 + sg**2
        return jnp.log(0.5) - 0.5 * (x - a * mu[None]) ** 2 / var - 0.5 * jnp.log(2 * jnp.pi * var)

    def score(x, t):
        return jax.grad(lambda z: jnp.sum(jax.nn.logsumexp(log_joint(z, t), -1)))(x)

    def logp_y(x, t, y):
        lj = log_joint(x, t)
        return jnp.take_along_axis(lj, y[:, None], 1)[:, 0] - jax.nn.logsumexp(lj, -1)

    n = 2000
    y = jnp.ones((n,), jnp.int32)
    guided = guidance.classifier(score, logp_y, y, 1.0)
    x = diffjax.sample(key, guided, p, (n, 1), solver="ddim", steps=200, prediction="score")
    x = np.asarray(x)[:, 0]
    assert abs(x.mean() - 2.0) < 4 * s / np.sqrt(n) + 0.02, x.mean()
    assert abs(x.std() - s) < 4 * s / np.sqrt(2 * n) + 0.02, x.std()


@pytest.mark.slow  # two launch/sample.py subprocesses
def test_sample_program_guides_and_interpolates(workdirs, tmp_path):
    clf, ddpm = workdirs
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.join(ROOT, "launch", "sample.py"), f"--workdir={ddpm}"]
    args = [f"--classifier_workdir={clf}", "--classifier_scale=2", "--class_label=3", "--num=5"]
    args += ["--steps=2", "--interpolate=2", f"--out={tmp_path}"]
    out = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    data = np.load(tmp_path / "samples_classifier_interpolate_ddim_2.npz")
    assert data["samples"].shape == (4, 8, 8, 1) and np.all(data["labels"] == 3)
    assert float(data["classifier_scale"]) == 2.0
    bad = subprocess.run(
        cmd + ["--solver=ddpm", "--interpolate=2", "--steps=2", f"--out={tmp_path}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode != 0 and "deterministic solver" in bad.stderr
