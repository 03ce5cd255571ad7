"""Distillation losses: the progressive-distillation target's algebra, the k-step flow
distillation map, bad input, and progressive distillation rounds on a 2-D mixture with the
exact teacher (diffjax.toy) down to one step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import processes, sample, toy
from diffjax.losses.distill import check_teacher_steps, flow_distillation, progressive
from diffjax.metrics.lowdim import sliced_wasserstein
from tests import toy_mlp

COS = processes.cosine()
MIX = toy.ring(k=4, radius=1.0, std=0.1)


def test_progressive_target_is_the_teachers_x0_when_it_is_constant():
    """A teacher predicting x0 = c everywhere makes two DDIM steps equal one DDIM step with c,
    so x~ = c exactly; a student predicting c has loss 0, and one predicting 0 has loss
    w |c|^2 / d with w = max(SNR, 1) (truncated SNR) or SNR + 1."""
    c = jnp.asarray([[0.4, -1.2]])
    x0 = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    const = lambda x, t: jnp.broadcast_to(c, x.shape)  # noqa: E731
    kw = dict(teacher=const, teacher_steps=8, prediction="x0", teacher_prediction="x0")
    loss, aux = progressive(const, jax.random.PRNGKey(1), x0, COS, **kw)
    assert float(loss) < 1e-8
    t = aux["t"]
    np.testing.assert_allclose(np.asarray(t) * 4, np.round(np.asarray(t) * 4), atol=1e-6)
    snr = np.exp(np.asarray(COS.log_snr(t), np.float64))
    zero = lambda x, t: jnp.zeros_like(x)  # noqa: E731
    for weighting, w in (("truncated_snr", np.maximum(snr, 1)), ("snr_plus_one", snr + 1)):
        _, aux = progressive(zero, jax.random.PRNGKey(1), x0, COS, weighting=weighting, **kw)
        np.testing.assert_allclose(aux["per_example"], w * (0.16 + 1.44) / 2, rtol=2e-4)


def test_progressive_target_lands_one_student_step_on_two_teacher_steps():
    """One student DDIM step t -> t'' with x0 = x~ reproduces the teacher's two steps (the
    defining property of x~), checked with the exact mixture teacher at fixed t."""
    teacher = toy.exact_model(MIX, COS, "v")
    x0 = toy.sample(jax.random.PRNGKey(2), MIX, 8)
    n, t = 4, jnp.full((8,), 0.75)
    captured = {}

    def student(z, tt):
        captured["z"] = z
        return jnp.zeros_like(z)

    _, aux = progressive(student, jax.random.PRNGKey(3), x0, COS, teacher=teacher,
                         teacher_steps=2 * n, t=t, prediction="x0")  # fmt: skip
    z_t = captured["z"]
    # x~ from the loss: per_example = w mean_d (x~ - 0)^2 gives |x~| only; recompute x~ by hand
    a = lambda s: float(COS.alpha(s))  # noqa: E731
    sg = lambda s: float(COS.sigma(s))  # noqa: E731

    def ddim(z, s_from, s_to):
        x_hat = toy.denoiser(MIX, COS, z, jnp.full((8,), s_from))
        return a(s_to) * x_hat + sg(s_to) / sg(s_from) * (z - a(s_from) * x_hat)

    z2 = ddim(ddim(z_t, 0.75, 0.625), 0.625, 0.5)
    r = sg(0.5) / sg(0.75)
    x_tilde = (z2 - r * z_t) / (a(0.5) - r * a(0.75))
    np.testing.assert_allclose(a(0.5) * x_tilde + r * (z_t - a(0.75) * x_tilde), z2, atol=1e-5)
    w = np.asarray(aux["weight"])
    np.testing.assert_allclose(aux["per_example"], w * np.mean(np.asarray(x_tilde) ** 2, -1),
                               rtol=1e-3)  # fmt: skip


@pytest.mark.parametrize("bad", [3, 7, 0, 1, 2.5, True])
def test_odd_teacher_steps_raise(bad):
    with pytest.raises(ValueError, match="even integer"):
        check_teacher_steps(bad)
    with pytest.raises(ValueError, match="even integer"):
        progressive(lambda x, t: x, jax.random.PRNGKey(0), jnp.zeros((4, 2)), COS,
                    teacher=lambda x, t: x, teacher_steps=bad)  # fmt: skip


def test_flow_distillation_map():
    """k = 1: the loss is mean_d ((z - x0) - v(z, 1))^2; k = 2 with v(x, t) = x: the map is
    z (1 - 1/2)^2 = z / 4 exactly (two Euler steps of dx/dt = x)."""
    proc = processes.rectified_flow()
    z = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    v = lambda x, t: 0.5 * x + t[:, None]  # noqa: E731
    loss, _ = flow_distillation(v, None, x0, proc, noise=z)
    want = np.mean(((z - x0) - (0.5 * z + 1.0)) ** 2, axis=-1).mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    _, aux = flow_distillation(lambda x, t: x, None, z / 4, proc, noise=z, k=2)
    np.testing.assert_allclose(aux["per_example"], 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="rectified flow"):
        flow_distillation(v, None, x0, processes.vp(), noise=z)


def _rounds(first_teacher_steps, train_steps, m=4000):
    """Progressive rounds from the exact v-teacher; returns per-round measurements."""
    teacher = toy.exact_model(MIX, COS, "v")
    z = jax.random.normal(jax.random.PRNGKey(7), (m, 2))
    draw = lambda model, n: sample(jax.random.PRNGKey(0), model, COS, (m, 2), solver="ddim",  # noqa: E731
                                   steps=n, prediction="v", x_init=z, t_min=0.0)  # fmt: skip
    sw = lambda a, b: float(sliced_wasserstein(jax.random.PRNGKey(3), a, b))  # noqa: E731
    params, n, out = toy_mlp.init(jax.random.PRNGKey(1)), first_teacher_steps, []
    while n >= 2:
        tm = (
            teacher
            if n == first_teacher_steps
            else (lambda p: lambda x, t: toy_mlp.apply(p, x, t))(params)
        )

        def loss(q, k, tm=tm, n=n):
            data_key, loss_key = jax.random.split(k)
            student = lambda x, t: toy_mlp.apply(q, x, t)  # noqa: E731
            x0 = toy.sample(data_key, MIX, 256)
            return progressive(student, loss_key, x0, COS, teacher=tm, teacher_steps=n)[0]

        params, _ = toy_mlp.train(jax.random.PRNGKey(10 + n), params, loss, train_steps)
        student = lambda x, t, p=params: toy_mlp.apply(p, x, t)  # noqa: E731
        a, b = draw(student, n // 2), draw(tm, n)
        out.append((n, sw(a, b), sw(draw(tm, n // 2), b)))
        n //= 2
    data = toy.sample(jax.random.PRNGKey(5), MIX, m)
    first = sw(draw(teacher, first_teacher_steps), data)
    return out, sw(draw(student, 1), data), sw(draw(teacher, 1), data), first


def _check(rounds, sw_student_1, sw_exact_1, sw_first_teacher):
    print(rounds, sw_student_1, sw_exact_1, sw_first_teacher)
    for n, sw_student, sw_undistilled in rounds:
        assert sw_student < 0.1, (n, sw_student)  # the stated tolerance (floor ~0.08 at m=4000)
        if n // 2 <= 2:  # where halving the DDIM steps hurts, the student clearly beats it
            assert sw_student < sw_undistilled / 3, (n, sw_student, sw_undistilled)
    # the 1-step student is as close to the data as the first N-step teacher (within 0.05),
    # while the exact model's own 1-step DDIM collapses
    assert sw_student_1 < sw_first_teacher + 0.05 and sw_exact_1 > 4 * sw_student_1


def test_progressive_distillation_down_to_one_step_fast():
    """Rounds 4 -> 2 -> 1 (300 Adam steps each), 4000 samples on the same noise. Measured
    SW_2(student N/2, teacher N) = 0.028, 0.0033 against the undistilled teacher at N/2 steps
    0.257, 0.497; the 1-step student's SW_2 to data 0.158 against the exact model's 1-step DDIM
    0.715 and its 4-step DDIM 0.142."""
    _check(*_rounds(4, 300))


@pytest.mark.slow
def test_progressive_distillation_16_to_1():
    """Rounds 16 -> 8 -> 4 -> 2 -> 1 (400 Adam steps each), 4000 samples on the same noise.
    Measured SW_2(student N/2, teacher N) = 0.069, 0.0091, 0.0027, 0.0029 against the
    undistilled teacher at N/2 steps 0.035, 0.070, 0.218, 0.495; the 1-step student's SW_2 to
    data 0.074 (data-vs-data floor 0.080; the exact 16-step DDIM teacher's 0.049) against the
    exact model's 1-step DDIM 0.715."""
    _check(*_rounds(16, 400))
