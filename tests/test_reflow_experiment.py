"""Reflow on the training side: the 'pairs' data source, the paired noise reaching the loss,
pair generation from a workdir, experiments/reflow.py's stages and straightness in evaluation."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import losses, reflow
from diffjax.data import DataConfig, make_iterator
from diffjax.models import bind
from diffjax.train import evaluate
from diffjax.train.builders import build_components
from diffjax.train.components import make_loss_fn
from diffjax.train.loop import train_and_evaluate
from diffjax.train.pairs import NpzChunkWriter, generate_pairs, load_pairs
from diffjax.train.spec import spec_from_config
from diffjax.train.workdir import load_trained
from diffjax.train.writers import read_metrics
from tests.helpers import tree_hash

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(
        name[:-3], os.path.join(ROOT, "experiments", name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mock_pairs(directory, n=40, shape=(2,), chunk=16):
    """Pairs whose noise end is x + 100 + i / n (so a batch's pairing can be checked)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    z = x + 100.0 + (np.arange(n, dtype=np.float32) / n).reshape((n,) + (1,) * len(shape))
    writer = NpzChunkWriter(directory)
    for c in range(0, n, chunk):
        writer(c // chunk, z[c : c + chunk], x[c : c + chunk])
    return z, x


def pairs_config(directory, **kw):
    return DataConfig(name="pairs", data_dir=str(directory), batch_size=8, seed=3, **kw)


def test_pairs_source_keeps_pairs_resumes_exactly_and_slices_hosts(tmp_path):
    z, x = mock_pairs(tmp_path)
    np.testing.assert_array_equal(load_pairs(str(tmp_path))[0], z)
    batches = make_iterator(pairs_config(tmp_path))
    assert batches.info["key"] == "x" and tuple(batches.info["shape"]) == (2,)
    first = [next(batches) for _ in range(12)]  # 96 draws: runs across two epochs of 40
    for b in first:
        assert set(b) == {"x", "noise"} and b["x"].shape == (8, 2)
        # every noise row is its own x row's partner (x + 100 + i/n for that row's index i)
        i = np.round((b["noise"] - b["x"] - 100.0)[:, 0] * 40).astype(int)
        np.testing.assert_array_equal(b["x"], x[i])
    resumed = make_iterator(pairs_config(tmp_path), start_step=7)
    for b in first[7:]:
        r = next(resumed)
        np.testing.assert_array_equal(r["x"], b["x"])
        np.testing.assert_array_equal(r["noise"], b["noise"])
    # two hosts: disjoint halves of the examples within an epoch, each a batch of 4
    hosts = [
        make_iterator(
            pairs_config(tmp_path, shuffle=False, repeat=False), process_index=p, process_count=2
        )  # fmt: skip
        for p in (0, 1)
    ]
    seen = [np.concatenate([b["x"] for b in h]) for h in hosts]
    assert all(s.shape == (20, 2) for s in seen)
    assert not set(map(tuple, seen[0])) & set(map(tuple, seen[1]))


def test_pairs_source_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        make_iterator(pairs_config(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no pair chunks"):
        make_iterator(pairs_config(tmp_path))
    with pytest.raises(ValueError, match="needs data_dir"):
        make_iterator(DataConfig(name="pairs", batch_size=8))


@pytest.mark.parametrize("arg,loss", [("stage=reflow", "reflow"), ("stage=distill,k=2", "fd")])
def test_loss_gets_the_batch_noise(tmp_path, arg, loss):
    """Through make_loss_fn the loss equals the hand call with noise=batch['noise'], and the
    pair stages train a step from the pair folder."""
    mock_pairs(tmp_path / "pairs")
    c = load("reflow.py").get_config(f"quicktest,data=toy,{arg}")
    c.data.data_dir = str(tmp_path / "pairs")
    spec = spec_from_config(c)
    comps = build_components(spec)
    batch = next(comps.batches(0))
    params = comps.init_params(jax.random.PRNGKey(1))
    key = jax.random.PRNGKey(2)
    got, _ = make_loss_fn(comps, spec.cond)(params, key, batch)
    model = lambda x_t, t, cond=None: comps.apply(params, x_t, t, cond, train=True, key=None)
    fn = losses.reflow if loss == "reflow" else losses.flow_distillation
    extra = {} if loss == "reflow" else {"k": 2}
    want, _ = fn(model, jax.random.split(key, 3)[2], jnp.asarray(batch["x"]), spec.process,
                 noise=jnp.asarray(batch["noise"]), **extra)  # fmt: skip
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    wrong, _ = fn(model, jax.random.split(key, 3)[2], jnp.asarray(batch["x"]), spec.process,
                  noise=jnp.asarray(batch["noise"]) - 100.0, **extra)  # fmt: skip
    assert abs(float(wrong) - float(got)) > 1.0  # the pairs' noise, not fresh noise
    state = train_and_evaluate(c, str(tmp_path / "work"))
    assert int(state.step) == 1
    (record,) = read_metrics(str(tmp_path / "work" / "metrics.jsonl"))
    assert np.isfinite(record["loss"]) and record["loss"] > 0


def test_experiment_stages():
    cfg = load("reflow.py").get_config
    flow, re, di = (cfg(f"data=digits,stage={s}") for s in ("flow", "reflow", "distill"))
    assert (flow.loss.name, flow.process.name, flow.prediction) == ("cfm", "rectified_flow",
                                                                    "velocity")  # fmt: skip
    assert (re.loss.name, re.data.name, di.loss.name, di.loss.kwargs.k) == (
        "reflow", "pairs", "flow_distillation", 1)  # fmt: skip
    with pytest.raises(ValueError, match="stage"):
        cfg("stage=consistency")


@pytest.fixture(scope="module")
def flow_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("flow"))
    train_and_evaluate(load("reflow.py").get_config("quicktest,data=toy,stage=flow"), workdir)
    return workdir


def test_generate_pairs_equals_make_pairs_and_is_read_only(flow_dir, tmp_path):
    """The sharded, chunked pair file equals the unsharded in-memory make_pairs of the same
    bound EMA model and key, and the teacher workdir is untouched."""
    before = tree_hash(flow_dir)
    info = generate_pairs(flow_dir, str(tmp_path / "p"), 12, steps=3, chunk_size=4, seed=5)
    assert tree_hash(flow_dir) == before
    assert info["num"] == 12 and json.load(open(tmp_path / "p" / "pairs_info.json")) == info
    z, x = load_pairs(str(tmp_path / "p"))
    spec, _, trained = load_trained(flow_dir)
    model = bind(spec.model, {"params": trained.ema_params})
    z2, x2 = reflow.make_pairs(jax.random.PRNGKey(5), model, spec.process, 12, (2,), steps=3,
                               chunk_size=4)  # fmt: skip
    np.testing.assert_allclose(z, z2, atol=1e-6)
    np.testing.assert_allclose(x, x2, atol=1e-5)
    assert not np.allclose(x, z)


def test_straightness_metrics(flow_dir):
    """Equal to diffjax.reflow.straightness on the same noise; a non-flow run is an error."""
    spec, c, state = load_trained(flow_dir)
    out = evaluate.straightness_metrics(jax.random.PRNGKey(0), spec, c, state, 16, steps=4)
    noise_key, solve_key = jax.random.split(jax.random.PRNGKey(0))
    z = jax.random.normal(noise_key, (16, 2))
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)
    ref = reflow.straightness(solve_key, model, c.process, z, steps=4)
    np.testing.assert_allclose(out["straightness"], float(ref["straightness"]), rtol=1e-5)
    np.testing.assert_allclose(out["transport_cost"], float(ref["transport_cost"]), rtol=1e-5)
    assert out["stderr"] > 0 and out["transport_stderr"] > 0
    vp = load("toy2d.py").get_config("quicktest")
    spec_vp = spec_from_config(vp)
    c_vp = build_components(spec_vp)
    with pytest.raises(ValueError, match="rectified flow"):
        evaluate.straightness_metrics(jax.random.PRNGKey(0), spec_vp, c_vp, state, 16)


def test_evaluate_program_reports_straightness(flow_dir):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "launch", "evaluate.py"), f"--workdir={flow_dir}",
         "--solvers=euler:1,euler:2", "--num=16", "--straightness_num=8",
         "--straightness_steps=3"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.load(open(os.path.join(flow_dir, "eval_0000001.json")))
    s = result["straightness"]
    assert s["num"] == 8 and s["steps"] == 3 and s["straightness"] >= 0
    assert np.isfinite(s["stderr"]) and s["transport_cost"] > 0
    assert "straightness:" in out.stdout
