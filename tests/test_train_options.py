"""The train-step options of config.train and config.model: gradient accumulation, several
steps per jitted call, remat, bfloat16 compute, skipping non-finite steps, and a SIGTERM
during start-up. Each is checked against an independent second computation (the plain step,
single steps, the model without remat, the float32 model, a shorter run)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffjax import parallel
from diffjax.models import get_model
from diffjax.train import checkpoint
from diffjax.train.config import default_config
from diffjax.train.loop import CHECKPOINT_DIR, next_event, run_training, train_and_evaluate
from diffjax.train.spec import (
    EmaSpec,
    ExampleSpec,
    LoopSpec,
    check_default_step_options,
    check_grad_accum,
    spec_from_config,
)
from diffjax.train.state import create_train_state
from diffjax.train.step import make_train_step
from diffjax.train.writers import read_metrics
from tests.test_train_loop import components

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spec(num_steps, **train):
    """The tiny MLP run of tests/test_train_loop.py with the given config.train fields."""
    c = default_config()
    c.data.batch_size = 8
    c.train.update(dict(num_steps=num_steps, log_every=1, checkpoint_every=1, progress_bar=False))
    c.train.update(train)
    c.sample.num = 0
    c.ema.update(decay=0.9, warmup=True)
    c.optim.update(learning_rate=1e-2, warmup_steps=2)
    return spec_from_config(c, ExampleSpec(shape=(2,), key="x"))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_trees_close(a, b, rtol, atol=0.0):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- grad_accum
def key_free_loss(model, key, x0, process, *, cond=None):
    """A loss that uses no randomness (t and the input are functions of x0), so that the
    micro-batched step and the plain step see the same per-example terms."""
    del key, process, cond
    t = jax.nn.sigmoid(x0[:, 0])  # [B] in (0, 1)
    err = jnp.mean((model(0.5 * x0, t) - x0[:, ::-1]) ** 2)
    return err, {"mse": err}


@pytest.mark.parametrize("k,unroll", [(2, None), (4, None), (4, False)])
def test_grad_accum_equals_the_plain_step(k, unroll):
    # unroll None: the scan unrolled, as make_train_step compiles it on CPU; False: rolled
    # SGD: the update is -lr * grad, so params after one step compare the averaged micro-batch
    # gradient with the full-batch gradient directly (Adam's g / |g| would hide a scale error).
    c = components()
    c.loss = key_free_loss
    apply = c.apply  # without dropout, whose mask would depend on the micro-batch's key
    c.apply = lambda params, xt, t, cond, *, train, key: apply(
        params, xt, t, cond, train=False, key=key
    )
    from diffjax.train.components import make_loss_fn
    from diffjax.train.spec import CondSpec

    tx, mesh = optax.sgd(0.5), parallel.make_mesh()
    loss_fn = make_loss_fn(c, CondSpec())
    init = create_train_state(jax.random.PRNGKey(0), c.init_params, tx)
    batch = next(iter(c.batches(0)))
    base = jax.random.PRNGKey(1)
    results = {}
    for n in (1, k):
        step = make_train_step(loss_fn, tx, EmaSpec(decay=0.5), mesh, grad_accum=n, unroll=unroll)
        state = jax.tree.map(jnp.copy, init)  # donated
        state, metrics = step(state, parallel.shard_batch(batch, mesh), base)
        results[n] = (state, jax.device_get(metrics))
    (plain, m1), (accum, mk) = results[1], results[k]
    assert_trees_close(accum.params, plain.params, rtol=1e-5, atol=1e-7)
    assert_trees_close(accum.ema_params, plain.ema_params, rtol=1e-5, atol=1e-7)
    for name in ("loss", "mse", "grad_norm"):
        np.testing.assert_allclose(mk[name], m1[name], rtol=1e-5)
    assert not np.allclose(leaves(plain.params)[0], leaves(init.params)[0])  # it moved


def test_grad_accum_must_divide_the_batch():
    with pytest.raises(ValueError, match=re.escape("config.data.batch_size = 8 is not divisible")):
        check_grad_accum(8, 4, 4)  # 8 rows cannot make 4 micro-batches over 4 devices
    check_grad_accum(16, 4, 4)
    with pytest.raises(ValueError, match=re.escape("config.data.batch_size = 8: expected a mul")):
        spec(1, grad_accum=3)
    with pytest.raises(ValueError, match=re.escape("config.train.grad_accum = 0")):
        spec(1, grad_accum=0)


# ----------------------------------------------------------------------------- steps_per_call
def test_next_event():
    loop = LoopSpec(num_steps=8, log_every=3, checkpoint_every=6, sample_every=0)
    assert [next_event(loop, d) for d in range(8)] == [3, 3, 3, 6, 6, 6, 8, 8]
    loop = LoopSpec(num_steps=100, log_every=50, checkpoint_every=40, sample_every=7)
    assert [next_event(loop, d) for d in (0, 7, 39, 40, 49)] == [7, 14, 40, 42, 50]


def test_steps_per_call_equals_single_steps_and_resumes(tmp_path):
    # events at 3, 6, 8: with k = 2 the loop takes [0, 2) in one call, step 2 alone, [3, 5),
    # step 5 alone, [6, 8) in one call; each step's key is fold_in(step_key, step) either way
    c = components()
    train = dict(log_every=3, checkpoint_every=6)
    single = run_training(spec(8, **train), c, str(tmp_path / "single"))
    multi = run_training(spec(8, steps_per_call=2, **train), c, str(tmp_path / "multi"))
    run_training(spec(5, steps_per_call=2, **train), c, str(tmp_path / "split"))
    resumed = run_training(spec(8, steps_per_call=2, **train), c, str(tmp_path / "split"))
    for other in (multi, resumed):
        assert int(other.step) == 8
        assert_trees_close(other, single, rtol=1e-6, atol=1e-7)
    assert not np.allclose(leaves(single.params)[0], leaves(single.ema_params)[0])
    rows = {w: read_metrics(str(tmp_path / w / "metrics.jsonl")) for w in ("single", "multi")}
    assert [r["step"] for r in rows["multi"]] == [r["step"] for r in rows["single"]] == [3, 6, 8]
    for a, b in zip(rows["multi"], rows["single"], strict=True):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    assert sorted(os.listdir(tmp_path / "multi" / CHECKPOINT_DIR)) == ["6", "8"]
    assert [r["step"] for r in read_metrics(str(tmp_path / "split" / "metrics.jsonl"))] == [
        3, 5, 6, 8,
    ]  # fmt: skip


def test_steps_per_call_rolled_and_unrolled_agree():
    # the loop's k-step call unrolls its scan on CPU; the rolled scan (other backends) must
    # take the same two steps
    from diffjax.train.components import make_loss_fn
    from diffjax.train.spec import CondSpec

    c, tx, mesh = components(), optax.adam(1e-2), parallel.make_mesh()
    init = create_train_state(jax.random.PRNGKey(0), c.init_params, tx)
    it = iter(c.batches(0))
    batches = tuple(parallel.shard_batch(next(it), mesh) for _ in range(2))
    out = {}
    for unroll in (False, True):
        step = make_train_step(make_loss_fn(c, CondSpec()), tx, EmaSpec(decay=0.5), mesh,
                               steps_per_call=2, unroll=unroll)  # fmt: skip
        out[unroll] = step(jax.tree.map(jnp.copy, init), batches, jax.random.PRNGKey(1))
    assert int(out[True][0].step) == int(out[False][0].step) == 2
    assert_trees_close(out[True][0], out[False][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out[True][1]["loss"], out[False][1]["loss"], rtol=1e-6)
    assert not np.allclose(leaves(out[True][0].params)[0], leaves(init.params)[0])


# ----------------------------------------------------------------------------- remat
X8 = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
T2 = jnp.array([0.3, 0.8])
# one level (3 ResBlocks, 1 AttnBlock): the smallest U-Net with every kind of block
SMALL_UNET = dict(ch=8, ch_mult=(1,), attn_resolutions=(8,), num_groups=4)


def perturbed(params, scale, seed=2):
    """params + scale * N(0, 1) leaf by leaf (the zero-initialised output layers made nonzero,
    so that outputs and gradients are not trivially zero)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(params)))
    noisy = [p + scale * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(
        jax.tree.leaves(params), keys, strict=True)]  # fmt: skip
    return jax.tree.unflatten(jax.tree.structure(params), noisy)


@pytest.mark.parametrize(
    "name,kwargs",
    [
        pytest.param(  # ~50 s of U-Net gradient compiles on one core
            "unet", dict(in_channels=4, dropout=0.1, **SMALL_UNET), marks=pytest.mark.slow
        ),
        ("dit_tiny", dict(in_channels=4, num_classes=None, learn_sigma=False, depth=2)),
    ],
)
def test_remat_gives_the_same_outputs_and_grads(name, kwargs):
    plain, remat = get_model(name, **kwargs), get_model(name, remat=True, **kwargs)
    init = jax.jit(lambda k: plain.init(k, X8, T2)["params"])
    params = init(jax.random.PRNGKey(1))
    assert jax.tree.structure(params) == jax.tree.structure(
        jax.eval_shape(lambda: remat.init(jax.random.PRNGKey(1), X8, T2)["params"])
    )
    params = perturbed(params, 0.05)

    def loss(model):
        def f(p):
            rngs = {"dropout": jax.random.PRNGKey(3)}
            return jnp.mean(model.apply({"params": p}, X8, T2, train=True, rngs=rngs) ** 2)

        return jax.jit(jax.value_and_grad(f))

    (l0, g0), (l1, g1) = loss(plain)(params), loss(remat)(params)
    assert float(l0) > 1e-4
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    assert_trees_close(g1, g0, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- bfloat16
@pytest.mark.parametrize(
    "name,kwargs,example",
    [
        ("mlp", {"hidden": 32}, ExampleSpec(shape=(2,), key="x")),
        pytest.param("unet", SMALL_UNET, ExampleSpec(shape=(8, 8, 1)), marks=pytest.mark.slow),
    ],
)
def test_bfloat16_compute_keeps_float32_params_and_a_float32_loss(name, kwargs, example):
    c = default_config()
    c.model.name, c.model.kwargs = name, kwargs
    specs = {}
    for dtype in ("float32", "bfloat16"):
        c.train.compute_dtype = dtype
        specs[dtype] = spec_from_config(c, example)
    assert specs["bfloat16"].model.dtype == jnp.bfloat16
    assert specs["bfloat16"].model.param_dtype == jnp.float32
    from diffjax.train.builders import build_model_components
    from diffjax.train.components import make_loss_fn

    comps = {d: build_model_components(s) for d, s in specs.items()}
    params = jax.jit(comps["bfloat16"].init_params)(jax.random.PRNGKey(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    params = perturbed(params, 0.1, seed=5)
    x0 = jax.random.uniform(jax.random.PRNGKey(1), (8, *example.shape), minval=-1, maxval=1)
    losses = {}
    for d, comp in comps.items():
        fn = jax.jit(jax.value_and_grad(make_loss_fn(comp, specs[d].cond), has_aux=True))
        (loss, _), grads = fn(params, jax.random.PRNGKey(2), {example.key: x0})
        assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
        assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
        losses[d] = float(loss)
    # same params, same noise: bf16 activations change the loss only by rounding (~1e-2)
    assert losses["bfloat16"] != losses["float32"]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=5e-2)


def test_step_options_are_checked():
    with pytest.raises(ValueError, match=re.escape("config.train.compute_dtype = 'float16'")):
        spec(1, compute_dtype="float16")
    c = default_config()
    c.model.name, c.model.remat = "mlp", True
    with pytest.raises(ValueError, match=re.escape("config.model.remat = True: expected False")):
        spec_from_config(c, ExampleSpec(shape=(2,), key="x"))
    check_default_step_options(LoopSpec(), "autoencoder")
    with pytest.raises(ValueError, match=re.escape("config.train.nonfinite = 'skip': expected")):
        check_default_step_options(LoopSpec(nonfinite="skip"), "autoencoder")


# ----------------------------------------------------------------------------- nonfinite
def nan_at(steps):
    """An eps-MSE whose value is NaN at the given steps (the step count is traced)."""
    from tests.test_train_loop import eps_mse

    def loss(model, key, x0, process, *, cond=None, step):
        err, aux = eps_mse(model, key, x0, process, cond=cond)
        bad = jnp.isin(step, jnp.asarray(steps))
        return jnp.where(bad, jnp.nan, err), aux

    return loss


def test_skip_leaves_the_state_of_a_nan_step_unchanged(tmp_path):
    # steps 0, 1 update, step 2 has a NaN loss and is skipped: the state after 3 steps equals
    # the state after 2 steps of a run without the NaN (same keys fold_in(step_key, 0 and 1))
    c = components()
    ref = run_training(spec(2), c, str(tmp_path / "ref"))
    c.loss = nan_at([2])
    train = dict(nonfinite="skip", log_every=3, checkpoint_every=3)
    skipped = run_training(spec(3, **train), c, str(tmp_path / "skip"))
    assert int(skipped.step) == 3
    for part in ("params", "ema_params", "opt_state"):
        assert_trees_close(getattr(skipped, part), getattr(ref, part), rtol=1e-6, atol=1e-8)
    (row,) = read_metrics(str(tmp_path / "skip" / "metrics.jsonl"))
    assert row["step"] == 3 and row["skipped"] == 1.0 and np.isfinite(row["loss"])
    assert os.listdir(tmp_path / "skip" / CHECKPOINT_DIR) == ["3"]
    # the same NaN without 'skip' stops the run before the save at step 3
    with pytest.raises(checkpoint.NonFiniteError, match="at step 3"):
        run_training(spec(3, log_every=3, checkpoint_every=3), c, str(tmp_path / "stop"))
    stop_dir = tmp_path / "stop" / CHECKPOINT_DIR
    assert not stop_dir.exists() or not os.listdir(stop_dir)


def test_too_many_consecutive_skips_stop_the_run(tmp_path):
    c = components()
    c.loss = nan_at(list(range(1, 10)))
    train = dict(nonfinite="skip", max_skipped=2, keep_checkpoints=10)
    with pytest.raises(checkpoint.NonFiniteError, match=r"3 consecutive .*max_skipped = 2"):
        run_training(spec(8, **train), c, str(tmp_path))
    # steps 1..3 skipped: the saves after 1, 2 and 3 steps hold finite, unchanged states
    assert sorted(os.listdir(tmp_path / CHECKPOINT_DIR)) == ["1", "2", "3"]
    assert [r["skipped"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [0, 1, 1]


# ----------------------------------------------------------------------------- SIGTERM
def toy_config(num_steps):
    spec_ = importlib.util.spec_from_file_location(
        "toy2d", os.path.join(REPO, "experiments/toy2d.py")
    )
    toy2d = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(toy2d)
    c = toy2d.get_config("quicktest")
    c.train.num_steps = num_steps
    return c


def test_sigterm_during_start_up_stops_cleanly(tmp_path, monkeypatch):
    import diffjax.train.builders as builders
    import diffjax.train.loop as loop

    workdir, previous = str(tmp_path / "run"), signal.getsignal(signal.SIGTERM)

    def notice_then(fn):
        def wrapped(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler must already be installed
            return fn(*args, **kwargs)

        return wrapped

    real_build, real_init = builders.build_components, loop.init_or_restore
    monkeypatch.setattr(builders, "build_components", notice_then(real_build))
    with pytest.raises(parallel.Preempted) as stopped:  # a fresh run, during the data build
        train_and_evaluate(toy_config(2), workdir)
    assert stopped.value.step == 0
    assert not os.path.exists(os.path.join(workdir, CHECKPOINT_DIR))  # nothing written
    assert signal.getsignal(signal.SIGTERM) is previous
    monkeypatch.setattr(builders, "build_components", real_build)
    train_and_evaluate(toy_config(2), workdir)  # 2 steps, checkpoint 2
    monkeypatch.setattr(loop, "init_or_restore", notice_then(real_init))
    with pytest.raises(parallel.Preempted) as stopped:  # a resumed run, during the restore
        train_and_evaluate(toy_config(4), workdir)
    assert stopped.value.step == 2
    assert os.listdir(os.path.join(workdir, CHECKPOINT_DIR)) == ["2"]  # kept, nothing new
    assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == [1, 2]
    assert not os.path.exists(os.path.join(workdir, "train.lock"))
    assert signal.getsignal(signal.SIGTERM) is previous
