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
COMPUTE_DTYPES = ("float32", "bfloat16")  # config.train.compute_dtype
NONFINITE_MODES = ("stop", "skip")  # config.train.nonfinite
# Top-level fields of the experiment ConfigDict (see diffjax/train/config.py).
CONFIG_FIELDS = (
    "seed", "prediction", "data", "model", "process", "loss", "optim", "ema", "cond", "train",
    "sample", "teacher", "task", "cascade", "autoencoder", "text",
)  # fmt: skip
# What a run trains (config.task): a denoiser/flow (the loop below), or a model that other runs
# use: a KL autoencoder (latent diffusion), a noise-conditional classifier (guidance).
TASKS = ("diffusion", "autoencoder", "classifier")


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
    # Never set in a config: a `diffjax.consistency.CTSchedule` that `spec_from_config` sets when
    # config.loss.kwargs.schedule is on (consistency training), so that the EMA, which is the
    # CT target network, uses mu(k) = exp(s0 log mu0 / N(k)) instead of `decay`.
    schedule: Any = None


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
    # Options of the jitted step (issue 15): the global batch split into `grad_accum`
    # micro-batches whose gradients are averaged before one update; `steps_per_call` optimiser
    # steps per jitted call (lax.scan over stacked batches); the model's compute dtype
    # ('bfloat16': bf16 activations, float32 parameters and loss).
    grad_accum: int = 1  # >= 1, dividing data.batch_size
    steps_per_call: int = 1  # >= 1
    compute_dtype: str = "float32"  # one of COMPUTE_DTYPES
    # A step whose loss or gradients are NaN/inf: 'stop' the run before any save, or 'skip' its
    # update (params, optimiser state and EMA unchanged, the step count advances), stopping
    # only after more than `max_skipped` consecutive skipped steps.
    nonfinite: str = "stop"  # one of NONFINITE_MODES
    max_skipped: int = 10  # >= 0

    def saves_at(self, done: int) -> bool:
        """Whether a checkpoint is written after `done` steps (each period, and the last)."""
        return done % self.checkpoint_every == 0 or done == self.num_steps


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
    # Start the student's params and EMA at the teacher's EMA params (a fresh run only, never
    # on resume), as Liu et al. 2022 (reflow) and Salimans & Ho 2022 (each round) do.
    init_student: bool = False


# Losses that train a consistency function (they need config.model.consistency).
CONSISTENCY_LOSSES = ("consistency_distillation", "consistency_training")


@dataclasses.dataclass(frozen=True)
class ConsistencySpec:
    """config.model.consistency: the backbone F wrapped as the consistency function
    f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, t) in EDM's sigma space s = sigma_t / alpha_t
    (`diffjax.consistency.ConsistencyModule`; Song et al. 2023, eq. 5 and App. C), an x0-model
    with f(x, sigma_min) = x exactly. Empty (the default): the bare backbone."""

    sigma_min: float | None = None  # the boundary level, required (0.002 in Song et al.)
    sigma_max: float = 80.0  # the largest level: the loss's Karras grid and the sampling start
    sigma_data: float = 0.5  # the data's standard deviation in c_skip, c_out, c_in


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
    cascade: Any = None  # a diffjax.cascade.SRConfig when the run is an SR stage, else None
    latent: Any = None  # a diffjax.train.latent.LatentSpec (latent diffusion), else None
    text: Any = None  # a diffjax.train.latent.TextSpec (caption conditioning), else None


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
    for name in ("grad_accum", "steps_per_call"):
        value = getattr(loop, name)
        _check(_is_int(value) and value >= 1, f"train.{name}", value, "an integer >= 1")
    _check(loop.compute_dtype in COMPUTE_DTYPES, "train.compute_dtype", loop.compute_dtype,
           f"one of {COMPUTE_DTYPES}")  # fmt: skip
    _check(loop.nonfinite in NONFINITE_MODES, "train.nonfinite", loop.nonfinite,
           f"one of {NONFINITE_MODES}")  # fmt: skip
    ok = _is_int(loop.max_skipped) and loop.max_skipped >= 0
    _check(ok, "train.max_skipped", loop.max_skipped, "an integer >= 0")


def check_default_step_options(loop: LoopSpec, task: str) -> None:
    """ValueError naming the first config.train step option (grad_accum, steps_per_call,
    compute_dtype, nonfinite) that is not its default, for a task whose own train step does
    not implement them (so that a set option is never silently ignored)."""
    for name in ("grad_accum", "steps_per_call", "compute_dtype", "nonfinite"):
        value, default = getattr(loop, name), getattr(LoopSpec, name)
        _check(value == default, f"train.{name}", value, f"{default!r} for a task={task!r} run "
               "(its train step does not take this option)")  # fmt: skip


def check_grad_accum(batch_size: int, grad_accum: int, num_devices: int = 1) -> None:
    """ValueError unless the global batch splits into `grad_accum` micro-batches that split
    evenly over `num_devices` (batch_size divisible by grad_accum * num_devices)."""
    if batch_size % (grad_accum * num_devices):
        raise ValueError(
            f"config.data.batch_size = {batch_size} is not divisible by config.train.grad_accum"
            f" = {grad_accum} times the device count {num_devices}: each of the {grad_accum} "
            f"micro-batches must split evenly over the devices; use a multiple of "
            f"{grad_accum * num_devices}"
        )


def model_step_options(
    name: str, options: dict[str, Any], compute_dtype: str, remat: Any
) -> dict[str, Any]:
    """`options` of model `name` with the run's compute dtype (`dtype`; parameters stay
    float32) and `remat` (rematerialise each block in the backward pass) filled in, for a model
    class that has those fields; ValueError naming the model or a contradicting option."""
    from diffjax.models import MODEL_CLASSES

    cls = MODEL_CLASSES.get(name.split("_")[0])
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    options = dict(options)
    _check(isinstance(remat, bool), "model.remat", remat, "True or False")
    if remat:
        _check("remat" in fields, "model.remat", remat, f"False for model {name!r} (it has no "
               "remat option; the U-Net and the DiT have one)")  # fmt: skip
        given = options.get("remat", True)
        _check(given is True, "model.kwargs.remat", given, "unset or True with config.model.remat")
        options["remat"] = True
    if compute_dtype != "float32":
        _check("dtype" in fields, "train.compute_dtype", compute_dtype, f"'float32' for model "
               f"{name!r} (it has no dtype option)")  # fmt: skip
        if "dtype" in options and str(options["dtype"]) != compute_dtype:
            raise ValueError(
                f"config.model.kwargs.dtype = {options['dtype']!r} contradicts "
                f"config.train.compute_dtype = {compute_dtype!r}; set only the latter"
            )
        import jax.numpy as jnp

        options["dtype"] = getattr(jnp, compute_dtype)
        options.setdefault("param_dtype", jnp.float32)  # float32 master weights
    return options


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
    if teacher.workdir is not None and "teacher" not in params and not teacher.init_student:
        raise ValueError(
            f"config.teacher.workdir = {teacher.workdir!r} but loss {name!r} takes no teacher; "
            "unset it, use a distillation loss (e.g. 'progressive'), or set "
            "config.teacher.init_student = True to start from its params only"
        )
    needs = "teacher" in params and params["teacher"].default is inspect.Parameter.empty
    if needs and teacher.workdir is None:
        raise ValueError(
            f"loss {name!r} needs a teacher: set config.teacher.workdir to the trained "
            "teacher's workdir; got None"
        )
    if teacher.init_student and teacher.workdir is None:
        raise ValueError(
            "config.teacher.init_student = True starts the student at a teacher's EMA params: "
            "set config.teacher.workdir to that run's workdir; got None"
        )


def _loss_option(loss: Callable, name: str):
    """A loss option: bound in the partial, else the function's default (None if it has none)."""
    bound = getattr(loss, "keywords", {})
    if name in bound:
        return bound[name]
    param = inspect.signature(getattr(loss, "func", loss)).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def consistency_spec(section, loss_name: str, prediction: str) -> ConsistencySpec | None:
    """config.model.consistency, validated: None when empty (the bare backbone).

    A consistency loss needs it, with sigma_min > 0; the wrapped model is an x0-model."""
    given = _as_dict(section)
    if not given:
        if loss_name in CONSISTENCY_LOSSES:
            raise ValueError(
                f"loss {loss_name!r} trains a consistency model: set config.model.consistency."
                "sigma_min (Song et al. 2023 use 0.002) so that the backbone F is wrapped as "
                "f = c_skip x + c_out F with f(x, sigma_min) = x; got no config.model.consistency"
            )
        return None
    spec = _section(ConsistencySpec, given, "model.consistency")
    s_min = spec.sigma_min
    ok = isinstance(s_min, (int, float)) and not isinstance(s_min, bool) and s_min > 0
    _check(ok, "model.consistency.sigma_min", s_min, "the boundary noise level > 0 (f(x, "
           "sigma_min) = x exactly; Song et al. 2023 use 0.002)")  # fmt: skip
    for name, low in (("sigma_max", s_min), ("sigma_data", 0.0)):
        value = getattr(spec, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > low
        _check(ok, f"model.consistency.{name}", value, f"a number > {low}")
    _check(prediction == "x0", "prediction", prediction, "'x0' with config.model.consistency "
           "(a consistency function is read as the x0 end of its ODE path)")  # fmt: skip
    return ConsistencySpec(float(s_min), float(spec.sigma_max), float(spec.sigma_data))


def consistency_sampling(sample: SampleSpec, model) -> SampleSpec:
    """`sample` with the consistency solver's options of a `ConsistencyModule` (its sigma_min
    and t_max = t(sigma_max)) filled in where not set; any other solver or model: unchanged."""
    options = getattr(model, "sampling_options", None)
    if sample.solver != "consistency" or options is None:
        return sample
    kwargs = dict(sample.kwargs)
    for name, value in options().items():
        if not (name == "t_max" and "ts" in kwargs):  # an explicit grid sets its own start
            kwargs.setdefault(name, value)
    return dataclasses.replace(sample, kwargs=kwargs)


def check_loss_options(
    name: str, loss: Callable, process, consistency: ConsistencySpec | None, process_name: str
) -> Callable:
    """The few-step losses' options that would otherwise fail only inside the traced loss,
    checked by name before any data or compile; a consistency loss gets the model's sigma_min
    and sigma_max (config.model.consistency is their one source). Returns the loss."""
    from diffjax.losses.distill import check_teacher_steps
    from diffjax.losses.reflow import check_rectified_flow

    if name == "progressive":
        steps = _loss_option(loss, "teacher_steps")
        try:
            check_teacher_steps(steps)
        except (TypeError, ValueError):
            raise ValueError(
                f"config.loss.kwargs.teacher_steps = {steps!r}: expected an even integer >= 2 "
                "(progressive distillation halves the teacher's step count)"
            ) from None
    if name in ("reflow", "flow_distillation"):
        try:
            check_rectified_flow(process, name)
        except ValueError as err:
            raise ValueError(f"config.process.name = {process_name!r}: {err}") from None
    if name == "flow_distillation":
        k = _loss_option(loss, "k")
        _check(_is_int(k) and k >= 1, "loss.kwargs.k", k, "an integer >= 1 (Euler steps)")
    if name not in CONSISTENCY_LOSSES:
        return loss
    bound = getattr(loss, "keywords", {})
    for field in ("sigma_min", "sigma_max"):
        value = getattr(consistency, field)
        if field in bound and bound[field] != value:
            raise ValueError(
                f"config.loss.kwargs.{field} = {bound[field]!r} contradicts config.model."
                f"consistency.{field} = {value!r}; set it only in config.model.consistency"
            )
    loss = functools.partial(loss, sigma_min=consistency.sigma_min, sigma_max=consistency.sigma_max)
    n, rho = _loss_option(loss, "num_scales"), _loss_option(loss, "rho")
    _check(_is_int(n) and n >= 2, "loss.kwargs.num_scales", n, "an integer N >= 2 (Karras grid "
           "levels; Song et al. 2023 use N = 18 for CD on CIFAR-10)")  # fmt: skip
    ok = isinstance(rho, (int, float)) and not isinstance(rho, bool) and rho > 0
    _check(ok, "loss.kwargs.rho", rho, "a grid exponent > 0 (7 in Karras et al. 2022)")
    if name == "consistency_distillation":
        solver = _loss_option(loss, "solver")
        _check(solver in ("euler", "heun"), "loss.kwargs.solver", solver, "'euler' or 'heun'")
    if name == "consistency_training":
        _check_ct_schedule(loss)
    return loss


def _check_ct_schedule(loss: Callable) -> None:
    """config.loss.kwargs of consistency training's N(k) / mu(k) schedule (Song et al. 2023,
    App. C), when schedule is on: integers s0 >= 2 (N(0) = s0 levels), s1 >= s0, total_steps
    K >= 1, and 0 < mu0 < 1; num_scales then must not be set (N(k) replaces it)."""
    schedule = _loss_option(loss, "schedule")
    _check(isinstance(schedule, bool), "loss.kwargs.schedule", schedule, "True or False")
    if not schedule:
        return
    s0, s1 = _loss_option(loss, "s0"), _loss_option(loss, "s1")
    total, mu0 = _loss_option(loss, "total_steps"), _loss_option(loss, "mu0")
    _check(_is_int(s0) and s0 >= 2, "loss.kwargs.s0", s0, "an integer >= 2 (N(0) = s0 grid "
           "levels; Song et al. 2023 use 2)")  # fmt: skip
    _check(_is_int(s1) and s1 >= s0, "loss.kwargs.s1", s1, f"an integer >= s0 = {s0} (N(K) = "
           "s1 + 1; Song et al. 2023 use 150)")  # fmt: skip
    _check(_is_int(total) and total >= 1, "loss.kwargs.total_steps", total, "an integer K >= 1 "
           "(the step at which N reaches s1 + 1, e.g. train.num_steps)")  # fmt: skip
    ok = isinstance(mu0, (int, float)) and not isinstance(mu0, bool) and 0 < mu0 < 1
    _check(ok, "loss.kwargs.mu0", mu0, "an EMA decay 0 < mu0 < 1 (Song et al. 2023 use 0.9)")
    if "num_scales" in getattr(loss, "keywords", {}):
        raise ValueError(
            f"config.loss.kwargs.num_scales = {loss.keywords['num_scales']!r} contradicts "
            "config.loss.kwargs.schedule = True (N(k) sets the number of levels); drop one"
        )


def consistency_ema(ema: EmaSpec, loss: Callable, loss_name: str) -> EmaSpec:
    """`ema` with `schedule` set to the `diffjax.consistency.CTSchedule` of consistency
    training's config.loss.kwargs when its schedule is on (the run's EMA is the CT target
    network, so its decay becomes mu(k)); otherwise `ema` unchanged."""
    _check(ema.schedule is None, "ema.schedule", ema.schedule, "unset (it is set from "
           "config.loss.kwargs.schedule of consistency_training)")  # fmt: skip
    if loss_name != "consistency_training" or not _loss_option(loss, "schedule"):
        return ema
    _check(not ema.warmup, "ema.warmup", ema.warmup, "False with the consistency training "
           "schedule (its mu(k) is the EMA decay)")  # fmt: skip
    from diffjax.consistency import CTSchedule

    names = ("total_steps", "s0", "s1", "mu0")
    return dataclasses.replace(ema, schedule=CTSchedule(*(_loss_option(loss, n) for n in names)))


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


def build_model(
    name: str,
    options: dict[str, Any],
    example: ExampleSpec,
    cond: CondSpec,
    consistency: ConsistencySpec | None = None,
    process=None,
):
    """`diffjax.models.get_model(name, **options)`, with `in_channels` (from an image example)
    and `num_classes` (from the conditioning) filled in unless the options set them; with
    `consistency`, that backbone wrapped as `diffjax.consistency.ConsistencyModule` on
    `process` (same parameter tree, f(x, sigma_min) = x exactly)."""
    from diffjax.models import MODEL_CLASSES, get_model

    if consistency is not None:
        from diffjax.consistency import ConsistencyModule

        net = build_model(name, options, example, cond)
        return ConsistencyModule(
            net, process, consistency.sigma_min, consistency.sigma_data, consistency.sigma_max
        )

    options = dict(options)
    cls = MODEL_CLASSES.get(name.split("_")[0])
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    if "in_channels" in fields and len(example.shape) == 3:
        options.setdefault("in_channels", example.shape[-1])
    if "num_classes" in fields:
        options.setdefault("num_classes", cond.num_classes if cond.class_conditional else None)
    return get_model(name, **options)


def cascade_spec(section, example: ExampleSpec, cond: CondSpec, sample: SampleSpec, model: tuple):
    """The `diffjax.cascade.SRConfig` of config.cascade (None unless `low_res` is set), checked
    against the examples, the conditioning, the grids and the (name, options) of the model."""
    from diffjax.cascade import SRConfig

    fields = _as_dict(section)
    if fields.get("low_res") is None:
        return None
    sr = _section(SRConfig, fields, "cascade")
    sr.check(tuple(example.shape))
    name, options = model
    _check(name.split("_")[0] == "unet", "model.name", name, "a U-Net ('unet...') for an SR stage")
    channels = example.shape[-1]
    for field, value in (("concat_channels", channels), ("aug_time", True)):
        given = options.get(field, value)
        _check(given == value, f"model.kwargs.{field}", given, f"{value!r} for an SR stage")
    _check(not cond.class_conditional, "cond.class_conditional", True, "False for an SR stage")
    _check(
        sample.num == 0, "sample.num", sample.num,
        "0 for an SR stage (its samples need low-res inputs: use launch/sample.py --sr_workdir)",
    )  # fmt: skip
    return sr


def spec_from_config(config, example: ExampleSpec | None = None) -> TrainSpec:
    """Validate the experiment ConfigDict (see experiments/digits.py) and build its TrainSpec.

    Every check runs before any data is opened; `example` None then opens the data source once
    to read the example shape (launch/sample.py passes the shape stored in run_info.json).

    Raises:
      ValueError: naming the config field and value that is wrong, e.g. an unknown solver,
        a loss whose prediction kind contradicts `config.prediction`, or `ema.decay = 1`.
    """
    from diffjax.processes import get_process

    if str(config.get("task", "diffusion")) == "classifier":  # its own boundary
        from diffjax.train.noisy_classifier import classifier_spec_from_config

        return classifier_spec_from_config(config, example)
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
    _check(int(config.data.batch_size) % loop.grad_accum == 0, "data.batch_size",
           int(config.data.batch_size), f"a multiple of config.train.grad_accum = "
           f"{loop.grad_accum} (the global batch splits into that many micro-batches)")  # fmt: skip
    sample = _sample_spec(config.sample)
    loss_options = _options(config.loss.get("kwargs"), "loss.kwargs")
    loss = build_loss(str(config.loss.name), loss_options, prediction)
    teacher = _section(TeacherSpec, config.get("teacher", {}), "teacher")
    if teacher.workdir is not None:
        teacher = dataclasses.replace(teacher, workdir=os.path.expanduser(str(teacher.workdir)))
    _check(isinstance(teacher.init_student, bool), "teacher.init_student", teacher.init_student,
           "True or False")  # fmt: skip
    check_teacher(str(config.loss.name), loss, teacher)
    process_options = _options(config.process.get("kwargs"), "process.kwargs")
    try:
        process = get_process(str(config.process.name), **process_options)
    except TypeError as err:  # an option the process constructor does not take
        raise ValueError(
            f"config.process.kwargs = {process_options!r} do not fit process "
            f"{config.process.name!r}: {err}"
        ) from err
    consistency = consistency_spec(
        config.model.get("consistency"), str(config.loss.name), prediction
    )
    loss = check_loss_options(
        str(config.loss.name), loss, process, consistency, str(config.process.name)
    )
    ema = consistency_ema(ema, loss, str(config.loss.name))
    seed, batch_size = int(config.seed), int(config.data.batch_size)
    data = data_config(config.data, batch_size, seed)
    from diffjax.train import latent as latent_lib  # the autoencoder and text sections

    latent = latent_lib.latent_spec_from_config(config.get("autoencoder"))
    text = latent_lib.text_spec_from_config(config.get("text"), str(config.data.name))
    if example is None:  # the denoiser's example: composed (text) and encoded (latent)
        example = latent_lib.denoiser_example(probe_example(data), latent, text)
    model_options = _options(config.model.get("kwargs"), "model.kwargs")
    model_options = latent_lib.model_options(model_options, example, text, cond)
    model_options = model_step_options(
        str(config.model.name), model_options, loop.compute_dtype, config.model.get("remat", False)
    )
    model_key = (str(config.model.name), model_options)
    cascade = cascade_spec(config.get("cascade"), example, cond, sample, model_key)
    if cascade is not None:  # an SR stage: low-res condition concatenated, level as 2nd time
        from diffjax.cascade import sr_loss

        model_options = {"concat_channels": example.shape[-1], "aug_time": True, **model_options}
        loss = functools.partial(sr_loss, loss=loss, sr=cascade)
    model = build_model(str(config.model.name), model_options, example, cond, consistency, process)
    model = latent_lib.wrap_text(model, text)
    return TrainSpec(
        seed=seed,
        batch_size=batch_size,
        prediction=prediction,
        process=process,
        model=model,
        loss=loss,
        data=data,
        example=example,
        optim=optim,
        ema=ema,
        cond=cond,
        loop=loop,
        sample=consistency_sampling(sample, model),
        teacher=teacher,
        cascade=cascade,
        latent=latent,
        text=text,
    )
