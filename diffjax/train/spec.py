"""Typed training specification built from an ml-collections ConfigDict at the boundary.

Everything below `train_and_evaluate` receives these frozen dataclasses, never a ConfigDict.
"""

from __future__ import annotations

import dataclasses
from typing import Any

OPTIMIZERS = ("adam", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """Adam/AdamW with linear warm-up to a constant rate and global-norm clipping."""

    name: str = "adam"  # 'adam' or 'adamw'
    learning_rate: float = 2e-4  # peak rate after warm-up
    warmup_steps: int = 0  # linear warm-up 0 -> learning_rate over this many steps
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0  # AdamW only (decoupled decay)
    grad_clip: float = 0.0  # global-norm clip; 0 disables


@dataclasses.dataclass(frozen=True)
class EmaSpec:
    """Exponential moving average of the parameters."""

    decay: float = 0.9999
    # If True, decay_n = min(decay, (1 + n) / (10 + n)) (the warm-up of tf.train.
    # ExponentialMovingAverage's num_updates), so short runs are not dominated by the init.
    warmup: bool = False


@dataclasses.dataclass(frozen=True)
class CondSpec:
    """Class conditioning; label `num_classes` is the null class used by classifier-free
    guidance (Ho & Salimans 2021): labels are replaced by it with probability `label_dropout`."""

    class_conditional: bool = False
    num_classes: int = 0
    label_dropout: float = 0.0


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """Step counts of the outer loop (all in optimiser steps)."""

    num_steps: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    sample_every: int = 0  # 0: only at the end
    progress_bar: bool = True


@dataclasses.dataclass(frozen=True)
class SampleSpec:
    """How sample grids are drawn during and after training."""

    solver: str = "ddim"
    steps: int = 50
    num: int = 64
    # CFG scale s: uncond + s (cond - uncond) (Ho & Salimans 2021); 1 = plain conditional model
    guidance_scale: float = 1.0
    kwargs: tuple = ()  # extra solver options as sorted (name, value) pairs


@dataclasses.dataclass(frozen=True)
class NamedSpec:
    """A component chosen by name with keyword arguments (model, process, loss, data)."""

    name: str
    kwargs: tuple = ()  # sorted (name, value) pairs, hashable

    def as_dict(self) -> dict[str, Any]:
        return dict(self.kwargs)


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything the training loop needs, as plain typed values."""

    seed: int
    batch_size: int
    prediction: str
    model: NamedSpec
    process: NamedSpec
    loss: NamedSpec
    data: NamedSpec
    optim: OptimSpec
    ema: EmaSpec
    cond: CondSpec
    loop: LoopSpec
    sample: SampleSpec


def _plain(value):
    """ConfigDict / dict / list values as hashable plain Python (nested dicts -> pair tuples)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return tuple(sorted((k, _plain(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def _unplain(value):
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value)
    ):
        return {k: _unplain(v) for k, v in value}
    return value


def kwargs_dict(pairs: tuple) -> dict[str, Any]:
    """Inverse of the pair-tuple encoding of keyword arguments (nested dicts restored)."""
    return {k: _unplain(v) for k, v in pairs}


def _fields(cls, section) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    return {k: _plain(v) for k, v in given.items()}


def _named(section) -> NamedSpec:
    return NamedSpec(name=str(section.name), kwargs=_plain(section.get("kwargs", {})) or ())


def _data_spec(data) -> NamedSpec:
    fields = {k: v for k, v in data.to_dict().items() if k != "name"}
    return NamedSpec(name=str(data.name), kwargs=_plain(fields) or ())


def spec_from_config(config) -> TrainSpec:
    """Build a TrainSpec from the experiment ConfigDict (see experiments/digits.py)."""
    optim = OptimSpec(**_fields(OptimSpec, config.optim))
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optim.name!r}; expected one of {OPTIMIZERS}")
    cond = CondSpec(**_fields(CondSpec, config.cond))
    if cond.class_conditional and cond.num_classes < 1:
        raise ValueError(f"class_conditional needs num_classes >= 1; got {cond.num_classes}")
    if not 0.0 <= cond.label_dropout < 1.0:
        raise ValueError(f"label_dropout must be in [0, 1); got {cond.label_dropout}")
    sample = dict(_fields(SampleSpec, config.sample))
    sample["kwargs"] = sample.get("kwargs") or ()
    loop = LoopSpec(**_fields(LoopSpec, config.train))
    if loop.num_steps < 0:
        raise ValueError(f"train.num_steps must be >= 0; got {loop.num_steps}")
    return TrainSpec(
        seed=int(config.seed),
        batch_size=int(config.data.batch_size),
        prediction=str(config.prediction),
        model=_named(config.model),
        process=_named(config.process),
        loss=_named(config.loss),
        data=_data_spec(config.data),
        optim=optim,
        ema=EmaSpec(**_fields(EmaSpec, config.ema)),
        cond=cond,
        loop=loop,
        sample=SampleSpec(**sample),
    )
