"""Strict test settings: rank promotion raises, a `key` fixture, float64 on request, and
`maybe_jit`, which runs a test twice: once eagerly and once with its function under jax.jit."""

import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
_CACHE = os.environ.get(
    "DIFFJAX_TEST_COMPILATION_CACHE", os.path.expanduser("~/.cache/diffjax-jax")
)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture
def x64():
    """Run a reference computation in float64; restores float32 afterwards."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.fixture(params=("eager", "jit"))  # = tests.helpers.JIT_MODES
def maybe_jit(request):
    """Identity or jax.jit: wrap the function under test, `maybe_jit(lambda t: p.alpha(t))(t)` or
    `maybe_jit(f, static_argnames=...)`, so a unit table asserts the same closed forms with and
    without tracing."""
    from tests.helpers import jit_or_eager

    return jit_or_eager(request.param)
