"""From the built TrainSpec to the run's Components: the spec's objects, wired together.

The spec already holds the process, the Flax module, the loss partial and the DataConfig;
these functions only wrap them (init, apply, a batch stream), never look a name up again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from diffjax.train.components import Components
from diffjax.train.spec import TrainSpec


def build_batches(spec: TrainSpec, start_step: int = 0, **overrides: Any):
    """The `diffjax.data.Batches` stream of the spec's DataConfig, starting at `start_step`;
    `overrides` replace DataConfig fields (e.g. prefetch=0, shuffle=False)."""
    from diffjax.data import make_iterator

    return make_iterator(dataclasses.replace(spec.data, **overrides), start_step=start_step)


def make_apply(net):
    """apply(params, x_t, t, cond, *, train, key) for a Flax backbone (dropout keyed by `key`)."""

    def apply(params, x_t, t, cond, *, train, key):
        rngs = {"dropout": key} if train and key is not None else None
        return net.apply({"params": params}, x_t, t, cond, train=train, rngs=rngs)

    return apply


def make_init(net, example_shape: tuple[int, ...], conditional: bool, sr=None):
    """key -> params of `net`, initialised on a batch of one zero example (with the zero
    condition of an SR stage when `sr`, a `diffjax.cascade.SRConfig`, is given)."""

    def init_params(key):
        x = np.zeros((1, *example_shape), np.float32)
        t = np.full((1,), 0.5, np.float32)
        cond = np.zeros((1,), np.int32) if conditional else None
        if sr is not None:
            cond = sr.example_cond(example_shape)
        return net.init(key, x, t, cond)["params"]

    return init_params


def build_model_components(spec: TrainSpec, batches=None) -> Components:
    """Model, process and loss of the spec (no data read; `batches` start -> iterator)."""
    return Components(
        init_params=make_init(
            spec.model, spec.example.shape, spec.cond.class_conditional, spec.cascade
        ),
        apply=make_apply(spec.model),
        process=spec.process,
        loss=spec.loss,  # already a partial over the loss options and the prediction kind
        loss_kwargs={},
        batches=batches,
        data_key=spec.example.key,
        example_shape=spec.example.shape,
    )


def _leaves_by_path(tree) -> dict[str, tuple]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k): (tuple(v.shape), str(v.dtype)) for k, v in leaves}


def check_same_tree(teacher, student, where: str) -> None:
    """ValueError naming every parameter path whose presence, shape or dtype differs between
    the teacher's params (from `where`) and the student's (config.teacher.init_student)."""
    got, want = _leaves_by_path(teacher), _leaves_by_path(student)
    diff = [
        f"{k}: teacher {got.get(k, 'missing')}, student {want.get(k, 'missing')}"
        for k in sorted(set(got) | set(want))
        if got.get(k) != want.get(k)
    ]
    if diff:
        shown = "; ".join(diff[:8]) + (f"; ... ({len(diff)} in all)" if len(diff) > 8 else "")
        raise ValueError(
            f"config.teacher.init_student: the teacher in {where!r} has a parameter tree that "
            f"does not match the student's model (path: (shape, dtype)): {shown}"
        )


def load_teacher(spec: TrainSpec, c: Components) -> None:
    """Bind the EMA model of `spec.teacher.workdir` (read-only) into `c.frozen['teacher']` when
    the loss takes a teacher, and give the loss the teacher's prediction kind and process
    where it takes them (unless config.loss.kwargs set them). With `init_student`, its EMA
    params (checked against the student's tree) become `c.start_params`."""
    from diffjax.models import bind
    from diffjax.train.components import loss_parameters
    from diffjax.train.workdir import load_trained

    t_spec, _, trained = load_trained(spec.teacher.workdir)
    if tuple(t_spec.example.shape) != tuple(spec.example.shape):
        raise ValueError(
            f"the teacher in {spec.teacher.workdir!r} was trained on examples of shape "
            f"{tuple(t_spec.example.shape)}; this run's data have shape {spec.example.shape}"
        )
    params, bound = loss_parameters(spec.loss), getattr(spec.loss, "keywords", {})
    if spec.teacher.init_student:
        student = jax.eval_shape(c.init_params, jax.random.PRNGKey(0))
        check_same_tree(trained.ema_params, student, spec.teacher.workdir)
        c.start_params = trained.ema_params
    if "teacher" not in params:  # init_student only (e.g. reflow from the 1-rectified flow)
        return
    c.frozen["teacher"] = bind(t_spec.model, {"params": trained.ema_params})
    for name, value in (
        ("teacher_prediction", t_spec.prediction),
        ("teacher_process", t_spec.process),
    ):
        if name in params and name not in bound:
            c.loss_kwargs[name] = value


def build_components(spec: TrainSpec, reference_size: int = 1024) -> Components:
    """Everything `run_training` needs, from the spec (data read lazily from `start_step`);
    `reference` holds the first `reference_size` examples of step 0 for plots; with
    `spec.teacher.workdir` the teacher is loaded (`load_teacher`)."""
    c = build_model_components(spec, batches=lambda start: build_batches(spec, start))
    if spec.teacher.workdir is not None:
        load_teacher(spec, c)
    if spec.latent is not None or spec.text is not None:  # latent diffusion and/or captions
        from diffjax.train.latent import attach

        return attach(spec, c, reference_size)
    probe = build_batches(spec, prefetch=0)
    c.reference = np.asarray(jax.device_get(probe.batch_at(0)[c.data_key][:reference_size]))
    return c
