"""A learning test: a few hundred steps on the 2-D ring mixture bring the sliced Wasserstein
distance between samples and data far below that of the untrained model."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np

from diffjax.train.builders import build_components
from diffjax.train.loop import run_training
from diffjax.train.sampling import make_sampler
from diffjax.train.spec import spec_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, num_projections: int = 200) -> float:
    """SW_1 between two equal-size 2-D point clouds: the mean over random unit directions of the
    1-D W1 distance, which for equal sizes is the mean gap between sorted projections
    (Rabin et al. 2011; Bonneel et al. 2015). Independent numpy code, fixed directions."""
    angles = np.random.default_rng(123).uniform(0, np.pi, num_projections)
    dirs = np.stack([np.cos(angles), np.sin(angles)])  # [2, P]
    pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)  # [N, P]
    return float(np.mean(np.abs(pa - pb)))


def toy_config():
    spec = importlib.util.spec_from_file_location(
        "toy2d", os.path.join(ROOT, "experiments", "toy2d.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("process=vp")
    c.model.kwargs.update(hidden=64, depth=2)
    c.train.update(num_steps=600, log_every=100, checkpoint_every=600, progress_bar=False)
    c.optim.update(learning_rate=3e-3, warmup_steps=50)
    c.sample.update(num=0, steps=200, solver="ddpm")  # ancestral: robust for a short run
    return c


def draw(comps, start: int, n: int) -> np.ndarray:
    batches = comps.batches(start)
    return np.concatenate([next(batches)["x"] for _ in range(-(-n // 256))])[:n]  # [n, 2]


def test_ring_mixture_is_learned(tmp_path):
    spec = spec_from_config(toy_config())
    comps = build_components(spec)
    n = 1000
    sampler = make_sampler(comps, spec.sample, spec.cond, spec.prediction, n)
    key = jax.random.PRNGKey(7)
    untrained = comps.init_params(jax.random.PRNGKey(0))
    before = np.asarray(sampler(untrained, key))
    state = run_training(spec, comps, str(tmp_path))
    after = np.asarray(sampler(state.ema_params, key))
    data = [draw(comps, start, n) for start in (10_000, 20_000)]  # steps never trained on
    sw_before = sliced_wasserstein(before, data[0])
    sw_after = sliced_wasserstein(after, data[0])
    sw_floor = sliced_wasserstein(data[1], data[0])  # two independent data samples of size n
    print(f"SW untrained {sw_before:.3f}, trained {sw_after:.3f}, data vs data {sw_floor:.3f}")
    # Measured (2 cores): untrained ~ 1e2 (its eps output is far off, so the chain diverges),
    # trained 0.08, two data samples 0.06: the Monte Carlo floor, ~ n^-1/2 for n = 1000. The
    # bound 0.15 is 2.5x the floor and about 1e-3 of the untrained value; a model that merely
    # puts mass on a disc of the ring's radius (no angular modes) or misses modes scores well
    # above it, so passing needs the mixture to be learned.
    assert sw_floor < 0.1
    assert sw_before > 1.0
    assert sw_after < 0.15
