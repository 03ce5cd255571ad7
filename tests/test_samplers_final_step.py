"""Every solver's step that ends at sigma = 0 returns the x0 prediction of that step exactly
(float64, to 1e-12): on a 1000-step chain ending at x_0 (t_min = 0) and on rectified flow at
t = 0, with a constant x0 model and with the exact Gaussian model (denoise_final=False).

The state x_{N-1} entering the last step comes from the trajectory, and the model's x0 prediction
there, x0_hat(x_{N-1}, t_{N-1}), is computed independently (toy.denoiser / the constant).
Regression for issue 12: DPM-Solver++ returned (1 - e^{-h}) x0 there, h from the log-SNR clipped
at 40 (1 - 2.06e-7 for the 1-step case below).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, schedules, toy
from diffjax.samplers import SOLVERS, sample

CHAIN = processes.discrete(schedules.linear_betas(1000))
FLOW = processes.rectified_flow()

# Solvers whose last step is not the exponential-integrator / ancestral limit, with the reason.
NOT_EXACT = {
    "annealed_langevin": "needs sigma(t_min) > 0: its grid cannot end at sigma = 0",
    "dopri5": "adaptive Runge-Kutta: the last accepted step is not a single x0 update",
    "rk4": "Runge-Kutta stages inside the last interval see other x0 predictions",
    "euler_maruyama": "SDE in t: needs alpha(t) > 0 and is first order in t, not exact",
    "pc": "SDE predictor in t plus Langevin corrector: not an x0 update",
}
# Solvers that are exact in the t-parametrisation only where alpha, sigma are linear in t
FLOW_ONLY = {"euler", "heun"}
# PLMS's last step is its AB4 combination of eps, exact only where it reduces to DDIM (1 step)
ONE_STEP_ONLY = {"plms"}
EXACT = sorted(set(SOLVERS) - set(NOT_EXACT))


def test_every_solver_is_classified():
    assert set(NOT_EXACT) <= set(SOLVERS)
    assert set(EXACT) | set(NOT_EXACT) == set(SOLVERS)


def test_issue_12_reproduction(x64):
    """The issue's case: 1 step from t = 1e-3 (n = 1) to x_0 with x0_hat = 1."""
    model = lambda x, t: jnp.ones_like(x)  # noqa: E731
    x = sample(jax.random.PRNGKey(0), model, CHAIN, (4, 2), solver="dpm_solver_pp", steps=1,
               prediction="x0", t_max=1e-3, t_min=0.0)  # fmt: skip
    assert x.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(x), 1.0)


def _cases():
    """One default case per solver (its first process, most steps, the exact Gaussian model);
    the other combinations are marked slow (every case passes; 78 cases take ~8 min on 2 cores)."""
    for name in EXACT:
        first = True
        for proc in ("chain", "flow"):
            if name in FLOW_ONLY and proc == "chain":
                continue
            for steps in (1,) if name in ONE_STEP_ONLY else (6, 1):
                for kind in ("gaussian", "constant"):
                    marks = () if first else pytest.mark.slow
                    first = False
                    yield pytest.param(name, proc, steps, kind, marks=marks)


@pytest.mark.parametrize("name, proc, steps, model_kind", list(_cases()))
def test_last_step_returns_x0_prediction(x64, name, proc, steps, model_kind):
    process = CHAIN if proc == "chain" else FLOW
    gauss = toy.gaussian(np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]]))
    gauss = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), gauss)
    if model_kind == "constant":
        x0_value = jnp.array([0.7, -1.3], jnp.float64)
        model = lambda x, t: jnp.broadcast_to(x0_value, x.shape)  # noqa: E731
    else:
        model = toy.exact_model(gauss, process, "x0")
    t_max = 1.0 - 1e-3 if SOLVERS[name].needs_alpha else 1.0
    x, info = sample(jax.random.PRNGKey(3), model, process, (8, 2), solver=name, steps=steps,
                     prediction="x0", t_max=t_max, t_min=0.0, return_info=True,
                     return_trajectory=True)  # fmt: skip
    ts = info["ts"]
    assert ts[-1] == 0.0 and float(process.sigma(0.0)) == 0.0
    x_prev, t_prev = info["trajectory"][-2], ts[-2]
    if model_kind == "constant":
        expected = jnp.broadcast_to(x0_value, x.shape)
    else:
        expected = toy.denoiser(gauss, process, x_prev, jnp.full((8,), t_prev, jnp.float64))
    assert x.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_solver_never_evaluates_the_model_at_sigma_zero(x64, order):
    """Singlestep DPM-Solver's step to x_0 of a chain is first order: its intermediate points
    would sit at lambda = inf (t = 0), where a chain's model is never trained. A model that is
    wrong by 1e6 at t = 0 leaves the result exact (order 2 used that output, weighted by
    sigma_t / alpha_t, before; measured on the MNIST U-Net: classifier FD 939 in 5 steps), and
    the step makes one evaluation: NFE = order * steps - (order - 1)."""
    from diffjax.samplers import count_nfe
    from tests.helpers import counting_model

    gauss = toy.gaussian(np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]]))
    gauss = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), gauss)
    clean = toy.exact_model(gauss, CHAIN, "x0")
    poisoned = lambda x, t: clean(x, t) + 1e6 * jnp.any(jnp.asarray(t) == 0)  # noqa: E731
    x, info = sample(jax.random.PRNGKey(3), poisoned, CHAIN, (8, 2), solver="dpm_solver",
                     order=order, steps=6, prediction="x0", t_max=1.0 - 1e-3, t_min=0.0,
                     return_info=True, return_trajectory=True)  # fmt: skip
    x_prev, t_prev = info["trajectory"][-2], info["ts"][-2]
    expected = toy.denoiser(gauss, CHAIN, x_prev, jnp.full((8,), t_prev, jnp.float64))
    np.testing.assert_allclose(np.asarray(x), np.asarray(expected), rtol=0, atol=1e-12)
    counted, calls = counting_model()
    sample(jax.random.PRNGKey(3), counted, CHAIN, (8, 2), solver="dpm_solver", order=order,
           steps=6, t_max=1.0 - 1e-3, t_min=0.0)  # fmt: skip
    jax.effects_barrier()
    assert len(calls) == count_nfe("dpm_solver", CHAIN, 6, order=order, t_max=1.0 - 1e-3,
                                   t_min=0.0) == order * 6 - (order - 1)  # fmt: skip
