"""Text conditioning: the word tokenizer (round trip, <unk>, padding, too-long captions), the
transformer text encoder (padding mask, pooling, gradients), the frozen-encoder interface, and
the pooled embedding of the U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data.text import WordTokenizer, split_words
from diffjax.models import FrozenEncoder, pool_context, text_tiny, unet_tiny

CAPTIONS = ["a seven to the left of a two", "trouser then sneaker", "a t-shirt, then a bag."]


def test_tokenizer_round_trip_specials_and_padding():
    tok = WordTokenizer.from_captions(CAPTIONS)
    assert tok.vocab[:4] == ("<pad>", "<unk>", "<bos>", "<eos>")
    assert tok.context_length == 10  # 8 words of the longest caption + <bos> + <eos>
    assert split_words("A t-shirt, then a bag.") == ["a", "t-shirt", ",", "then", "a", "bag", "."]
    ids = tok(CAPTIONS)
    assert ids.shape == (3, 10) and ids.dtype == np.int32
    for caption, row in zip(CAPTIONS, ids, strict=True):
        assert tok.decode(row) == " ".join(split_words(caption))
        n = len(split_words(caption))
        assert row[0] == 2 and row[n + 1] == 3 and np.all(row[n + 2 :] == 0)
        assert np.all(row[1 : n + 1] >= 4)  # every word known
    plain = WordTokenizer.from_captions(CAPTIONS, context_length=12, add_bos_eos=False)
    assert plain.vocab_size == 2 + len(plain.words) and plain("two then seven").shape == (1, 12)


def test_unknown_words_map_to_unk_and_long_captions_raise():
    tok = WordTokenizer.from_captions(CAPTIONS)
    ids = tok.encode("a purple seven")
    assert ids[2] == tok.unk_id == 1 and tok.decode(ids) == "a <unk> seven"
    with pytest.raises(ValueError, match="11 tokens, longer than the context length 10"):
        tok.encode("a seven to the left of a two and")
    with pytest.raises(ValueError, match="at least one caption"):
        WordTokenizer.from_captions([])


ENC = text_tiny(vocab_size=20, context_length=6)
TOKENS = jnp.array([[2, 5, 7, 3, 0, 0], [2, 9, 3, 0, 0, 0]])
N_REAL = np.array([4, 3])


@pytest.fixture(scope="module")
def enc_params():
    params = ENC.init(jax.random.PRNGKey(0), TOKENS)
    # Make the norms non-trivial so that every parameter is live.
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(p.dtype), params)


def test_text_encoder_shapes_mask_and_pooling(enc_params):
    apply = jax.jit(ENC.apply)
    states, pooled = apply(enc_params, TOKENS)
    assert states.shape == (2, 6, 32) and pooled.shape == (2, 32)
    real = np.arange(6)[None] < N_REAL[:, None]
    assert np.all(np.asarray(states)[~real] == 0.0) and np.all(np.any(states != 0, -1)[real])
    masked_mean = np.stack([np.asarray(states)[b, : N_REAL[b]].mean(0) for b in range(2)])
    np.testing.assert_allclose(pooled, masked_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool_context(states), masked_mean, rtol=1e-5, atol=1e-6)
    # The padding mask: the <pad> embedding cannot change a single bit of any output.
    moved = jax.tree_util.tree_map_with_path(
        lambda path, p: p.at[0].add(5.0) if "tok" in jax.tree_util.keystr(path) else p,
        enc_params,
    )
    np.testing.assert_array_equal(apply(moved, TOKENS)[0], states)
    # ...while a real token does, also at the other positions (attention mixes tokens).
    other = apply(enc_params, TOKENS.at[0, 1].set(6))[0]
    assert float(jnp.max(jnp.abs(other[0, 2] - states[0, 2]))) > 1e-4
    np.testing.assert_array_equal(other[1], states[1])
    eos = ENC.clone(pooling="eos")
    _, pooled_eos = jax.jit(eos.apply)(enc_params, TOKENS)
    np.testing.assert_array_equal(pooled_eos, states[np.arange(2), N_REAL - 1])
    with pytest.raises(ValueError, match=r"tokens must be \[B, 6\]"):
        ENC.apply(enc_params, TOKENS[:, :5])


def test_text_encoder_gradients_reach_every_parameter(enc_params):
    w = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 32))

    def loss(p):
        states, pooled = ENC.apply(p, TOKENS)
        return jnp.sum(w * states) + jnp.sum(pooled**2)

    grads = jax.jit(jax.grad(loss))(enc_params)
    dead = [
        jax.tree_util.keystr(k)
        for k, g in jax.tree_util.tree_leaves_with_path(grads)
        if not jnp.any(g != 0)
    ]
    assert not dead, dead


def test_frozen_encoder_interface():
    table = jax.random.normal(jax.random.PRNGKey(0), (20, 8))
    frozen = FrozenEncoder(lambda tokens: table[tokens])
    states, pooled = frozen(TOKENS)
    assert states.shape == (2, 6, 8)
    np.testing.assert_array_equal(states[0, 4:], 0.0)
    np.testing.assert_allclose(pooled[1], table[np.array([2, 9, 3])].mean(0), rtol=1e-6)
    grad = jax.grad(lambda t: jnp.sum(FrozenEncoder(lambda tok: t[tok])(TOKENS)[0]))(table)
    assert not np.any(np.asarray(grad))  # frozen: no gradient reaches the tower
    with pytest.raises(ValueError, match=r"to \[B, L, C\]"):
        FrozenEncoder(lambda tokens: table[tokens].sum(1))(TOKENS)


def test_unet_pooled_embedding_acts_through_its_dense_and_cross_attention():
    model = unet_tiny(
        ch=8, attn_resolutions=(4,), context_dim=8, pooled_embedding=True, num_groups=4
    )
    x, t = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 3)), jnp.array([0.3, 0.7])
    ctx = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 8))
    # Random parameters drawn in numpy from the abstract init (no init compile): every layer
    # live, including the zero-initialised ones.
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, ctx))
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda a: jnp.asarray(
            rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])), a.dtype
        ),
        shapes,
    )

    def zero(names):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: jnp.zeros_like(p) if _has(path, names) else p, params
        )

    apply = jax.jit(model.apply)
    ctx2 = 2.0 * ctx + 1.0
    both = zero([("cross_attn", "out"), ("pooled_emb",)])
    np.testing.assert_array_equal(apply(both, x, t, ctx), apply(both, x, t, ctx2))
    only_cross = zero([("cross_attn", "out")])  # the pooled path alone still sees the context
    assert (
        float(jnp.max(jnp.abs(apply(only_cross, x, t, ctx) - apply(only_cross, x, t, ctx2)))) > 1e-4
    )
    with pytest.raises(ValueError, match="pooled_embedding=True needs cross-attention"):
        unet_tiny(pooled_embedding=True)


def _has(path, names):
    keys = [getattr(k, "key", None) for k in path]
    return any(all(n in keys for n in group) for group in names)
