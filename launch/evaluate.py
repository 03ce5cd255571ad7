"""Evaluate a training workdir: sample quality for several solver:steps pairs, optional bits/dim.

  python launch/evaluate.py --workdir=workdirs/digits --solvers=ddim:10,ddim:50,ddpm:1000 \
      --num=1000 [--bpd_num=256] [--elbo_num=256] [--straightness_num=1000]

Prints a table (one row per solver:steps, with its model evaluations) and writes
`<workdir>/eval_<step>[_<tag>].json` and the plot `<workdir>/eval_<step>[_<tag>].png` (quality
against NFE, a line per solver); `--tag` names an evaluation so that several of one checkpoint
(different sample counts, metrics, solvers) each keep their own files. An NFE table (the
shape of Song et al. 2021's DDIM Table 1 and Lu et al. 2022's DPM-Solver Table 3): solvers
with options and no steps, and budgets of evaluations,

  python launch/evaluate.py --workdir=... --num=1000 --repeats=3 --floor \
      --solvers=ddpm,ddim,dpm_solver/order=2,dpm_solver/order=3,dpm_solver_pp,heun,plms \
      --nfe=10,20,50,100,1000

each solver at the most steps that fit each budget; `--repeats` redraws every row with new keys
(means and `<metric>_std`); `--floor` adds the data's own rows (held-out test examples, and a
disjoint half of the training stream, against the same training examples): the floor a model
cannot beat at that sample size.
Images: FID/KID/precision/recall on FID-Inception features when its weights are installed,
the Fréchet distance on the features of the project's small classifier for one-channel data
(trained once, cached in the workdir), and a pixel sliced Wasserstein; 2-D data: sliced
Wasserstein and MMD. `--elbo_num` adds the exact discrete DDPM bound in bits/dim;
`--straightness_num` Liu et al.'s straightness S and the transport cost E||z - x0||^2 (with
standard errors) of a rectified flow; `--reference_data=digits` compares with that data
source instead of the run's own (for runs trained on reflow pairs).

A latent run (config.autoencoder.workdir set; its latent_info.json pins the autoencoder
checkpoint and scale factor) is sampled in latent space and decoded, so every statistic compares
decoded images with real images of its data set; a caption run compares with the real
compositions of its caption source, each sample drawn for the caption of one of them
(diffjax/train/evaluate.py). The likelihood bounds (--bpd_num, --elbo_num, --variance_*) are
not defined for latent runs (they would bound latents, not images) and are refused there.
Files are written by the primary process only, through diffjax/train/paths.py.
"""

import os

from diffjax.parallel import set_cpu_device_count

set_cpu_device_count()

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from diffjax import parallel  # noqa: E402
from diffjax.losses.reflow import check_rectified_flow  # noqa: E402
from diffjax.train import evaluate, latent, paths  # noqa: E402
from diffjax.train.checkpoint import quiet_orbax_logging  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir with checkpoints")
_SOLVERS = flags.DEFINE_string("solvers", "ddim:10,ddim:50", "comma-separated solver:steps")
_NUM = flags.DEFINE_integer("num", 1000, "samples (and data examples) per row")
_BPD_NUM = flags.DEFINE_integer(
    "bpd_num",
    0,
    "held-out examples (the test split where the data have one) for the "
    "probability-flow ODE bits/dim (0: skip)",
)
_ELBO_NUM = flags.DEFINE_integer(
    "elbo_num",
    0,
    "held-out examples (the test split where the data have one) for the exact "
    "discrete DDPM bound in bits/dim (0: skip)",
)
_STRAIGHT = flags.DEFINE_integer(
    "straightness_num", 0, "noise draws for Liu et al.'s straightness and transport cost "
    "(rectified flows only; 0: skip)"
)  # fmt: skip
_STRAIGHT_STEPS = flags.DEFINE_integer("straightness_steps", 100, "Euler steps for straightness")
_REFERENCE = flags.DEFINE_string(
    "reference_data", None, "compare samples with this data source (e.g. 'digits') instead of "
    "the run's own (a reflow run's own data are its teacher's pairs)"
)  # fmt: skip
_VARIANCE_NUM = flags.DEFINE_integer(
    "variance_bpd_num", 0, "data examples for the exact discrete bound in bits/dim of a "
    "learned-variance model with learned, small and large variances on its mean (0: skip)"
)  # fmt: skip
_VARIANCE_STEPS = flags.DEFINE_integer(
    "variance_steps", 0, "ddpm steps for --num samples with each variance (learned, small, "
    "large) of a learned-variance model, compared like --solvers rows (0: skip)"
)  # fmt: skip
# prompt adherence of a caption run (issue 10; _adherence_report below)
_ADHERENCE = flags.DEFINE_integer(
    "adherence_num", 0, "samples per row of the prompt-adherence report of a caption run "
    "(guidance scales, text zeroed, negative prompts, FD; diffjax/train/adherence.py; 0: skip)"
)  # fmt: skip
_ADH_SCALES = flags.DEFINE_string("adherence_scales", "1,2,4", "comma-separated CFG scales")
_ADH_CACHE = flags.DEFINE_string(
    "adherence_cache", None, "folder of the cached adherence classifier (default: the workdir)"
)
_ADH_STEPS = flags.DEFINE_integer("adherence_steps", None, "solver steps (default: the run's)")
_ADH_DATA_DIR = flags.DEFINE_string(
    "adherence_data_dir", None, "the real items' folder (default: the run's data_dir)"
)
_NFE = flags.DEFINE_string(
    "nfe",
    "",
    "comma-separated budgets of model evaluations: every --solvers entry once per "
    "budget, at the most steps that fit it (then the entries carry no steps)",
)
_REPEATS = flags.DEFINE_integer("repeats", 1, "independent draws per row (means and _std)")
_FLOOR = flags.DEFINE_bool("floor", False, "add the data floor rows (test vs train, halves)")
_SEED = flags.DEFINE_integer("seed", 0, "evaluation seed")
_CLIP = flags.DEFINE_bool(
    "clip_x0",
    False,
    "clip every row's x0 prediction to the data range [-1, 1] (Ho et al.'s sampler; the "
    "option clip_x0=(-1, 1), shown in the solver column)",
)
_TAG = flags.DEFINE_string(
    "tag",
    "",
    "name of this evaluation: its files are eval_<step>_<tag>.json/.png (letters, "
    "digits, '-' and '_')",
)
_INCEPTION = flags.DEFINE_bool(
    "inception", True, "FID/KID/precision/recall on FID-Inception features (slow on CPU)"
)
flags.mark_flag_as_required("workdir")


def _adherence_report():
    """Prompt adherence of a caption run (`diffjax.train.adherence.adherence_report`): prints the
    tables and writes `<out>/adherence_<step>.json` (out: --adherence_cache or the workdir)."""
    from diffjax.train import adherence

    try:
        scales = [float(s) for s in _ADH_SCALES.value.split(",") if s.strip()]
    except ValueError as err:
        raise app.UsageError(f"--adherence_scales={_ADH_SCALES.value!r}: {err}") from err
    if not scales:
        raise app.UsageError("--adherence_scales needs at least one scale")
    report = adherence.adherence_report(
        _WORKDIR.value, scales=scales, num=_ADHERENCE.value, cache_dir=_ADH_CACHE.value,
        data_dir=_ADH_DATA_DIR.value, steps=_ADH_STEPS.value, seed=_SEED.value,
    )  # fmt: skip
    print(adherence.format_report(report))
    out = paths.workdir_path(_ADH_CACHE.value or _WORKDIR.value)
    path = out / f"adherence_{report['step']:07d}.json"
    if parallel.is_primary():
        out.mkdir(parents=True, exist_ok=True)
        paths.write_json(path, report)
    print(path)


def _check_inception_weights() -> None:
    """A usage error before any sampling when the FID Inception weights are not installed (the
    table would otherwise come out, after its whole run, without FID, KID, precision, recall)."""
    from diffjax import metrics

    try:
        metrics.default_weights_path()
    except FileNotFoundError as err:
        raise app.UsageError(f"{err}; or pass --noinception for rows without FID") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_orbax_logging()
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/diffjax-jax"))
    if _ADHERENCE.value > 0:
        return _adherence_report()
    if not re.fullmatch(r"[A-Za-z0-9_-]*", _TAG.value):
        raise app.UsageError(f"--tag={_TAG.value!r}: use letters, digits, '-' and '_' only")
    pairs = evaluate.parse_solvers(_SOLVERS.value)
    if _CLIP.value:
        pairs = evaluate.with_options(pairs, clip_x0=(-1.0, 1.0))
    budgets = _budgets(_NFE.value)
    if budgets and any(steps for _, steps, _ in pairs):
        raise app.UsageError(f"--nfe={_NFE.value!r} sets the steps; give --solvers without them")
    spec, c, state, run = latent.load_for_sampling(_WORKDIR.value)
    if _INCEPTION.value and len(spec.example.shape) == 3:  # image rows: FID wanted, so fail now
        _check_inception_weights()
    if budgets:
        pairs = evaluate.expand_nfe(spec, c, pairs, budgets)
    if _FLOOR.value and run is not None:
        raise app.UsageError("--floor is for pixel runs (a latent run's rows are decoded images)")
    if _STRAIGHT.value:  # before any sampling: a non-flow run fails fast
        check_rectified_flow(c.process, "--straightness_num")
    if run is not None:
        refused = [f"--{f.name}" for f in (_BPD_NUM, _ELBO_NUM, _VARIANCE_NUM, _VARIANCE_STEPS)
                   if f.value]  # fmt: skip
        if _REFERENCE.value is not None:
            refused.append("--reference_data")
        if refused:
            raise app.UsageError(
                f"{refused} are not defined for the latent / caption run {_WORKDIR.value!r} "
                "(its model is of latents; the sample rows compare decoded images)"
            )
    if _REFERENCE.value is not None:
        data = dataclasses.replace(spec.data, name=_REFERENCE.value, data_dir=None)
        spec = dataclasses.replace(spec, data=data)
    key = jax.random.PRNGKey(_SEED.value)
    sample_key, bpd_key = jax.random.split(key)
    result = {
        "step": int(state.step),
        "rows": evaluate.evaluate_solvers(
            sample_key,
            spec,
            c,
            state,
            pairs,
            _NUM.value,
            _INCEPTION.value,
            _WORKDIR.value,
            run=run,
            repeats=_REPEATS.value,
        ),  # fmt: skip
    }
    if _FLOOR.value:
        result["rows"] += evaluate.data_floor_rows(
            jax.random.fold_in(sample_key, 1), spec, _NUM.value, _INCEPTION.value, _WORKDIR.value
        )
    if _BPD_NUM.value > 0:
        result["likelihood"] = evaluate.likelihood_bits_per_dim(
            bpd_key, spec, c, state, _BPD_NUM.value
        )
    print(evaluate.format_table(result["rows"]))
    if _ELBO_NUM.value > 0:
        result["elbo"] = evaluate.elbo_bits_per_dim(
            jax.random.fold_in(bpd_key, 1), spec, c, state, _ELBO_NUM.value
        )
    if _STRAIGHT.value > 0:
        result["straightness"] = evaluate.straightness_metrics(
            jax.random.fold_in(bpd_key, 2), spec, c, state, _STRAIGHT.value, _STRAIGHT_STEPS.value
        )
    _variance_report(result, jax.random.fold_in(bpd_key, 3), spec, c, state)
    for name in ("likelihood", "elbo", "straightness", "variance_bpd", "variance_rows"):
        if name in result:
            print(f"{name}:", json.dumps(result[name]))
    tag = f"_{_TAG.value}" if _TAG.value else ""
    path = paths.workdir_path(_WORKDIR.value) / f"eval_{result['step']:07d}{tag}.json"
    if parallel.is_primary():
        paths.write_json(path, result)  # any filesystem of the workdir
        plot = evaluate.save_nfe_plot(path.with_suffix(".png"), result["rows"])
        if plot is not None:
            print(plot)
    print(path)


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in filter(None, (s.strip() for s in text.split(",")))]
    except ValueError as err:
        raise app.UsageError(f"--nfe={text!r}: expected comma-separated integers") from err
    if any(b < 1 for b in budgets):
        raise app.UsageError(f"--nfe={text!r}: every budget must be >= 1")
    return budgets


def _variance_report(result: dict, key, spec, c, state) -> None:
    """--variance_bpd_num / --variance_steps: learned vs fixed variances of one trained mean."""
    from diffjax.train import learned_variance

    if _VARIANCE_NUM.value > 0:
        result["variance_bpd"] = learned_variance.variance_bits_per_dim(
            key, spec, c, state, _VARIANCE_NUM.value
        )
    if _VARIANCE_STEPS.value > 0:
        result["variance_rows"] = learned_variance.variance_sample_quality(
            jax.random.fold_in(key, 1), spec, c, state, _VARIANCE_STEPS.value, _NUM.value,
            _WORKDIR.value,
        )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
