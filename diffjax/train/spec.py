"""The experiment ConfigDict converted once, at the boundary, into the things themselves.

`spec_from_config` validates every field (before any data is read or anything compiles) and
returns a frozen `TrainSpec` holding the built `Process`, the Flax module, the loss as a
`functools.partial` over its options and the `diffjax.data.DataConfig`. Below
`train_and_evaluate` nothing sees a ConfigDict, and no builder re-reads a name.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from typing import Any

from diffjax.typing import PREDICTION_KINDS

OPTIMIZERS = ("adam", "adamw")
# Top-level fields of the experiment ConfigDict (see diffjax/train/config.py).
CONFIG_FIELDS = (
    "seed", "prediction", "data", "model", "process", "loss", "optim", "ema", "cond", "train",
    "sample", "teacher",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """Adam/AdamW with linear warm-up to a constant rate and global-norm clipping."""

    name: str = "adam"  # 'adam' or 'adamw'
    learning_rate: float = 2e-4  # peak rate after warm-up, >= 0
    warmup_steps: int = 0  # linear warm-up 0 -> learning_rate over this many steps
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # AdamW only (decoupled decay)
    grad_clip: float = 0.0  # global-norm clip; 0 disables


@dataclasses.dataclass(frozen=True)
class EmaSpec:
    """Exponential moving average of the parameters."""

    decay: float = 0.9999  # in [0, 1)
    # If True, decay_n = min(decay, (1 + n) / (10 + n)) (the warm-up of tf.train.
    # ExponentialMovingAverage's num_updates), so short runs are not dominated by the init.
    warmup: bool = False


@dataclasses.dataclass(frozen=True)
class CondSpec:
    """Class conditioning; label `num_classes` is the null class used by classifier-free
    guidance (Ho & Salimans 2021): labels are replaced by it with probability `label_dropout`."""

    class_conditional: bool = False
    num_classes: int = 0
    label_dropout: float = 0.0  # in [0, 1)


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Step counts of the outer loop (all in optimiser steps)."""

    num_steps: int = 1000  # >= 0
    log_every: int = 50  # >= 1
    checkpoint_every: int = 500  # >= 1
    keep_checkpoints: int = 3  # >= 1
    sample_every: int = 0  # 0: only at the end
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How sample grids are drawn during and after training."""

    solver: str = "ddim"  # a key of diffjax.samplers.SOLVERS
    steps: int = 50  # solver intervals (0: an adaptive solver chooses)
    num: int = 64  # samples per grid (0: no grids)
    # CFG scale s: uncond + s (cond - uncond) (Ho & Salimans 2021); 1 = plain conditional model
    guidance_scale: float = 1.0
    kwargs: dict = dataclasses.field(default_factory=dict)  # solver options, e.g. {'eta': 0.5}


@dataclasses.dataclass(frozen=True)
class ExampleSpec:
    """What one training example looks like (read from the data once, or from run_info.json)."""

    shape: tuple[int, ...]  # one example: (H, W, C) images or (D,) points
    key: str = "image"  # the batch field holding x0: 'image' or 'x'


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """A trained run whose EMA model is given to the loss as `teacher=` (distillation)."""

    workdir: str | None = None  # its training workdir; None: no teacher


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything the training loop needs, built: objects, not names."""

    seed: int  # init, per-step keys fold_in(step_key, n), sample grids
    batch_size: int  # global batch B, split over every device and host
    prediction: str  # what the model outputs: one of PREDICTION_KINDS (loss and sampler agree)
    process: Any  # the diffjax.processes.Process
    model: Any  # the flax.linen.Module: model(x_t [B, ...], t [B], cond, train=) -> [B, ...]
    loss: Callable  # partial of a diffjax.losses function: (model, key, x0, process, *, cond)
    data: Any  # the diffjax.data.DataConfig (batch_size and seed filled in)
    example: ExampleSpec
    optim: OptimSpec
    ema: EmaSpec
    cond: CondSpec
    loop: LoopSpec
    sample: SampleSpec
    teacher: TeacherSpec = dataclasses.field(default_factory=TeacherSpec)


def _as_dict(section) -> dict[str, Any]:
    return section.to_dict() if hasattr(section, "to_dict") else dict(section or {})


def _section(cls, section, where: str):
    """`cls(**section)`, with a ValueError naming any field `cls` does not have."""
    given = _as_dict(section)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.{where}; known: {sorted(names)}")
    return cls(**given)


def _check(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"config.{field} = {value!r}: expected {expected}")


def _check_loop(loop: LoopSpec) -> None:
    _check(loop.num_steps >= 0, "train.num_steps", loop.num_steps, "an integer >= 0")
    for name in ("log_every", "checkpoint_every", "keep_checkpoints"):
        value = getattr(loop, name)
        _check(value >= 1, f"train.{name}", value, "an integer >= 1")
    _check(loop.sample_every >= 0, "train.sample_every", loop.sample_every, ">= 0 (0: at the end)")


def _check_optim(optim: OptimSpec, ema: EmaSpec, cond: CondSpec) -> None:
    _check(optim.name in OPTIMIZERS, "optim.name", optim.name, f"one of {OPTIMIZERS}")
    _check(optim.learning_rate >= 0, "optim.learning_rate", optim.learning_rate, "a rate >= 0")
    _check(optim.warmup_steps >= 0, "optim.warmup_steps", optim.warmup_steps, "an integer >= 0")
    _check(0.0 <= ema.decay < 1.0, "ema.decay", ema.decay, "a decay in [0, 1)")
    if cond.class_conditional:
        _check(cond.num_classes >= 1, "cond.num_classes", cond.num_classes, ">= 1 when conditional")
    _check(
        0.0 <= cond.label_dropout < 1.0,
        "cond.label_dropout",
        cond.label_dropout,
        "a value in [0, 1)",
    )


def _options(section, where: str) -> dict[str, Any]:
    """An options dict as plain Python: lists (from JSON) become tuples, e.g. clip_x0."""
    options = _as_dict(section)
    if not all(isinstance(k, str) for k in options):
        raise ValueError(f"config.{where} must map option names to values; got {options!r}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _sample_spec(section) -> SampleSpec:
    from diffjax.samplers import api

    fields = _as_dict(section)
    fields["kwargs"] = _options(fields.get("kwargs"), "sample.kwargs")
    spec = _section(SampleSpec, fields, "sample")
    _check(
        spec.solver in api.SOLVERS, "sample.solver", spec.solver, f"one of {sorted(api.SOLVERS)}"
    )
    _check(spec.steps >= 0, "sample.steps", spec.steps, "an integer >= 0 (0: adaptive)")
    _check(spec.num >= 0, "sample.num", spec.num, "an integer >= 0 (0: no grids)")
    allowed = {**getattr(api, "COMMON_OPTIONS", {}), **api.SOLVERS[spec.solver].options}
    unknown = sorted(set(spec.kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} in config.sample.kwargs for solver {spec.solver!r}; "
            f"its options: {sorted(allowed)}"
        )
    return spec


def build_loss(name: str, options: dict[str, Any], prediction: str) -> Callable:
    """`functools.partial(diffjax.losses.LOSSES[name], **options)` training `prediction`.

    A loss whose target fixes its kind (`LOSS_PREDICTION`) must agree with `prediction`; the
    others get `prediction=prediction`. Either way the trained kind is the sampled kind.
    """
    from diffjax.losses import LOSS_PREDICTION, get_loss

    fn = get_loss(name)
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params) - {"prediction"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} in config.loss.kwargs for loss {name!r}")
    given = options.get("prediction", prediction)
    if given != prediction:
        raise ValueError(
            f"config.loss.kwargs.prediction = {given!r} contradicts config.prediction = "
            f"{prediction!r}; set only config.prediction (it drives the loss and the sampler)"
        )
    options = {k: v for k, v in options.items() if k != "prediction"}
    if name in LOSS_PREDICTION:
        fixed = LOSS_PREDICTION[name]
        if fixed != prediction:
            raise ValueError(
                f"loss {name!r} trains a {fixed!r} model but config.prediction = {prediction!r}"
                f" (which the sampler would use); set prediction={fixed!r}, or for "
                f"{prediction!r} use a loss that takes a prediction kind, e.g. 'weighted'"
            )
        return functools.partial(fn, **options)
    if "prediction" not in params:
        raise ValueError(
            f"loss {name!r} neither takes a prediction kind nor is listed in "
            "diffjax.losses.LOSS_PREDICTION; add the kind it trains there"
        )
    return functools.partial(fn, prediction=prediction, **options)


# Loss parameters the training layer fills itself (never from config.loss.kwargs).
FILLED_BY_TRAINING = ("teacher", "target_model")


def check_teacher(name: str, loss: Callable, teacher: TeacherSpec) -> None:
    """A teacher is configured exactly when the loss takes one (and must when it needs one)."""
    params = inspect.signature(getattr(loss, "func", loss)).parameters
    given = sorted(set(getattr(loss, "keywords", {})) & set(FILLED_BY_TRAINING))
    if given:
        raise ValueError(
            f"config.loss.kwargs sets {given}: the training layer fills these (config.teacher."
            "workdir gives the teacher; the target network is the run's own EMA)"
        )
    if teacher.workdir is not None and "teacher" not in params:
        raise ValueError(
            f"config.teacher.workdir = {teacher.workdir!r} but loss {name!r} takes no teacher; "
            "unset it, or use a distillation loss (e.g. 'progressive')"
        )
    needs = "teacher" in params and params["teacher"].default is inspect.Parameter.empty
    if needs and teacher.workdir is None:
        raise ValueError(
            f"loss {name!r} needs a teacher: set config.teacher.workdir to the trained "
            "teacher's workdir; got None"
        )


def data_config(section, batch_size: int, seed: int):
    """The `diffjax.data.DataConfig` of config.data (`~` in data_dir expanded)."""
    from diffjax.data import DataConfig

    fields = _as_dict(section)
    fields.pop("batch_size", None)
    if fields.get("data_dir"):
        fields["data_dir"] = os.path.expanduser(str(fields["data_dir"]))
    if fields.get("toy_kwargs") is not None:
        fields["toy_kwargs"] = _options(fields["toy_kwargs"], "data.toy_kwargs")
    names = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.data; known: {sorted(names)}")
    _check(batch_size >= 1, "data.batch_size", batch_size, "a global batch size >= 1")
    return DataConfig(**fields, batch_size=batch_size, seed=seed)


def probe_example(data) -> ExampleSpec:
    """The example shape and batch key of a data source (opens it; draws no batch)."""
    from diffjax.data import make_iterator

    batches = make_iterator(dataclasses.replace(data, prefetch=0))
    return ExampleSpec(shape=tuple(batches.info["shape"]), key=batches.info.get("key", "image"))


def build_model(name: str, options: dict[str, Any], example: ExampleSpec, cond: CondSpec):
    """`diffjax.models.get_model(name, **options)`, with `in_channels` (from an image example)
    and `num_classes` (from the conditioning) filled in unless the options set them."""
    from diffjax.models import MODEL_CLASSES, get_model

    options = dict(options)
    cls = MODEL_CLASSES.get(name.split("_")[0])
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    if "in_channels" in fields and len(example.shape) == 3:
        options.setdefault("in_channels", example.shape[-1])
    if "num_classes" in fields:
        options.setdefault("num_classes", cond.num_classes if cond.class_conditional else None)
    return get_model(name, **options)


def spec_from_config(config, example: ExampleSpec | None = None) -> TrainSpec:
    """Validate the experiment ConfigDict (see experiments/digits.py) and build its TrainSpec.

    Every check runs before any data is opened; `example` None then opens the data source once
    to read the example shape (launch/sample.py passes the shape stored in run_info.json).

    Raises:
      ValueError: naming the config field and value that is wrong, e.g. an unknown solver,
        a loss whose prediction kind contradicts `config.prediction`, or `ema.decay = 1`.
    """
    from diffjax.processes import get_process

    unknown = sorted(set(_as_dict(config)) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known: {list(CONFIG_FIELDS)}")
    prediction = str(config.prediction)
    _check(prediction in PREDICTION_KINDS, "prediction", prediction, f"one of {PREDICTION_KINDS}")
    optim = _section(OptimSpec, config.optim, "optim")
    ema = _section(EmaSpec, config.ema, "ema")
    cond = _section(CondSpec, config.cond, "cond")
    _check_optim(optim, ema, cond)
    loop = _section(LoopSpec, config.train, "train")
    _check_loop(loop)
    sample = _sample_spec(config.sample)
    loss_options = _options(config.loss.get("kwargs"), "loss.kwargs")
    loss = build_loss(str(config.loss.name), loss_options, prediction)
    teacher = _section(TeacherSpec, config.get("teacher", {}), "teacher")
    if teacher.workdir is not None:
        teacher = TeacherSpec(workdir=os.path.expanduser(str(teacher.workdir)))
    check_teacher(str(config.loss.name), loss, teacher)
    process_options = _options(config.process.get("kwargs"), "process.kwargs")
    try:
        process = get_process(str(config.process.name), **process_options)
    except TypeError as err:  # an option the process constructor does not take
        raise ValueError(
            f"config.process.kwargs = {process_options!r} do not fit process "
            f"{config.process.name!r}: {err}"
        ) from err
    seed, batch_size = int(config.seed), int(config.data.batch_size)
    data = data_config(config.data, batch_size, seed)
    example = probe_example(data) if example is None else example
    model_options = _options(config.model.get("kwargs"), "model.kwargs")
    return TrainSpec(
        seed=seed,
        batch_size=batch_size,
        prediction=prediction,
        process=process,
        model=build_model(str(config.model.name), model_options, example, cond),
        loss=loss,
        data=data,
        example=example,
        optim=optim,
        ema=ema,
        cond=cond,
        loop=loop,
        sample=sample,
        teacher=teacher,
    )
