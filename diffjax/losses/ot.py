"""Entropic minibatch optimal transport for flow matching: a Sinkhorn coupling (ott-jax) that
runs on device under jit and sharding, and the Schrodinger-bridge path of Tong et al. 2023.

The cost is the squared Euclidean distance summed over data dimensions, C_ij = ||x0_i - z_j||^2,
and `epsilon` is in the same (absolute) units. The exact assignment (`ot_pairing` in
`regression.py`) is cubic on the host; Sinkhorn is O(B^2) per iteration on device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.typing import Array


def sq_cost(x0: Array, z: Array) -> Array:
    """C_ij = ||x0_i - z_j||^2 summed over data dims, [B, B] (no gradient)."""
    a = jnp.reshape(x0, (x0.shape[0], -1))
    b = jnp.reshape(z, (z.shape[0], -1))
    cost = jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :] - 2.0 * a @ b.T
    return jax.lax.stop_gradient(jnp.maximum(cost, 0.0))


def check_epsilon(epsilon) -> float:
    if not (isinstance(epsilon, (int, float)) and epsilon > 0):
        raise ValueError(f"the entropic regulariser must be a number > 0; got {epsilon!r}")
    return float(epsilon)


def sinkhorn_plan(
    x0: Array, z: Array, epsilon: float, *, threshold: float = 1e-4, max_iterations: int = 2000
) -> Array:
    """The entropic OT plan pi [B, B] between the uniform empirical measures of x0 and z:

      pi = argmin_{pi in U(1/B, 1/B)} <C, pi> - epsilon H(pi),

    solved by log-domain Sinkhorn (ott-jax) to marginal error `threshold`. Rows sum to 1/B.

    References: Cuturi 2013, "Sinkhorn distances"; Cuturi et al. 2022, "Optimal Transport
      Tools (OTT)".
    """
    # imported here so that `import diffjax` does not load ott-jax (and its jaxopt dependency)
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    cost = sq_cost(x0, z)
    # ott-jax relies on numpy rank promotion internally; allow it inside the solve only (this
    # is a trace-time setting, so strict callers keep 'raise' everywhere else).
    with jax.numpy_rank_promotion("allow"):
        geom = geometry.Geometry(cost_matrix=cost, epsilon=check_epsilon(epsilon))
        solver = sinkhorn.Sinkhorn(threshold=threshold, max_iterations=max_iterations)
        plan = solver(linear_problem.LinearProblem(geom)).matrix
    return jax.lax.stop_gradient(plan)


def sinkhorn_pairing(
    key: Array, x0: Array, z: Array, epsilon: float, *, mode: str = "sample"
) -> Array:
    """Indices j [B]: x0[i] is paired with z[j[i]] through the entropic plan pi.

    mode='sample' draws j[i] ~ pi(i, .) / pi(i, .).sum() independently per row, so every x0
    is used once and the pairs (i, j[i]) have the plan as their joint law (its rows have
    uniform mass 1/B): the same law as Tong et al.'s draw of B pairs from pi, stratified over
    the data rows. mode='argmax' takes each row's most likely partner (deterministic; as
    epsilon -> 0 both become the exact assignment). j need not be a permutation.

    References: Tong et al. 2023, "Improving and Generalizing Flow-Based Generative Models
      with Minibatch Optimal Transport", Sec. 3.2 and Alg. 3 (OT-CFM).
    """
    if mode not in ("sample", "argmax"):
        raise ValueError(f"mode must be 'sample' or 'argmax'; got {mode!r}")
    plan = sinkhorn_plan(x0, z, epsilon)
    if mode == "argmax":
        return jnp.argmax(plan, axis=-1).astype(jnp.int32)
    logits = jnp.log(jnp.maximum(plan, jnp.finfo(plan.dtype).tiny))
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sb_path(key: Array, x0: Array, z: Array, t: Array, sigma: float) -> tuple[Array, Array]:
    """The Brownian-bridge path of SB-CFM and its velocity target, in diffjax's direction
    (t = 0 data x0, t = 1 noise z):

      x_t = (1 - t) x0 + t z + s(t) e,   s(t) = sigma sqrt(t (1 - t)),   e ~ N(0, I),
      u_t = z - x0 + s'(t) e = z - x0 + (1 - 2t) / (2 t (1 - t)) (x_t - (1 - t) x0 - t z).

    (Tong et al.'s eq. with their x0 -> x1 mapped to our z -> x0 is the same expression, since
    s is symmetric in t -> 1 - t and the drift is written in t.) s' is evaluated at t clipped
    to [1e-6, 1 - 1e-6]; the end points have probability zero under t ~ U(0, 1).

    Returns: (x_t, u_t), both [B, ...].
    References: Tong et al. 2023, "Simulation-free Schrodinger bridges via score and flow
      matching", Sec. 3 / Prop. 3.3 (Brownian bridge, epsilon = 2 sigma^2).
    """
    tb = jnp.reshape(t, (-1,) + (1,) * (x0.ndim - 1))
    e = jax.random.normal(key, x0.shape, x0.dtype)
    tc = jnp.clip(tb, 1e-6, 1.0 - 1e-6)
    s = sigma * jnp.sqrt(tb * (1.0 - tb))
    ds = sigma * (1.0 - 2.0 * tc) / (2.0 * jnp.sqrt(tc * (1.0 - tc)))
    x_t = (1.0 - tb) * x0 + tb * z + s * e
    return x_t, z - x0 + ds * e


def coupling_epsilon(coupling, ot_epsilon, sigma_min, process) -> float | None:
    """The validated entropic regulariser of a `cfm` coupling (None for None / 'ot')."""
    if coupling == "sinkhorn":
        if ot_epsilon is None:
            raise ValueError("coupling='sinkhorn' needs ot_epsilon > 0 (the entropic regulariser)")
        return check_epsilon(ot_epsilon)
    if coupling == "sb":
        from diffjax.losses.reflow import check_rectified_flow

        check_rectified_flow(process, "coupling='sb'")
        if ot_epsilon is not None:
            raise ValueError(
                f"coupling='sb' sets epsilon = 2 sigma_min^2 itself; got ot_epsilon={ot_epsilon!r}"
            )
        if not (isinstance(sigma_min, (int, float)) and sigma_min > 0):
            raise ValueError(f"coupling='sb' needs the bridge's sigma_min > 0; got {sigma_min!r}")
        return 2.0 * float(sigma_min) ** 2
    if ot_epsilon is not None:
        raise ValueError(f"ot_epsilon applies to coupling='sinkhorn' only; got {coupling=!r}")
    return None
