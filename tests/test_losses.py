"""Tests of the regression losses of diffjax.losses, gradients and input checks; the closed
forms for Gaussian data are described in test_losses_helpers.py."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses, schedules
from diffjax import processes as P
from diffjax.losses import weighting
from diffjax.targets import convert
from tests.test_losses_helpers import (
    KINDS,
    PROCESSES,
    exact_model,
    gaussian,
    grid_data,
    init_params,
    linear_model,
    reference_loss,
    sample_data,
)

LOSS_SPECS = [(losses.weighted, {"prediction": k, "weighting": w}, k, w) for k in KINDS
              for w in weighting.WEIGHTINGS] + [
    (losses.simple, {}, "eps", "uniform"),
    (losses.dsm, {}, "score", "snr"),  # lambda = sigma^2 <=> w_x0 = SNR
    (losses.dsm, {"weighting": "likelihood"}, "score", "likelihood"),
    (losses.cfm, {}, "velocity", "uniform"),
]  # fmt: skip


TIMES = (0.3, 0.7)  # grid points of the T = 1000 chains


@pytest.mark.parametrize("name", list(PROCESSES))
def test_regression_losses_match_irreducible_loss(name):
    """Every regression loss with the exact model equals its analytic irreducible value."""
    process, (mu, cov) = PROCESSES[name], gaussian(1)
    batch = 40_000  # half at each time
    x0 = sample_data(jax.random.PRNGKey(1), mu, cov, batch)
    t = jnp.repeat(jnp.asarray(TIMES, jnp.float32), batch // 2)
    for fn, kwargs, kind, wname in LOSS_SPECS:
        value, aux = fn(exact_model(process, mu, cov, kind), jax.random.PRNGKey(2), x0, process,
                        t=t, **kwargs)  # fmt: skip
        refs = [reference_loss(process, mu, cov, s, kind, wname) for s in TIMES]
        expected = np.mean([m for m, _ in refs])
        # the batch mean of independent per-example values: std = sqrt(sum_t std_t^2 / 2) / sqrt(B)
        stderr = math.sqrt(sum(sd**2 for _, sd in refs) / 2) / math.sqrt(batch)
        assert aux["per_example"].shape == (batch,) and aux["t"].shape == (batch,)
        msg = f"{fn.__name__} {kwargs} on {name}: {float(value)} vs {expected} (se {stderr})"
        assert abs(float(value) - expected) < 5 * stderr + 1e-5 * abs(expected), msg


@pytest.mark.parametrize("name", ["vp", "ve", "discrete", "rectified_flow", "trig"])
def test_weights_are_one_objective_in_every_kind(name):
    """For an arbitrary prediction, w_k ||k_hat - k||^2 is the same number for every kind k
    (exact: the prediction and the target are converted between kinds with targets.convert)."""
    process = PROCESSES[name]
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    x0, eps = jax.random.normal(k1, (6, 4)), jax.random.normal(k2, (6, 4))
    t = jnp.linspace(0.05, 0.95, 6).round(3)
    x_t = process.alpha(t)[:, None] * x0 + process.sigma(t)[:, None] * eps
    eps_hat = eps + 0.3 * jax.random.normal(k3, (6, 4))
    for wname in weighting.WEIGHTINGS[1:]:
        values = []
        for kind in KINDS:
            pred = convert(eps_hat, "eps", kind, x_t, t, process)
            target = convert(eps, "eps", kind, x_t, t, process)
            w = weighting.native_weight(process, t, kind, wname)
            values.append(w * jnp.sum((pred - target) ** 2, -1))
        np.testing.assert_allclose(np.array(values), np.array(values[:1] * 5), rtol=2e-3)


EDGE_T = jnp.asarray([0.0, 1e-6, 1.0 - 1e-6, 1.0], jnp.float32)


def excluded(process, kind, wname, loss_name="weighted"):
    """Combinations whose value is infinite by definition at some edge time:
    - a score target -eps/sigma with weight 1 where sigma(t) = 0 (t = 0 on VP-like processes);
    - the discrete bound with an eps model where alpha(1) = 0 (zero terminal SNR): its model mean
      needs x0_hat = (x_t - sigma eps_hat)/alpha (Lin et al. 2024 use v-prediction there);
    - a velocity model with an x0-space weighting where the process is locally constant
      (alpha' = sigma' = 0, e.g. the cosine process inside its log-SNR clip): the velocity is
      0 there whatever x0 is, so no finite velocity-space weight equals a positive x0 weight."""
    sigma0 = float(process.sigma(jnp.zeros(1))[0])
    alpha1 = float(process.alpha(jnp.ones(1))[0])
    det = process.d_alpha(EDGE_T) * process.sigma(EDGE_T) - process.alpha(EDGE_T) * process.d_sigma(
        EDGE_T
    )
    if loss_name == "weighted" and kind == "velocity" and wname != "uniform":
        return bool(jnp.any(det == 0.0))
    if loss_name == "weighted":
        return kind == "score" and wname == "uniform" and sigma0 == 0.0
    return loss_name in ("vlb", "hybrid") and alpha1 == 0.0


@pytest.mark.parametrize("name", list(PROCESSES))
def test_losses_finite_at_edge_times(name):
    """No NaN/inf at t in {0, 1e-6, 1 - 1e-6, 1} for every loss at its default kind, and for
    `weighted` with every kind x weighting except the `excluded` combinations."""
    process = PROCESSES[name]
    params = init_params(jax.random.PRNGKey(11), 3)
    model = lambda x, t: linear_model(params, x, t)  # noqa: E731
    learned = init_params(jax.random.PRNGKey(11), 3, learned=True)
    model2 = lambda x, t: linear_model(learned, x, t)  # noqa: E731
    x0, key = grid_data(jax.random.PRNGKey(12), (4, 3)), jax.random.PRNGKey(13)
    calls = {
        f"weighted-{k}-{w}": (losses.weighted, model, {"prediction": k, "weighting": w})
        for k in KINDS
        for w in weighting.WEIGHTINGS
        if not excluded(process, k, w)
    }
    calls.update(simple=(losses.simple, model, {}), dsm=(losses.dsm, model, {}),
                 cfm=(losses.cfm, model, {"coupling": "ot"}),
                 continuous_vlb=(losses.continuous_vlb, model, {}))  # fmt: skip
    if isinstance(process, P.Discrete) and not excluded(process, None, None, "vlb"):
        calls.update(vlb=(losses.vlb, model, {}), hybrid=(losses.hybrid, model2, {}))
    for label, (fn, m, kwargs) in calls.items():
        value, aux = fn(m, key, x0, process, t=EDGE_T, **kwargs)
        assert np.all(np.isfinite(np.asarray(aux["per_example"]))), (label, aux["per_example"])
        assert np.isfinite(float(value)), label


GRAD_CASES = [
    ("simple", P.vp(), {}),
    ("weighted", P.cosine(), {"prediction": "v", "weighting": "min_snr"}),
    ("weighted", P.ve(), {"prediction": "x0", "weighting": "edm"}),
    ("dsm", P.subvp(), {"weighting": "likelihood"}),
    ("cfm", P.rectified_flow(), {"coupling": "ot", "sigma_min": 0.01}),
    ("continuous_vlb", P.trig(), {"antithetic": True}),
    ("vlb", P.discrete(schedules.linear_betas(50)), {"variance": "learned"}),
    ("hybrid", P.discrete(schedules.cosine_betas(50)), {}),
]


@pytest.mark.parametrize("name, process, kwargs", GRAD_CASES)
def test_grad_wrt_params_is_finite_under_jit(name, process, kwargs):
    learned = name == "hybrid" or kwargs.get("variance") == "learned"
    params = init_params(jax.random.PRNGKey(14), 3, learned=learned)
    x0 = grid_data(jax.random.PRNGKey(15), (16, 3))
    fn = losses.get_loss(name)

    def objective(p, key):
        return fn(lambda x, t: linear_model(p, x, t), key, x0, process, **kwargs)[0]

    grads = jax.jit(jax.grad(objective))(params, jax.random.PRNGKey(16))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_hybrid_vlb_term_trains_only_the_variance():
    """Gradients of L_hybrid in the mean's parameters are those of L_simple alone (stop_gradient
    on the mean inside L_vlb); the variance head gets its gradient from lam L_vlb only."""
    process = P.discrete(schedules.linear_betas(100))
    params = init_params(jax.random.PRNGKey(17), 3, learned=True)
    x0, key = grid_data(jax.random.PRNGKey(18), (32, 3)), jax.random.PRNGKey(19)

    def objective(p, lam):
        return losses.hybrid(lambda x, t: linear_model(p, x, t), key, x0, process, lam=lam)[0]

    grad = jax.jit(jax.grad(objective))
    g, g0 = grad(params, 0.001), grad(params, 0.0)
    for name in ("w", "b"):
        np.testing.assert_allclose(g[name], g0[name], rtol=1e-6, atol=1e-7)
    assert float(jnp.abs(g["w_var"]).max()) > 0 and float(jnp.abs(g0["w_var"]).max()) == 0


def test_simple_samples_grid_times_on_discrete_chains():
    T, process = 20, P.discrete(schedules.linear_betas(20))
    _, aux = losses.simple(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((2000, 1)), process)
    n = np.asarray(aux["t"], np.float64) * T
    np.testing.assert_allclose(n, np.round(n), atol=1e-4)
    assert set(np.round(n).astype(int)) == set(range(1, T + 1))
    _, aux = losses.simple(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((2000, 1)), P.vp())
    assert 0.0 <= float(aux["t"].min()) and float(aux["t"].max()) <= 1.0


def test_ot_pairing_is_the_optimal_permutation():
    """Against brute force over all 6! permutations, and under jit."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(20))
    x0, noise = jax.random.normal(k1, (6, 2)), jax.random.normal(k2, (6, 2))
    perm = np.asarray(jax.jit(losses.ot_pairing)(x0, noise))
    cost = lambda p: float(jnp.sum((x0 - noise[np.asarray(p)]) ** 2))  # noqa: E731
    best = min(itertools.permutations(range(6)), key=cost)
    assert sorted(perm) == list(range(6))
    np.testing.assert_allclose(cost(perm), cost(best), rtol=1e-6)


def test_cfm_with_ot_coupling_lowers_the_straight_path_cost():
    """With rectified flow and a zero model, the per-example cfm loss is mean_d (eps - x0)^2, so
    the OT coupling cannot raise its batch total (same noise draw, re-paired)."""
    x0 = 3.0 + jax.random.normal(jax.random.PRNGKey(21), (64, 2))
    zero = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    key, t = jax.random.PRNGKey(22), jnp.full((64,), 0.5)
    plain = losses.cfm(zero, key, x0, P.rectified_flow(), t=t)[0]
    paired = losses.cfm(zero, key, x0, P.rectified_flow(), t=t, coupling="ot")[0]
    assert float(paired) < float(plain)


BAD_CALLS = [
    (losses.weighted, P.vp(), {"prediction": "noise"}, "noise"),
    (losses.weighted, P.vp(), {"weighting": "p2"}, "p2"),
    (losses.weighted, P.vp(), {"weighting": "min_snr", "gamma": -1.0}, "gamma"),
    (losses.simple, P.vp(), {"t": jnp.full((4,), 1.5)}, "1.5"),
    (losses.simple, P.vp(), {"t": jnp.full((3,), 0.5)}, "shape"),
    (losses.dsm, P.vp(), {"weighting": "uniform"}, "uniform"),
    (losses.cfm, P.vp(), {"coupling": "sinkhorn"}, "sinkhorn"),
    (losses.vlb, P.vp(), {}, "VP"),
    (losses.vlb, P.discrete(schedules.linear_betas(10)), {"variance": "fixed"}, "fixed"),
    (losses.vlb, P.discrete(schedules.linear_betas(10)), {"decoder": "laplace"}, "laplace"),
    (losses.vlb, P.discrete(schedules.linear_betas(10)), {"terms": "some"}, "some"),
    (losses.vlb, P.discrete(schedules.linear_betas(10)), {"terms": "all", "t": jnp.ones(4)}, "t"),
    (losses.hybrid, P.ve(), {}, "VE"),
    (losses.vlb, P.discrete(schedules.linear_betas(10)), {"x0": jnp.full((4, 3), 2.0)}, "8-bit"),
    (losses.continuous_vlb, P.vp(), {"t_min": 1.0}, "t_min"),
    (losses.continuous_vlb, P.vp(), {"decoder": "bernoulli"}, "bernoulli"),
]


@pytest.mark.parametrize("fn, process, kwargs, needle", BAD_CALLS)
def test_bad_inputs_raise_value_error(fn, process, kwargs, needle):
    kwargs = dict(kwargs)
    x0 = kwargs.pop("x0", jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=needle):
        fn(lambda x, t: x, jax.random.PRNGKey(0), x0, process, **kwargs)


def test_bad_names_and_shapes_raise_value_error():
    with pytest.raises(ValueError, match="huber"):
        losses.get_loss("huber")
    with pytest.raises(ValueError, match="shape"):  # x0 without a data axis
        losses.simple(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((4,)), P.vp())
    with pytest.raises(ValueError, match="model output"):  # learned variance needs 2C channels
        losses.hybrid(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((4, 3)),
                      P.discrete(schedules.linear_betas(10)))  # fmt: skip
    assert set(losses.LOSSES) == {"simple", "weighted", "dsm", "vlb", "hybrid", "continuous_vlb",
                                  "cfm"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_cond_is_passed_to_the_model(name):
    """With cond given, the model is called as model(x_t, t, cond) and cond changes the loss."""
    process = P.discrete(schedules.linear_betas(20))
    x0 = grid_data(jax.random.PRNGKey(23), (8, 2))

    def model(x, t, cond):
        out = cond[:, None] * x
        return jnp.concatenate([out, jnp.zeros_like(out)], -1) if name == "hybrid" else out

    fn, key = losses.get_loss(name), jax.random.PRNGKey(24)
    v1 = fn(model, key, x0, process, cond=jnp.full((8,), 0.5))[0]
    v2 = fn(model, key, x0, process, cond=jnp.full((8,), 0.7))[0]
    assert np.isfinite(float(v1)) and float(v1) != float(v2)
