"""Bits/dim by the probability-flow ODE: known answers, then a small model trained on 8x8 digits.

Run:  python benchmarks/likelihood.py [--steps 4000] [--num_eval 128] [--num_exact 32]
        [--repeats 2] [--weighting uniform|likelihood]

Rows:
  mixture2d: the exact eps model of a 2-D Gaussian mixture under VP (prior = exact p_1), against
    the closed-form log-density: the error is the solver's alone.
  gauss64 (exact score): the exact model of a full-covariance Gaussian fitted to the dequantised
    digits, against its closed-form bits/dim on the same test digits.
  mlp (trained): a small MLP eps model trained here for --steps steps (VP, eps loss with the
    likelihood weighting by importance sampling of t, or uniform t).
The digits (sklearn, values 0..16) are mapped to 8 bits by round(v * 255 / 16); bits/dim use
uniform dequantisation into [-1, 1] (offset 7 bits, see diffjax.likelihood.bits_per_dim).
"""

from __future__ import annotations

import argparse
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits

from diffjax import processes, toy
from diffjax.kernels import marginal
from diffjax.likelihood import bits_per_dim, dequantize, likelihood, nll_dataset


class TinyMLP(nn.Module):
    """eps(x_t, t): x [B, D] and sinusoidal features of t -> 3 SiLU layers -> D."""

    hidden: int = 512

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.exp(jnp.linspace(0.0, math.log(1000.0), 16))  # [16]
        emb = jnp.concatenate(
            [jnp.sin(t[:, None] * freqs[None]), jnp.cos(t[:, None] * freqs[None])], axis=-1
        )  # [B, 32]
        h = jnp.concatenate([x, emb], axis=-1)
        for _ in range(3):
            h = nn.silu(nn.Dense(self.hidden)(h))
        return nn.Dense(x.shape[-1])(h)


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(train [1400, 64], test [397, 64]) 8-bit digits, a fixed permutation of sklearn's set."""
    data = load_digits().data  # [1797, 64] in 0..16
    k = np.round(data * 255.0 / 16.0).astype(np.uint8)
    k = k[np.random.default_rng(0).permutation(len(k))]
    return k[:1400], k[1400:]


def likelihood_weighted_t(key, process, shape, t_min: float = 1e-5):
    """t ~ q(t) proportional to g2 / sigma^2 = beta / (1 - exp(-B(t))) for VP, B = int_0^t beta.

    The eps loss at t ~ q equals, up to a constant, the likelihood-weighted score-matching loss
    (Song et al. 2021b, "Maximum likelihood training of score-based diffusion models", Sec. 5,
    importance sampling). q's CDF is log(expm1(B(t))) up to normalisation, inverted in closed form.
    """
    b0, b1 = process.beta_min, process.beta_max
    big_b = lambda t: b0 * t + 0.5 * (b1 - b0) * t**2  # noqa: E731
    lo, hi = (math.log(math.expm1(big_b(t))) for t in (t_min, 1.0))
    u = jax.random.uniform(key, shape)
    b = jax.nn.softplus(lo + u * (hi - lo))  # B(t) = log(1 + exp(log(expm1(B))))
    return (-b0 + jnp.sqrt(b0**2 + 2.0 * (b1 - b0) * b)) / (b1 - b0)


def train_mlp(key, process, train_u8, steps: int, weighting: str, batch: int = 128):
    """Eps loss (Ho et al. 2020) on freshly dequantised batches, t ~ U(1e-5, 1) ('uniform') or
    t ~ likelihood-weighting importance distribution ('likelihood')."""
    net = TinyMLP()
    init_key, loop_key = jax.random.split(key)
    params = net.init(init_key, jnp.zeros((1, 64)), jnp.zeros((1,)))
    tx = optax.adam(optax.cosine_decay_schedule(1e-3, steps))
    data = jnp.asarray(train_u8)

    def loss_fn(p, k):
        idx_key, dq_key, t_key, n_key = jax.random.split(k, 4)
        x0 = dequantize(dq_key, data[jax.random.randint(idx_key, (batch,), 0, data.shape[0])])
        if weighting == "likelihood":
            t = likelihood_weighted_t(t_key, process, (batch,))
        else:
            t = jax.random.uniform(t_key, (batch,), minval=1e-5, maxval=1.0)
        xt, eps = marginal(n_key, process, x0, t)
        return jnp.mean((net.apply(p, xt, t) - eps) ** 2)

    def step(carry, i):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(loop_key, i))
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    (params, _), losses = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(steps)))(
        (params, tx.init(params))
    )
    return (lambda x, t: net.apply(params, x, t)), float(losses[-200:].mean())


def gaussian_model(mu, cov, process):
    """Exact eps model of N(mu, cov): sigma C^-1 (x - alpha mu), C = alpha^2 cov + sigma^2 I."""
    lam, q = (jnp.asarray(v, jnp.float32) for v in np.linalg.eigh(cov))
    mu = jnp.asarray(mu, jnp.float32)

    def model(x, t):
        a, s = process.alpha(t)[:, None], process.sigma(t)[:, None]
        z = ((x - a * mu[None]) @ q) / (a**2 * lam[None] + s**2)
        return s * (z @ q.T)

    return model


def warm_ms_per_example(key, model, process, x_u8, trace: str) -> float:
    """Wall time per example of a compiled likelihood call on a batch of x_u8 (no compilation)."""
    x = dequantize(key, x_u8)
    run = jax.jit(lambda k, x: likelihood(k, model, process, x, trace=trace))
    run(key, x).block_until_ready()
    t0 = time.perf_counter()
    run(key, x).block_until_ready()
    return (time.perf_counter() - t0) / len(x) * 1e3


def row(name, trace, out, closed, ms, n):
    ref = f"{closed:8.4f}" if closed is not None else "       -"
    print(
        f"| {name:22s} | {trace:10s} | {n:4d} | {out['bpd']:8.4f} | {out['bpd_stderr']:7.4f} | "
        f"{ref} | {out['nfe']:6.0f} | {ms:9.2f} |"
    )


def gaussian_closed_form(mu, cov, process, x_u8, draws: int = 8) -> float:
    """Closed-form bits/dim of N(mu, cov) at t_min = 1e-5, averaged over dequantisation draws."""
    a, s = float(process.alpha(1e-5)), float(process.sigma(1e-5))
    dist = multivariate_normal(a * mu, a**2 * cov + s**2 * np.eye(len(mu)))
    xs = [
        np.asarray(dequantize(jax.random.PRNGKey(10 + r), x_u8), np.float64) for r in range(draws)
    ]
    return float(bits_per_dim(np.mean([-dist.logpdf(x) for x in xs]), (len(mu),)))


def mixture_row(key):
    process, mix = processes.vp(), toy.random_mixture(seed=1, k=3, dim=2)
    x = toy.sample(jax.random.PRNGKey(3), mix, 256)
    prior = lambda z: toy.log_prob_t(mix, process, z, jnp.ones(z.shape[:1]))  # noqa: E731
    model = jax.jit(toy.exact_model(mix, process, "eps"))
    for trace in ("exact", "hutchinson"):
        run = jax.jit(
            lambda k, x, tr=trace: likelihood(
                k, model, process, x, trace=tr, prior_logp=prior, return_info=True
            )
        )
        run(key, x)[0].block_until_ready()  # compile
        t0 = time.perf_counter()
        nll, info = run(key, x)
        nll.block_until_ready()
        sec = time.perf_counter() - t0
        ref = -np.asarray(toy.log_prob_t(mix, process, x, jnp.full(x.shape[:1], 1e-5)))
        err = np.asarray(nll, np.float64) - ref
        se = err.std(ddof=1) / math.sqrt(len(err))
        print(
            f"| mixture2d nats/example | {trace:10s} | mean {float(nll.mean()):.4f} vs exact "
            f"{ref.mean():.4f}: mean error {err.mean():+.2e} +- {se:.1e}, max |error| "
            f"{np.abs(err).max():.2e}, NFE {int(info['nfe'])}, "
            f"{sec / len(x) * 1e3:.3f} ms/example |"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--num_eval", type=int, default=128)
    ap.add_argument("--num_exact", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--weighting", choices=("likelihood", "uniform"), default="uniform")
    args = ap.parse_args()
    key = jax.random.PRNGKey(0)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, rtol = atol = 1e-5, Dopri5\n")
    mixture_row(key)
    process = processes.vp()
    train_u8, test_u8 = digits_uint8()
    test_u8 = test_u8[: args.num_eval]
    x_fit = np.asarray(dequantize(jax.random.PRNGKey(1), train_u8), np.float64)
    mu, cov = x_fit.mean(0), np.cov(x_fit, rowvar=False) + 1e-4 * np.eye(64)
    t0 = time.perf_counter()
    mlp, loss = train_mlp(jax.random.PRNGKey(2), process, train_u8, args.steps, args.weighting)
    print(
        f"\ntrained TinyMLP ({args.weighting} weighting) for {args.steps} steps in "
        f"{time.perf_counter() - t0:.1f} s, "
        f"final eps-MSE {loss:.4f}; evaluating {len(test_u8)} test digits x {args.repeats} "
        "dequantisation repeats\n"
    )
    print("| model | trace | N | bits/dim | +- s.e. | closed form | NFE | ms/example (warm) |")
    print("|---|---|---|---|---|---|---|---|")
    models = [("gauss64 (exact score)", gaussian_model(mu, cov, process)), ("mlp (trained)", mlp)]
    for name, model in models:
        for trace, n, repeats in (
            ("hutchinson", args.num_eval, args.repeats),
            ("hutchinson", args.num_exact, args.repeats),
            ("exact", args.num_exact, 1),
        ):
            x_u8 = test_u8[:n]
            out = nll_dataset(
                key, model, process, x_u8, batch_size=n, num_repeats=repeats, trace=trace
            )
            ms = warm_ms_per_example(key, model, process, test_u8[:16], trace)
            closed = gaussian_closed_form(mu, cov, process, x_u8) if "gauss" in name else None
            row(name, trace, out, closed, ms, n)
    print(
        "\n(ms/example: warm, batch of 16. bits/dim +- s.e. over test examples, each averaged\n"
        f" over its repeats; Hutchinson: one Gaussian probe per solve, {args.repeats} repeats;"
        " exact trace: one repeat)"
    )


if __name__ == "__main__":
    main()
