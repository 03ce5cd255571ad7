"""NFE tables (issue 14): solver entries with options, budgets of model evaluations, repeated
draws with their spread, the data floor, and the quality-against-NFE plot."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from PIL import Image

from diffjax.samplers import count_nfe
from diffjax.train import evaluate
from diffjax.train.loop import train_and_evaluate
from diffjax.train.workdir import load_trained
from tests.helpers import config_from_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "experiments", "toy2d.py")


def test_parse_solvers_with_options():
    assert evaluate.parse_solvers("ddim:10, dpm_solver/order=2:5,dopri5,ddim/eta=0.5") == [
        ("ddim", 10, {}),
        ("dpm_solver", 5, {"order": 2}),
        ("dopri5", 0, {}),
        ("ddim", 0, {"eta": 0.5}),
    ]
    assert evaluate.parse_solvers("pc/predictor=euler_maruyama/n_corrector=2")[0][2] == {
        "predictor": "euler_maruyama",
        "n_corrector": 2,
    }
    assert evaluate.solver_label("dpm_solver", {"order": 3}) == "dpm_solver/order=3"
    with pytest.raises(ValueError, match="bad solver option 'order' in 'dpm_solver/order:4'"):
        evaluate.parse_solvers("dpm_solver/order:4")
    with pytest.raises(ValueError, match="bad solver:steps pair 'ddim:ten'"):
        evaluate.parse_solvers("ddim:ten")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 1-step toy2d (VP, eps) run: (spec, components, state)."""
    config = config_from_file(f"{TOY}:quicktest")
    config.train.num_steps = 1
    workdir = tmp_path_factory.mktemp("toy")
    train_and_evaluate(config, str(workdir))
    return load_trained(str(workdir))


def test_nfe_rows_repeats_floor_and_plot(toy_run, tmp_path):
    spec, c, state = toy_run
    items = evaluate.parse_solvers("ddim,dpm_solver/order=3,heun")
    pairs = evaluate.expand_nfe(spec, c, items, [6, 10])
    # the most steps within each budget: DPM-Solver-3 takes 3 calls a step, Heun 2 (its last
    # step to sigma = 0 is Euler: 2N - 1 on a VP process, whose sigma(t_min) > 0, 2N)
    assert [(n, s) for n, s, _ in pairs] == [
        ("ddim", 6), ("ddim", 10), ("dpm_solver", 2), ("dpm_solver", 3),
        ("heun", 3), ("heun", 5),
    ]  # fmt: skip
    rows = evaluate.evaluate_solvers(jax.random.PRNGKey(0), spec, c, state, pairs, 64, repeats=3)
    assert [r["solver"] for r in rows[2:4]] == ["dpm_solver/order=3"] * 2
    assert [r["nfe"] for r in rows] == [6, 10, 6, 9, 6, 10]
    for i, (r, (name, steps, options)) in enumerate(zip(rows, pairs, strict=True)):
        assert r["nfe"] == count_nfe(name, c.process, steps, **options) <= [6, 10][i % 2]
        # three independent draws: a spread above zero, the mean of finite values
        assert r["repeats"] == 3 and r["sliced_wasserstein_std"] > 0
        assert np.isfinite(r["sliced_wasserstein"]) and np.isfinite(r["mmd_std"])
    single = evaluate.evaluate_solvers(jax.random.PRNGKey(0), spec, c, state, pairs[:1], 64)
    assert "sliced_wasserstein_std" not in single[0] and "repeats" not in single[0]

    floor = evaluate.data_floor_rows(jax.random.PRNGKey(1), spec, 64)
    # the toy mixture has no held-out split: only two disjoint draws of the training stream,
    # whose distance is far below that of the 1-step model's samples
    assert [r["solver"] for r in floor] == ["data:train_halves"]
    assert floor[0]["sliced_wasserstein"] < 0.5 * min(r["sliced_wasserstein"] for r in rows)

    path = evaluate.save_nfe_plot(tmp_path / "eval.png", rows + floor)
    assert path == str(tmp_path / "eval.png")
    width, height = Image.open(path).size
    assert (width, height) == (600, 400)
    assert evaluate.save_nfe_plot(tmp_path / "none.png", floor) is None  # no model rows
    assert not (tmp_path / "none.png").exists()


def test_rows_with_an_added_option_are_labelled_and_sampled_with_it(toy_run):
    spec, c, state = toy_run
    items = evaluate.parse_solvers("ddim:4,dpm_solver/order=2:2")
    clipped = evaluate.with_options(items, clip_x0=(-0.05, 0.05))
    assert clipped[1] == ("dpm_solver", 2, {"order": 2, "clip_x0": (-0.05, 0.05)})
    with pytest.raises(ValueError, match=r"sets \['order'\] itself"):
        evaluate.with_options(items, order=3)
    key = jax.random.PRNGKey(0)
    plain = evaluate.evaluate_solvers(key, spec, c, state, items[:1], 64)
    rows = evaluate.evaluate_solvers(key, spec, c, state, clipped[:1], 64)
    assert rows[0]["solver"] == "ddim/clip_x0=(-0.05, 0.05)"
    # the toy run (one training step) sends its unclipped samples far out; with every x0
    # prediction clipped they stay within reach of the mixture
    assert rows[0]["sliced_wasserstein"] < 0.1 * plain[0]["sliced_wasserstein"]


def test_expand_nfe_budget_below_one_step_is_an_error(toy_run):
    spec, c, _ = toy_run
    with pytest.raises(ValueError, match="one step of 'rk4' costs 4 evaluations > nfe = 2"):
        evaluate.expand_nfe(spec, c, [("rk4", 0, {})], [2])
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        evaluate.evaluate_solvers(jax.random.PRNGKey(0), spec, c, toy_run[2], [("ddim", 2)], 8,
                                  repeats=0)  # fmt: skip


def test_data_floor_uses_the_test_split_and_disjoint_halves(tmp_path):
    """Rows of a source with a test split: 12 held-out items against the first 16 training
    items (the model rows' reference), then two disjoint halves of the 40-item epoch (16 each
    at num = 16; at num = 32, half an epoch: 20 against 20)."""
    import dataclasses

    from diffjax.data.sources import DataConfig
    from tests.helpers import write_idx

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 8, 8)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    data = DataConfig(name="mnist_idx", batch_size=8, data_dir=str(tmp_path))
    spec = dataclasses.make_dataclass("Spec", [("data", DataConfig)])(data)
    rows = evaluate.data_floor_rows(jax.random.PRNGKey(0), spec, 16, inception=False)
    assert [(r["solver"], r["num"]) for r in rows] == [
        ("data:test_vs_train", 12), ("data:train_halves", 16),
    ]  # fmt: skip
    assert all(
        r["sw_pixels"] > 0 for r in rows
    )  # distinct images: no row compares a set with itself
    rows = evaluate.data_floor_rows(jax.random.PRNGKey(0), spec, 32, inception=False)
    assert [r["num"] for r in rows] == [12, 20]


def test_data_features_computed_once_across_rows():
    calls = []

    def features(x):
        calls.append(len(x))
        return np.asarray(x).reshape(len(x), -1)[:, :2] * 2.0

    data, samples = np.ones((5, 3, 3, 1)), np.zeros((4, 3, 3, 1))
    reuse = evaluate._reusing(features, data)
    for _ in range(3):  # three rows: the data's features once, each row's samples each time
        np.testing.assert_array_equal(reuse(data), features(data))
        np.testing.assert_array_equal(reuse(samples), np.zeros((4, 2)))
    assert calls == [5, 5, 4, 5, 4, 5, 4]  # the 5s after the first: the direct calls above
    assert evaluate._reusing(None, data) is None
    # a different array with the data's values is not the data: computed, not looked up
    reuse(data.copy())
    assert calls[-1] == 5 and len(calls) == 8


def test_likelihoods_read_the_held_out_split(tmp_path, toy_run, monkeypatch):
    import dataclasses

    from diffjax.data.sources import DataConfig
    from tests.helpers import write_idx

    rng = np.random.default_rng(1)
    images = {"train": rng.integers(0, 256, (40, 8, 8)), "t10k": rng.integers(0, 256, (12, 8, 8))}
    for prefix, x in images.items():
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", x)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, len(x)))
    data = DataConfig(name="mnist_idx", batch_size=4, data_dir=str(tmp_path), random_flip=True)
    spec = dataclasses.make_dataclass("Spec", [("data", DataConfig)])(data)
    test_spec, split = evaluate.held_out(spec)
    assert (split, test_spec.data.split, test_spec.data.random_flip) == ("test", "test", False)
    held = evaluate.data_examples(test_spec, 12)  # the 12 test images, in the model's range
    as_bytes = lambda x: {r.tobytes() for r in np.rint((x + 1) * 127.5).astype(np.uint8)}  # noqa: E731
    assert as_bytes(held.reshape(12, 8, 8)) == as_bytes(images["t10k"] / 127.5 - 1)
    # both bounds take their examples from that split; the toy source has none: 'train'
    seen = []
    assert evaluate._stream(test_spec).info["max_value"] == 255.0  # the levels bits/dim uses
    real = evaluate._stream  # every read of a data source goes through it
    monkeypatch.setattr(evaluate, "_stream", lambda s: (seen.append(s.data.split), real(s))[1])
    toy_spec, c, state = toy_run  # a continuous VP run: the ODE likelihood only
    out = evaluate.likelihood_bits_per_dim(jax.random.PRNGKey(0), toy_spec, c, state, 4)
    assert out["split"] == "train" and np.isfinite(out["bpd"]) and seen == ["train"]
    # the source with a test split: the ODE bound of a model of its 8x8 images reads 'test'
    # (the toy model is not of images: only the examples read are checked, then it stops)
    import importlib

    likelihood = importlib.import_module("diffjax.likelihood")  # the module, not the function
    monkeypatch.setattr(likelihood, "nll_dataset", lambda *a, **k: {"bpd": 0.0})
    image_spec = dataclasses.replace(toy_spec, data=data)
    out = evaluate.likelihood_bits_per_dim(jax.random.PRNGKey(0), image_spec, c, state, 4)
    assert out["split"] == "test" and seen == ["train", "test"]


def test_merge_evals_replaces_a_rerun_solver_in_place(tmp_path):
    import json
    import sys

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import merge_evals

    row = lambda s, n, v, num=8: {"solver": s, "steps": n, "nfe": n, "num": num, "fid": v}  # noqa: E731
    first = [row("ddim", 5, 9.0), row("dpm", 3, 99.0), row("dpm", 6, 98.0), row("heun", 2, 7.0)]
    second = [row("dpm", 4, 5.0), row("dpm", 8, 4.0), row("ddim", 5, 8.0, num=16),
              row("heun", 9, 6.0), row("ddim", 5, 7.0)]  # fmt: skip
    for name, rows in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
    files = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    # the re-run solver's rows replace all its earlier ones at that sample count, in place; a
    # new budget or sample count is a new row; the same solver, steps and count replace one
    merged = merge_evals.merge(files, rerun=("dpm",))
    assert [(r["solver"], r["steps"], r["num"], r["fid"]) for r in merged] == [
        ("ddim", 5, 8, 7.0), ("dpm", 4, 8, 5.0), ("dpm", 8, 8, 4.0), ("heun", 2, 8, 7.0),
        ("ddim", 5, 16, 8.0), ("heun", 9, 8, 6.0),
    ]  # fmt: skip
    kept = merge_evals.merge(files)  # no re-run: the old dpm rows stay beside the new ones
    assert [(r["solver"], r["steps"]) for r in kept][:5] == [
        ("ddim", 5), ("dpm", 3), ("dpm", 6), ("heun", 2), ("dpm", 4),
    ]  # fmt: skip
    table = merge_evals.markdown([{**merged[0], "fid_std": 0.5}])
    assert "| ddim | 5 | 5 | 8 | 7 ± 0.5 |" in table


def test_an_adaptive_row_reports_the_evaluations_its_loop_made(toy_run):
    """dopri5's count depends on the model, so count_nfe gives None; the row carries the
    count `sample` reports for the same key and model instead (the adaptive row of the
    rectified-flow table had none)."""
    import dataclasses

    from diffjax.train.sampling import make_sampler

    spec, c, state = toy_run
    pairs = [("dopri5", 0, {"rtol": 1e-3, "atol": 1e-3})]
    rows = evaluate.evaluate_solvers(jax.random.PRNGKey(0), spec, c, state, pairs, 64)
    assert count_nfe("dopri5", c.process, prediction=spec.prediction) is None
    sspec = dataclasses.replace(spec.sample, solver="dopri5", steps=0, num=64, kwargs=pairs[0][2])
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)  # the row's draw key
    counting = make_sampler(c, sspec, spec.cond, spec.prediction, 64, with_nfe=True)
    samples, nfe = counting(state.ema_params, key)
    assert isinstance(rows[0]["nfe"], int) and rows[0]["nfe"] == int(nfe) > 0
    plain = make_sampler(c, sspec, spec.cond, spec.prediction, 64)
    np.testing.assert_array_equal(np.asarray(plain(state.ema_params, key)), np.asarray(samples))
