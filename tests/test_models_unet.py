"""U-Net wiring: each conditioning path reaches the output (and only through its own layers),
gradients reach every parameter, dropout and bfloat16 work.

One tiny U-Net with every option on is compiled once and shared (the U-Net compiles slowly).
DDPM zero-initialises the last conv of every block and of the network, so a fresh U-Net
outputs exactly 0 and is blind to its inputs: the wiring tests use random params instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import bind, unet_tiny

B, H, C, L, C_CTX, N_CLASSES = 2, 16, 3, 5, 8, 10
MODEL = unet_tiny(
    num_classes=N_CLASSES,
    context_dim=C_CTX,
    concat_channels=2,
    scale_shift_norm=True,
    learn_sigma=True,
    dropout=0.1,
)
APPLY = jax.jit(MODEL.apply)


def random_params(variables_shape, seed=0):
    """Random parameters of the given shapes, drawn in numpy (no compile): kernels and
    embeddings N(0, 1/fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2). Unlike the
    DDPM init, nothing is zero, so every layer is live."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", "")
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * noise)
        if name == "bias":
            return jnp.asarray(0.1 * noise)
        return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))

    return jax.tree_util.tree_map_with_path(draw, variables_shape)


@pytest.fixture(scope="module")
def inputs():
    kx, kc, ki = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(kx, (B, H, H, C))
    t = jnp.array([0.3, 0.8])
    cond = {
        "y": jnp.array([3, 7]),
        "context": jax.random.normal(kc, (B, L, C_CTX)),
        "concat": jax.random.normal(ki, (B, H, H, 2)),
    }
    return x, t, cond


@pytest.fixture(scope="module")
def params(inputs):
    shapes = jax.eval_shape(lambda: MODEL.init(jax.random.PRNGKey(0), *inputs))
    return random_params(shapes)


def _rel_change(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


def test_every_input_reaches_the_output(params, inputs):
    x, t, cond = inputs
    out = APPLY(params, x, t, cond)
    assert out.shape == (B, H, H, 2 * C) and bool(jnp.all(jnp.isfinite(out)))
    changed = {
        "t": APPLY(params, x, 1.0 - t, cond),
        "null_label": APPLY(params, x, t, {**cond, "y": jnp.full((B,), N_CLASSES)}),
        "context": APPLY(params, x, t, {**cond, "context": cond["context"][:, ::-1] + 1.0}),
        "concat": APPLY(params, x, t, {**cond, "concat": -cond["concat"]}),
    }
    for name, other in changed.items():
        # Float32 round-off is ~1e-7 relative; a wired input moves the output by O(1e-2) or more.
        assert _rel_change(out, other) > 1e-3, name


def test_context_acts_only_through_cross_attention(params, inputs):
    # Zero the output projection of every cross-attention layer: the context then cannot
    # change a single bit of the output (its only path is cross-attention).
    x, t, cond = inputs
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if _is_cross_out(path) else p, params
    )
    other = {**cond, "context": 3.0 * cond["context"] + 1.0}
    np.testing.assert_array_equal(APPLY(zeroed, x, t, cond), APPLY(zeroed, x, t, other))
    assert _rel_change(APPLY(zeroed, x, t, cond), APPLY(params, x, t, cond)) > 1e-3


def _is_cross_out(path):
    names = [getattr(k, "key", None) for k in path]
    return "cross_attn" in names and "out" in names


def test_examples_do_not_mix_across_the_batch(params, inputs):
    x, t, cond = inputs
    x2 = x.at[1].set(-x[1])
    out, out2 = APPLY(params, x, t, cond), APPLY(params, x2, t, cond)
    np.testing.assert_array_equal(out[0], out2[0])
    assert _rel_change(out[1], out2[1]) > 1e-3


def test_gradients_reach_every_parameter(params, inputs):
    x, t, cond = inputs
    w = jax.random.normal(jax.random.PRNGKey(3), (B, H, H, 2 * C))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(w * MODEL.apply(p, x, t, cond))))(params)
    dead = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if not bool(jnp.any(g != 0))
    ]
    assert not dead, dead


def test_dropout_is_active_only_in_training(params, inputs):
    x, t, cond = inputs
    train = jax.jit(lambda p, key: bind(MODEL, p, train=True, rngs=key)(x, t, cond))
    a, b = train(params, jax.random.PRNGKey(4)), train(params, jax.random.PRNGKey(5))
    eval_out = APPLY(params, x, t, cond)
    assert _rel_change(a, b) > 1e-3 and _rel_change(a, eval_out) > 1e-3
    np.testing.assert_array_equal(a, train(params, jax.random.PRNGKey(4)))


def test_bfloat16_compute_keeps_float32_params(params, inputs):
    x, t, cond = inputs
    bf16 = MODEL.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), x, t, cond))
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(bf16.apply)(params, x, t, cond)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%); compounded over the ~25
    # layers of this net the error stays at a few percent, far below an O(1) wiring error.
    assert _rel_change(APPLY(params, x, t, cond), out) < 0.1


@pytest.mark.parametrize("resample_with_conv", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_plain_ddpm_path_gradients_reach_every_parameter(resample_with_conv):
    # The DDPM configuration proper: additive time embedding, single-head self-attention
    # blocks (no cross-attention), unconditional; with conv or avg-pool resampling.
    model = unet_tiny(resample_with_conv=resample_with_conv)
    x = jax.random.normal(jax.random.PRNGKey(1), (B, H, H, C))
    t = jnp.array([0.3, 0.8])
    params = random_params(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t)))
    w = jax.random.normal(jax.random.PRNGKey(3), (B, H, H, C))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(w * model.apply(p, x, t))))(params)
    dead = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if not bool(jnp.any(g != 0))
    ]
    assert not dead, dead
