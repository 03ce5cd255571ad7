"""Sample from the latest (EMA) checkpoint of a training workdir.

  python launch/sample.py --workdir=workdirs/digits --num=64 --solver=ddim --steps=50 \
      [--guidance_scale=2 --class_label=3 --seed=0 --out=DIR]

Writes `<out>/samples_<solver>_<steps>.png` (a grid) and `.npz` (array 'samples' [N, ...] and,
for a class-conditional model, 'labels' [N]). --out defaults to the workdir.
"""

import os

from diffjax.parallel import set_cpu_device_count

set_cpu_device_count()

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from diffjax.train.checkpoint import quiet_orbax_logging  # noqa: E402
from diffjax.train.sampling import grid_labels, make_sampler, write_samples  # noqa: E402
from diffjax.train.workdir import load_trained  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir with checkpoints")
_NUM = flags.DEFINE_integer("num", 64, "number of samples")
_SOLVER = flags.DEFINE_string("solver", None, "solver name (default: the config's)")
_STEPS = flags.DEFINE_integer("steps", None, "solver intervals (default: the config's)")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "CFG scale s (default: the config's)")
_LABEL = flags.DEFINE_integer("class_label", None, "one class for all samples (conditional)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_OUT = flags.DEFINE_string("out", None, "output folder (default: the workdir)")
flags.mark_flag_as_required("workdir")


def sample_spec(spec):
    """The config's SampleSpec with the command-line overrides applied."""
    changes = {"num": _NUM.value}
    if _SOLVER.value is not None:
        changes["solver"] = _SOLVER.value
        if _SOLVER.value != spec.sample.solver:
            changes["kwargs"] = {}  # the config's solver options belong to its own solver
    if _STEPS.value is not None:
        changes["steps"] = _STEPS.value
    if _GUIDANCE.value is not None:
        changes["guidance_scale"] = _GUIDANCE.value
    return dataclasses.replace(spec.sample, **changes)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_orbax_logging()
    spec, c, state = load_trained(_WORKDIR.value)
    sspec = sample_spec(spec)
    labels = grid_labels(sspec.num, spec.cond)
    if _LABEL.value is not None:
        if not spec.cond.class_conditional or not 0 <= _LABEL.value < spec.cond.num_classes:
            raise app.UsageError(
                f"--class_label={_LABEL.value} needs a class-conditional model with labels in "
                f"[0, {spec.cond.num_classes}); this one has class_conditional="
                f"{spec.cond.class_conditional}"
            )
        labels = jnp.full((sspec.num,), _LABEL.value, jnp.int32)
    sampler = make_sampler(c, sspec, spec.cond, spec.prediction, sspec.num, labels)
    samples = np.asarray(sampler(state.ema_params, jax.random.PRNGKey(_SEED.value)))
    out = _OUT.value or _WORKDIR.value
    stem = os.path.join(out, f"samples_{sspec.solver}_{sspec.steps}")
    cols = spec.cond.num_classes if labels is not None and _LABEL.value is None else None
    write_samples(stem + ".png", samples, c, cols)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    np.savez(stem + ".npz", samples=samples, step=int(state.step), **extra)
    logging.info("wrote %s.png and %s.npz (step %d)", stem, stem, int(state.step))
    print(f"{stem}.png\n{stem}.npz")


if __name__ == "__main__":
    app.run(main)
