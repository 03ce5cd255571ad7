"""Backbones without compiling: parameter counts of the paper presets, output shapes of every
head / resolution / conditioning path, bad-input errors, and the small pure helpers.

Everything here runs through `jax.eval_shape` (tracing only), so it is cheap even for DiT-XL/2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.kernels import split_learned_variance
from diffjax.models import (
    MODELS,
    DiT,
    bind,
    bound_variance,
    dit_preset,
    get_model,
    head_channels,
    mlp_toy,
    sinusoidal_embedding,
    split_cond,
    unet_ddpm_256,
    unet_ddpm_cifar10,
    unet_tiny,
)
from diffjax.models.dit import dit_tiny, sincos_2d, unpatchify


def _variables(model, x, cond=None):
    t = jnp.full((x.shape[0],), 0.5)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, t, cond), x)


def _count(model, x, cond=None):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(_variables(model, x, cond)))


def _out_shape(model, x, cond=None):
    t = jnp.full((x.shape[0],), 0.5)

    def run(x):
        variables = model.init(jax.random.PRNGKey(0), x, t, cond)
        return model.apply(variables, x, t, cond)

    # x is abstract (a ShapeDtypeStruct); t and cond stay concrete so value checks run.
    out = jax.eval_shape(run, x)
    assert out.dtype == jnp.float32
    return out.shape


def _sds(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


# ----------------------------------------------------------------------------------------------
# Parameter counts of the published models (within 1%).


def test_ddpm_cifar10_has_35_7m_parameters():
    # Ho et al. 2020, sec. 4: "Our CIFAR10 model has 35.7 million parameters".
    n = _count(unet_ddpm_cifar10(), _sds(1, 32, 32, 3))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n


def test_ddpm_256_has_114m_parameters():
    # Ho et al. 2020, sec. 4: "our LSUN and CelebA-HQ models have 114 million parameters".
    n = _count(unet_ddpm_256(), _sds(1, 256, 256, 3))
    assert abs(n - 114e6) / 114e6 < 0.01, n


# Peebles & Xie 2023, Table 4 (ImageNet 256x256: 32x32x4 latents, 1000 classes, learn_sigma).
DIT_PAPER_PARAMS = {"S": 33e6, "B": 130e6, "L": 458e6, "XL": 675e6}


@pytest.mark.parametrize("size", sorted(DIT_PAPER_PARAMS))
def test_dit_parameter_counts_match_the_paper(size):
    n = _count(dit_preset(size, 2), _sds(1, 32, 32, 4))
    assert abs(n - DIT_PAPER_PARAMS[size]) / DIT_PAPER_PARAMS[size] < 0.01, (size, n)


def test_dit_xl2_matches_the_reference_code_exactly():
    # The authors' code prints 675,129,632 parameters for DiT-XL/2, counting its fixed
    # (requires_grad=False) sin-cos position table of 256 x 1152 entries, a constant here.
    n = _count(dit_preset("XL", 2), _sds(1, 32, 32, 4))
    assert n + 256 * 1152 == 675_129_632


def test_dit_learn_sigma_adds_exactly_the_second_half_of_the_final_linear():
    # learn_sigma doubles the outputs: only the final Dense grows, by (hidden + 1) p^2 C.
    p, hidden, c = 2, 384, 4
    n1 = _count(dit_preset("S", p, learn_sigma=True), _sds(1, 32, 32, c))
    n0 = _count(dit_preset("S", p, learn_sigma=False), _sds(1, 32, 32, c))
    assert n1 - n0 == (hidden + 1) * p * p * c


# ----------------------------------------------------------------------------------------------
# Output shapes: every head, resolution and conditioning path.

B = 2
LABELS = jnp.array([0, 10])  # a real class and the null label (num_classes = 10)
CONTEXT = jnp.zeros((B, 5, 8))
UNET_CASES = {
    "eps": (unet_tiny(), (B, 16, 16, 3), None, 3),
    "learned_variance": (unet_tiny(learn_sigma=True), (B, 16, 16, 3), None, 6),
    "out_channels": (unet_tiny(out_channels=1), (B, 16, 16, 3), None, 1),
    "gray_8x8": (unet_tiny(in_channels=1, attn_resolutions=(4,)), (B, 8, 8, 1), None, 1),
    "rectangular": (unet_tiny(), (B, 16, 32, 3), None, 3),
    "three_levels": (
        unet_tiny(ch_mult=(1, 1, 2), attn_resolutions=(8, 4)),
        (B, 16, 16, 3),
        None,
        3,
    ),
    "avg_pool": (unet_tiny(resample_with_conv=False), (B, 16, 16, 3), None, 3),
    "film_heads": (unet_tiny(scale_shift_norm=True, num_heads=2), (B, 16, 16, 3), None, 3),
    "labels": (unet_tiny(num_classes=10), (B, 16, 16, 3), LABELS, 3),
    "labels_default_null": (unet_tiny(num_classes=10), (B, 16, 16, 3), None, 3),
    "context": (unet_tiny(context_dim=8), (B, 16, 16, 3), CONTEXT, 3),
    "concat": (unet_tiny(concat_channels=4), (B, 16, 16, 3), jnp.zeros((B, 16, 16, 4)), 3),
    "dict": (
        unet_tiny(num_classes=10, context_dim=8, concat_channels=1),
        (B, 16, 16, 3),
        {"y": LABELS, "context": CONTEXT, "concat": jnp.zeros((B, 16, 16, 1))},
        3,
    ),
    "cifar10_preset": (unet_ddpm_cifar10(), (B, 32, 32, 3), None, 3),
}


@pytest.mark.parametrize("case", sorted(UNET_CASES))
def test_unet_output_shapes(case):
    model, shape, cond, c_out = UNET_CASES[case]
    assert _out_shape(model, _sds(*shape), cond) == shape[:3] + (c_out,)


DIT_CASES = {
    "learned_variance": (dit_tiny(), (B, 8, 8, 4), LABELS, 8),
    "eps": (dit_tiny(learn_sigma=False), (B, 8, 8, 4), LABELS, 4),
    "patch1": (dit_tiny(patch_size=1), (B, 4, 4, 4), LABELS, 8),
    "patch4_rectangular": (dit_tiny(patch_size=4), (B, 8, 16, 4), LABELS, 8),
    "unconditional": (dit_tiny(num_classes=None), (B, 8, 8, 4), None, 8),
    "rgb": (dit_tiny(in_channels=3, learn_sigma=False), (B, 8, 8, 3), None, 3),
    "concat": (dit_tiny(concat_channels=2), (B, 8, 8, 4), {"concat": jnp.zeros((B, 8, 8, 2))}, 8),
}


@pytest.mark.parametrize("case", sorted(DIT_CASES))
def test_dit_output_shapes(case):
    model, shape, cond, c_out = DIT_CASES[case]
    assert _out_shape(model, _sds(*shape), cond) == shape[:3] + (c_out,)


@pytest.mark.parametrize(
    "model, cond, d_out",
    [(mlp_toy(), None, 2), (mlp_toy(learn_sigma=True), None, 4), (mlp_toy(num_classes=3), 1, 2)],
)
def test_mlp_output_shapes(model, cond, d_out):
    cond = None if cond is None else jnp.array([0, 3])
    assert _out_shape(model, _sds(B, 2), cond) == (B, d_out)


def test_bind_is_apply_with_the_cond_convention():
    # bind(...) and functools.partial(module.apply, variables) give the same function.
    model = unet_tiny(num_classes=10)
    x, t = _sds(B, 16, 16, 3), jnp.full((B,), 0.5)

    def both(x):
        variables = model.init(jax.random.PRNGKey(0), x, t, LABELS)
        return bind(model, variables)(x, t, LABELS), model.apply(variables, x, t, LABELS)

    a, b = jax.eval_shape(both, x)
    assert a.shape == b.shape == (B, 16, 16, 3)


# ----------------------------------------------------------------------------------------------
# Bad input raises ValueError naming the offending value.

BAD_CALLS = {
    "size_not_divisible_by_downsampling": (unet_tiny(), (B, 15, 16, 3), None, "divisible"),
    "wrong_channels": (unet_tiny(), (B, 16, 16, 4), None, "input channels"),
    "attn_resolution_never_occurs": (
        unet_tiny(attn_resolutions=(5,)),
        (B, 16, 16, 3),
        None,
        r"\[5\] never occur",
    ),
    "context_without_cross_attention": (unet_tiny(), (B, 16, 16, 3), CONTEXT, "no cross-attention"),
    "wrong_context_width": (
        unet_tiny(context_dim=4),
        (B, 16, 16, 3),
        CONTEXT,
        r"\(2, L, 4\)",
    ),
    "missing_context": (unet_tiny(context_dim=8), (B, 16, 16, 3), None, "no context"),
    "labels_without_embedding": (unet_tiny(), (B, 16, 16, 3), LABELS, "no class embedding"),
    "label_out_of_range": (unet_tiny(num_classes=10), (B, 16, 16, 3), jnp.array([0, 11]), "11"),
    "missing_concat": (unet_tiny(concat_channels=2), (B, 16, 16, 3), None, "concat"),
    "dit_patch": (dit_tiny(), (B, 9, 8, 4), LABELS, "patch_size=2"),
    "dit_channels": (dit_tiny(), (B, 8, 8, 3), LABELS, "input channels"),
    "dit_context": (dit_tiny(), (B, 8, 8, 4), {"context": CONTEXT}, "no cross-attention"),
    "mlp_rank": (mlp_toy(), (B, 4, 4, 2), None, "rank 2"),
    "mlp_context": (mlp_toy(), (B, 2), {"context": CONTEXT}, "only class labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_raises_at_first_call(case):
    model, shape, cond, match = BAD_CALLS[case]
    with pytest.raises(ValueError, match=match):
        _out_shape(model, _sds(*shape), cond)


def test_bad_time_raises():
    x = _sds(B, 16, 16, 3)
    with pytest.raises(ValueError, match="shape"):
        _out_shape_t(unet_tiny(), x, jnp.zeros((B, 1)))
    with pytest.raises(ValueError, match="1.5"):
        _out_shape_t(unet_tiny(), x, jnp.array([0.5, 1.5]))


def _out_shape_t(model, x, t):
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, t), x)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: unet_tiny(ch_mult=()), "ch_mult"),
        (lambda: unet_tiny(num_res_blocks=0), "num_res_blocks"),
        (lambda: unet_tiny(dropout=1.5), "1.5"),
        (lambda: unet_tiny(ch=12), "12"),
        (lambda: DiT(hidden=30, num_heads=4), "hidden=30"),
        (lambda: DiT(patch_size=0), "patch_size"),
        (lambda: dit_preset("M", 2), "'M'"),
        (lambda: mlp_toy(time_dim=3), "time_dim=3"),
        (lambda: get_model("unet_huge"), "unet_huge"),
        (lambda: get_model("dit_tiny", chanels=3), "chanels"),
        (lambda: split_cond(jnp.zeros((B,))), r"\(2,\)"),
        (lambda: split_cond({"label": LABELS}), "label"),
        (lambda: head_channels(0, True), "0"),
    ],
)
def test_bad_construction_raises(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bind_in_train_mode_needs_a_dropout_key():
    with pytest.raises(ValueError, match="dropout=0.1"):
        bind(unet_ddpm_cifar10(), {"params": {}}, train=True)


# ----------------------------------------------------------------------------------------------
# Registry, conditioning convention and pure helpers.


def test_every_registered_preset_constructs_with_overrides():
    for name in MODELS:
        model = get_model(name, dtype=jnp.bfloat16)
        assert model.dtype == jnp.bfloat16, name


def test_split_cond_dispatches_on_dtype_and_rank():
    y, ctx, img = LABELS, CONTEXT, jnp.zeros((B, 4, 4, 1))
    assert split_cond(None) == (None, None, None)
    assert split_cond(y)[0] is not None and split_cond(y)[1:] == (None, None)
    assert split_cond(ctx)[1] is not None and split_cond(ctx)[0] is None
    assert split_cond(img)[2] is not None and split_cond(img)[:2] == (None, None)
    d = split_cond({"y": y, "concat": img})
    assert d[0] is y and d[1] is None and d[2] is img


def test_sinusoidal_embedding_matches_the_closed_form():
    # emb[:, k] = sin(1000 t w_k), emb[:, half + k] = cos(1000 t w_k), w_k = 10000^(-k/half).
    t = np.array([0.0, 0.001, 0.37, 1.0])
    dim, half = 16, 8
    w = 10000.0 ** (-np.arange(half) / half)
    ref = np.concatenate([np.sin(1000 * t[:, None] * w), np.cos(1000 * t[:, None] * w)], 1)
    got = np.asarray(sinusoidal_embedding(jnp.asarray(t, jnp.float32), dim))
    # float32 arguments up to 1000: absolute error ~ 1000 * 2^-24 per unit, i.e. < 1e-4.
    np.testing.assert_allclose(got, ref, atol=2e-4)


def test_sincos_2d_encodes_row_and_column():
    # Position (i, j) of an h x w grid: first half of the width is the 1-D code of i, the second
    # half that of j; the 1-D code of p is [sin(p w_k), cos(p w_k)], w_k = 10000^(-k / (d/4)).
    d, h, w = 16, 3, 5
    emb = sincos_2d(d, h, w)
    omega = 10000.0 ** (-np.arange(d // 4) / (d // 4))
    for i, j in [(0, 0), (2, 4), (1, 3)]:
        ref = np.concatenate(
            [np.sin(i * omega), np.cos(i * omega), np.sin(j * omega), np.cos(j * omega)]
        )
        np.testing.assert_allclose(emb[i * w + j], ref, atol=1e-6)
    assert len({tuple(np.round(r, 5)) for r in emb}) == h * w  # all positions distinct


def test_unpatchify_inverts_the_patch_layout():
    # Token (i, j) holds, at index (a p + b) C + c, pixel (i p + a, j p + b, c): checked by loops.
    rng = np.random.default_rng(0)
    p, h, w, c = 2, 4, 6, 3
    tokens = rng.normal(size=(1, (h // p) * (w // p), p * p * c)).astype(np.float32)
    img = np.asarray(unpatchify(jnp.asarray(tokens), p, h, w))
    for i in range(h // p):
        for j in range(w // p):
            for a in range(p):
                for b in range(p):
                    np.testing.assert_array_equal(
                        img[0, i * p + a, j * p + b],
                        tokens[0, i * (w // p) + j, (a * p + b) * c : (a * p + b + 1) * c],
                    )


# Peebles & Xie 2023, Table 4: forward Gflops at 256x256 (fvcore: one multiply-add = 1 flop).
DIT_PAPER_GFLOPS = {"S": 6.06, "B": 23.01, "L": 80.71, "XL": 118.64}


@pytest.mark.parametrize(
    "size",
    ["S"] + [pytest.param(s, marks=pytest.mark.slow) for s in ("B", "L", "XL")],
)
def test_dit_forward_flops_match_the_paper(size):
    # XLA's cost analysis counts a multiply-add as 2 FLOPs, so halve it. The paper counts only
    # the matmuls/convs; the extra elementwise work (norms, softmax, SiLU) is < 1% here.
    model = dit_preset(size, 2)
    x, t, y = _sds(1, 32, 32, 4), _sds(1), _sds(1, dtype=jnp.int32)
    variables = jax.eval_shape(lambda x, t, y: model.init(jax.random.PRNGKey(0), x, t, y), x, t, y)
    cost = jax.jit(model.apply).lower(variables, x, t, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    gflops = cost["flops"] / 2e9
    assert abs(gflops - DIT_PAPER_GFLOPS[size]) / DIT_PAPER_GFLOPS[size] < 0.02, gflops


def test_learned_variance_head_feeds_the_kernels():
    # [mean | v]: split_learned_variance gives two C-channel halves; bound_variance squashes
    # only v into [-1, 1] (tanh) and leaves the mean prediction untouched.
    out = jnp.asarray(np.random.default_rng(0).normal(size=(B, 4, 4, 6)) * 3.0, jnp.float32)
    mean, v = split_learned_variance(out)
    assert mean.shape == v.shape == (B, 4, 4, 3)
    bounded = bound_variance(out)
    np.testing.assert_array_equal(bounded[..., :3], out[..., :3])
    np.testing.assert_allclose(bounded[..., 3:], np.tanh(np.asarray(out[..., 3:])), rtol=1e-6)
    assert float(jnp.max(jnp.abs(bounded[..., 3:]))) <= 1.0


def test_list_options_from_configs_keep_the_module_hashable():
    # ml_collections configs may pass lists; the module must stay hashable (a static jit arg).
    model = get_model("unet_tiny", ch_mult=[1, 2], attn_resolutions=[8])
    assert model.ch_mult == (1, 2) and model.attn_resolutions == (8,)
    assert hash(model) == hash(unet_tiny(ch_mult=(1, 2), attn_resolutions=(8,)))
