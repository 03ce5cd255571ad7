"""A tiny jax MLP and an optax Adam loop for the few-step tests (reflow, distillation,
consistency): model(params, x [B, D], c [B]) with sinusoidal features of a scalar c per example
(a time t or a noise level's log), trained with one scanned, jitted loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def init(key, dim=2, hidden=128, depth=3, features=16, max_freq=50.0):
    sizes = [dim + 2 * features] + [hidden] * depth + [dim]
    keys = jax.random.split(key, len(sizes))
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = jax.random.normal(keys[i], (a, b)) * np.sqrt(1.0 / a)
        layers.append((w * (0.0 if i == len(sizes) - 2 else 1.0), jnp.zeros((1, b))))
    return {"layers": layers, "freqs": jnp.exp(jnp.linspace(0.0, np.log(max_freq), features))}


def apply(params, x, c):
    f = c[:, None] * params["freqs"][None]
    h = jnp.concatenate([x, jnp.sin(f), jnp.cos(f)], axis=-1)
    for w, b in params["layers"][:-1]:
        h = jax.nn.silu(h @ w + b)
    w, b = params["layers"][-1]
    return h @ w + b


def train(key, params, loss_fn, steps, lr=2e-3):
    """`steps` Adam steps (cosine-decayed lr) on loss_fn(params, key); returns (params, losses)."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps))

    def body(carry, k):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, k)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), loss

    run = jax.jit(lambda c, ks: jax.lax.scan(body, c, ks))
    (params, _), losses = run((params, opt.init(params)), jax.random.split(key, steps))
    return params, losses
