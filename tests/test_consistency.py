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
