"""From the typed TrainSpec to the run's Components: data, model, process and loss by name."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from diffjax.processes import get_process
from diffjax.train.components import Components
from diffjax.train.spec import NamedSpec, TrainSpec, kwargs_dict

# Config values that mean "not set" for DataConfig fields that take None.
_UNSET = ("", 0, None, {}, ())


def data_config(spec: TrainSpec, **overrides: Any):
    """The `diffjax.data.DataConfig` of a spec (empty strings and 0 sizes become None)."""
    from diffjax.data import DataConfig

    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    given = kwargs_dict(spec.data.kwargs)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown data field(s) {unknown}; DataConfig fields: {sorted(defaults)}")
    # ConfigDict fields cannot hold None and a type together: "" / 0 / {} stand for None in
    # the fields whose DataConfig default is None (data_dir, image_size, tfds_name, ...).
    values = {k: None if defaults[k] is None and v in _UNSET else v for k, v in given.items()}
    values.update(name=spec.data.name, batch_size=spec.batch_size, seed=spec.seed, **overrides)
    return DataConfig(**values)


def build_batches(spec: TrainSpec, start_step: int = 0, **overrides: Any):
    """The `diffjax.data.Batches` stream of the spec, starting at `start_step`."""
    from diffjax.data import make_iterator

    return make_iterator(data_config(spec, **overrides), start_step=start_step)


def build_model(spec: TrainSpec, example_shape: tuple[int, ...]):
    """The Flax backbone: `diffjax.models.get_model(name, **kwargs)`, with `in_channels` and
    `num_classes` filled in from the data and the conditioning unless the config sets them."""
    from diffjax.models import get_model
    from diffjax.models.registry import _CLASSES

    kwargs = kwargs_dict(spec.model.kwargs)
    kind = spec.model.name.split("_")[0]
    fields = {f.name for f in dataclasses.fields(_CLASSES[kind])} if kind in _CLASSES else set()
    if "in_channels" in fields and len(example_shape) == 3:
        kwargs.setdefault("in_channels", example_shape[-1])
    if "num_classes" in fields:
        cond = spec.cond
        kwargs.setdefault("num_classes", cond.num_classes if cond.class_conditional else None)
    return get_model(spec.model.name, **kwargs)


def build_process(spec: NamedSpec):
    """`diffjax.processes.get_process(name, **kwargs)`."""
    return get_process(spec.name, **kwargs_dict(spec.kwargs))


def build_loss(spec: NamedSpec):
    """(loss function, kwargs) from `diffjax.losses.get_loss`."""
    from diffjax.losses import get_loss

    return get_loss(spec.name), kwargs_dict(spec.kwargs)


def make_apply(net):
    """apply(params, x_t, t, cond, *, train, key) for a Flax backbone (dropout keyed by `key`)."""

    def apply(params, x_t, t, cond, *, train, key):
        rngs = {"dropout": key} if train and key is not None else None
        return net.apply({"params": params}, x_t, t, cond, train=train, rngs=rngs)

    return apply


def make_init(net, example_shape: tuple[int, ...], conditional: bool):
    """key -> params of `net`, initialised on a batch of one zero example."""

    def init_params(key):
        x = np.zeros((1, *example_shape), np.float32)
        t = np.full((1,), 0.5, np.float32)
        cond = np.zeros((1,), np.int32) if conditional else None
        return net.init(key, x, t, cond)["params"]

    return init_params


def build_model_components(
    spec: TrainSpec, example_shape: tuple[int, ...], data_key: str = "image", batches=None
) -> Components:
    """Model, process and loss of the spec for examples of `example_shape` (no data read)."""
    net = build_model(spec, example_shape)
    loss, loss_kwargs = build_loss(spec.loss)
    return Components(
        init_params=make_init(net, example_shape, spec.cond.class_conditional),
        apply=make_apply(net),
        process=build_process(spec.process),
        loss=loss,
        loss_kwargs=loss_kwargs,
        batches=batches,
        data_key=data_key,
        example_shape=tuple(example_shape),
    )


def build_components(spec: TrainSpec, reference_size: int = 1024) -> Components:
    """Everything `run_training` needs, from the spec (data read lazily from `start_step`)."""
    probe = build_batches(spec, prefetch=0)
    example_shape = tuple(probe.info["shape"])
    data_key = probe.info.get("key", "image")
    c = build_model_components(
        spec, example_shape, data_key, batches=lambda start: build_batches(spec, start)
    )
    c.reference = np.asarray(jax.device_get(probe.batch_at(0)[data_key][:reference_size]))
    return c
