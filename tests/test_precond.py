"""EDM's sigma-space process and preconditioning (Karras et al. 2022) against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax
from diffjax import precond, toy
from diffjax.samplers import sample, time_grid

EDM = diffjax.edm()


def test_edm_process_facts():
    t = jnp.array([0.0, 0.25, 1.0])
    np.testing.assert_array_equal(EDM.alpha(t), 1.0)
    np.testing.assert_allclose(EDM.sigma(t), [0.0, 20.0, 80.0])
    assert EDM.prior_std == 80.0 and EDM.sample_t_min == 0.0
    assert EDM.sigma_vanishes_at_0 and not EDM.alpha_vanishes_at_1
    f, g2 = EDM.sde(jnp.array([0.5]))
    np.testing.assert_allclose(g2, 2 * 80.0**2 * 0.5)  # d sigma^2 / dt
    assert diffjax.processes.get_process("edm", sigma_max=10.0).sigma_max == 10.0
    with pytest.raises(ValueError, match="sigma_max > sigma_min"):
        diffjax.edm(sigma_min=1.0, sigma_max=0.5)


def test_karras_grid_is_edm_eq_5():
    """sigma_i = (s_max^(1/7) + i / (N - 1) (s_min^(1/7) - s_max^(1/7)))^7, i < N; sigma_N = 0."""
    n = 18
    sig = np.asarray(EDM.sigma(time_grid(EDM, n, "karras")))
    i = np.arange(n) / (n - 1)
    expected = (80.0 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sig[:-1], expected, rtol=1e-5)
    assert sig[-1] == 0.0


def test_euler_and_heun_on_edm_are_karras_algorithm_1(x64):
    """Euler / Heun on the EDM process = EDM Algorithm 1 (sigma(t) = t, s(t) = 1), computed here
    in numpy from the denoiser D: d = (x - D(x, sigma)) / sigma, x' = x + (sigma' - sigma) d,
    trapezoidal correction unless sigma' = 0."""
    mix = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), toy.ring(k=4, radius=1.5))
    model = toy.exact_model(mix, EDM, "x0")
    n = 6
    ts = np.asarray(time_grid(EDM, n, "karras"))
    sig = 80.0 * ts
    x_init = 80.0 * jax.random.normal(jax.random.PRNGKey(2), (8, 2), jnp.float64)

    def denoise(x, sigma):
        return np.asarray(toy.denoiser(mix, EDM, jnp.asarray(x), jnp.full((8,), sigma / 80.0)))

    for name in ("euler", "heun"):
        x = np.asarray(x_init)
        for i in range(n):
            d = (x - denoise(x, sig[i])) / sig[i]
            x_new = x + (sig[i + 1] - sig[i]) * d
            if name == "heun" and sig[i + 1] > 0:
                d2 = (x_new - denoise(x_new, sig[i + 1])) / sig[i + 1]
                x_new = x + (sig[i + 1] - sig[i]) * 0.5 * (d + d2)
            x = x_new
        out = sample(jax.random.PRNGKey(0), model, EDM, (8, 2), solver=name, steps=n,
                     prediction="x0", spacing="karras", x_init=x_init)  # fmt: skip
        np.testing.assert_allclose(out, x, rtol=1e-9, atol=1e-9)


def test_coefficients_unit_variance_identities():
    """Table 1: Var[c_in (y + n)] = 1 and Var[(y - c_skip (y + n)) / c_out] = 1 for data of
    std sigma_data and noise of std sigma; c_skip(0) = 1, c_out(0) = 0; c_skip(sigma_min)."""
    sd = 0.5
    sigma = jnp.array([0.002, 0.1, 1.0, 80.0], jnp.float32)
    c_skip, c_out, c_in, c_noise = precond.edm_coefficients(sigma, sd)
    np.testing.assert_allclose(c_in**2 * (sd**2 + sigma**2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2,
                               1.0, rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(c_noise, np.log(np.asarray(sigma)) / 4, rtol=1e-6)
    np.testing.assert_allclose(c_skip[0], sd**2 / (sd**2 + 0.002**2), rtol=1e-7)
    cs0, co0, _, cn0 = precond.edm_coefficients(jnp.zeros(()), sd)
    assert float(cs0) == 1.0 and float(co0) == 0.0 and np.isfinite(float(cn0))


def test_optimal_network_gives_the_exact_denoiser():
    """For Gaussian data N(mu, S), the optimal F = (D* - c_skip x) / c_out, written as a function
    of the network's inputs (c_in x, c_noise) only, makes the wrapper return the exact posterior
    mean D*(x, sigma) = E[x0 | x_t] (toy.denoiser); and D(x, 0) = x exactly."""
    sd = 0.5
    gauss = toy.gaussian(np.array([0.3, -0.2]), np.array([[0.4, 0.1], [0.1, 0.2]]))

    def net(x_in, c_noise):  # knows only its inputs: sigma from c_noise, x from c_in x
        sigma = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = precond.edm_coefficients(sigma, sd)
        x = x_in / c_in[:, None]
        exact = toy.denoiser(gauss, EDM, x, sigma / 80.0)
        return (exact - c_skip[:, None] * x) / c_out[:, None]

    model = precond.edm(net, EDM, sigma_data=sd)
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 2))
    t = jnp.linspace(0.001, 1.0, 16)
    np.testing.assert_allclose(model(x, t), toy.denoiser(gauss, EDM, x, t), rtol=2e-4, atol=2e-4)
    np.testing.assert_array_equal(model(x, jnp.zeros(16)), x)
    with pytest.raises(ValueError, match="alpha = 1"):
        precond.edm(net, diffjax.vp())
    with pytest.raises(ValueError, match="sigma_data"):
        precond.edm(net, EDM, sigma_data=-1.0)
