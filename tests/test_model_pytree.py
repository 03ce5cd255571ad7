"""A model as a traced pytree: bound parameters never recompile and never become constants.

Every entry point that jits a loop over a model (`sample`, `likelihood`, `inpaint`, and the
guidance transformers' results passed to them) must compile once for three parameter sets
bound by `diffjax.models.bind`, and give what the static path (`functools.partial(net.apply,
variables)`, a function hashed by identity with the parameters baked in) gives.
"""

import contextlib
import functools
import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np

import diffjax
from diffjax import guidance, inpaint, likelihood, modeltree, nll_dataset
from diffjax.models import bind, get_model
from diffjax.samplers import api, sample

# the modules (diffjax.inpaint and diffjax.likelihood are the functions of the same names)
inpaint_lib = importlib.import_module("diffjax.inpaint")
likelihood_lib = importlib.import_module("diffjax.likelihood")

VP = diffjax.vp()
KEY = jax.random.PRNGKey(0)
SHAPE = (8, 2)


def _net(hidden=16, **kw):
    # time_scale 1: a smooth function of t, so the adaptive likelihood solve is well conditioned
    # and the float rounding of constants vs. arguments cannot change its step sequence
    return get_model("mlp", hidden=hidden, depth=1, time_dim=8, time_scale=1.0, **kw)


def _variables(net, seed, cond=None):
    x, t = jnp.zeros(SHAPE), jnp.full(SHAPE[:1], 0.5)
    return net.init(jax.random.PRNGKey(seed), x, t, cond)


@contextlib.contextmanager
def _count_compiles(name):
    """Yields a list that collects JAX's 'Compiling jit(name)' log records inside the block."""
    records = []

    class Handler(logging.Handler):
        def emit(self, record):
            if f"Compiling jit({name})" in record.getMessage():
                records.append(record)

    handler = Handler()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield records
    finally:
        logger.removeHandler(handler)


def _one_compile_for_three_parameter_sets(jitted, name, run, static_run, check=(1, 2, 3)):
    """run(seed) with three bound parameter sets compiles `jitted` once; the seeds in `check`
    equal static_run(seed), the functools.partial path (each of which compiles anew)."""
    before = jitted._cache_size()
    with _count_compiles(name) as compiles:
        outs = {seed: run(seed) for seed in (1, 2, 3)}
    assert len(compiles) == 1, [r.getMessage()[:80] for r in compiles]
    assert jitted._cache_size() - before == 1
    for seed in check:
        _assert_close(outs[seed], static_run(seed))
    assert not np.allclose(outs[1], outs[2])  # the parameters do reach the program


def _assert_close(out, ref):
    """Float tolerance: 1e-5 relative, and 1e-5 of the largest magnitude absolute."""
    ref = np.asarray(ref)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


# ---------------------------------------------------------------------------- modeltree


def test_split_join_round_trip_and_static_part():
    """Arrays are the traced leaves; numbers, strings and functions are static; a plain
    function is all static; equal structures with different arrays share one Static."""
    model = jax.tree_util.Partial(jnp.dot, {"w": jnp.ones((2, 2)), "n": np.arange(3)}, k=2.0)
    leaves, static = modeltree.split(model)
    assert len(leaves) == 2 and all(modeltree.is_array(v) for v in leaves)
    back = modeltree.join(leaves, static)
    assert back.func is jnp.dot and back.keywords == {"k": 2.0}
    np.testing.assert_array_equal(back.args[0]["w"], jnp.ones((2, 2)))
    other = jax.tree_util.Partial(jnp.dot, {"w": jnp.zeros((2, 2)), "n": np.ones(3)}, k=2.0)
    assert modeltree.split(other)[1] == static and hash(modeltree.split(other)[1]) == hash(static)
    assert modeltree.split(jax.tree_util.Partial(jnp.dot, {"w": 1, "n": 2}, k=3.0))[1] != static

    def f(x, t):
        return x

    leaves, static = modeltree.split(f)
    assert leaves == [] and modeltree.join(leaves, static) is f
    unhashable = jax.tree_util.Partial(jnp.dot, _Unhashable())
    leaves, static = modeltree.split(unhashable)
    assert leaves == [] and static == modeltree.split(unhashable)[1]
    assert modeltree.join(leaves, static).args[0] is unhashable.args[0]


class _Unhashable:
    __hash__ = None


def test_bind_is_a_pytree_of_the_variables():
    net = _net()
    variables = _variables(net, 0)
    model = bind(net, variables)
    leaves, _ = modeltree.split(model)
    assert len(leaves) == len(jax.tree_util.tree_leaves(variables))
    x, t = jax.random.normal(KEY, SHAPE), jnp.full(SHAPE[:1], 0.3)
    np.testing.assert_allclose(model(x, t), net.apply(variables, x, t), rtol=1e-6)


# ---------------------------------------------------------------------------- sample


def test_sample_compiles_once_for_three_bound_parameter_sets():
    net = _net()
    kw = dict(solver="ddim", steps=4)
    _one_compile_for_three_parameter_sets(
        api._run,
        "_run",
        lambda seed: sample(KEY, bind(net, _variables(net, seed)), VP, SHAPE, **kw),
        lambda seed: sample(
            KEY, functools.partial(net.apply, _variables(net, seed)), VP, SHAPE, **kw
        ),
    )


def _lowered_text(model):
    """The program `sample` compiles for `model`, lowered with the arguments it passes."""
    _, opts, grid = api._resolve("ddim", VP, 3, {}, "eps")
    leaves, static = modeltree.split(model)
    lowered = api._run.lower(
        KEY, None, jnp.asarray(grid, jnp.float32), leaves, model_static=static, process=VP,
        solver_name="ddim", prediction="eps", opts=tuple(sorted(opts.items())), shape=SHAPE,
    )  # fmt: skip
    return lowered.as_text()


def test_lowered_program_does_not_grow_with_the_parameter_count():
    """Widths 8 and 256 (about 50 times more parameters): the bound model's program text stays
    the same size (the parameters are arguments); the static path's grows with the constants."""
    sizes = {}
    for width in (8, 256):
        net = _net(hidden=width)
        variables = _variables(net, 0)
        count = sum(v.size for v in jax.tree_util.tree_leaves(variables))
        sizes[width] = (
            count,
            len(_lowered_text(bind(net, variables))),
            len(_lowered_text(functools.partial(net.apply, variables))),
        )
    (n8, bound8, static8), (n256, bound256, static256) = sizes[8], sizes[256]
    assert n256 > 50 * n8
    assert abs(bound256 - bound8) < 0.02 * bound8, sizes  # only the shape annotations differ
    assert static256 > 10 * static8, sizes  # the check can fail: constants do show up


def test_plain_function_is_static_by_identity():
    """The same function object reuses the program; a new closure compiles a new one."""

    def make():
        return lambda x, t: 0.5 * x

    f = make()
    kw = dict(solver="euler", steps=3)
    before = api._run._cache_size()
    a = sample(KEY, f, VP, SHAPE, **kw)
    b = sample(KEY, f, VP, SHAPE, **kw)
    assert api._run._cache_size() - before == 1
    c = sample(KEY, make(), VP, SHAPE, **kw)
    assert api._run._cache_size() - before == 2
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------------- other entry points


def test_likelihood_compiles_once_for_three_bound_parameter_sets():
    net = _net()
    x = jax.random.normal(KEY, (4, 2))
    # tight tolerances: the static path folds the parameters into constants, so its floats
    # differ in the last bits and an adaptive solve at rtol 1e-3 may take other steps (a 1e-4
    # difference was measured with diffrax 0.7.2); at 1e-6 both agree to the 1e-5 checked
    kw = dict(trace="exact", rtol=1e-6, atol=1e-6, prediction="velocity")
    _one_compile_for_three_parameter_sets(
        likelihood_lib._nll,
        "_nll",
        lambda seed: likelihood(KEY, bind(net, _variables(net, seed)), VP, x, **kw),
        lambda seed: likelihood(
            KEY, functools.partial(net.apply, _variables(net, seed)), VP, x, **kw
        ),
        check=(2,),  # each static solve compiles for seconds
    )


def test_nll_dataset_takes_a_bound_model():
    """Two batches of the likelihood test's shape and options: the same compiled solve; the
    per-example values are those of `likelihood` with the documented keys."""
    net = _net()
    model = bind(net, _variables(net, 1))
    data = jax.random.normal(KEY, (8, 2))
    kw = dict(trace="exact", rtol=1e-3, atol=1e-3, prediction="velocity")
    before = likelihood_lib._nll._cache_size()
    out = nll_dataset(KEY, model, VP, data, batch_size=4, dequantized=False, **kw)
    assert out["num_solves"] == 2 and likelihood_lib._nll._cache_size() - before <= 1
    for b in range(2):
        probe_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(KEY, 0), b))[1]
        ref = likelihood(probe_key, model, VP, data[4 * b : 4 * b + 4], **kw)
        np.testing.assert_allclose(out["nll_per_example"][4 * b : 4 * b + 4], ref, rtol=1e-6)
    assert likelihood_lib._nll._cache_size() - before <= 1


def test_inpaint_compiles_once_for_three_bound_parameter_sets():
    net = _net()
    known, mask = jax.random.normal(KEY, SHAPE), jnp.array([1.0, 0.0])
    kw = dict(solver="ddpm", steps=4, jumps=2)
    _one_compile_for_three_parameter_sets(
        inpaint_lib._run,
        "_run",
        lambda seed: inpaint(KEY, bind(net, _variables(net, seed)), VP, known, mask, **kw),
        lambda seed: inpaint(
            KEY, functools.partial(net.apply, _variables(net, seed)), VP, known, mask, **kw
        ),
    )


def test_cfg_of_a_bound_model_compiles_once():
    """Classifier-free guidance of a class-conditional MLP: three parameter sets (and then a
    second scale) share one compiled loop, and equal the static path."""
    net = _net(num_classes=3)
    labels = jnp.arange(SHAPE[0]) % 3
    null = jnp.full_like(labels, 3)
    kw = dict(solver="heun", steps=3)

    def guided(seed, static=False, scale=2.0):
        variables = _variables(net, seed, labels)
        model = functools.partial(net.apply, variables) if static else bind(net, variables)
        return guidance.cfg(model, labels, null, scale)

    _one_compile_for_three_parameter_sets(
        api._run,
        "_run",
        lambda seed: sample(KEY, guided(seed), VP, SHAPE, **kw),
        lambda seed: sample(KEY, guided(seed, static=True), VP, SHAPE, **kw),
    )
    before = api._run._cache_size()
    other = sample(KEY, guided(1, scale=5.0), VP, SHAPE, **kw)
    assert api._run._cache_size() == before  # a new scale is a traced leaf too
    _assert_close(other, sample(KEY, guided(1, static=True, scale=5.0), VP, SHAPE, **kw))


def test_classifier_guidance_is_a_pytree_with_traced_labels():
    """The labels y and the scale of classifier guidance are traced leaves."""
    net = _net()
    model = bind(net, _variables(net, 1))

    def logp(x, t, y):
        return -jnp.sum((x - y[:, None]) ** 2, axis=-1)

    kw = dict(solver="euler", steps=3)
    ys = [jnp.full(SHAPE[:1], v) for v in (0.0, 1.0)]
    before = api._run._cache_size()
    outs = [sample(KEY, guidance.classifier(model, logp, y, 0.5, process=VP, prediction="eps"),
                   VP, SHAPE, **kw) for y in ys]  # fmt: skip
    assert api._run._cache_size() - before == 1
    assert not np.allclose(outs[0], outs[1])


def test_losses_take_a_bound_model_under_jit():
    """The caller's jit over the variables: a loss and its gradient through a bound model equal
    those through functools.partial (the losses call the model; nothing else)."""
    net = _net()
    variables = _variables(net, 1)
    x0 = jax.random.normal(KEY, SHAPE)

    def loss(v, bound):
        model = bind(net, v) if bound else functools.partial(net.apply, v)
        return diffjax.losses.simple(model, KEY, x0, VP)[0]

    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables, bound)
                        for bound in (True, False))  # fmt: skip
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for u, w in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-7)
