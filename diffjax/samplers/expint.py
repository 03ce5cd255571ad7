"""Exponential-integrator pieces shared by the multistep DPM-Solvers and UniPC (Lu et al. 2022a,
Sec. 3; 2022b, Sec. 3): the half log-SNR lambda = log(alpha / sigma), the step h, and the
per-step order with warm-up and `lower_order_final`.

lambda is computed from alpha and sigma themselves, NOT from the clipped `process.log_snr`:
where sigma_s = 0 (x_0 of a chain, t = 0 of a flow) lambda_s = +inf, h = inf and
e^{-h} = 0, so the data-prediction update
  x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) x0_hat
reduces exactly to x_s = alpha_s x0_hat. (Through the log-SNR clipped at 40 it returned
(1 - e^{-h}) x0_hat with e^{-h} = 2e-7 on a 1000-step chain's last step.)
"""

from __future__ import annotations

import jax.numpy as jnp

from diffjax.processes import Process

# diffusers' DPMSolverMultistepScheduler applies `lower_order_final` below this many steps
# (the DPM-Solver reference code used 10); UniPC's reference code and diffusers apply it always.
LOWER_ORDER_FINAL_STEPS = 15


def lam(process: Process, t):
    """lambda(t) = log alpha(t) - log sigma(t), +inf where sigma = 0 and -inf where alpha = 0."""
    return jnp.log(process.alpha(t)) - jnp.log(process.sigma(t))


def step_h(process: Process, t, s):
    """h = lambda_s - lambda_t >= 0 for the step t -> s (inf where sigma_s = 0 or alpha_t = 0)."""
    return lam(process, s) - lam(process, t)


def step_order(ctx, i, s, always: bool = False):
    """The order used on step i (0-based) of ctx.steps: min(order, i + 1) (warm-up from the
    history), with `lower_order_final` min(order, N - i) (when N < 15 unless `always`), and 1
    on a step that ends at sigma = 0, where the higher-order terms of the multistep formulas
    diverge (their 1 / r = h / h_prev is infinite) and the exact update is x_s = alpha_s x0."""
    order, n = ctx.opts["order"], ctx.steps
    k = jnp.minimum(order, i + 1)
    if ctx.opts["lower_order_final"] and (always or n < LOWER_ORDER_FINAL_STEPS):
        k = jnp.minimum(k, n - i)
    return jnp.where(ctx.process.sigma(s) > 0, k, 1)


def check_order(name: str, orders: tuple):
    def check(opts, process, ts):
        if opts["order"] not in orders:
            raise ValueError(f"{name} order must be one of {orders}; got order = {opts['order']!r}")
        if not isinstance(opts["lower_order_final"], bool):
            raise ValueError(f"lower_order_final must be a bool; got {opts['lower_order_final']!r}")

        if opts.get("third_order", "taylor") not in THIRD_ORDER:
            raise ValueError(
                f"third_order must be one of {THIRD_ORDER}; got {opts['third_order']!r}"
            )

    return check


# D_2 weights of the 3rd-order multistep updates: 'taylor' integrates the Taylor expansion
# exactly (third order), 'diffusers' halves it as diffusers / k-diffusion / the DPM-Solver code do
THIRD_ORDER = ("taylor", "diffusers")
