"""Consistency models: the exact boundary condition, the published schedules, the sigma-space
maps, the multistep sampler's algebra, and consistency distillation on a 2-D mixture with the
exact teacher (diffjax.toy)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import consistency as cm
from diffjax import processes, sample, toy
from diffjax.metrics.lowdim import sliced_wasserstein
from tests import toy_mlp

S_MIN, S_MAX = 0.002, 80.0
PROC = processes.ve(S_MIN, S_MAX)  # alpha = 1: the process is its own sigma space
MIX = toy.ring(k=4, radius=1.0, std=0.1)


def test_boundary_condition_is_exact():
    """f(x, sigma_min) = x bit for bit, whatever the network returns (c_skip = 1, c_out = 0)."""
    net = lambda x, s: 1e3 * jnp.sin(x) + s[:, None]  # noqa: E731
    f = cm.parameterize(net, sigma_min=S_MIN, sigma_data=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (64, 3)) * 5
    np.testing.assert_array_equal(np.asarray(f(x, jnp.full((64,), S_MIN))), np.asarray(x))
    # away from the boundary, the closed forms (numpy)
    s = np.array([0.5, 3.0])
    np.testing.assert_allclose(cm.c_skip(s, S_MIN), 0.25 / ((s - S_MIN) ** 2 + 0.25), rtol=1e-6)
    np.testing.assert_allclose(cm.c_out(s, S_MIN), 0.5 * (s - S_MIN) / np.sqrt(0.25 + s**2),
                               rtol=1e-6)  # fmt: skip
    # the diffjax-model view keeps it: VE's sigma(0) is sigma_min exactly
    model = cm.as_model(f, PROC)
    np.testing.assert_array_equal(np.asarray(model(x, jnp.zeros((64,)))), np.asarray(x))


@pytest.mark.parametrize("bad", [None, 0.0, -1.0])
def test_consistency_model_needs_sigma_min(bad):
    with pytest.raises(ValueError, match="sigma_min"):
        cm.parameterize(lambda x, s: x, sigma_min=bad)
    with pytest.raises(ValueError, match="sigma_min"):
        cm.karras_sigmas(18, bad, S_MAX)


def test_schedules_match_the_paper():
    """N(k) runs from s0 to s1 + 1 (Song et al. 2023, App. C: CT on CIFAR-10 s0 = 2, s1 = 150,
    mu0 = 0.9); mu(0) = mu0; the Karras grid hits both ends and is spaced in sigma^(1/rho)."""
    assert cm.num_scales(0, 800_000) == 2 and cm.num_scales(800_000, 800_000) == 151
    ks = [cm.num_scales(k, 100, 2, 150) for k in range(101)]
    assert all(a <= b for a, b in zip(ks[:-1], ks[1:], strict=True))
    assert math.isclose(cm.target_ema_decay(0, 100), 0.9, rel_tol=1e-12)
    assert math.isclose(cm.target_ema_decay(100, 100), math.exp(2 * math.log(0.9) / 151))
    sig = cm.karras_sigmas(18, S_MIN, S_MAX)
    np.testing.assert_allclose([sig[0], sig[-1]], [S_MIN, S_MAX], rtol=1e-12)
    np.testing.assert_allclose(np.diff(sig ** (1 / 7)), (S_MAX ** (1 / 7) - S_MIN ** (1 / 7)) / 17)


def test_t_of_sigma_inverts_the_process():
    """On VE, t(s) = log(s / s_min) / log(s_max / s_min); on VP, sigma_t / alpha_t round-trips."""
    s = jnp.asarray([0.01, 0.5, 3.0, 40.0])
    want = np.log(np.asarray(s) / S_MIN) / np.log(S_MAX / S_MIN)
    np.testing.assert_allclose(cm.t_of_sigma(PROC, s), want, atol=1e-5)
    vp = processes.vp()
    np.testing.assert_allclose(cm.sigma_of_t(vp, cm.t_of_sigma(vp, s)), s, rtol=1e-4)


def test_consistency_sampler_is_algorithm_1():
    """With f(x, s) = x / 2 (an x0 model) and two steps on VE: x1 = f(x_T); x = f(x1 +
    sqrt(s_mid^2 - s_min^2) z) with z the step-0 noise, checked against a hand computation."""
    f = lambda x, s: 0.5 * x  # noqa: E731
    model = cm.as_model(f, PROC)
    x_t = jax.random.normal(jax.random.PRNGKey(1), (5, 2)) * S_MAX
    one = sample(jax.random.PRNGKey(2), model, PROC, (5, 2), solver="consistency", steps=1,
                 prediction="x0", x_init=x_t, t_min=0.0)  # fmt: skip
    np.testing.assert_allclose(one, 0.5 * x_t, rtol=1e-6)
    ts = np.array([1.0, 0.5, 0.0])
    two, info = sample(jax.random.PRNGKey(2), model, PROC, (5, 2), solver="consistency", ts=ts,
                       prediction="x0", x_init=x_t, sigma_min=S_MIN, return_info=True)  # fmt: skip
    assert info["nfe"] == 2
    loop_key = jax.random.split(jax.random.PRNGKey(2))[1]
    z = jax.random.normal(jax.random.fold_in(loop_key, 0), (5, 2))
    s_mid = float(PROC.sigma(0.5))
    want = 0.5 * (0.5 * x_t + np.sqrt(s_mid**2 - S_MIN**2) * z)
    np.testing.assert_allclose(two, want, rtol=1e-5, atol=1e-6)


def test_training_losses_vanish_at_the_exact_consistency_function():
    """For data at one point c, f(x, s) = c is consistent along every trajectory: CD (with the
    exact teacher D = c) and CT losses are 0; a wrong f has a positive loss."""
    c = jnp.asarray([[0.3, -0.7]])
    x0 = jnp.broadcast_to(c, (32, 2))
    exact = lambda x, s: jnp.broadcast_to(c, x.shape)  # noqa: E731
    sig = cm.karras_sigmas(10, S_MIN, S_MAX)
    kw = dict(target_model=exact, sigmas=sig)
    cd, aux = cm.consistency_distillation(exact, jax.random.PRNGKey(0), x0, teacher=exact, **kw)
    ct, _ = cm.consistency_training(exact, jax.random.PRNGKey(0), x0, **kw)
    assert float(cd) < 1e-10 and float(ct) < 1e-10 and aux["t"].shape == (32,)
    wrong, _ = cm.consistency_training(lambda x, s: 0.0 * x, jax.random.PRNGKey(0), x0, **kw)
    assert float(wrong) > 0.1


def _distill(steps, n_scales=18, mu=0.95):
    teacher = cm.denoiser(toy.exact_model(MIX, PROC, "x0"), PROC, "x0")
    sig = cm.karras_sigmas(n_scales, S_MIN, S_MAX)

    def f_of(p):
        net = lambda x, s: toy_mlp.apply(p, x, jnp.log(s) / 4)  # noqa: E731  (EDM's c_noise)
        return cm.parameterize(net, sigma_min=S_MIN)

    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))

    def body(carry, k):
        p, target, s = carry
        data_key, loss_key = jax.random.split(k)
        x0 = toy.sample(data_key, MIX, 256)
        loss = lambda q: cm.consistency_distillation(  # noqa: E731
            f_of(q), loss_key, x0, target_model=f_of(target), teacher=teacher, sigmas=sig
        )[0]
        value, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, cm.ema_update(target, p, mu), s), value

    p = toy_mlp.init(jax.random.PRNGKey(1), max_freq=8.0)
    run = jax.jit(lambda c, ks: jax.lax.scan(body, c, ks))
    (p, target, _), losses = run(
        (p, p, opt.init(p)), jax.random.split(jax.random.PRNGKey(2), steps)
    )
    return cm.as_model(f_of(target), PROC), losses


def _quality(model, n, ts=None, steps=None):
    y = sample(jax.random.PRNGKey(0), model, PROC, (n, 2), solver="consistency", prediction="x0",
               sigma_min=S_MIN, **({"ts": ts} if ts is not None else {"steps": steps,
                                                                      "t_min": 0.0}))  # fmt: skip
    data = toy.sample(jax.random.PRNGKey(5), MIX, n)
    lp = float(toy.log_prob(MIX, toy.sample(jax.random.PRNGKey(6), MIX, n)).mean())
    return float(sliced_wasserstein(jax.random.PRNGKey(3), y, data)), lp - float(
        toy.log_prob(MIX, y).mean()
    )


@pytest.mark.slow
def test_consistency_distillation_one_and_two_steps():
    """CD (Heun teacher steps between 18 Karras levels, EMA 0.95, 800 Adam steps) with the
    exact teacher on a 4-mode ring (std 0.1). With n = 20000 samples, measured: SW_2 to data
    0.095 (1 step) and 0.058 (2 steps, mid level s = 0.5), data-vs-data floor 0.043; the
    log-density gap E_data log p - E_samples log p: 3.93 (1 step), 1.76 (2 steps) nats."""
    _check_distillation(800, 20000, 3.5)


def _check_distillation(steps, n, factor):
    model, losses = _distill(steps)
    assert float(losses[-100:].mean()) < 0.25 * float(losses[:10].mean())
    ref = toy.sample(jax.random.PRNGKey(6), MIX, n)
    floor = float(
        sliced_wasserstein(jax.random.PRNGKey(3), ref, toy.sample(jax.random.PRNGKey(5), MIX, n))
    )
    sw1, gap1 = _quality(model, n, steps=1)
    sw2, gap2 = _quality(model, n, ts=np.array([1.0, float(cm.t_of_sigma(PROC, 0.5)), 0.0]))
    print("floor", floor, "1-step", sw1, gap1, "2-step", sw2, gap2)
    assert sw1 < factor * floor  # 1-step samples within `factor` x the data's sampling floor
    assert sw2 < sw1 - 0.02 and gap2 < 0.7 * gap1  # 2 steps improve on 1 step


def test_consistency_distillation_fast():
    """The fast variant: 300 Adam steps, n = 4000 samples. Measured: floor 0.080, SW_2 0.266
    (1 step, within the stated 4x floor) and 0.157 (2 steps); log-density gaps 12.6 and 6.7
    nats."""
    _check_distillation(300, 4000, 4.0)


@pytest.mark.slow
def test_consistency_training_from_scratch():
    """CT (no teacher) with the N(k) / mu(k) schedules held piecewise constant over 8 stages of
    250 Adam steps (s0 = 10, s1 = 80, mu0 = 0.9: a short run, where the paper's CIFAR-10 values
    s0 = 2, s1 = 150 assume 800k steps), N rising 10 -> 76. Measured with n = 4000: SW_2 to data
    0.210 (1 step), 0.117 (2 steps), floor 0.080, N(0, I) itself 0.433."""
    total, stages, per = 2000, 8, 250
    p = toy_mlp.init(jax.random.PRNGKey(1), max_freq=8.0)
    target, opt = p, optax.adam(1e-3)
    state = opt.init(p)

    def f_of(q):
        return cm.parameterize(lambda x, s: toy_mlp.apply(q, x, jnp.log(s) / 4), sigma_min=S_MIN)

    for stage in range(stages):
        n = cm.num_scales(stage * per, total, 10, 80)
        mu = cm.target_ema_decay(stage * per, total, 10, 80, 0.9)
        sig = cm.karras_sigmas(n, S_MIN, S_MAX)

        def body(c, k, sig=sig, mu=mu):
            q, tq, s = c
            data_key, loss_key = jax.random.split(k)
            x0 = toy.sample(data_key, MIX, 256)
            loss = lambda r: cm.consistency_training(  # noqa: E731
                f_of(r), loss_key, x0, target_model=f_of(tq), sigmas=sig
            )[0]
            g = jax.grad(loss)(q)
            u, s = opt.update(g, s, q)
            q = optax.apply_updates(q, u)
            return (q, cm.ema_update(tq, q, mu), s), None

        keys = jax.random.split(jax.random.PRNGKey(100 + stage), per)
        (p, target, state), _ = jax.jit(lambda c, ks: jax.lax.scan(body, c, ks))(
            (p, target, state), keys
        )
    model = cm.as_model(f_of(p), PROC)
    m = 4000
    data = toy.sample(jax.random.PRNGKey(5), MIX, m)
    sw = lambda y: float(sliced_wasserstein(jax.random.PRNGKey(3), y, data))  # noqa: E731
    floor = sw(toy.sample(jax.random.PRNGKey(6), MIX, m))
    sw1, _ = _quality(model, m, steps=1)
    sw2, _ = _quality(model, m, ts=np.array([1.0, float(cm.t_of_sigma(PROC, 0.5)), 0.0]))
    prior = sw(jax.random.normal(jax.random.PRNGKey(0), (m, 2)))
    print("CT floor", floor, "1-step", sw1, "2-step", sw2, "prior", prior)
    assert sw1 < 3.5 * floor and sw2 < sw1 and sw1 < 0.5 * prior


# --- consistency training's N(k) / mu(k) schedule inside one compiled train step ---------------


def test_traced_schedule_is_the_papers_n_and_mu():
    """CTSchedule's traced N(k) equals the float64 formula `num_scales` at every step (N(0) =
    s0 = 2, N(K) = s1 + 1 = 151, non-decreasing; past K it stays s1 + 1), and mu(k) is
    exp(s0 log mu0 / N(k)) (Song et al. 2023, App. C) rounded once to float32."""
    for total, s0, s1 in ((1000, 2, 150), (7, 2, 150), (50, 3, 10), (800_000, 2, 150)):
        sched = cm.CTSchedule(total, s0, s1, 0.9)
        ks = np.unique(np.r_[np.arange(0, total + 1, max(1, total // 2000)), total])
        n = np.asarray(jax.jit(jax.vmap(sched.num_scales))(jnp.asarray(ks)))
        np.testing.assert_array_equal(n, [cm.num_scales(int(k), total, s0, s1) for k in ks])
        assert n[0] == s0 and n[-1] == s1 + 1 and np.all(np.diff(n) >= 0)
        assert int(sched.num_scales(total + 5)) == s1 + 1
        mu = np.asarray(jax.jit(jax.vmap(sched.ema_decay))(jnp.asarray(ks)))
        want = [cm.target_ema_decay(int(k), total, s0, s1, 0.9) for k in ks]
        np.testing.assert_array_equal(mu, np.asarray(want, np.float32))
    assert float(cm.CTSchedule(10).ema_decay(0)) == np.float32(0.9)  # mu(0) = mu0


def test_closed_form_levels_for_a_traced_n():
    """karras_level(i, N) with N traced equals karras_sigmas(N)[i] (float64) to float32
    rounding, for several N under one compiled function (a Python counter counts traces).
    Not bit-exact: the rho = 7 power multiplies the base's rounding by 7 (measured <= 9 ulp,
    relative error <= 7.2e-7)."""
    traces = []

    def levels(n):
        traces.append(1)
        return cm.karras_level(jnp.arange(151), n, S_MIN, S_MAX)

    fn = jax.jit(levels)
    for n in (2, 3, 18, 41, 150, 151):
        got = np.asarray(fn(jnp.int32(n)))[:n]
        np.testing.assert_allclose(got, cm.karras_sigmas(n, S_MIN, S_MAX), rtol=1.5e-6)
    assert len(traces) == 1


def _ct_models():
    model = lambda x_t, t: jnp.tanh(x_t) * (1.0 + t[:, None])  # noqa: E731
    target = lambda x_t, t: jnp.sin(x_t) + 0.1  # noqa: E731
    return model, target


def test_ct_loss_one_program_serves_every_n():
    """The CT loss with a traced num_scales compiles once for every N and matches the fixed
    grid's loss (the same draws n: randint with a traced maxval; levels to float32 rounding);
    schedule=True at step k is the traced loss at N(k)."""
    from diffjax.losses import consistency as ct

    model, target = _ct_models()
    x0 = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    key = jax.random.PRNGKey(1)
    kw = dict(target_model=target, sigma_min=S_MIN, sigma_max=S_MAX)
    traces = []

    def traced(n):
        traces.append(1)
        return ct.consistency_training(model, key, x0, PROC, num_scales=n, **kw)

    fn = jax.jit(traced)
    for n in (2, 5, 18, 151):
        loss, aux = fn(jnp.int32(n))
        fixed, fixed_aux = ct.consistency_training(model, key, x0, PROC, num_scales=n, **kw)
        np.testing.assert_allclose(float(loss), float(fixed), rtol=1e-5)
        np.testing.assert_allclose(aux["t"], fixed_aux["t"], rtol=1e-5)
    assert len(traces) == 1
    sched = jax.jit(
        lambda k: ct.consistency_training(
            model, key, x0, PROC, schedule=True, total_steps=100, step=k, **kw
        )
    )
    for k in (0, 37, 100):
        loss, aux = sched(jnp.int32(k))
        n = cm.num_scales(k, 100)
        assert int(aux["num_scales"]) == n
        assert float(loss) == float(fn(jnp.int32(n))[0])
    with pytest.raises(ValueError, match="step="):
        ct.consistency_training(model, key, x0, PROC, schedule=True, total_steps=100, **kw)


def test_train_step_ema_uses_mu_of_k():
    """With the schedule on (EmaSpec.schedule, as spec_from_config sets it) the train step
    passes its step to the loss (N(k) in the metrics) and updates the EMA with mu(k):
    ema_{k+1} = mu(k) ema_k + (1 - mu(k)) params_{k+1}, checked by hand in float64 against
    `target_ema_decay` for k = 0, 1 (K = 4: N = 2, 76; mu = 0.9, 0.99723), not ema.decay."""
    import functools

    from diffjax import parallel
    from diffjax.losses import consistency as ct
    from diffjax.train.components import Components, make_loss_fn
    from diffjax.train.spec import CondSpec, EmaSpec
    from diffjax.train.state import create_train_state
    from diffjax.train.step import make_train_step

    total = 4
    loss = functools.partial(ct.consistency_training, schedule=True, total_steps=total,
                             sigma_min=S_MIN, sigma_max=S_MAX)  # fmt: skip
    c = Components(
        init_params=lambda k: {"w": jnp.asarray([0.3, -0.2]), "b": jnp.asarray([0.1, 0.05])},
        apply=lambda p, x, t, cond, train, key: jnp.tanh(x * p["w"][None]) + p["b"][None]
        * t[:, None],
        process=PROC, loss=loss, loss_kwargs={}, batches=None, data_key="x",
        example_shape=(2,),
    )  # fmt: skip
    tx = optax.sgd(0.5)
    ema = EmaSpec(decay=0.5, schedule=cm.CTSchedule(total))
    mesh = parallel.make_mesh()
    state = parallel.replicate(create_train_state(jax.random.PRNGKey(0), c.init_params, tx), mesh)
    step = make_train_step(make_loss_fn(c, CondSpec()), tx, ema, mesh)
    batch = {"x": np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)}
    ema_k = {k: np.asarray(v, np.float64) for k, v in jax.device_get(state.ema_params).items()}
    for k in range(2):
        state, metrics = step(state, parallel.shard_batch(batch, mesh), jax.random.PRNGKey(1))
        assert int(metrics["num_scales"]) == cm.num_scales(k, total)
        mu = cm.target_ema_decay(k, total)
        params = jax.device_get(state.params)
        ema_k = {n: mu * ema_k[n] + (1 - mu) * np.asarray(params[n], np.float64) for n in ema_k}
        for n, value in jax.device_get(state.ema_params).items():
            np.testing.assert_allclose(value, ema_k[n], rtol=1e-6, atol=1e-7)
    assert not np.allclose(ema_k["w"], params["w"])  # the EMA lags: mu mattered


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"s0": 1}, "loss.kwargs.s0"),
        ({"s0": 2.5}, "loss.kwargs.s0"),
        ({"s1": 1}, "loss.kwargs.s1"),
        ({"total_steps": 0}, "loss.kwargs.total_steps"),
        ({"total_steps": None}, "loss.kwargs.total_steps"),
        ({"mu0": 1.0}, "loss.kwargs.mu0"),
        ({"mu0": 0.0}, "loss.kwargs.mu0"),
        ({"schedule": "yes"}, "loss.kwargs.schedule"),
        ({"num_scales": 18}, "loss.kwargs.num_scales"),
    ],
)
def test_schedule_options_are_checked_at_the_boundary(kwargs, field):
    import experiments.consistency as exp
    from diffjax.train.spec import spec_from_config

    c = exp.get_config("training,quicktest")
    c.loss.kwargs = {**c.loss.kwargs.to_dict(), **kwargs}  # a new dict: no ConfigDict typing
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        spec_from_config(c, example=None)


def test_schedule_config_sets_the_ema_schedule():
    """experiments/consistency.py:training: the paper's s0, s1, mu0 with K = train.num_steps,
    and the spec's EMA follows mu(k); ema.warmup with the schedule is refused."""
    import experiments.consistency as exp
    from diffjax.train.spec import spec_from_config

    c = exp.get_config("training")
    spec = spec_from_config(c, example=None)
    assert spec.ema.schedule == cm.CTSchedule(c.train.num_steps, 2, 150, 0.9)
    fixed = spec_from_config(exp.get_config("training,num_scales=10"), example=None)
    assert fixed.ema.schedule is None
    c.ema.warmup = True
    with pytest.raises(ValueError, match=r"ema\.warmup"):
        spec_from_config(c, example=None)
    with pytest.raises(ValueError, match="mu0"):
        cm.CTSchedule(10, mu0=1.5)
