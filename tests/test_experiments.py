"""Every experiments/*.py config: `quicktest` builds and runs one training step on tiny data
(IDX files written here, TFDS through tfds.testing.mock_data); argument errors are clear."""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.train.builders import build_components
from diffjax.train.components import make_loss_fn
from diffjax.train.loop import train_and_evaluate
from diffjax.train.spec import spec_from_config
from diffjax.train.writers import read_metrics
from tests.helpers import write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
# (file, argument) pairs: every file with quicktest, plus each family member of score_sde.
CASES = [(os.path.basename(f), "quicktest") for f in FILES] + [
    ("cifar10_score_sde.py", "quicktest,process=ve"),
    ("cifar10_score_sde.py", "quicktest,process=subvp"),
    ("toy2d.py", "quicktest,process=rectified_flow"),
    ("digits.py", "quicktest,unconditional"),
    ("mnist.py", "quicktest,dataset=fashion_mnist"),
    ("consistency.py", "quicktest,training"),  # a target network (the EMA) and the wrapper
]


# Experiments that are not one diffusion run built from its own config: the autoencoder
# (config.task='autoencoder') and latent diffusion (needs a trained autoencoder workdir). Their
# quicktests live in their own test files, which train the autoencoder first.
OWN_TESTS = {"autoencoder.py": "test_autoencoder_train.py", "ldm.py": "test_ldm.py"}
DIFFUSION_CASES = [(n, a) for n, a in CASES if n not in OWN_TESTS]


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"exp_{name[:-3]}", os.path.join(ROOT, "experiments", name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_idx_dir(root: str) -> str:
    rng = np.random.default_rng(0)
    write_idx(os.path.join(root, "train-images-idx3-ubyte"), rng.integers(0, 256, (16, 28, 28)))
    write_idx(os.path.join(root, "train-labels-idx1-ubyte"), rng.integers(0, 10, (16,)))
    return root


def test_every_experiment_file_is_covered():
    assert {os.path.basename(f) for f in FILES} <= {name for name, _ in CASES}
    for own in OWN_TESTS.values():
        assert os.path.isfile(os.path.join(ROOT, "tests", own))
    assert len(FILES) >= 7
    fashion = load("mnist.py").get_config("quicktest,dataset=fashion_mnist")
    assert fashion.data.name == "fashion_mnist_idx"


def quicktest_config(name, arg, tmp_path):
    """The quicktest config pointed at tiny local data; and the context the data needs."""
    config = load(name).get_config(arg)
    assert config.train.num_steps == 1 and config.data.batch_size == 8
    context = contextlib.nullcontext()
    if config.data.name.endswith("_idx"):
        config.data.data_dir = tiny_idx_dir(str(tmp_path))
    elif config.data.name.startswith("tfds:"):
        import tensorflow_datasets as tfds

        config.data.data_dir = str(tmp_path)
        config.data.prefetch = 0
        context = tfds.testing.mock_data(num_examples=16)
    return config, context


@pytest.mark.parametrize("name,arg", DIFFUSION_CASES)
def test_quicktest_builds_and_traces(tmp_path, name, arg):
    # Cheap for every case: build spec and components from the real data path and trace (not
    # compile) the loss on one batch as the train step calls it (with the EMA parameters, the
    # target network of the consistency losses, and the frozen models); a float32 scalar.
    config, context = quicktest_config(name, arg, tmp_path)
    with context:
        spec = spec_from_config(config)
        comps = build_components(spec)
        batch = next(comps.batches(0))
    params = jax.eval_shape(comps.init_params, jax.random.PRNGKey(0))

    def loss_fn(params, ema_params, key, batch):
        return make_loss_fn(comps, spec.cond)(
            params, key, batch, ema_params=ema_params, frozen=comps.frozen
        )

    loss, _ = jax.eval_shape(loss_fn, params, params, jax.random.PRNGKey(1), batch)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert batch[comps.data_key].shape == (8, *comps.example_shape)


# Running one real step compiles a network per case (~10 s each on 2 cores): three
# representative ones by default (MLP toy, U-Net on TFDS mock data, DiT), all with --slow.
DEFAULT_RUNS = {"toy2d.py", "cifar10_ddpm.py", "dit.py"}


@pytest.mark.parametrize(
    "name,arg",
    [
        pytest.param(
            n, a, marks=() if (n in DEFAULT_RUNS and a == "quicktest") else pytest.mark.slow
        )
        for n, a in DIFFUSION_CASES
    ],
)
def test_quicktest_runs_one_step(tmp_path, name, arg):
    config, context = quicktest_config(name, arg, tmp_path)
    with context:
        state = train_and_evaluate(config, str(tmp_path / "work"))
    assert int(state.step) == 1
    (record,) = read_metrics(str(tmp_path / "work" / "metrics.jsonl"))
    assert np.isfinite(record["loss"]) and record["loss"] > 0


@pytest.mark.parametrize("name", [os.path.basename(f) for f in FILES])
def test_unknown_argument_is_an_error(name):
    with pytest.raises(ValueError, match="no_such_arg"):
        load(name).get_config("quicktest,no_such_arg=1")


def test_family_members_differ():
    sde = load("cifar10_score_sde.py")
    ve, vp = sde.get_config("process=ve"), sde.get_config("process=vp")
    assert ve.process.name == "ve" and ve.process.kwargs.sigma_max == 50.0 and ve.ema.decay == 0.999
    assert vp.process.name == "vp" and vp.process.kwargs.beta_max == 20.0 and vp.ema.decay == 0.9999
    ddpm = load("cifar10_ddpm.py").get_config()
    assert (ddpm.optim.learning_rate, ddpm.optim.warmup_steps, ddpm.train.num_steps) == (
        2e-4,
        5000,
        800_000,
    )


@pytest.mark.parametrize(
    "name,arg",
    [c for c in DIFFUSION_CASES if c[1] != "quicktest"]
    + [(os.path.basename(f), None) for f in FILES if os.path.basename(f) not in OWN_TESTS],
)
def test_sampler_settings_are_accepted(name, arg):
    # quicktest draws no grid, so check here that each config's solver, steps and options are
    # accepted by diffjax.samplers.sample (3 intervals of a constant model on a tiny shape).
    from diffjax.samplers import sample
    from diffjax.train.learned_variance import sample_options
    from diffjax.train.spec import ExampleSpec

    spec = spec_from_config(load(name).get_config(arg), ExampleSpec(shape=(4, 4, 1)))
    sspec = sample_options(spec, spec.sample)  # what the launchers pass (learned variances)
    # a learned-variance model outputs [mean, v]: twice the channels
    width = 2 if sspec.kwargs.get("learned_variance") else 1
    model = lambda x, t: jnp.zeros(x.shape[:-1] + (width * x.shape[-1],), x.dtype)
    steps = 3 if spec.sample.steps else None
    x = sample(
        jax.random.PRNGKey(0),
        model,
        spec.process,
        (2, 4, 4, 1),
        solver=spec.sample.solver,
        steps=steps,
        prediction=spec.prediction,
        **sspec.kwargs,
    )
    assert x.shape == (2, 4, 4, 1)
