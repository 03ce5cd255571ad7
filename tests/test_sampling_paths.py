"""The launcher's sampler (`diffjax.train.sampling.make_sampler`: launch/sample.py, the training
loop's grids, launch/evaluate.py) splits the batch over the devices and returns the samples of
the plain unsharded `sample(key, model, process, shape)`; a kept trajectory is one buffer.

The two-device checks run in a subprocess because the device count is fixed when jax starts
(XLA_FLAGS=--xla_force_host_platform_device_count=2, as tests/test_samplers_sharding.py).
Equality is checked to 1e-6: the prior and the per-step noise are the same partitionable
threefry draws, so only float rounding of per-device kernels could differ.
"""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import modeltree, processes
from diffjax.samplers import api

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from diffjax import parallel, processes
    from diffjax.samplers import sample
    from diffjax.train.components import Components
    from diffjax.train.sampling import guided_model, make_sampler
    from diffjax.train.spec import CondSpec, SampleSpec

    assert jax.device_count() == 2, jax.devices()
    mesh = parallel.make_mesh()

    def apply(params, x, t, y, *, train, key):  # a tiny conv net with a label embedding
        w, emb = params["w"], params["emb"]
        h = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jnp.tanh(h + t[:, None, None, None])
        return h if y is None else h + emb[y][:, None, None, :]

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"w": 0.3 * jax.random.normal(k1, (3, 3, 1, 1)),
              "emb": 0.1 * jax.random.normal(k2, (4, 1))}
    params = parallel.replicate(params, mesh)  # as a train state or load_trained holds them
    c = Components(init_params=None, apply=apply, process=processes.vp(), loss=None,
                   loss_kwargs={}, batches=None, data_key="image", example_shape=(6, 6, 1))
    key = jax.random.PRNGKey(7)
    cases = [
        (SampleSpec("ddpm", 4, 8), CondSpec(), 8),  # per-step noise
        (SampleSpec("dpm_solver_pp", 3, 8, 2.0), CondSpec(True, 3), 8),  # CFG: a 2B batch
    ]
    for sspec, cond, num in cases:
        run = make_sampler(c, sspec, cond, "eps", num)
        got = run(params, key)
        labels = jnp.arange(num) % cond.num_classes if cond.class_conditional else None
        model = guided_model(c, jax.device_get(params), labels, sspec.guidance_scale,
                             cond.num_classes)
        want = sample(key, model, c.process, (num, 6, 6, 1), solver=sspec.solver,
                      steps=sspec.steps, prediction="eps")
        assert len(want.sharding.device_set) == 1
        devices = len(got.sharding.device_set)
        split = got.sharding.shard_shape(got.shape)[0]
        assert devices == 2 and split == num // 2, (sspec, got.sharding)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
        assert not np.allclose(np.asarray(got), np.asarray(run(params, jax.random.PRNGKey(8))))
    # the loop itself is partitioned: the compiled program works on [num / 2, ...] per device
    from diffjax import modeltree
    from diffjax.samplers import api
    model = guided_model(c, params, None, 1.0, 0)
    leaves, static = modeltree.split(model)
    solver, opts, grid = api._resolve("ddim", c.process, 2, {}, "eps")
    x0 = jax.device_put(jnp.zeros((8, 6, 6, 1)), parallel.data_sharding(mesh))
    text = api._run.lower(key, x0, jnp.asarray(grid, jnp.float32), leaves, None,
                          model_static=static, process=c.process, solver_name="ddim",
                          prediction="eps", opts=tuple(sorted(opts.items())),
                          shape=(8, 6, 6, 1)).compile().as_text()
    assert "f32[4,6,6,1]" in text and "f32[8,6,6,1]" not in text.split("ENTRY")[0], "unsplit"
    print("OK")
    """
)


def test_launcher_sampler_splits_the_batch_and_equals_sample():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["JAX_NUMPY_RANK_PROMOTION"] = "raise"
    env.setdefault("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir or "")
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def _compiled(shape, steps, keep):
    process = processes.vp()
    model = jax.tree_util.Partial(_scale, jnp.float32(0.5))
    _, opts, grid = api._resolve("ddim", process, steps, {"return_trajectory": keep}, "eps")
    leaves, static = modeltree.split(model)
    lowered = api._run.lower(
        jax.random.PRNGKey(0), None, jnp.asarray(grid, jnp.float32), leaves, None,
        model_static=static, process=process, solver_name="ddim", prediction="eps",
        opts=tuple(sorted(opts.items())), shape=shape,
    )  # fmt: skip
    return lowered.compile().memory_analysis()


def _scale(w, x, t):
    return w * x


def test_trajectory_is_held_once():
    """XLA's buffer assignment: with the trajectory [N + 1, B, D] the program's scratch memory
    stays far below one trajectory (a stacked-then-prepended trajectory needs a second copy)."""
    shape, steps = (64, 500), 100
    traj_bytes = (steps + 1) * 64 * 500 * 4
    kept, plain = _compiled(shape, steps, True), _compiled(shape, steps, False)
    if kept is None:  # a backend without memory analysis
        return
    assert kept.output_size_in_bytes >= traj_bytes
    assert kept.temp_size_in_bytes - plain.temp_size_in_bytes < 0.1 * traj_bytes, (
        kept.temp_size_in_bytes,
        traj_bytes,
    )


def test_trajectory_rows_are_the_states():
    """Row 0 is x_init, row N the returned samples, row i the state after i steps (a run of
    i steps on the first i + 1 grid points, the same step keys)."""
    process = processes.vp()
    model = jax.tree_util.Partial(_scale, jnp.float32(0.5))
    key, x_init = jax.random.PRNGKey(1), jax.random.normal(jax.random.PRNGKey(2), (4, 3))
    kw = dict(solver="ddim", steps=6, x_init=x_init, return_info=True, return_trajectory=True)
    x, info = api.sample(key, model, process, (4, 3), **kw)
    traj = np.asarray(info["trajectory"])
    assert traj.shape == (7, 4, 3)
    np.testing.assert_array_equal(traj[0], np.asarray(x_init))
    np.testing.assert_array_equal(traj[-1], np.asarray(x))
    ts = info["ts"]
    part = api.sample(key, model, process, (4, 3), solver="ddim", ts=ts[:4], x_init=x_init)
    np.testing.assert_allclose(traj[3], np.asarray(part), rtol=1e-6, atol=1e-6)


def test_new_params_reuse_the_compiled_loop():
    """A pytree model (`jax.tree_util.Partial` over the parameters) with new parameter values
    compiles nothing new: the jit cache of the loop does not grow (no per-call program)."""
    process = processes.vp()
    run = lambda w: api.sample(
        jax.random.PRNGKey(0), jax.tree_util.Partial(_scale, w), process, (2, 3),
        solver="ddim", steps=3,
    )  # fmt: skip
    first = run(jnp.float32(0.5))
    size = api._run._cache_size()
    second = run(jnp.float32(0.25))
    assert api._run._cache_size() == size
    assert not np.allclose(np.asarray(first), np.asarray(second))


def test_image_folder_decode_is_cached(tmp_path, monkeypatch):
    """(Start-up time, issue #15.) The second load of an unchanged image folder reads the
    cache (no image is decoded) and returns the same arrays; changing a file decodes again."""
    from PIL import Image

    from diffjax.data import folder, imageops

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / "train" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / "train" / cls / f"{i}.png")
    root, cache = str(tmp_path / "data"), str(tmp_path / "cache")
    first = folder.load_image_folder(root, "train", cache_dir=cache)
    decode = imageops.decode_image

    def refuse(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(imageops, "decode_image", refuse)
    again = folder.load_image_folder(root, "train", cache_dir=cache)
    np.testing.assert_array_equal(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    assert again[2] == first[2] == ("a", "b")
    monkeypatch.setattr(imageops, "decode_image", decode)
    changed = np.zeros((4, 4, 3), np.uint8)
    Image.fromarray(changed).save(tmp_path / "data" / "train" / "a" / "0.png")
    fresh = folder.load_image_folder(root, "train", cache_dir=cache)
    np.testing.assert_array_equal(fresh[0][0], changed)
