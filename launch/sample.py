"""Sample from the latest (EMA) checkpoint of a training workdir.

  python launch/sample.py --workdir=workdirs/digits --num=64 --solver=ddim --steps=50 \
      [--guidance_scale=2 --class_label=3 --seed=0 --out=DIR]

Writes `<out>/samples_<solver>_<steps>.png` (a grid) and `.npz` (array 'samples' [N, ...] and,
for a class-conditional model, 'labels' [N]). --out defaults to the workdir.

Prompts and editing (pixel and latent runs; conventions in diffjax/train/edit_sample.py):
  python launch/sample.py --workdir=workdirs/ldm_pairs --prompt="a seven to the left of a two" \
      --prompt="one then four" --negative_prompt="three then three" --guidance_scale=3 --num=8
  ... --init_image=in.png --strength=0.5 (SDEdit) | --mask=mask.png (white = keep) | --invert

Latent runs (config.autoencoder.workdir set): latents are sampled and DECODED by the frozen
autoencoder checkpoint pinned in the run's latent_info.json (with the scale factor it trained
with), so the grid and the .npz 'samples' are images [N, H, W, C], not latents. A caption run
without --prompt draws the training grid's captions (diffjax.train.latent.grid_captions; the
.npz holds them as 'captions') at the config's guidance scale (or --guidance_scale).

Every process samples; only the primary one writes (through diffjax/train/paths.py, so --out
may be any filesystem the path layer knows).
"""

import os

from diffjax.parallel import set_cpu_device_count

set_cpu_device_count()

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from diffjax import parallel  # noqa: E402
from diffjax.samplers.api import carried_options  # noqa: E402
from diffjax.train import latent, learned_variance, paths  # noqa: E402
from diffjax.train.checkpoint import quiet_orbax_logging  # noqa: E402
from diffjax.train.sampling import (  # noqa: E402
    grid_labels,
    make_sampler,
    write_sample_files,
    write_samples,
)
from diffjax.train.spec import consistency_sampling  # noqa: E402
from diffjax.train.workdir import load_trained  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir with checkpoints")
_NUM = flags.DEFINE_integer("num", 64, "number of samples")
_SOLVER = flags.DEFINE_string("solver", None, "solver name (default: the config's)")
_STEPS = flags.DEFINE_integer("steps", None, "solver intervals (default: the config's)")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "CFG scale s (default: the config's)")
_LABEL = flags.DEFINE_integer("class_label", None, "one class for all samples (conditional)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_OUT = flags.DEFINE_string("out", None, "output folder (default: the workdir)")
# classifier guidance, learned variances and DDIM interpolation (issue 11; _sample_d2 below)
_CLS_WORKDIR = flags.DEFINE_string(
    "classifier_workdir", None, "a noisy-classifier run (experiments/noisy_classifier.py): "
    "classifier guidance towards --class_label (or the labels 0..K-1 in turn)"
)  # fmt: skip
_CLS_SCALE = flags.DEFINE_float("classifier_scale", 1.0, "classifier guidance scale s")
_VARIANCE = flags.DEFINE_enum(
    "variance", None, ["small", "large", "learned"], "ddpm's variance (learned: needs a "
    "learned-variance model, e.g. experiments/improved_ddpm.py)"
)  # fmt: skip
_INTERPOLATE = flags.DEFINE_integer(
    "interpolate", 0, "N >= 2: a grid of --num // N rows, each N samples from slerped noises "
    "between two draws (Song et al. 2021 DDIM interpolation; a deterministic solver)"
)  # fmt: skip
# a two-stage cascade (issue 11; _sample_cascade below): --workdir is the base stage
_SR_WORKDIR = flags.DEFINE_string(
    "sr_workdir", None, "an SR stage run (experiments/cascade.py:stage=sr): super-resolve the "
    "base samples of --workdir; writes both stages' grids and one .npz"
)  # fmt: skip
_AUG_LEVEL = flags.DEFINE_float(
    "aug_level", 0.0, "noise-conditioning augmentation level s in [0, 1] of the base samples "
    "given to the SR stage (0: the base samples as they are)"
)  # fmt: skip
_SR_STEPS = flags.DEFINE_integer("sr_steps", None, "SR solver intervals (default: its config's)")
# prompts and editing (issue 10; _sample_text_edit below, diffjax/train/edit_sample.py)
_PROMPT = flags.DEFINE_multi_string(
    "prompt", [], "a caption for a text-conditioned run (repeat the flag for several prompts: "
    "--num samples each, one grid row per prompt)"
)  # fmt: skip
_NEGATIVE = flags.DEFINE_string(
    "negative_prompt", None, "a caption CFG guides away from (replaces the null caption)"
)
_INIT_IMAGE = flags.DEFINE_string(
    "init_image", None, "a PNG of the run's image size: the image to edit (SDEdit with "
    "--strength, inpainting with --mask, DDIM inversion with --invert)"
)  # fmt: skip
_STRENGTH = flags.DEFINE_float(
    "strength", None, "SDEdit strength in [0, 1]: noise --init_image to t = strength and "
    "sample back (0 keeps it, 1 ignores it)"
)  # fmt: skip
_MASK = flags.DEFINE_string(
    "mask", None, "a PNG mask of the run's image size, white = keep --init_image, black = "
    "generate (latent runs: downsampled to the latent grid, a cell kept only if all its "
    "pixels are)"
)  # fmt: skip
_INVERT = flags.DEFINE_bool(
    "invert", False, "DDIM-invert --init_image to its noise and reconstruct it on the same grid; "
    "writes the reconstruction and its error"
)  # fmt: skip
_INVERT_FP = flags.DEFINE_integer(
    "invert_fixed_point", 0, "fixed-point refinements per DDIM inversion step (0: plain DDIM)"
)
flags.mark_flag_as_required("workdir")


def sample_spec(spec):
    """The config's SampleSpec with the command-line overrides applied."""
    changes = {"num": _NUM.value}
    if _SOLVER.value is not None:
        changes["solver"] = _SOLVER.value
        # the config's solver options belong to its own solver, except the model's (clip_x0,
        # learned_variance, t_min/t_max, ...: diffjax.samplers.api.carried_options)
        changes["kwargs"] = carried_options(spec.sample.kwargs, spec.sample.solver, _SOLVER.value)
    if _STEPS.value is not None:
        changes["steps"] = _STEPS.value
    if _GUIDANCE.value is not None:
        changes["guidance_scale"] = _GUIDANCE.value
    # a consistency model's sigma_min and t_max = t(sigma_max) for solver='consistency'
    return consistency_sampling(dataclasses.replace(spec.sample, **changes), spec.model)


def _text_edit_requested() -> bool:
    return bool(_PROMPT.value or _NEGATIVE.value is not None or _INIT_IMAGE.value or _MASK.value
                or _INVERT.value or _STRENGTH.value is not None)  # fmt: skip


def _sample_text_edit():
    """Prompts, negative prompts, SDEdit, inpainting and DDIM inversion (issue 10), for pixel
    and latent runs alike: `diffjax.train.edit_sample.run_request`."""
    from diffjax.train import edit_sample

    req = edit_sample.EditRequest(
        prompts=tuple(_PROMPT.value), negative_prompt=_NEGATIVE.value,
        guidance_scale=_GUIDANCE.value, init_image=_INIT_IMAGE.value, strength=_STRENGTH.value,
        mask=_MASK.value, invert=_INVERT.value, invert_fixed_point=_INVERT_FP.value,
        num=_NUM.value, solver=_SOLVER.value, steps=_STEPS.value, class_label=_LABEL.value,
        seed=_SEED.value, out=_OUT.value,
    )  # fmt: skip
    try:
        result = edit_sample.run_request(_WORKDIR.value, req)
    except ValueError as err:
        raise app.UsageError(str(err)) from err
    logging.info("%s", result)
    print(f"{result['png']}\n{result['npz']}")
    if "latent_rmse" in result:
        print(f"reconstruction rmse: latent {result['latent_rmse']:.4g}, pixels vs input "
              f"{result['pixel_rmse_vs_input']:.4g}")  # fmt: skip


def output_stem(name: str, default_out: str) -> str:
    """`<--out or default_out>/<name>` as a path-layer string (local or remote)."""
    return str(paths.workdir_path(_OUT.value or default_out) / name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_orbax_logging()
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/diffjax-jax"))
    if _text_edit_requested():
        return _sample_text_edit()
    spec, c, state, run = latent.load_for_sampling(_WORKDIR.value)
    sspec = learned_variance.sample_options(spec, sample_spec(spec), _VARIANCE.value)
    if _CLS_WORKDIR.value is not None or _INTERPOLATE.value:
        return _sample_d2(spec, c, state, sspec, latent_run=run)
    if _SR_WORKDIR.value is not None:
        return _sample_cascade(spec, c, state, sspec, run)
    labels = grid_labels(sspec.num, spec.cond)
    if _LABEL.value is not None:
        if not spec.cond.class_conditional or not 0 <= _LABEL.value < spec.cond.num_classes:
            raise app.UsageError(
                f"--class_label={_LABEL.value} needs a class-conditional model with labels in "
                f"[0, {spec.cond.num_classes}); this one has class_conditional="
                f"{spec.cond.class_conditional}"
            )
        labels = jnp.full((sspec.num,), _LABEL.value, jnp.int32)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    if run is None:
        sampler = make_sampler(c, sspec, spec.cond, spec.prediction, sspec.num, labels)
    else:  # latents decoded by the pinned autoencoder; a caption run: the grid's captions
        sampler = run.sampler(sspec, sspec.num, labels)
        if run.text is not None:
            extra["captions"] = np.asarray(latent.grid_captions(sspec.num, run.text))
    samples = np.asarray(sampler(state.ema_params, jax.random.PRNGKey(_SEED.value)))
    stem = output_stem(f"samples_{sspec.solver}_{sspec.steps}", _WORKDIR.value)
    cols = spec.cond.num_classes if labels is not None and _LABEL.value is None else None
    write_sample_files(stem, samples, c, cols, step=int(state.step), **extra)
    logging.info("wrote %s.png and %s.npz (step %d)", stem, stem, int(state.step))
    print(f"{stem}.png\n{stem}.npz")


# solvers whose sample is not a function of x_init alone (they draw noise on every step)
STOCHASTIC_SOLVERS = (
    "ddpm", "euler_maruyama", "pc", "annealed_langevin", "euler_ancestral", "dpm_solver_pp_sde"
)  # fmt: skip


def _sample_d2(spec, c, state, sspec, latent_run=None):
    """--classifier_workdir (classifier guidance, any solver) and/or --interpolate (DDIM
    interpolation between slerped noises); writes `<out>/samples_<kind>_<solver>_<steps>`.
    A latent run's samples (latents) are decoded by `latent_run` before they are written."""
    from diffjax.interpolate import interpolation_noises
    from diffjax.samplers import sample
    from diffjax.train import noisy_classifier as nc
    from diffjax.train.sampling import guided_model

    num, run = sspec.num, None
    if _CLS_WORKDIR.value is not None:
        run = nc.load_noisy_classifier(_CLS_WORKDIR.value)
        nc.check_classifier_fits(run, spec, _CLS_WORKDIR.value, _WORKDIR.value)
    classes = run.num_classes if run is not None else spec.cond.num_classes
    if _LABEL.value is not None and not 0 <= _LABEL.value < max(classes, 0):
        raise app.UsageError(f"--class_label={_LABEL.value}: expected a label in [0, {classes})")
    if _LABEL.value is not None:
        labels = jnp.full((num,), _LABEL.value, jnp.int32)
    elif classes:
        labels = jnp.arange(num, dtype=jnp.int32) % classes
    else:
        labels = None
    x_init, kind = None, "classifier"
    if _INTERPOLATE.value:
        n = _INTERPOLATE.value
        eta = sspec.kwargs.get("eta", 0.0)
        if n < 2 or num < n or sspec.solver in STOCHASTIC_SOLVERS or eta:
            raise app.UsageError(
                f"--interpolate={n} needs 2 <= N <= --num={num} and a deterministic solver "
                f"(ddim with eta=0, an ODE solver); got solver {sspec.solver!r}, eta={eta}"
            )
        num = (num // n) * n
        x_init = interpolation_noises(
            jax.random.PRNGKey(_SEED.value + 1), tuple(c.example_shape), num // n, n
        )
        labels = None if labels is None else labels[:num]
        kind = "interpolate" if run is None else "classifier_interpolate"
    key = jax.random.PRNGKey(_SEED.value)
    if run is not None:
        sampler = nc.guided_sampler(run, c, sspec, spec, labels, _CLS_SCALE.value)
        options = {} if x_init is None else {"x_init": x_init}
        samples = sampler(state.ema_params, key, **options)
    else:
        model_labels = labels if spec.cond.class_conditional else None
        model = guided_model(
            c, state.ema_params, model_labels, sspec.guidance_scale, spec.cond.num_classes
        )
        samples = sample(key, model, c.process, x_init.shape, solver=sspec.solver,
                         steps=sspec.steps or None, prediction=spec.prediction, x_init=x_init,
                         **dict(sspec.kwargs))  # fmt: skip
    samples = np.asarray(samples if latent_run is None else latent_run.decode(samples))
    stem = output_stem(f"samples_{kind}_{sspec.solver}_{sspec.steps}", _WORKDIR.value)
    cols = _INTERPOLATE.value or (classes if _LABEL.value is None and classes else None)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    if run is not None:
        extra["classifier_scale"] = _CLS_SCALE.value
    write_sample_files(stem, samples, c, cols, step=int(state.step), **extra)
    print(f"{stem}.png\n{stem}.npz")


def _sample_cascade(spec, c, state, sspec, run=None):
    """--sr_workdir: base samples from --workdir, then the SR stage conditioned on them
    (augmented at --aug_level). Writes `<out>/cascade_<solver>_<steps>_base.png`, `..._sr.png`
    and `.npz` ('base' [N, h, h, C], 'sr' [N, H, H, C]); --out defaults to the SR workdir."""
    from diffjax.cascade import super_resolve
    from diffjax.models import bind

    sr_spec, sr_c, sr_state = load_trained(_SR_WORKDIR.value)
    sr = sr_spec.cascade
    if sr is None:
        raise app.UsageError(
            f"--sr_workdir={_SR_WORKDIR.value!r} is not an SR stage (its config.cascade.low_res "
            "is None); train one with experiments/cascade.py:stage=sr"
        )
    base_shape = tuple(c.example_shape) if run is None else tuple(run.image_shape)
    want = (sr.low_res, sr.low_res, sr_spec.example.shape[-1])
    if base_shape != want:
        raise app.UsageError(
            f"the SR stage in {_SR_WORKDIR.value!r} takes low-res inputs of size "
            f"{'x'.join(map(str, want))}, but the base in {_WORKDIR.value!r} outputs "
            f"{'x'.join(map(str, base_shape))} samples"
        )
    if not 0.0 <= _AUG_LEVEL.value <= 1.0:
        raise app.UsageError(f"--aug_level={_AUG_LEVEL.value}: expected a level in [0, 1]")
    labels = grid_labels(sspec.num, spec.cond)
    if _LABEL.value is not None and labels is not None:
        labels = jnp.full((sspec.num,), _LABEL.value, jnp.int32)
    base_key, sr_key = jax.random.split(jax.random.PRNGKey(_SEED.value))
    if run is None:
        sampler = make_sampler(c, sspec, spec.cond, spec.prediction, sspec.num, labels)
    else:  # a latent base: its decoded images
        sampler = run.sampler(sspec, sspec.num, labels)
    base = np.asarray(sampler(state.ema_params, base_key))
    steps = sr_spec.sample.steps if _SR_STEPS.value is None else _SR_STEPS.value
    high = super_resolve(
        sr_key, bind(sr_spec.model, {"params": sr_state.ema_params}), sr_c.process,
        np.clip(base, *c.value_range), sr=sr, size=sr_spec.example.shape[0],
        level=_AUG_LEVEL.value, solver=sr_spec.sample.solver, steps=steps or None,
        prediction=sr_spec.prediction, **dict(sr_spec.sample.kwargs),
    )  # fmt: skip
    high = np.asarray(high)
    stem = output_stem(f"cascade_{sspec.solver}_{sspec.steps}", _SR_WORKDIR.value)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    if parallel.is_primary():
        write_samples(stem + "_base.png", base, c)
        write_samples(stem + "_sr.png", high, sr_c)
        paths.write_npz(stem + ".npz", base=base, sr=high, aug_level=_AUG_LEVEL.value,
                        base_step=int(state.step), sr_step=int(sr_state.step), **extra)  # fmt: skip
    print(f"{stem}_base.png\n{stem}_sr.png\n{stem}.npz")


if __name__ == "__main__":
    app.run(main)
