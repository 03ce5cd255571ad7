"""Data parallelism: 8 simulated CPU devices give the one-device step, and mesh errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from diffjax import parallel

# Runs in a fresh interpreter with 8 host devices: one train step of a small conv net on a
# batch of 16, once on a 1-device mesh and once sharded over 8 devices; prints the max
# differences. The batch mean of the loss and the gradient sum differ only in the order of the
# float32 additions (8 partial sums + all-reduce vs one sum), so agreement to ~1e-6 relative.
SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    from diffjax import parallel
    from diffjax.kernels import bcast
    from diffjax.processes import vp
    from diffjax.train.components import Components, make_loss_fn
    from diffjax.train.optim import make_optimizer
    from diffjax.train.spec import CondSpec, EmaSpec, OptimSpec
    from diffjax.train.state import create_train_state
    from diffjax.train.step import make_train_step

    assert jax.device_count() == 8, jax.devices()

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, t, cond=None, train=False):
            h = nn.Conv(8, (3, 3))(x) + t[:, None, None, None]
            return nn.Conv(x.shape[-1], (3, 3))(nn.silu(h))

    def loss(model, key, x0, process, *, cond=None):
        t_key, n_key = jax.random.split(key)
        t = jax.random.uniform(t_key, (x0.shape[0],))
        eps = jax.random.normal(n_key, x0.shape)
        xt = bcast(process.alpha(t), x0) * x0 + bcast(process.sigma(t), x0) * eps
        err = jnp.mean((model(xt, t, cond) - eps) ** 2)
        return err, {}

    net = Net()
    c = Components(
        init_params=lambda k: net.init(k, jnp.zeros((1, 8, 8, 2)), jnp.zeros((1,)))["params"],
        apply=lambda p, x, t, cond, train, key: net.apply({"params": p}, x, t),
        process=vp(), loss=loss, loss_kwargs={}, batches=None, data_key="image",
        example_shape=(8, 8, 2),
    )
    tx = make_optimizer(OptimSpec(learning_rate=1e-2, grad_clip=1.0))
    batch = {"image": np.random.default_rng(0).normal(size=(16, 8, 8, 2)).astype(np.float32)}
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        state = create_train_state(jax.random.PRNGKey(0), c.init_params, tx)
        state = parallel.replicate(state, mesh)
        step = make_train_step(make_loss_fn(c, CondSpec()), tx, EmaSpec(decay=0.5), mesh)
        sharded = parallel.shard_batch(batch, mesh)
        assert len(sharded["image"].sharding.device_set) == len(devices)
        state, metrics = step(state, sharded, jax.random.PRNGKey(1))
        out.append((float(metrics["loss"]), jax.tree.leaves(jax.device_get(state))))
    (l1, s1), (l8, s8) = out
    print("LOSS", l1, l8)
    print("PARAMS", max(float(np.max(np.abs(a - b))) for a, b in zip(s1, s8)))
    try:
        parallel.shard_batch({"image": np.zeros((12, 2))}, parallel.make_mesh())
    except ValueError as err:
        print("ERROR", err)
    """
)


def test_eight_devices_match_one_device(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {ln.split()[0]: ln.split(None, 1)[1] for ln in out.stdout.splitlines() if ln}
    l1, l8 = map(float, lines["LOSS"].split())
    assert l1 > 0.1  # a real loss, not a degenerate zero
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    # params after one Adam step have magnitude ~0.3 and the step is lr = 1e-2; float32
    # rounding of the reductions changes them by far less than 1e-5.
    assert float(lines["PARAMS"]) < 1e-5
    assert "per-host batch size 12 is not divisible by the device count 8" in lines["ERROR"]


def test_mesh_over_local_devices():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert parallel.data_sharding(mesh).spec == jax.sharding.PartitionSpec("data")


def test_batch_size_not_divisible_raises():
    with pytest.raises(ValueError, match="batch size 10 is not divisible by the device count 4"):
        parallel.check_batch_divisible(10, 4)
    with pytest.raises(ValueError, match="batch size 0"):
        parallel.check_batch_divisible(0, 1)


def test_set_cpu_device_count_respects_existing_flag(monkeypatch):
    monkeypatch.setattr(parallel, "_jaxlib_version", lambda: (0, 9))  # no YNN flag there
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    assert not parallel.set_cpu_device_count(2)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not parallel.set_cpu_device_count(2)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert parallel.set_cpu_device_count(2)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_set_cpu_device_count_turns_ynn_fusions_off_on_jaxlib_0_10_only(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(parallel, "_jaxlib_version", lambda: (0, 10))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert parallel.set_cpu_device_count(2)
    assert os.environ["XLA_FLAGS"] == (
        "--xla_cpu_experimental_ynn_fusion_type= --xla_force_host_platform_device_count=2"
    )
    # an explicit choice of either flag is kept; the YNN one is added with count < 2 too
    dot_only = "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"
    monkeypatch.setenv("XLA_FLAGS", dot_only)
    assert parallel.set_cpu_device_count(2)
    assert os.environ["XLA_FLAGS"].split() == [dot_only, "--xla_force_host_platform_device_count=2"]
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not parallel.set_cpu_device_count(1)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
    for version in [(0, 9), (0, 11), (1, 0)]:  # XLA aborts on a flag it does not know
        monkeypatch.setattr(parallel, "_jaxlib_version", lambda v=version: v)
        monkeypatch.setenv("XLA_FLAGS", "")
        parallel.set_cpu_device_count(2)
        assert "ynn" not in os.environ["XLA_FLAGS"]
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    monkeypatch.setattr(parallel, "_jaxlib_version", lambda: (0, 10))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert not parallel.set_cpu_device_count(2)
    assert os.environ["XLA_FLAGS"] == ""


def test_jaxlib_version_is_the_installed_one():
    import jaxlib

    assert parallel._jaxlib_version() == tuple(int(v) for v in jaxlib.__version__.split(".")[:2])


@pytest.mark.parametrize("name", ["toy_ring", "digits"])
def test_global_batch_depends_on_seed_and_step_not_on_the_host_count(name):
    """Host p of P yields rows [p B/P, (p + 1) B/P) of the batch one process draws, at every
    step and after a resume, so a run can change its number of hosts."""
    from diffjax.data import DataConfig, make_iterator

    cfg = DataConfig(name=name, batch_size=8, seed=3, random_flip=name == "digits")
    single = make_iterator(cfg, process_index=0, process_count=1)
    want = [next(single) for _ in range(3)]
    for hosts, start in ((2, 0), (4, 0), (2, 1)):
        its = [
            make_iterator(cfg, process_index=p, process_count=hosts, start_step=start)
            for p in range(hosts)
        ]
        for step in range(start, 3):
            parts = [next(it) for it in its]
            for field in want[step]:
                got = np.concatenate([part[field] for part in parts])
                assert got.tobytes() == want[step][field].tobytes(), (hosts, step, field)
