"""DiT (adaLN-Zero) and MLP wiring: exact zero output at init, conditioning paths (labels and
cross-attention to a context), gradients to every parameter, no mixing across the batch,
bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import dit_tiny, mlp_toy

B, N_CLASSES = 2, 10
DIT = dit_tiny()  # 8x8x4 latents, patch 2, hidden 32, depth 2, 10 classes, learn_sigma
DIT_APPLY = jax.jit(DIT.apply)
ZERO_INIT = ("adaLN", "final_adaLN", "final_linear")


def _names(path):
    return [getattr(k, "key", None) for k in path]


def perturb_zero_init(variables, scale=0.02, seed=0):
    """Replace the zero-initialised adaLN-Zero modulations, final linear and cross-attention
    output projections by N(0, scale^2) (drawn in numpy: no per-leaf compiles)."""
    rng = np.random.default_rng(seed)

    def maybe(path, p):
        if any(n in ZERO_INIT for n in _names(path)) or _is_cross_out(path):
            return jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype)
        return p

    return jax.tree_util.tree_map_with_path(maybe, variables)


def _is_cross_out(path):
    return {"cross_attn", "out"} <= set(_names(path))


def _rel_change(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


# Recomputing the same function in float32 changes nothing or ~1e-7 relatively; a live input
# moves the output by far more (the t path of a DiT with 0.02-scale adaLN weights: ~5e-4).
LIVE = 1e-5


def _dead(grads):
    return [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if not bool(jnp.any(g != 0))
    ]


@pytest.fixture(scope="module")
def dit_inputs():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, 8, 8, 4))
    return x, jnp.array([0.2, 0.9]), jnp.array([3, 7])


@pytest.fixture(scope="module")
def dit_fresh(dit_inputs):
    return jax.jit(DIT.init)(jax.random.PRNGKey(0), *dit_inputs)


@pytest.fixture(scope="module")
def dit_params(dit_fresh):
    return perturb_zero_init(dit_fresh)


def test_fresh_dit_outputs_exactly_zero(dit_fresh, dit_inputs):
    # adaLN-Zero: the final linear (and every gate) starts at zero (Peebles & Xie 2023, 3.2).
    assert np.all(np.asarray(DIT_APPLY(dit_fresh, *dit_inputs)) == 0.0)
    final_only = jax.tree_util.tree_map_with_path(
        lambda path, p: p + 0.02 if "final_linear" in _names(path) else p, dit_fresh
    )
    assert float(jnp.max(jnp.abs(DIT_APPLY(final_only, *dit_inputs)))) > LIVE


def test_zero_init_blocks_gradients_until_perturbed(dit_fresh, dit_params, dit_inputs):
    # At init the output is 0 * (everything before the final linear), so only the final
    # layer gets a gradient; the zero gates of each block also cut the attention/MLP weights
    # off. Once the zero-initialised layers are perturbed, every parameter gets a gradient.
    x, t, y = dit_inputs
    w = jax.random.normal(jax.random.PRNGKey(3), (B, 8, 8, 8))
    grad = jax.jit(jax.grad(lambda p: jnp.sum(w * DIT.apply(p, x, t, y))))
    fresh_dead = _dead(grad(dit_fresh))
    assert any("attn" in d for d in fresh_dead) and any("mlp0" in d for d in fresh_dead)
    assert not any("final_linear" in d for d in fresh_dead)
    assert not _dead(grad(dit_params)), _dead(grad(dit_params))


def test_dit_conditioning_paths(dit_params, dit_inputs):
    x, t, y = dit_inputs
    out = DIT_APPLY(dit_params, x, t, y)
    null = jnp.full((B,), N_CLASSES)
    assert _rel_change(out, DIT_APPLY(dit_params, x, t, null)) > LIVE
    assert _rel_change(out, DIT_APPLY(dit_params, x, 1.0 - t, y)) > LIVE
    # No labels means the null label (the unconditional branch of classifier-free guidance);
    # the two graphs differ (labels built inside), so allow float32 fusion round-off.
    np.testing.assert_allclose(
        DIT_APPLY(dit_params, x, t, null), DIT_APPLY(dit_params, x, t, None), rtol=1e-5, atol=1e-6
    )


def test_dit_examples_do_not_mix_across_the_batch(dit_params, dit_inputs):
    x, t, y = dit_inputs
    x2 = x.at[1].set(-x[1])
    out, out2 = DIT_APPLY(dit_params, x, t, y), DIT_APPLY(dit_params, x2, t, y)
    np.testing.assert_array_equal(out[0], out2[0])
    assert _rel_change(out[1], out2[1]) > LIVE


def test_dit_bfloat16(dit_params, dit_inputs):
    bf16 = DIT.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: bf16.init(jax.random.PRNGKey(0), *dit_inputs))
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(bf16.apply)(dit_params, *dit_inputs)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    # bf16 rounding (2^-9 relative) over a depth-2 transformer: a few percent at most.
    assert _rel_change(DIT_APPLY(dit_params, *dit_inputs), out) < 0.1


# ----------------------------------------------------------------------------------------------
# DiT with cross-attention to a context [B, L, C] and the pooled context embedding.

C_CTX, L_CTX = 8, 5
DIT_X = dit_tiny(context_dim=C_CTX, pooled_embedding=True)
DIT_X_APPLY = jax.jit(DIT_X.apply)


@pytest.fixture(scope="module")
def cross_setup(dit_inputs):
    x, t, y = dit_inputs
    cond = {"y": y, "context": jax.random.normal(jax.random.PRNGKey(4), (B, L_CTX, C_CTX))}
    fresh = jax.jit(DIT_X.init)(jax.random.PRNGKey(0), x, t, cond)
    return fresh, perturb_zero_init(fresh), cond


def test_cross_attention_dit_fresh_zero_and_context_paths(cross_setup, dit_inputs):
    fresh, params, cond = cross_setup
    x, t, _ = dit_inputs
    assert np.all(np.asarray(DIT_X_APPLY(fresh, x, t, cond)) == 0.0)
    other = {**cond, "context": 3.0 * cond["context"] + 1.0}

    def zero(pred):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.zeros_like(p) if pred(path) else p, params
        )

    pooled = lambda path: "pooled_embed" in _names(path)
    # With every cross-attention output projection and the pooled embedding zeroed, the
    # context cannot change a single bit of the output: those are its only paths.
    both = zero(lambda path: _is_cross_out(path) or pooled(path))
    np.testing.assert_array_equal(DIT_X_APPLY(both, x, t, cond), DIT_X_APPLY(both, x, t, other))
    for alive in (zero(_is_cross_out), zero(pooled), params):  # each path alone is live
        assert _rel_change(DIT_X_APPLY(alive, x, t, cond), DIT_X_APPLY(alive, x, t, other)) > LIVE
    # The padding convention: a context of zero rows pools like its non-zero rows alone.
    padded = {**cond, "context": jnp.concatenate([cond["context"], 0 * cond["context"]], 1)}
    no_cross = zero(_is_cross_out)
    np.testing.assert_allclose(
        DIT_X_APPLY(no_cross, x, t, padded), DIT_X_APPLY(no_cross, x, t, cond), rtol=1e-5, atol=1e-6
    )


def test_cross_attention_dit_gradients_and_shapes(cross_setup, dit_inputs):
    fresh, params, cond = cross_setup
    x, t, _ = dit_inputs
    w = jax.random.normal(jax.random.PRNGKey(3), (B, 8, 8, 8))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(w * DIT_X.apply(p, x, t, cond))))(params)
    assert not _dead(grads), _dead(grads)
    assert any(
        "cross_attn" in jax.tree_util.keystr(k)
        for k, _ in jax.tree_util.tree_leaves_with_path(grads)
    )
    with pytest.raises(ValueError, match=r"no cross-attention \(context_dim=None\); got a context"):
        DIT.init(jax.random.PRNGKey(0), x, t, cond)
    with pytest.raises(ValueError, match=r"\(context_dim=8\); no context"):
        DIT_X.apply(fresh, x, t, cond["y"])
    with pytest.raises(ValueError, match=r"context must have shape \(2, L, 8\)"):
        DIT_X.apply(fresh, x, t, {**cond, "context": jnp.zeros((B, L_CTX, 4))})
    with pytest.raises(ValueError, match="pooled_embedding=True needs cross-attention"):
        dit_tiny(pooled_embedding=True)


# ----------------------------------------------------------------------------------------------
# MLP for low-dimensional data.

MLP = mlp_toy(num_classes=3, learn_sigma=True)


@pytest.fixture(scope="module")
def mlp_setup():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, 2))
    t, y = jnp.array([0.1, 0.6]), jnp.array([0, 2])
    return jax.jit(MLP.init)(jax.random.PRNGKey(0), x, t, y), x, t, y


def test_mlp_wiring_and_gradients(mlp_setup):
    params, x, t, y = mlp_setup
    apply = jax.jit(MLP.apply)
    out = apply(params, x, t, y)
    assert out.shape == (B, 4)
    assert _rel_change(out, apply(params, x, t, jnp.full((B,), 3))) > LIVE
    assert _rel_change(out, apply(params, x, 1.0 - t, y)) > LIVE
    out2 = apply(params, x.at[1].set(-x[1]), t, y)
    np.testing.assert_array_equal(out[0], out2[0])
    w = jax.random.normal(jax.random.PRNGKey(3), out.shape)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(w * MLP.apply(p, x, t, y))))(params)
    assert not _dead(grads), _dead(grads)
