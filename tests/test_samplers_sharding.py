"""Sampling with the batch sharded over 8 simulated CPU devices equals single-device sampling.

Runs in a subprocess because the device count is fixed when jax starts
(XLA_FLAGS=--xla_force_host_platform_device_count=8). Per-step noise is one full-batch draw
inside the jitted program and jax's threefry is partitionable, so the values cannot depend on
the split; the PC corrector's batch-mean norms are global means under sharding.
"""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from diffjax import processes, toy
    from diffjax.samplers import sample

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = NamedSharding(mesh, PartitionSpec("data"))
    process = processes.vp()
    model = toy.exact_model(toy.ring(k=4, radius=1.5, std=0.3), process, "eps")
    key = jax.random.PRNGKey(3)
    x_init = jax.random.normal(jax.random.PRNGKey(4), (64, 2))
    for solver, opts in [("pc", {"n_corrector": 2}), ("dpm_solver_pp", {})]:
        kw = dict(solver=solver, steps=10, **opts)
        single = sample(key, model, process, (64, 2), x_init=x_init, **kw)
        sharded = sample(key, model, process, (64, 2), x_init=jax.device_put(x_init, shard), **kw)
        assert len(sharded.sharding.device_set) == 8, sharded.sharding
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=2e-5, atol=2e-5)
    # the key-driven prior and the per-step noise of ancestral sampling, output sharded by jit
    draw = lambda k: sample(k, model, process, (64, 2), solver="ddpm", steps=10)
    single = draw(key)
    sharded = jax.jit(draw, out_shardings=shard)(key)
    assert len(sharded.sharding.device_set) == 8, sharded.sharding
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=2e-5, atol=2e-5)
    print("OK")
    """
)


def test_sharded_sampling_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
