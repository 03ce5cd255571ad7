"""Every solver samples the Gaussian-mixture data distribution through its exact model (toy.py);
options, grids and the info dict behave as API.md says; bad options raise ValueError."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.metrics.lowdim import sliced_wasserstein
from diffjax.samplers import sample
from tests.helpers import SAMPLING_PROCESSES

N = 4000  # samples per distribution test
MIX = toy.random_mixture(seed=7, k=3, dim=2, scale=1.5)
DISCRETE = processes.discrete(schedules.linear_betas(1000))

# solver -> (process, prediction, steps, options): spread over processes and prediction kinds
CASES = {
    "ddpm": (processes.cosine(), "v", 200, {"variance": "large"}),
    "ddim": (processes.vp(), "x0", 50, {"eta": 0.5}),
    "euler_maruyama": (processes.subvp(), "score", 300, {}),
    "pc": (processes.ve(0.01, 20.0), "eps", 150, {"snr": 0.16}),
    "annealed_langevin": (
        processes.ve(0.05, 10.0),
        "score",
        20,
        {"n_steps_each": 60, "step_lr": 2e-3},
    ),
    "euler": (processes.rectified_flow(), "velocity", 100, {}),
    "heun": (processes.trig(), "v", 30, {"S_churn": 10.0, "S_tmax": 5.0}),
    "rk4": (processes.ot_flow(), "x0", 10, {}),
    "dopri5": (processes.vp(), "velocity", None, {}),
    "dpm_solver": (processes.vp(), "eps", 10, {"order": 3}),
    "dpm_solver_pp": (DISCRETE, "eps", 20, {}),
    "plms": (DISCRETE, "x0", 50, {}),
    "dpm_solver_pp_sde": (DISCRETE, "eps", 50, {}),
    "euler_ancestral": (processes.vp(), "x0", 100, {"spacing": "karras"}),
    "dpm_solver_multistep": (processes.vp(), "eps", 10, {"order": 3}),
    "unipc": (processes.trig(), "v", 20, {}),
}


def _target(name: str):
    """The exact law of the state at t_min: the data, except where sigma(t_min) is not ~0."""
    if name == "annealed_langevin":  # VE ends at sigma_min = 0.1: data * N(0, 0.01 I)
        return toy.marginal(MIX, CASES[name][0], 0.0)
    return MIX


@functools.cache
def _data_reference(n: int, name: str = ""):
    """Fresh target samples and the largest SW between independent target data sets."""
    mix = _target(name)
    data = toy.sample(jax.random.PRNGKey(100), mix, n)
    proj_key = jax.random.PRNGKey(101)
    null = [
        float(
            sliced_wasserstein(
                proj_key,
                toy.sample(jax.random.PRNGKey(200 + i), mix, n),
                toy.sample(jax.random.PRNGKey(300 + i), mix, n),
            )
        )
        for i in range(6)
    ]
    return data, proj_key, float(np.max(null))


def assert_matches_data(x, name=""):
    """Weights, mean, covariance and SW of samples x [n, D] against the mixture.

    - E_x[r_k(x)] = w_k for the exact responsibilities r_k; tolerance 5 standard errors
      std(r_k) / sqrt(n) (plus 0.01 for discretisation bias of the solvers).
    - mean within 5 se = sqrt(diag cov / n) (+ 0.03); covariance within 6 Gaussian standard
      errors sqrt((S_ii S_jj + S_ij^2) / n) (+ 0.05): the mixture's fourth moments exceed a
      Gaussian's by a modest factor, absorbed by 6 instead of 5.
    - SW_2 to fresh data of the same size below 1.5 x the largest of 6 null SW values (SW between
      two independent data sets): sampling noise alone gives ~ the null value.
    """
    x, mix = np.asarray(x, np.float64), _target(name)
    n = x.shape[0]
    assert np.all(np.isfinite(x)), "non-finite samples"
    resp = np.asarray(_responsibilities(mix, jnp.asarray(x, jnp.float32)))
    se_w = resp.std(0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(resp.mean(0) - np.asarray(mix.weights)), 5 * se_w + 0.01)
    mean, cov = np.asarray(mix.mean()), np.asarray(mix.cov())
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n) + 0.03)
    se_c = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - cov), 6 * se_c + 0.05)
    data, proj_key, null_max = _data_reference(n, name)
    sw = float(sliced_wasserstein(proj_key, jnp.asarray(x, jnp.float32), data))
    assert sw < 1.5 * null_max, f"SW {sw:.4f} vs null max {null_max:.4f}"


def _responsibilities(mix, x):
    """r_k(x) = w_k N(x; mu_k, Sigma_k) / p(x), with jax.scipy's Gaussian density."""
    logs = jnp.stack(
        [
            jax.scipy.stats.multivariate_normal.logpdf(x, m[None], c[None])
            for m, c in zip(mix.means, mix.covs, strict=True)
        ],
        axis=-1,
    )
    return jax.nn.softmax(logs + jnp.log(mix.weights)[None], axis=-1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_solver_samples_data_distribution(name):
    process, prediction, steps, opts = CASES[name]
    model = toy.exact_model(MIX, process, prediction)
    x, info = sample(
        jax.random.PRNGKey(1),
        model,
        process,
        (N, 2),
        solver=name,
        steps=steps,
        prediction=prediction,
        return_info=True,
        **opts,
    )
    assert x.shape == (N, 2) and x.dtype == jnp.float32
    assert_matches_data(x, name)
    assert int(info["nfe"]) > 0


def test_ddpm_1000_steps_on_discrete_chain_matches_data():
    """Ancestral sampling through all T = 1000 steps of Ho et al.'s linear chain."""
    model = toy.exact_model(MIX, DISCRETE, "eps")
    x, info = sample(
        jax.random.PRNGKey(2), model, DISCRETE, (N, 2), solver="ddpm", steps=1000, return_info=True
    )
    assert info["nfe"] == 1000
    np.testing.assert_allclose(info["ts"], np.arange(1000, -1, -1) / 1000, rtol=1e-7)
    assert_matches_data(x)


ALL_PROCESSES = SAMPLING_PROCESSES
SLOW_STEPS = {"annealed_langevin": 20, "dopri5": None, "euler_maruyama": 200, "pc": 100}
SLOW_OPTS = {"annealed_langevin": {"n_steps_each": 60}}


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("proc", sorted(ALL_PROCESSES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_solver_every_process(name, proc, prediction):
    """Each solver x process x prediction draws finite samples whose SW_2 to the data is below
    3 x the null maximum (a loose bound: default grids, 1000 samples, no tuning per pair)."""
    process = ALL_PROCESSES[proc]
    opts = {}
    if name == "annealed_langevin":  # needs sigma(t_min) > 0; step 0.4 sigma^2 at every level
        opts["t_min"] = 0.01 if float(process.sigma(0.0)) == 0.0 else 0.0
        opts["step_lr"] = 0.4 * float(process.sigma(opts["t_min"])) ** 2
    x = sample(
        jax.random.PRNGKey(5), toy.exact_model(MIX, process, prediction), process, (1000, 2),
        solver=name, steps=SLOW_STEPS.get(name, 50), prediction=prediction,
        **SLOW_OPTS.get(name, {}), **opts,
    )  # fmt: skip
    assert np.all(np.isfinite(np.asarray(x)))
    data, proj_key, null_max = _data_reference(1000)
    sw = float(sliced_wasserstein(proj_key, x, data))
    assert sw < 3 * null_max, f"SW {sw:.4f} vs null max {null_max:.4f}"
