"""DPM-Solver, singlestep, orders 1-3 (Lu et al. 2022, "DPM-Solver", Algorithms 1-2, eqs. 3.7-3.9,
with r1 = 1/2 for order 2 and r1 = 1/3, r2 = 2/3 for order 3), in the noise-prediction form.

With lambda = log(alpha / sigma) (half the library's log-SNR), h = lambda_s - lambda_t and
phi(t, u) = sigma_u (e^{lambda_u - lambda_t} - 1) = alpha_u sigma_t / alpha_t - sigma_u:
  order 1: x_s = (alpha_s / alpha_t) x_t - phi(t, s) eps_t                     (= DDIM)
  order 2: u = DDIM(t -> s1); x_s = DDIM(t -> s) - phi(t, s) / (2 r1) (eps(u, s1) - eps_t)
  order 3: u1 = DDIM(t -> s1), D1 = eps(u1, s1) - eps_t,
           u2 = DDIM(t -> s2) - sigma_s2 r2 / r1 ((e^{r2 h} - 1) / (r2 h) - 1) D1,
           D2 = eps(u2, s2) - eps_t, x_s = DDIM(t -> s) - sigma_s / r2 ((e^h - 1) / h - 1) D2,
where s_k = t_lambda(lambda_t + r_k h) is found by bisection.
A step that ends at sigma = 0 (x_0 of a chain, whose default grid ends at t = 0) is first
order, the exact x_s = alpha_s x0_hat: there h = inf puts every intermediate s_k at lambda = inf,
t = 0, where the model was never trained (a chain's t_n = n / T, n >= 1), and the correction
phi(t, s) / (2 r1) (eps(u, 0) - eps_t) then weighs that untrained output by sigma_t / alpha_t
(measured on the 280k MNIST U-Net of BASELINES.md: DPM-Solver-2 in 5 steps to t = 0 gave
classifier FD 939 with the corrected last step, and its samples fell outside [-1, 1] by 5;
the multistep solvers' final step is first order for the same reason). NFE = order * steps,
less order - 1 for each step that ends at sigma = 0 (its one evaluation at t).
The form divides by alpha_t, so on processes with alpha(1) = 0 `sample` starts at 1 - 1e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.samplers.base import Context, Solver, steps_to_zero
from diffjax.samplers.grid import t_of_log_snr


def _check(opts, process, ts):
    if opts["order"] not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3; got order = {opts['order']!r}")


def _lam(process, t):
    return 0.5 * process.log_snr(t)


def _phi(process, t, u):
    """sigma_u expm1(lambda_u - lambda_t); the alpha ratio form where sigma_u = 0 (h = inf)."""
    a_t, s_t, a_u, s_u = process.alpha(t), process.sigma(t), process.alpha(u), process.sigma(u)
    h = _lam(process, u) - _lam(process, t)
    return jnp.where(s_u > 0, s_u * jnp.expm1(h), a_u * s_t / a_t)


def _ddim(process, x, eps, t, u):
    return process.alpha(u) / process.alpha(t) * x - _phi(process, t, u) * eps


def _phi2(process, t, u):
    """sigma_u ((e^{h_u} - 1) / h_u - 1) with h_u = lambda_u - lambda_t."""
    h = _lam(process, u) - _lam(process, t)
    return process.sigma(u) * (jnp.expm1(h) / h - 1.0)


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process, order = carry["x"], ctx.process, ctx.opts["order"]
    eps_t = ctx.predict(x, t, "eps")
    x_s = _ddim(process, x, eps_t, t, s)
    if order == 1:
        return {"x": x_s}

    def higher(x_s):
        lam_t, h = _lam(process, t), _lam(process, s) - _lam(process, t)
        if order == 2:
            r1 = 0.5
            s1 = t_of_log_snr(process, 2.0 * (lam_t + r1 * h))
            d1 = ctx.predict(_ddim(process, x, eps_t, t, s1), s1, "eps") - eps_t
            return x_s - _phi(process, t, s) / (2.0 * r1) * d1
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        s1 = t_of_log_snr(process, 2.0 * (lam_t + r1 * h))
        s2 = t_of_log_snr(process, 2.0 * (lam_t + r2 * h))
        d1 = ctx.predict(_ddim(process, x, eps_t, t, s1), s1, "eps") - eps_t
        u2 = _ddim(process, x, eps_t, t, s2) - r2 / r1 * _phi2(process, t, s2) * d1
        d2 = ctx.predict(u2, s2, "eps") - eps_t
        return x_s - _phi2(process, t, s) / r2 * d2

    # to sigma = 0: first order (the module docstring), evaluating the model once
    return {"x": jax.lax.cond(process.sigma(s) > 0, higher, lambda y: y, x_s)}


def _nfe(ts, opts, process) -> int:
    order = int(opts["order"])
    return order * (len(ts) - 1) - (order - 1) * steps_to_zero(ts, process)


SOLVER = Solver(
    step=step,
    options={"order": 3},
    nfe=_nfe,
    check=_check,
    needs_alpha=True,
)
