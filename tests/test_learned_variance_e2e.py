"""Learned variances end to end: the bound with learned vs fixed variances (exact Gaussian case),
the interpolation staying between the extremes, experiments/improved_ddpm.py's quicktest with
its bits/dim report, and the launchers' errors for a learned variance where it cannot be used."""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import kernels, losses, processes, schedules
from diffjax.losses.vlb import _fixed_log_variances
from diffjax.train import learned_variance as lv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 0.5  # data x0 ~ N(0, S^2 I): the exact eps-model and the best variance are closed forms


def _chain(T=8):
    return processes.discrete(schedules.get_betas("cosine", T))


def _oracle(process, v_of_n=None):
    """[eps_hat | v] of Gaussian data: E[eps | x_t] = sigma / (alpha^2 S^2 + sigma^2) x_t, and
    v per step (zero when `v_of_n` is None)."""

    def model(x_t, t):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        eps = s / (a**2 * S**2 + s**2) * x_t
        n = process.step_of_time(t)
        v = jnp.zeros_like(x_t) if v_of_n is None else v_of_n[n][:, None] * jnp.ones_like(x_t)
        return jnp.concatenate([eps, v], axis=-1)

    return model


def _best_v(process):
    """v_n reaching the variance minimising the expected step term: for n >= 2 the posterior
    variance plus c_n^2 Var(x0 | x_n) (c_n the x0 coefficient of the posterior mean), for n = 1
    the decoder's Var(x0 | x_1); mapped through eq. 15's frac = (v + 1) / 2 and clipped."""
    T = process.num_steps
    n = jnp.arange(1, T + 1)
    s, t = process.time_of_step(n - 1), process.time_of_step(n)
    a, sig = process.alpha(t), process.sigma(t)
    post_var = S**2 * sig**2 / (a**2 * S**2 + sig**2)  # Var(x0 | x_n)
    c = process.alpha(s) * kernels.variance_ratio(process, s, t)
    small, _ = kernels.posterior_variances(process, s, t)
    best = jnp.where(n == 1, post_var, small + c**2 * post_var)
    log_small, log_large = _fixed_log_variances(process, n, jnp.float32)
    frac = (jnp.log(best) - log_small) / (log_large - log_small)
    return jnp.concatenate([jnp.zeros(1), jnp.clip(2 * frac - 1, -1.0, 1.0)])  # index by n


def test_variance_bounds_equal_vlb_for_each_variance(key):
    p = _chain()
    x0 = S * jax.random.normal(key, (6, 3))
    model = _oracle(p, jnp.linspace(-1.5, 1.5, p.num_steps + 1))
    got = jax.jit(lambda k, x: lv.variance_bounds(model, k, x, p, decoder="gaussian"))(key, x0)
    mean_only = lambda x, t: kernels.split_learned_variance(model(x, t))[0]  # noqa: E731
    for v in lv.VARIANCES:
        m = model if v == "learned" else mean_only
        _, aux = losses.vlb(m, key, x0, p, variance=v, decoder="gaussian", terms="all")
        np.testing.assert_allclose(got[v], aux["per_example"], rtol=1e-5, atol=1e-6)


def test_learned_variance_beats_both_fixed_ones_on_gaussian_data(key):
    """With the exact mean and the best interpolated variance the bound is lower than with
    beta-tilde or beta, beyond 4 paired standard errors over 512 examples."""
    p = _chain()
    x0 = S * jax.random.normal(key, (512, 4))
    b = lv.variance_bounds(_oracle(p, _best_v(p)), key, x0, p, decoder="gaussian")
    for v in ("small", "large"):
        d = np.asarray(b["learned"] - b[v])
        assert d.mean() < -4 * d.std(ddof=1) / np.sqrt(d.size), (v, d.mean())


def test_learned_log_variance_stays_between_the_extremes(key):
    p = _chain(50)
    v = 4.0 * jax.random.normal(key, (64, 3))  # far outside [-1, 1] too
    t = jax.random.randint(jax.random.fold_in(key, 1), (64,), 1, 51) / 50.0
    s = t - 1.0 / 50
    small, large = kernels.posterior_variances(p, s, t)
    tiny = np.finfo(np.float32).tiny
    lo = np.log(np.maximum(small, tiny))[:, None]
    hi = np.log(np.maximum(large, tiny))[:, None]
    got = np.asarray(kernels.learned_log_variance(p, v, s, t))
    assert np.all(got >= lo - 1e-5) and np.all(got <= hi + 1e-5)
    # v = -1 and +1 are the two ends, v = 0 their geometric mean
    ends = [kernels.learned_log_variance(p, jnp.full((64, 1), e), s, t) for e in (-1.0, 0.0, 1.0)]
    np.testing.assert_allclose(ends[0], lo, rtol=1e-5)
    np.testing.assert_allclose(ends[2], hi, rtol=1e-5)
    np.testing.assert_allclose(ends[1], (lo + hi) / 2, rtol=1e-5)


def load_experiment(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name[:-3]}", os.path.join(ROOT, "experiments", name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def iddpm_workdir(tmp_path_factory):
    """experiments/improved_ddpm.py:quicktest (2 steps) on a T = 20 cosine chain."""
    from diffjax.train.loop import train_and_evaluate

    workdir = str(tmp_path_factory.mktemp("iddpm"))
    c = load_experiment("improved_ddpm.py").get_config("quicktest")
    c.process.kwargs.T = 20
    c.train.num_steps = 2
    train_and_evaluate(c, workdir)
    return workdir


@pytest.mark.slow  # a 2-step training, a 20-step bound and three sampler compiles
def test_improved_ddpm_quicktest_bpd_report_and_sampling(iddpm_workdir, key):
    from diffjax.train.sampling import make_sampler
    from diffjax.train.workdir import load_trained

    spec, c, state = load_trained(iddpm_workdir)
    assert lv.learns_variance(spec) and spec.sample.kwargs["variance"] == "learned"
    report = lv.variance_bits_per_dim(key, spec, c, state, num=4, batch_size=4)
    for v in lv.VARIANCES:
        assert np.isfinite(report[f"{v}_bpd"]) and report[f"{v}_bpd_stderr"] > 0
    d = report["learned_minus_small"] - (report["learned_bpd"] - report["small_bpd"])
    assert abs(d) < 1e-4  # the paired difference is the difference of the means
    # the trained model's v gives a log-variance between the extremes on the 50-step grid
    x = jax.random.normal(key, (4, *c.example_shape))
    t, s = jnp.full((4,), 0.6), jnp.full((4,), 0.58)
    _, v = kernels.split_learned_variance(
        c.apply(state.ema_params, x, t, None, train=False, key=None)
    )
    small, large = kernels.posterior_variances(c.process, s, t)
    logv = kernels.learned_log_variance(c.process, v, s, t)
    assert np.all(logv >= np.log(small[0]) - 1e-5) and np.all(logv <= np.log(large[0]) + 1e-5)
    # 2-step ddpm with each variance through the launcher's options
    for variance in lv.VARIANCES:
        sspec = dataclasses.replace(spec.sample, steps=2, num=3)
        sspec = lv.sample_options(spec, sspec, variance)
        out = make_sampler(c, sspec, spec.cond, spec.prediction, 3)(state.ema_params, key)
        assert out.shape == (3, *c.example_shape) and np.all(np.isfinite(out))
    # a deterministic solver on the same model reads only the mean channels
    ddim = lv.sample_options(spec, dataclasses.replace(spec.sample, solver="ddim", kwargs={}))
    assert ddim.kwargs == {"learned_variance": True}


def test_learned_variance_errors():
    from diffjax.train.spec import ExampleSpec, spec_from_config

    config = load_experiment("improved_ddpm.py").get_config("quicktest")
    spec = spec_from_config(config, ExampleSpec(shape=(8, 8, 1)))
    ddim = dataclasses.replace(spec.sample, solver="ddim", kwargs={"variance": "learned"})
    with pytest.raises(ValueError, match="solver 'ddim' cannot use a learned variance"):
        lv.sample_options(spec, ddim)
    with pytest.raises(ValueError, match="--variance='small'.*'ddim'"):
        lv.sample_options(spec, dataclasses.replace(ddim, kwargs={}), "small")
    plain = dataclasses.replace(spec, model=dataclasses.replace(spec.model, learn_sigma=False))
    with pytest.raises(ValueError, match="needs a model trained with a learned variance"):
        lv.sample_options(plain, spec.sample)
    with pytest.raises(ValueError, match="needs a learned-variance model"):
        lv.variance_bits_per_dim(jax.random.PRNGKey(0), plain, None, None, num=4)
