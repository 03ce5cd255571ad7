"""Tests of the regression losses of diffjax.losses, gradients and input checks.

The regression losses against closed forms for Gaussian data (the oracle of tests/helpers.py):
for x0 ~ N(mu, Sigma) and x_t = alpha x0 + sigma eps, x0 - E[x0 | x_t] ~ N(0, P) with
P = Sigma - alpha^2 Sigma C^-1 Sigma, independent of x_t. A prediction of kind k has error
J_k (x0_hat - x0) with the scalar Jacobian J_k of the kind's target in x0 at fixed x_t:
  x0: 1, eps: -alpha/sigma, v: -(alpha^2+sigma^2)/sigma, score: alpha/sigma^2,
  velocity: (alpha' sigma - alpha sigma')/sigma,
so E[w_k mean_d e_k^2] = w_k J_k^2 tr(P)/d, and for an x0-space weighting (w_k = w_x0 / J_k^2)
simply w_x0 tr(P)/d. These references are computed in numpy float64.
"""

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
from tests.helpers import (
    KINDS,
    PROCESSES,
    Gaussian,
    coeffs,
    grid_data,
    init_params,
    jit_cases,
    jit_or_eager,
    linear_model,
)

D = 3


def jacobian(kind, c):
    a, s, da, ds = c["a"], c["s"], c["da"], c["ds"]
    return {
        "x0": 1.0, "eps": -a / s, "v": -(a**2 + s**2) / s, "score": a / s**2,
        "velocity": (da * s - a * ds) / s,
    }[kind]  # fmt: skip


def reference_weight_x0(name, c, gamma=5.0, sigma_data=0.5):
    snr = c["a"] ** 2 / c["s"] ** 2
    return {
        "snr": snr,
        "min_snr": min(snr, gamma),
        "likelihood": -snr * c["dlam"],
        "edm": ((c["s"] / c["a"]) ** 2 + sigma_data**2) / (c["s"] / c["a"] * sigma_data) ** 2,
    }[name]


def reference_loss(process, g, t, kind, name):
    """(expected per-example loss, its standard deviation) at time t (float64)."""
    c = coeffs(process, t)
    tr, tr2 = g.posterior_trace(c["a"], c["s"])
    scale = jacobian(kind, c) ** 2 if name == "uniform" else reference_weight_x0(name, c)
    # per example: scale * mean_d(e_i^2), e ~ N(0, P): mean tr(P)/d, variance 2 tr(P^2)/d^2
    return scale * tr / g.d, scale * math.sqrt(2.0 * tr2) / g.d


LOSS_SPECS = [(losses.weighted, {"prediction": k, "weighting": w}, k, w) for k in KINDS
              for w in weighting.WEIGHTINGS] + [
    (losses.simple, {}, "eps", "uniform"),
    (losses.dsm, {}, "score", "snr"),  # lambda = sigma^2 <=> w_x0 = SNR
    (losses.dsm, {"weighting": "likelihood"}, "score", "likelihood"),
    (losses.cfm, {}, "velocity", "uniform"),
]  # fmt: skip


TIMES = (0.3, 0.7)  # grid points of the T = 1000 chains


# Under jit the whole table is one program per process (~3 to 10 s to compile): the jit
# variants on four processes of distinct coefficient forms run by default, the rest as slow.
REGRESSION_CASES = jit_cases(PROCESSES, ("subvp", "cosine", "discrete", "discrete_zsnr", "ot_flow"))


@pytest.mark.parametrize("name, mode", REGRESSION_CASES)
def test_regression_losses_match_irreducible_loss(name, mode):
    """Every regression loss with the exact model equals its analytic irreducible value."""
    process, g = PROCESSES[name], Gaussian.random(D, seed=1)
    batch = 40_000  # half at each time
    x0 = g.sample(jax.random.PRNGKey(1), batch)
    t = jnp.repeat(jnp.asarray(TIMES, jnp.float32), batch // 2)

    def all_losses(x0, t):  # one program for the whole table under jit
        return [fn(g.model(process, kind), jax.random.PRNGKey(2), x0, process, t=t, **kwargs)
                for fn, kwargs, kind, _ in LOSS_SPECS]  # fmt: skip

    results = jit_or_eager(mode)(all_losses)(x0, t)
    for (fn, kwargs, kind, wname), (value, aux) in zip(LOSS_SPECS, results, strict=True):
        refs = [reference_loss(process, g, s, kind, wname) for s in TIMES]
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


@pytest.mark.parametrize("name", ["vp", "ve", "subvp"])
def test_dsm_of_a_sigma_scaled_score_is_the_eps_mse(name):
    """Song et al.'s parameterisation s = -F / sigma makes DSM with lambda = sigma^2 exactly
    L_simple of the network F (why experiments/cifar10_score_sde.py trains an eps model): the
    same key gives the same times, noise and per-example values."""
    process = PROCESSES[name]
    params = init_params(jax.random.PRNGKey(21), 3)
    net = lambda x, t: linear_model(params, x, t)  # noqa: E731
    score = lambda x, t: -net(x, t) / process.sigma(t)[:, None]  # noqa: E731
    x0, key = grid_data(jax.random.PRNGKey(22), (64, 3)), jax.random.PRNGKey(23)
    t = jnp.linspace(0.01, 1.0, 64)
    for times in (t, None):  # given times, and the loss's own draw (t > 0 almost surely)
        value_eps, aux_eps = losses.simple(net, key, x0, process, t=times)
        value_dsm, aux_dsm = losses.dsm(score, key, x0, process, t=times)
        np.testing.assert_array_equal(aux_eps["t"], aux_dsm["t"])
        np.testing.assert_allclose(aux_dsm["per_example"], aux_eps["per_example"], rtol=2e-5)
        np.testing.assert_allclose(float(value_dsm), float(value_eps), rtol=2e-5)
        assert float(value_eps) > 0.1  # a wrong model: the identity is not 0 = 0


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


def _fitted_teacher(kind):
    """Row helper: kwargs giving a loss the exact `kind` model of the Gaussian fitted to x0 as
    a fixed teacher (a shifted student then cannot shift its target along with it)."""

    def kwargs(x0, process):
        x = np.asarray(x0, np.float64)
        g = Gaussian(x.mean(0), np.cov(x.T) + 1e-3 * np.eye(x.shape[1]))
        exact = g.model(process, kind)
        return {"teacher": lambda x_t, t, *cond: exact(x_t, t), "teacher_prediction": kind}

    return kwargs


# How to call a registered loss that needs more than (model, key, x0, process): the process it
# applies to (default: a T = 20 chain, where every other loss applies), whether its model carries
# learned-variance channels, whether it takes paired noise. A new LOSSES entry that needs other
# arguments fails the registry tests below until it is described here; 'kwargs' computes extra
# keyword arguments (a fixed teacher, a target network) from (x0, process).
LOSS_CALLS = {
    "hybrid": {"learned_variance": True},
    "reflow": {"process": P.rectified_flow(), "noise": True},
    "flow_distillation": {"process": P.rectified_flow(), "noise": True},
    "progressive": {
        "process": P.cosine(),
        "kwargs": lambda x0, p: {
            **_fitted_teacher("eps")(x0, p),
            "teacher_steps": 4,
            "prediction": "eps",
        },
    },
    # the fitted Gaussian's posterior mean as a fixed EMA target (and CD's teacher)
    "consistency_distillation": {
        "process": P.cosine(),
        "kwargs": lambda x0, p: {
            **_fitted_teacher("eps")(x0, p),
            "target_model": _fitted_teacher("x0")(x0, p)["teacher"],
        },
    },
    "consistency_training": {
        "process": P.cosine(),
        "kwargs": lambda x0, p: {"target_model": _fitted_teacher("x0")(x0, p)["teacher"]},
    },
}


def _loss_process(name):
    return LOSS_CALLS.get(name, {}).get("process", P.discrete(schedules.linear_betas(20)))


def _registered_call(name, model, key, x0, **kwargs):
    """Call LOSSES[name] as its LOSS_CALLS row says; the model is the eps/mean head."""
    how, process = LOSS_CALLS.get(name, {}), _loss_process(name)
    if how.get("learned_variance"):
        model = (lambda m: lambda x, t, *c: jnp.concatenate([m(x, t, *c), 0 * x], -1))(model)
    if how.get("noise"):
        kwargs["noise"] = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    kwargs.update(how.get("kwargs", lambda *_: {})(x0, process))
    return losses.get_loss(name)(model, key, x0, process, **kwargs)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_registered_loss_is_a_batch_mean_minimised_by_the_exact_model(name):
    """Each LOSSES entry, called by its name at t = 0.5 on 8-bit Gaussian data: a finite scalar
    equal to the mean of the finite aux['per_example'] [B], aux['t'] [B] = 0.5, and the exact
    model of the loss's prediction kind scores below that model shifted by 0.5. At fixed t the
    shift adds w (0.25 + cross term) per example, the cross term a mean of B d = 4096 zero-mean
    errors (sd ~ 0.02), so the exact model wins unless the loss is not minimised by it."""
    batch = 2048
    g = Gaussian([0.1, -0.2], 0.04 * np.array([[1.0, 0.5], [0.5, 1.0]]))
    x0 = g.sample(jax.random.PRNGKey(25), batch)
    x0 = jnp.round((jnp.clip(x0, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0  # 8-bit data in [-1, 1]
    kind = losses.LOSS_PREDICTION.get(name, "eps")
    key, t = jax.random.PRNGKey(26), jnp.full((batch,), 0.5)
    exact = g.model(_loss_process(name), kind)
    value, aux = _registered_call(name, exact, key, x0, t=t)
    shifted, _ = _registered_call(name, lambda x, tt: exact(x, tt) + 0.5, key, x0, t=t)
    per_example = np.asarray(aux["per_example"])
    assert jnp.shape(value) == () and np.isfinite(float(value)), value
    assert per_example.shape == (batch,) and np.all(np.isfinite(per_example))
    np.testing.assert_allclose(float(value), per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["t"], t)
    assert float(value) < float(shifted), (float(value), float(shifted))


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_cond_is_passed_to_the_model(name):
    """With cond given, the model is called as model(x_t, t, cond) and cond changes the loss
    (each loss on its LOSS_CALLS process; hybrid's variance channels appended by the call)."""
    x0 = grid_data(jax.random.PRNGKey(23), (8, 2))

    def model(x, t, cond):
        return cond[:, None] * x

    key = jax.random.PRNGKey(24)
    v1 = _registered_call(name, model, key, x0, cond=jnp.full((8,), 0.5))[0]
    v2 = _registered_call(name, model, key, x0, cond=jnp.full((8,), 0.7))[0]
    assert np.isfinite(float(v1)) and float(v1) != float(v2)
