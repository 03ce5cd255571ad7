"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", Algorithms 1-2) on the data prediction with B(h) = e^{h} - 1 ('bh2'), as
diffusers' `UniPCMultistepScheduler` (predict_x0=True, solver_type='bh2').

With lambda = log(alpha / sigma), a step s0 -> t of size h, hh = -h, the earlier points
lambda_k with r_k = (lambda_k - lambda_s0) / h, D_k = (m_k - m_0) / r_k, and
  b_k = k! phi_{k+1}(hh) / B(hh),  phi_1 = (e^{hh} - 1) / hh, phi_{k+1} = (phi_k - 1 / k!) / hh,
  B(hh) = e^{hh} - 1:
UniP-p (predictor):  x_t = (sigma_t / sigma_s0) x - alpha_t (e^{hh} - 1) m_0
                            - alpha_t B(hh) sum_k rho_k D_k,
  rho = 1/2 for p = 2, else the solution of sum_k rho_k r_k^{j-1} = b_j, j = 1..p-1 (eq. 7);
UniC-p (corrector), once the model is evaluated at the predicted x_t (m_t = x0(x_t, t), so it
costs no extra model call): the same with the p-point system that adds r = 1 for D_t = m_t - m_0
(rho = 1/2 for p = 1). The corrected state is the base of the next predictor; the history keeps
m_t evaluated at the uncorrected x_t (Algorithm 2). UniC-p raises the order of UniP-p to p + 1
(Zhao et al. 2023, Theorem 3.1), so `order=2` (the default, diffusers' default) is third order.

Order schedule: min(order, i + 1) on step i (warm-up); with `lower_order_final` (default) the
predictor order is min(order, N - i) on every grid (as diffusers and the UniPC code), which makes
the last step a first-order, uncorrected DDIM step: that single step's O(h^2) local error then
dominates the global error, so convergence orders are measured with lower_order_final=False.
A step that ends at sigma = 0 is first order (exactly x_s = alpha_s m_0 = x0_hat).
No division by alpha. NFE = steps.

Measured (tests/test_samplers_convergence.py, VP, exact mixture eps, float64, against the
Dopri8 reference, lower_order_final=False): order 2 + corrector slope 2.87 on (40, 80, 160)
steps (local 2.79, 2.95); order 1 + corrector 2.15 on (10, 20, 40); order 3 + corrector
4.6-5.1 locally on (20, 40, 80). Agrees with diffusers' UniPCMultistepScheduler (order 2,
bh2, final sigma 0) to 6.4e-7 per step (tests/test_samplers_diffusers.py).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from diffjax.samplers import expint
from diffjax.samplers.base import Context, Solver


def _check(opts, process, ts):
    expint.check_order("unipc", (1, 2, 3))(opts, process, ts)
    if not isinstance(opts["corrector"], bool):
        raise ValueError(f"unipc corrector must be a bool; got corrector = {opts['corrector']!r}")


def init(ctx: Context, x):
    z, one = jnp.zeros_like(x), jnp.ones((), x.dtype)
    # m1..m3: x0 predictions at t_{i-1}, t_{i-2}, t_{i-3}; l1..l3 their lambdas; t1 = t_{i-1};
    # x_prev: the (corrected) state at t_{i-1} that the last predictor started from
    return {"x": x, "x_prev": x, "m1": z, "m2": z, "m3": z, "l1": one, "l2": one, "l3": one,
            "t1": one}  # fmt: skip


def _b(h, p):
    """b_1..b_p and B(hh) for hh = -h (diffusers' recursion; B(hh) = e^{hh} - 1)."""
    hh = -h
    b_h = jnp.expm1(hh)
    phi, b = b_h / hh - 1.0, []
    for k in range(1, p + 1):
        b.append(phi * math.factorial(k) / b_h)
        phi = phi / hh - 1.0 / math.factorial(k + 1)
    return b, b_h


def _rhos(rks, b, h, corrector: bool):
    """rho_1..rho_p of UniP-p (len(rks) = p - 1) or UniC-p (rks has the final r = 1 appended)."""
    p = len(rks)
    if p == 1 and corrector:
        # UniC-1 takes rho = 1/2 (diffusers), the small-h value of the solved rho = b_1; from a
        # point with alpha = 0 (h = inf) the solved limit b_1 = 1 puts all weight on m_t, as the
        # exact integral of e^{u - h} x0 does (with 1/2 the first step of a flow would average
        # the pure-noise x0 prediction in)
        return [jnp.where(jnp.isfinite(h), 0.5, 1.0)]
    if p <= 1:  # UniP-2 takes rho = 1/2 (Zhao et al. 2023; diffusers)
        return [0.5] * p
    r = jnp.stack([jnp.stack([rk**j for rk in rks]) for j in range(p)])  # [p, p]
    return list(jnp.linalg.solve(r, jnp.stack(b[:p])))


def _update(process, x, s0, t, lam_s0, lam_t, m0, hist, m_t, p: int, corrector: bool):
    """UniP-p (m_t None) or UniC-p from state x at s0 to t; hist = [(m_k, lambda_k)], k < p."""
    h = lam_t - lam_s0
    alpha_t = process.alpha(t)
    base = process.sigma(t) / process.sigma(s0) * x - alpha_t * jnp.expm1(-h) * m0
    if p == 1 and not corrector:
        return base
    rks = [(lk - lam_s0) / h for _, lk in hist[: p - 1]]
    ds = [(mk - m0) / rk for (mk, _), rk in zip(hist[: p - 1], rks, strict=True)]
    if corrector:
        rks, ds = rks + [jnp.ones_like(h)], ds + [m_t - m0]
    b, b_h = _b(h, p)
    res = sum(rho * d for rho, d in zip(_rhos(rks, b, h, corrector), ds, strict=True))
    return base - alpha_t * b_h * res


def _select(orders, order, values):
    out = values[0]
    for k, v in zip(orders[1:], values[1:], strict=True):
        out = jnp.where(order == k, v, out)
    return out


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, process, c = carry["x"], ctx.process, carry
    orders = tuple(range(1, ctx.opts["order"] + 1))
    m_t = ctx.predict(x, t, "x0")
    lam_t = expint.lam(process, t)
    if ctx.opts["corrector"]:
        p_prev = expint.step_order(ctx, i - 1, t, always=True)
        hist = [(c["m2"], c["l2"]), (c["m3"], c["l3"])]
        corrected = [
            _update(process, c["x_prev"], c["t1"], t, c["l1"], lam_t, c["m1"], hist, m_t, p, True)
            for p in orders
        ]
        x = jnp.where(i > 0, _select(orders, p_prev, corrected), x)
    p_i = expint.step_order(ctx, i, s, always=True)
    hist = [(c["m1"], c["l1"]), (c["m2"], c["l2"])]
    lam_s = expint.lam(process, s)
    predicted = [_update(process, x, t, s, lam_t, lam_s, m_t, hist, None, p, False) for p in orders]
    dt = x.dtype
    return {"x": _select(orders, p_i, predicted), "x_prev": x, "m1": m_t, "m2": c["m1"],
            "m3": c["m2"], "l1": lam_t.astype(dt), "l2": c["l1"], "l3": c["l2"],
            "t1": jnp.asarray(t, dt)}  # fmt: skip


SOLVER = Solver(
    step=step,
    options={"order": 2, "lower_order_final": True, "corrector": True},
    init=init,
    check=_check,
)
