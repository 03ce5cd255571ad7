"""Pseudo linear multistep (PLMS, Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models
on Manifolds", eqs. 11-13): the fourth-order Adams-Bashforth combination of past noise
predictions fed to the DDIM transfer function phi(x_t, eps', t, s),

  eps' = (55 eps_t - 59 eps_{t-1} + 37 eps_{t-2} - 9 eps_{t-3}) / 24,
  x_s = alpha_s x0' + sigma_s eps',  x0' = (x_t - sigma_t eps') / alpha_t.

Warm starts (`warmup`), for the steps that lack three earlier eps:
- 'adams_bashforth' (default): AB1 (= DDIM), AB2, AB3 on steps 1-3. NFE = steps.
- 'pseudo_improved_euler' (the released PLMS code of Liu et al. and of latent diffusion):
  step 1 is eps' = (eps_t + eps(phi(x_t, eps_t, t, s), s)) / 2, then AB2, AB3. NFE = steps + 1.
- 'pseudo_runge_kutta' (PNDM, Liu et al. 2022, eq. 13, the pseudo fourth-order Runge-Kutta) on
  steps 1-3, with the midpoint m = (t + s) / 2 (diffusers' PNDM uses the integer midpoint
  of the chain): e1 = eps_t, e2 = eps(phi(x_t, e1, t, m), m), e3 = eps(phi(x_t, e2, t, m), m),
  e4 = eps(phi(x_t, e3, t, s), s), eps' = (e1 + 2 e2 + 2 e3 + e4) / 6. NFE = steps + 3 min(3, N).
The history keeps e1 = eps_t of every step. The coefficients assume equal steps, as in the paper.
x0' is written as x0_hat - (sigma_t / alpha_t)(eps' - eps_t), which is finite on an AB1 step even
where alpha_t = 0 (eps' = eps_t there); the pseudo warm starts need alpha(t_max) > 0.

Measured end-to-end on a T = 1000 linear chain (tests/test_samplers_multistep.py, exact mixture,
float64, 20 steps, against 1000-step DDIM): see `test_plms_warm_starts_against_dense_reference`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.checks import check_choice
from diffjax.samplers.base import Context, Solver

# Adams-Bashforth coefficients of orders 1-4 on (eps_t, eps_{t-1}, eps_{t-2}, eps_{t-3})
AB = np.array(
    [[1, 0, 0, 0], [3 / 2, -1 / 2, 0, 0], [23 / 12, -16 / 12, 5 / 12, 0], [55, -59, 37, -9]],
    dtype=np.float64,
)
AB[3] /= 24
WARMUPS = {"adams_bashforth": 0, "pseudo_improved_euler": 1, "pseudo_runge_kutta": 3}
EXTRA_CALLS = {"adams_bashforth": 0, "pseudo_improved_euler": 1, "pseudo_runge_kutta": 3}


def _check(opts, process, ts):
    check_choice(opts["warmup"], WARMUPS, "PLMS warmup")
    if opts["warmup"] != "adams_bashforth" and float(process.alpha(float(ts[0]))) == 0.0:
        raise ValueError(
            f"PLMS warmup {opts['warmup']!r} divides by alpha(t_max) = 0 at t_max = {ts[0]}; "
            "pass t_max < 1"
        )


def init(ctx: Context, x):
    return {"x": x, "history": jnp.zeros((3,) + x.shape, x.dtype)}  # [3, B, ...], newest first


def _pseudo(ctx: Context, phi, eps, t, s, kind):
    """eps' of the pseudo improved-Euler or pseudo Runge-Kutta warm-up step."""
    if kind == "pseudo_improved_euler":
        return 0.5 * (eps + ctx.predict(phi(eps, s), s, "eps"))
    m = 0.5 * (t + s)
    e2 = ctx.predict(phi(eps, m), m, "eps")
    e3 = ctx.predict(phi(e2, m), m, "eps")
    e4 = ctx.predict(phi(e3, s), s, "eps")
    return (eps + 2.0 * e2 + 2.0 * e3 + e4) / 6.0


def step(ctx: Context, carry: dict, key, i, t, s) -> dict:
    x, hist, process = carry["x"], carry["history"], ctx.process
    x0, eps = ctx.predict(x, t, "x0", "eps")
    alpha_t = process.alpha(t)
    ratio = process.sigma(t) / jnp.where(alpha_t > 0, alpha_t, 1.0)

    def phi(e, u):  # the DDIM transfer phi(x_t, e, t, u)
        return process.alpha(u) * (x0 - ratio * (e - eps)) + process.sigma(u) * e

    eps_all = jnp.concatenate([eps[None], hist], axis=0)  # [4, B, ...]

    def ab(_):
        coef = jnp.asarray(AB, x.dtype)[jnp.minimum(i, 3)]  # [4]
        return jnp.tensordot(coef, eps_all, axes=1)

    kind = ctx.opts["warmup"]
    if WARMUPS[kind]:
        eps_p = jax.lax.cond(i < WARMUPS[kind], lambda _: _pseudo(ctx, phi, eps, t, s, kind), ab, 0)
    else:
        eps_p = ab(0)
    return {"x": phi(eps_p, s), "history": eps_all[:3]}


def _nfe(ts, opts, process):
    n = len(ts) - 1
    return n + EXTRA_CALLS[opts["warmup"]] * min(WARMUPS[opts["warmup"]], n)


SOLVER = Solver(step=step, options={"warmup": "adams_bashforth"}, nfe=_nfe, init=init, check=_check)
