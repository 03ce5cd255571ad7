"""Training and loading a time-conditional classifier p_phi(y | x_t, t) for classifier guidance
(Dhariwal & Nichol 2021, sec. 4): `config.task = 'classifier'` runs of launch/train.py.

The classifier sees x_t ~ q(x_t | x0) = N(alpha_t x0, sigma_t^2 I) at t drawn as the process's
own training times (`draw_t`: n / T with n ~ U{1..T} on a chain; U(loss_t_min, 1) in continuous
time) and is trained by cross-entropy on the labels. The run is an ordinary diffjax run: the same
loop (`run_training`), orbax checkpoints with EMA parameters, resume, metrics and config.json;
only the model (`diffjax.models.classifier.NoisyClassifier`) and the loss differ.
`guidance.classifier` then adds scale * grad_x log p_phi(y | x_t, t) to the score.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import kernels
from diffjax.losses.common import finish
from diffjax.processes import Process
from diffjax.train import spec as spec_lib
from diffjax.typing import Array, PyTree

MODEL_NAME = "noisy_classifier"  # config.model.name of a classifier run
LOSS_NAME = "cross_entropy"  # config.loss.name of a classifier run


def classifier_times(key: Array, process: Process, batch: int, dtype=jnp.float32) -> Array:
    """Training times [batch]: the process's `draw_t` (n / T, n ~ U{1..T}, on a chain), mapped
    to U(loss_t_min, 1) in continuous time, so a VP/VE classifier never sees sigma(t) = 0."""
    t = process.draw_t(key, batch, dtype)
    if process.num_steps is None:
        t_min = process.loss_t_min
        t = t_min + (1.0 - t_min) * t
    return t


def noisy_cross_entropy(model, key: Array, x0, process: Process, *, cond=None, t=None):
    """Cross-entropy -log p_phi(y | x_t, t) of a classifier `model(x_t, t) -> logits [B, K]`
    at x_t from the forward kernel (Dhariwal & Nichol 2021, sec. 4.1); `cond` holds the labels.

    Returns: (batch mean, aux with 'per_example' [B], 't' [B], 'accuracy' (scalar)).
    """
    if cond is None:
        raise ValueError("the noisy classifier's loss needs the labels (cond); got None")
    x0 = jnp.asarray(x0)
    t_key, noise_key = jax.random.split(key)
    t = classifier_times(t_key, process, x0.shape[0], x0.dtype) if t is None else t
    x_t, _ = kernels.marginal(noise_key, process, x0, t)
    logits = model(x_t, t)  # [B, K]
    logp = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.asarray(cond, jnp.int32)
    ce = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return finish(ce, t, accuracy=accuracy)


def _check_fields(config) -> None:
    model, loss = str(config.model.name), str(config.loss.name)
    spec_lib._check(model == MODEL_NAME, "model.name", model, f"{MODEL_NAME!r} for a classifier")
    spec_lib._check(loss == LOSS_NAME, "loss.name", loss, f"{LOSS_NAME!r} for a classifier")
    loss_kwargs = spec_lib._options(config.loss.get("kwargs"), "loss.kwargs")
    spec_lib._check(not loss_kwargs, "loss.kwargs", loss_kwargs, "{} (the loss takes none)")
    spec_lib._check(
        config.get("teacher", {}).get("workdir") is None,
        "teacher.workdir",
        config.get("teacher", {}).get("workdir"),
        "None for a classifier",
    )


def _build_model(options: dict[str, Any], example: spec_lib.ExampleSpec, num_classes: int):
    from diffjax.models.classifier import NoisyClassifier

    names = {f.name for f in dataclasses.fields(NoisyClassifier)} - {"parent", "name"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} in config.model.kwargs for {MODEL_NAME!r}; "
            f"fields: {sorted(names - {'num_classes'})}"
        )
    if len(example.shape) != 3:
        raise ValueError(f"a noisy classifier needs images [H, W, C]; the data give {example}")
    options = {"in_channels": example.shape[-1], **options, "num_classes": num_classes}
    return NoisyClassifier(**options)


def classifier_spec_from_config(config, example: spec_lib.ExampleSpec | None = None):
    """The TrainSpec of a classifier run, every field validated before data or compilation.

    `config.cond.num_classes` (>= 2) is the number of classes; labels are read from the batch
    (class_conditional is set, label_dropout must be 0). `config.sample` is ignored (no grids).
    `prediction` is 'eps' only to fill the field: nothing samples this model.
    """
    from diffjax.processes import get_process

    unknown = sorted(set(spec_lib._as_dict(config)) - set(spec_lib.CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"unknown config field(s) {unknown}; known: {list(spec_lib.CONFIG_FIELDS)}"
        )
    _check_fields(config)
    cond = spec_lib._section(spec_lib.CondSpec, config.cond, "cond")
    spec_lib._check(cond.num_classes >= 2, "cond.num_classes", cond.num_classes, ">= 2 classes")
    spec_lib._check(cond.label_dropout == 0.0, "cond.label_dropout", cond.label_dropout, "0")
    cond = dataclasses.replace(cond, class_conditional=True)
    optim = spec_lib._section(spec_lib.OptimSpec, config.optim, "optim")
    ema = spec_lib._section(spec_lib.EmaSpec, config.ema, "ema")
    spec_lib._check_optim(optim, ema, cond)
    loop = spec_lib._section(spec_lib.LoopSpec, config.train, "train")
    spec_lib._check_loop(loop)
    # the diffusion loop runs this task's steps (grad_accum, steps_per_call and nonfinite apply);
    # its classifier is built here, not by spec.build_model, so the compute dtype would not
    spec_lib._check(loop.compute_dtype == "float32", "train.compute_dtype", loop.compute_dtype,
                    "'float32' for a task='classifier' run")  # fmt: skip
    process_options = spec_lib._options(config.process.get("kwargs"), "process.kwargs")
    try:
        process = get_process(str(config.process.name), **process_options)
    except TypeError as err:
        raise ValueError(
            f"config.process.kwargs = {process_options!r} do not fit process "
            f"{config.process.name!r}: {err}"
        ) from err
    seed, batch_size = int(config.seed), int(config.data.batch_size)
    data = spec_lib.data_config(config.data, batch_size, seed)
    example = spec_lib.probe_example(data) if example is None else example
    model_options = spec_lib._options(config.model.get("kwargs"), "model.kwargs")
    return spec_lib.TrainSpec(
        seed=seed,
        batch_size=batch_size,
        prediction="eps",
        process=process,
        model=_build_model(model_options, example, cond.num_classes),
        loss=noisy_cross_entropy,
        data=data,
        example=example,
        optim=optim,
        ema=ema,
        cond=cond,
        loop=loop,
        sample=spec_lib.SampleSpec(num=0),
    )


def train_noisy_classifier(
    config,
    workdir: str,
    *,
    allow_config_change: tuple[str, ...] = (),
    allow_fresh_start: bool = False,
):
    """Train (or resume) a classifier run in `workdir`; the 'classifier' task of launch/train.py.
    Writes config.json and run_info.json like a diffusion run. Returns the final TrainState.

    The rules of `loop.train_and_evaluate`: a resumed run's config must equal the stored one
    outside `checkpoint.RESUMABLE_FIELDS` and `allow_config_change` (else ConfigMismatchError,
    before any write); the workdir lock is taken before the first write; `run_training` then
    resumes (`allow_fresh_start`), stops at SIGTERM with a checkpoint (parallel.Preempted) and
    never saves a NaN/inf state.
    """
    from diffjax import parallel

    with parallel.PreemptionWatch() as preemption:  # covers the start-up too
        return _train(config, workdir, allow_config_change, allow_fresh_start, preemption)


def _train(config, workdir, allow_config_change, allow_fresh_start, preemption):
    """`train_noisy_classifier` under the caller's SIGTERM handler (`train_and_evaluate`'s
    steps for a diffusion run)."""
    from diffjax import parallel
    from diffjax.train import checkpoint, paths
    from diffjax.train.builders import build_batches, build_model_components
    from diffjax.train.lock import lock_workdir
    from diffjax.train.loop import _stop_at_start, checkpoint_dir, config_to_json, run_training
    from diffjax.train.workdir import CONFIG_FILE, write_run_info, write_workdir_json

    paths.check_filesystem(workdir)  # a missing gs:// client: one clear error, before work
    spec = classifier_spec_from_config(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(spec.batch_size, mesh.size)
    config_json = config_to_json(config)
    checkpoint.check_resume_config(checkpoint_dir(workdir), config_json, allow_config_change)
    c = build_model_components(spec, batches=lambda start: build_batches(spec, start))
    if preemption.notice:  # one process: a SIGTERM during the build; nothing written yet
        _stop_at_start(checkpoint.stored_config(checkpoint_dir(workdir))[1] or 0)
    with lock_workdir(workdir):  # before the first write: a second run changes nothing
        write_workdir_json(workdir, CONFIG_FILE, config_json)  # primary process only
        write_run_info(workdir, c)
        return run_training(
            spec, c, workdir, config_json, mesh, allow_fresh_start=allow_fresh_start,
            lock=False, preemption=preemption,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NoisyClassifierRun:
    """A trained classifier: its spec (process, model, classes, example shape), the model bound
    to its EMA parameters (`model(x_t, t) -> logits [B, K]`, a pytree) and the step."""

    spec: Any
    model: Any
    step: int

    @property
    def num_classes(self) -> int:
        return self.spec.cond.num_classes

    def log_prob(self):
        """`logp(x_t, t, y) -> [B]` log p_phi(y | x_t, t), a pytree over the parameters."""
        return jax.tree_util.Partial(_log_prob, self.model)


def _log_prob(model, x_t: Array, t: Array, y: Array) -> Array:
    logp = jax.nn.log_softmax(model(x_t, t), axis=-1)  # [B, K]
    return jnp.take_along_axis(logp, jnp.asarray(y, jnp.int32)[:, None], axis=-1)[:, 0]


def load_noisy_classifier(workdir: str, mesh=None) -> NoisyClassifierRun:
    """The classifier of a `task='classifier'` workdir at its newest checkpoint (read-only).

    Raises:
      FileNotFoundError: not a training workdir, or no checkpoint.
      ValueError: the workdir trained something else (its task names it).
    """
    from diffjax import parallel
    from diffjax.models import bind
    from diffjax.train import checkpoint
    from diffjax.train.builders import make_init
    from diffjax.train.loop import checkpoint_dir
    from diffjax.train.workdir import RUN_INFO_FILE, _read_json, load_config

    config = load_config(workdir)
    task = str(config.get("task", "diffusion"))
    if task != "classifier":
        raise ValueError(
            f"{workdir!r} is not a noisy-classifier run: its config.task = {task!r}; train one "
            "with --config=experiments/noisy_classifier.py"
        )
    info = _read_json(workdir, RUN_INFO_FILE)
    example = spec_lib.ExampleSpec(shape=tuple(info["example_shape"]), key=info["data_key"])
    spec = classifier_spec_from_config(config, example)
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = jax.eval_shape(make_init(spec.model, example.shape, True), jax.random.PRNGKey(0))
    params, step = checkpoint.restore_ema(
        checkpoint_dir(workdir), abstract, parallel.replicated(mesh)
    )
    return NoisyClassifierRun(spec, bind(spec.model, {"params": params}), step)


def check_classifier_fits(run: NoisyClassifierRun, spec, workdir: str, where: str) -> None:
    """ValueError unless the classifier in `workdir` was trained for the diffusion run's process,
    example shape and (for a class-conditional model) number of classes."""
    if run.spec.process != spec.process:
        raise ValueError(
            f"the classifier in {workdir!r} was trained for process "
            f"{_describe(run.spec.process)}; the model in {where!r} uses "
            f"{_describe(spec.process)}: train the classifier on the model's process"
        )
    if tuple(run.spec.example.shape) != tuple(spec.example.shape):
        raise ValueError(
            f"the classifier in {workdir!r} takes examples of shape {run.spec.example.shape}; "
            f"the model in {where!r} draws {tuple(spec.example.shape)}"
        )
    if spec.cond.class_conditional and spec.cond.num_classes != run.num_classes:
        raise ValueError(
            f"the classifier in {workdir!r} has {run.num_classes} classes; the class-"
            f"conditional model in {where!r} has {spec.cond.num_classes}"
        )


def _describe(process: Process) -> str:
    if process.num_steps is not None:
        betas = np.asarray(process.betas)
        return f"Discrete(T={len(betas)}, betas {betas[0]:.4g}..{betas[-1]:.4g})"
    return repr(process)


def accuracy_by_time(
    key: Array, run: NoisyClassifierRun, images, labels, ts, batch_size: int = 500
) -> list[dict[str, float]]:
    """Accuracy of the classifier on x_t ~ q(x_t | x0) of labelled `images` at each t in `ts`,
    with its binomial standard error sqrt(a (1 - a) / N)."""
    images, labels = jnp.asarray(images), np.asarray(labels)
    logits = jax.jit(lambda x, t: run.model(x, t))
    rows = []
    for i, t in enumerate(ts):
        hits = []
        for j in range(0, images.shape[0], batch_size):
            x0 = images[j : j + batch_size]
            tb = jnp.full((x0.shape[0],), float(t), x0.dtype)
            x_t, _ = kernels.marginal(
                jax.random.fold_in(key, 1000 * i + j), run.spec.process, x0, tb
            )
            hits.append(np.asarray(jnp.argmax(logits(x_t, tb), -1)) == labels[j : j + batch_size])
        acc = float(np.mean(np.concatenate(hits)))
        stderr = float(np.sqrt(acc * (1.0 - acc) / len(labels)))
        rows.append({"t": float(t), "accuracy": acc, "stderr": stderr, "num": int(len(labels))})
    return rows


def guided_sampler(run: NoisyClassifierRun, c, sspec, spec, labels: Array, scale: float):
    """(params, key, **options) -> samples [N, ...] of the diffusion model guided towards
    `labels` [N] by `guidance.classifier` with this classifier at `scale`, for any solver of
    `sspec` (`options`, e.g. x_init=, go to `sample` too).

    A class-conditional model gets the labels (and the config's CFG scale) too."""
    from diffjax import guidance
    from diffjax.samplers import sample
    from diffjax.train.sampling import guided_model

    model_labels = labels if spec.cond.class_conditional else None
    shape = (labels.shape[0], *c.example_shape)

    def run_sampler(params: PyTree, key: Array, **options) -> Array:
        model = guided_model(c, params, model_labels, sspec.guidance_scale, spec.cond.num_classes)
        guided = guidance.classifier(
            model, run.log_prob(), labels, scale, process=c.process, prediction=spec.prediction
        )
        return sample(
            key,
            guided,
            c.process,
            shape,
            solver=sspec.solver,
            steps=sspec.steps or None,
            prediction=spec.prediction,
            **{**dict(sspec.kwargs), **options},
        )

    return run_sampler
