"""Sample-quality and likelihood evaluation of a trained workdir (behind launch/evaluate.py).

`state` below is anything with `ema_params` (e.g. `workdir.load_trained`'s `Trained`).

For each (solver, steps) pair: draw N samples from the EMA parameters and compare them with N
data examples. A latent run (`run`, a `diffjax.train.latent.LatentRun`) is sampled in latent
space and DECODED by its pinned autoencoder, so every statistic compares decoded images with
real images of the data set: for a caption run, the real compositions of its caption source
(`latent.evaluation_examples`), whose captions the samples are conditioned on, with the small
classifier's features taken on both halves and concatenated (`adherence.split_canvas`).
2-D data: sliced Wasserstein and MMD. Images: FID, KID and precision/recall on FID-Inception
features when the Inception weights are installed (skipped with a note
otherwise), plus a pixel-space sliced Wasserstein that needs nothing. Optionally bits/dim of
data examples by the probability-flow ODE.
"""

from __future__ import annotations

import dataclasses
import io
import time

import jax
import numpy as np
from absl import logging

from diffjax import parallel
from diffjax.data import make_iterator
from diffjax.samplers.api import carried_options
from diffjax.train import learned_variance, paths
from diffjax.train.sampling import make_sampler
from diffjax.train.spec import consistency_sampling


def _option_value(text: str):
    """'2' -> 2, '0.5' -> 0.5, 'true' -> True, anything else the string itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_solvers(text: str) -> list[tuple[str, int, dict]]:
    """'ddim:10,dpm_solver/order=2:10,dopri5' -> [('ddim', 10, {}), ('dpm_solver', 10,
    {'order': 2}), ('dopri5', 0, {})]: name[/option=value...][:steps]; steps may be left out
    where `expand_nfe` sets them from budgets of model evaluations."""
    items = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        head, _, steps = item.partition(":")
        if steps and not steps.isdigit():
            raise ValueError(f"bad solver:steps pair {item!r}; expected e.g. 'ddim:50'")
        name, *settings = head.split("/")
        options = {}
        for setting in settings:
            key, eq, value = setting.partition("=")
            if not (key and eq and value):
                raise ValueError(f"bad solver option {setting!r} in {item!r}; expected key=value")
            options[key] = _option_value(value)
        items.append((name, int(steps or 0), options))
    if not items:
        raise ValueError(f"no solver:steps pairs in {text!r}")
    return items


def with_options(items, **options) -> list[tuple[str, int, dict]]:
    """Every (name, steps, row options) of `parse_solvers` with `options` added (an option the
    row sets itself is an error: the two would disagree on what the row means)."""
    out = []
    for name, steps, row in items:
        both = sorted(set(row) & set(options))
        if both:
            raise ValueError(f"solver {name!r} sets {both} itself; give them once")
        out.append((name, steps, {**row, **options}))
    return out


def solver_label(name: str, options: dict) -> str:
    """'dpm_solver' + {'order': 2} -> 'dpm_solver/order=2' (the row's solver column)."""
    return "/".join([name, *(f"{k}={v}" for k, v in sorted(options.items()))])


def _solver_options(spec, name: str, options: dict) -> dict:
    """The run's model options carried to solver `name` (clip_x0, t range, ...), then the row's."""
    return {**carried_options(spec.sample.kwargs, spec.sample.solver, name), **options}


def expand_nfe(spec, c, items, budgets) -> list[tuple[str, int, dict]]:
    """Each (name, _, options) once per budget of model evaluations, at the most steps that fit
    it (`samplers.steps_for_nfe` with the run's process, prediction and carried options): the
    rows of an NFE table (Song et al. 2021's DDIM Table 1, Lu et al. 2022's Table 3).

    Raises:
      ValueError: a budget below one step of a solver, or an adaptive solver.
    """
    from diffjax.samplers import steps_for_nfe

    out = []
    for name, _, options in items:
        merged = _solver_options(spec, name, options)
        for budget in budgets:
            steps = steps_for_nfe(name, c.process, int(budget), prediction=spec.prediction,
                                  **merged)  # fmt: skip
            out.append((name, steps, dict(options)))
    return out


def data_examples(spec, num: int, with_labels: bool = False):
    """`num` training examples (in the model's range) from the spec's data source, and their
    labels [num] (or None when the source has none) with `with_labels`."""
    return _take(_stream(spec), num, with_labels)


def held_out(spec):
    """(the spec reading its data source's 'test' split without flips, 'test'), or (spec,
    'train') with a warning for the sources that have no held-out split (the toy mixtures and
    the bundled digits). A missing test split elsewhere is the data source's own error when
    read (FileNotFoundError naming the folder)."""
    if spec.data.name.startswith("toy_") or spec.data.name == "digits":
        logging.warning("%s has no held-out split: its training examples are used",
                        spec.data.name)  # fmt: skip
        return spec, "train"
    data = dataclasses.replace(spec.data, split="test", random_flip=False)
    return dataclasses.replace(spec, data=data), "test"


def _stream(spec):
    """The spec's global data stream on every host (as one process reads it), not this host's
    slice: the statistics compare the gathered global sample set with the same data everywhere.
    Its `info['num_examples']` is one epoch's size (absent for an endless stream, e.g. toy)."""
    return make_iterator(
        dataclasses.replace(spec.data, prefetch=0), process_index=0, process_count=1
    )


def _take(batches, num: int, with_labels: bool = False):
    """The first `num` examples of a stream (and their labels, see `data_examples`)."""
    out, labels, have = [], [], 0
    key = batches.info.get("key", "image")
    while have < num:
        batch = next(batches)
        out.append(np.asarray(batch[key]))
        labels.append(np.asarray(batch["label"]) if "label" in batch else None)
        have += out[-1].shape[0]
    x = np.concatenate(out)[:num]
    if not with_labels:
        return x
    return x, (None if labels[0] is None else np.concatenate(labels)[:num])


def classifier_fn(
    key, spec, workdir: str, num_train: int = 4000, layout: str | None = None, **train_options
):
    """Features of the project's small classifier for one-channel (MNIST-like) image data, the
    Fréchet distance's feature space used for MNIST in the literature; None for other data.
    The classifier is trained once on labelled training examples (single items) and cached in
    `<workdir>/classifier` (written by the primary process). With a caption `layout`
    ('wide' | 'square') the features of a composed canvas are those of its two halves
    (`adherence.split_canvas`), concatenated: [N, 2F]. `train_options` go to
    `classifier.train_classifier` (steps, batch_size, ...)."""
    from diffjax.train import classifier

    images, labels = data_examples(spec, num_train, with_labels=True)
    if images.ndim != 4 or images.shape[-1] != 1 or labels is None:
        return None
    cache = str(paths.workdir_path(workdir) / "classifier") if parallel.is_primary() else None
    params = classifier.train_classifier(key, images, labels, workdir=cache, **train_options)
    logging.info(
        "classifier accuracy on its training data: %.3f",
        classifier.classifier_accuracy(params, images, labels),
    )
    features = lambda x: np.asarray(classifier.classifier_features(params, x))  # noqa: E731
    if layout is None:
        return features
    from diffjax.train.adherence import split_canvas

    def halves(x):
        left, right = split_canvas(x, layout)
        return np.concatenate([features(left), features(right)], axis=1)

    return halves


def inception_fn():
    """Features of images in [-1, 1] from the FID Inception, or None without its weights."""
    from diffjax import metrics

    try:
        variables = metrics.load_inception_params()
    except (FileNotFoundError, ImportError, ValueError) as err:
        logging.warning("FID/KID/precision/recall skipped: %s", err)
        return None
    images = lambda x: np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x  # grey -> RGB
    return lambda x: metrics.features_in_batches(
        lambda b: metrics.inception_features(variables, b), images(x)
    )


def reference_statistics(workdir: str | None, name: str, features, data):
    """(mu, sigma) float64 of the data features, cached as `<workdir>/<name>_stats_<N>.npz`
    through the path layer (any filesystem; written by the primary process only).

    Raises:
      ValueError: the cache file exists but cannot be read (it is named; delete it to
        recompute).
    """
    from diffjax import metrics

    compute = lambda: metrics.feature_statistics(features(data))  # noqa: E731
    if workdir is None:
        return compute()
    path = paths.workdir_path(workdir) / f"{name}_stats_{len(data)}.npz"
    if path.is_file():
        try:
            stored = np.load(io.BytesIO(path.read_bytes()))
            return np.asarray(stored["mu"], np.float64), np.asarray(stored["sigma"], np.float64)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"cannot read the cached statistics {path}: {err}") from err
    mu, sigma = (np.asarray(a, np.float64) for a in compute())
    if parallel.is_primary():
        paths.write_npz(path, mu=mu, sigma=sigma)
    return mu, sigma


def check_same_shape(samples, data, what: str = "samples") -> None:
    """ValueError unless samples [N, ...] and data [M, ...] have one example shape (e.g. latents
    of a latent run compared with images would not)."""
    if np.shape(samples)[1:] != np.shape(data)[1:]:
        raise ValueError(
            f"{what} of shape {np.shape(samples)[1:]} cannot be compared with data examples of "
            f"shape {np.shape(data)[1:]}"
        )


def image_metrics(key, samples, data, features, classifier=None, workdir=None, name="") -> dict:
    """Pixel sliced Wasserstein, the classifier's Fréchet distance and the Inception metrics of
    images [N, H, W, C] against data images of the same shape; reference statistics are cached
    in `workdir` under `<name><feature space>_stats_<N>.npz`."""
    from diffjax import metrics

    check_same_shape(samples, data)
    flat = lambda x: x.reshape(x.shape[0], -1)  # noqa: E731
    out = {"sw_pixels": float(metrics.sliced_wasserstein(key, flat(samples), flat(data)))}
    if classifier is not None:
        mu, sigma = reference_statistics(workdir, f"{name}classifier", classifier, data)
        out["fd_classifier"] = float(
            metrics.frechet_distance(mu, sigma, *metrics.feature_statistics(classifier(samples)))
        )
    if features is not None:
        fs, fd = features(samples), features(data)
        mu, sigma = reference_statistics(workdir, f"{name}inception", lambda _: fd, data)
        out["fid"] = float(metrics.frechet_distance(mu, sigma, *metrics.feature_statistics(fs)))
        kid_mean, _ = metrics.kid(key, fd, fs, subset_size=min(1000, len(fs)))
        out["kid"] = float(kid_mean)
        precision, recall = metrics.precision_recall(fd, fs)
        out.update(precision=float(precision), recall=float(recall))
    return out


def point_metrics(key, samples, data) -> dict[str, float]:
    from diffjax import metrics

    check_same_shape(samples, data)
    return {
        "sliced_wasserstein": float(metrics.sliced_wasserstein(key, samples, data)),
        "mmd": float(metrics.mmd(samples, data)),
    }


def evaluate_solvers(
    key, spec, c, state, pairs, num: int, inception: bool = True, workdir: str | None = None,
    run=None, classifier_options: dict | None = None, repeats: int = 1,
) -> list[dict]:  # fmt: skip
    """One row per (solver, steps[, options]): metrics, model evaluations (nfe), sampling
    seconds and the settings used.

    `repeats` > 1 draws each row's samples that many times with independent keys: the metrics
    are then their means, with `<metric>_std` the sample standard deviation across the draws
    (the spread of FID at that sample size). The first draw's key is the one `repeats=1` uses.

    `inception=False` skips the Inception-feature metrics (slow on CPU: every image is resized
    to 299x299). With a `workdir`, one-channel image data also get the Fréchet distance on the
    features of the project's small classifier, and reference statistics are cached there.
    `run` (the `latent.LatentRun` of a latent and/or caption run; `spec`, `c`, `state` are
    then its own): samples are decoded images, compared with real images of the data set (a
    caption run: real compositions, the samples conditioned on their captions).
    `classifier_options`: `classifier_fn`'s num_train and training options (tests shrink them).

    Raises:
      ValueError: the samples' shape differs from the data's (`check_same_shape`).
    """
    tokens, name, layout = None, "", None
    if run is not None:
        from diffjax.train.latent import evaluation_examples

        data, tokens = evaluation_examples(spec, num, seed=0)
        check_same_shape(data, np.zeros((1, *run.image_shape)), "real examples")
        if spec.text is not None:  # the caption source's compositions: their own statistics
            layout = spec.text.layout
            name = f"{spec.text.captions}_{layout}_"
    else:
        data = data_examples(spec, num)
    features = _reusing(inception_fn() if data.ndim == 4 and inception else None, data)
    classifier = None
    if workdir is not None and data.ndim == 4:
        classifier = classifier_fn(
            jax.random.fold_in(key, 20_000), spec, workdir, layout=layout,
            **(classifier_options or {}),
        )  # fmt: skip
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats!r}")
    from diffjax.samplers import count_nfe

    rows = []
    for i, item in enumerate(pairs):
        solver, steps, options = item if len(item) == 3 else (*item, {})
        sspec = dataclasses.replace(
            spec.sample,
            solver=solver,
            steps=steps,
            num=num,
            kwargs=_solver_options(spec, solver, options),
        )
        sspec = consistency_sampling(sspec, spec.model)  # a consistency model's sigma range
        sspec = learned_variance.sample_options(spec, sspec)  # [mean | v] models: the mean
        nfe = count_nfe(sspec.solver, c.process, sspec.steps or None, prediction=spec.prediction,
                        **sspec.kwargs)  # fmt: skip
        counted = nfe is None and run is None  # adaptive (dopri5): the loop's own count
        if run is not None:  # decoded images (tokens: the real examples' captions)
            sampler = run.sampler(sspec, num, tokens=tokens)
        else:
            sampler = make_sampler(c, sspec, spec.cond, spec.prediction, num, with_nfe=counted)
        draws, seconds, counts = [], [], []
        base = (jax.random.fold_in(key, i), jax.random.fold_in(key, 10_000 + i))
        for r in range(repeats):  # draw 0 is the one repeats=1 makes; draw r folds in r
            draw_key, metric_key = base if r == 0 else (jax.random.fold_in(k, r) for k in base)
            t0 = time.time()
            out = sampler(state.ema_params, draw_key)
            if counted:
                out, count = out
                counts.append(int(count))
            samples = np.asarray(out)
            seconds.append(time.time() - t0)
            draws.append(_metrics(metric_key, samples, data, features, classifier, workdir, name))
        if counts:  # the mean over the draws (one draw: its count)
            nfe = counts[0] if len(counts) == 1 else float(np.mean(counts))
        row = {"solver": solver_label(solver, options), "steps": steps, "nfe": nfe, "num": num}
        row["seconds"] = float(np.mean(seconds))
        row.update(_combine(draws))
        if repeats > 1:
            row["repeats"] = repeats
        rows.append(row)
        logging.info("%s", rows[-1])
    return rows


def _reusing(features, data):
    """`features` with the data's own features computed once (None stays None): every row
    compares its samples with the same data array, and the Inception features of 1000 images
    take minutes on a CPU."""
    if features is None:
        return None
    cache = []

    def call(x):
        if x is not data:
            return features(x)
        if not cache:
            cache.append(features(data))
        return cache[0]

    return call


def _combine(draws: list[dict]) -> dict:
    """Metric dicts of repeated draws -> their means and, for several, `<key>_std` (ddof 1)."""
    if len(draws) == 1:
        return dict(draws[0])
    out = {}
    for k in draws[0]:
        values = np.asarray([d[k] for d in draws], np.float64)
        out[k], out[f"{k}_std"] = float(values.mean()), float(values.std(ddof=1))
    return out


def _metrics(key, samples, data, features, classifier, workdir, name="") -> dict[str, float]:
    """A row's metrics of `samples` against `data`: points or images."""
    if np.ndim(data) == 2:
        return point_metrics(key, samples, data)
    return image_metrics(key, samples, data, features, classifier, workdir, name)


def data_floor_rows(key, spec, num: int, inception: bool = True, workdir: str | None = None,
                    classifier_options: dict | None = None) -> list[dict]:  # fmt: skip
    """The floor a model cannot beat at this sample size, in the rows' metrics: held-out
    examples (the 'test' split) against the first `num` training examples, the ones the model
    rows are compared with ('data:test_vs_train'), and two disjoint halves of one epoch of the
    training stream ('data:train_halves'). Each row's `num` is its sample count: at most the
    test split's size, and at most half an epoch for the halves (CIFAR-10 at num = 50k: 10k test
    examples; 25k against 25k). The toy mixtures and the bundled digits have no held-out split:
    they get only the halves row, with a warning; a missing test split elsewhere is the data
    source's own error (FileNotFoundError naming the folder)."""
    train = _stream(spec)
    total = train.info.get("num_examples")
    half = num if total is None else min(num, total // 2)
    reference = _take(train, max(num, 2 * half))
    candidates = [("data:train_halves", reference[half : 2 * half], reference[:half])]
    test_spec, split = held_out(spec)
    if split == "test":  # else only the halves row
        test = _stream(test_spec)
        test_examples = _take(test, min(num, test.info.get("num_examples") or num))
        candidates.insert(0, ("data:test_vs_train", test_examples, reference[:num]))
    features = inception_fn() if reference.ndim == 4 and inception else None
    classifier = None
    if workdir is not None and reference.ndim == 4:
        classifier = classifier_fn(jax.random.fold_in(key, 20_000), spec, workdir,
                                   **(classifier_options or {}))  # fmt: skip
    rows = []
    for i, (label, examples, against) in enumerate(candidates):
        metric_key = jax.random.fold_in(key, 30_000 + i)
        values = _metrics(metric_key, examples, against, features, classifier, workdir)
        rows.append({"solver": label, "steps": 0, "nfe": 0, "num": len(examples), **values})
        logging.info("%s", rows[-1])
    return rows


QUALITY_KEYS = ("fid", "fd_classifier", "sw_pixels", "sliced_wasserstein")


def save_nfe_plot(path, rows: list[dict], metric: str | None = None) -> str | None:
    """Quality against model evaluations, one line per solver (log-log), the data-floor rows
    as dashed horizontal lines: the plot of an NFE table, a PNG at `path` (any filesystem).
    `metric`: a row key (default the first of QUALITY_KEYS the rows have); error bars where
    the rows carry `<metric>_std`. None when no row has the metric."""
    model_rows = [r for r in rows if not str(r["solver"]).startswith("data:")]
    if metric is None:
        metric = next((k for k in QUALITY_KEYS if any(k in r for r in model_rows)), None)
    model_rows = [r for r in model_rows if metric and metric in r and r.get("nfe")]
    if not model_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffjax.train.writers import _save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["solver"] for r in model_rows):
        line = sorted((r for r in model_rows if r["solver"] == label), key=lambda r: r["nfe"])
        errors = [r.get(f"{metric}_std", 0.0) for r in line]
        x, y = [r["nfe"] for r in line], [r[metric] for r in line]
        ax.errorbar(x, y, yerr=errors, marker="o", label=label, capsize=2)
    for r in rows:
        if str(r["solver"]).startswith("data:") and metric in r:
            ax.axhline(r[metric], linestyle="--", color="grey", linewidth=1)
            ax.annotate(r["solver"], (ax.get_xlim()[0], r[metric]), fontsize=7, va="bottom")
    ax.set_xscale("log")
    if all(r[metric] > 0 for r in model_rows):
        ax.set_yscale("log")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
    return str(path)


def likelihood_bits_per_dim(
    key, spec, c, state, num: int, batch_size: int = 64
) -> dict[str, float]:
    """Probability-flow-ODE bits/dim of `num` held-out examples (`held_out`: the test split
    where the source has one; images: 8-bit dequantised), with `split` saying which."""
    from diffjax.likelihood import nll_dataset

    eval_spec, split = held_out(spec)
    stream = _stream(eval_spec)
    data, bins = _take(stream, num), {}
    if data.ndim == 4:  # images in [-1, 1] -> their levels 0..M, which nll_dataset dequantises
        top = int(stream.info.get("max_value", 255))  # the stream's own scale (digits: 16)
        data, bins = _levels(data, top), {"num_bins": top + 1}
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)
    result = nll_dataset(
        key,
        model,
        c.process,
        data,
        batch_size=min(batch_size, num),
        prediction=spec.prediction,
        dequantized=data.ndim == 4,
        **bins,
    )
    return {**{k: float(v) for k, v in result.items() if np.ndim(v) == 0}, "split": split}


def _levels(images, top: int = 255) -> np.ndarray:
    """uint8 levels k of images x = 2 k / top - 1 in [-1, 1] (the data sources' scaling).

    Raises:
      ValueError: the images are not on that grid, naming how far off they are.
    """
    half = top / 2.0
    levels = np.rint((np.asarray(images, np.float64) + 1.0) * half)
    gap = float(np.max(np.abs(levels / half - 1.0 - images))) if np.size(images) else 0.0
    if gap > 1e-4 or levels.min(initial=0) < 0 or levels.max(initial=0) > top:
        raise ValueError(
            f"bits/dim of images needs levels 0..{top} scaled to [-1, 1] (2 k / {top} - 1); "
            f"these are {gap:.3g} off that grid, in [{np.min(images):.3g}, {np.max(images):.3g}]"
        )
    return levels.astype(np.uint8)


def elbo_bits_per_dim(key, spec, c, state, num: int, batch_size: int = 32) -> dict[str, float]:
    """The discrete DDPM bound (`losses.vlb`, every one of the T terms summed exactly, the
    discretised decoder for 8-bit images) in bits/dim over `num` data examples, with its
    standard error over examples (`held_out`: the test split where the source has one, named
    in `split`). Only for Discrete chains."""
    from diffjax import losses

    if getattr(c.process, "num_steps", None) is None:  # a continuous-time process
        raise ValueError(
            f"the discrete bound needs a Discrete chain; this run trains {type(c.process).__name__}"
        )
    eval_spec, split = held_out(spec)
    data = data_examples(eval_spec, num)
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)
    decoder = "discretized" if data.ndim == 4 else "gaussian"
    bound = jax.jit(
        lambda k, x: losses.vlb(
            model, k, x, c.process, terms="all", decoder=decoder, prediction=spec.prediction
        )[1]["per_example"]
    )
    per = np.concatenate(
        [
            np.asarray(bound(jax.random.fold_in(key, i), data[i : i + batch_size]))
            for i in range(0, num, batch_size)
        ]
    )
    return {
        "elbo_bpd": float(per.mean()),
        "elbo_bpd_stderr": float(per.std(ddof=1) / np.sqrt(len(per))),
        "split": split,
    }


def straightness_metrics(key, spec, c, state, num: int, steps: int = 100) -> dict[str, float]:
    """Liu et al.'s straightness S of the EMA flow and its coupling's transport cost
    E||z - x0||^2, each with its standard error over `num` noise draws (`diffjax.reflow.
    straightness`, Euler with `steps` intervals). Only for rectified-flow runs."""
    from diffjax import reflow
    from diffjax.losses.reflow import check_rectified_flow

    check_rectified_flow(c.process, "straightness (--straightness_num)")
    if num < 2:
        raise ValueError(f"straightness needs num >= 2 noise draws; got {num}")
    noise_key, solve_key = jax.random.split(key)
    z = jax.random.normal(noise_key, (num, *c.example_shape))
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)  # noqa: E731
    out = reflow.straightness(
        solve_key, model, c.process, z, solver="euler", steps=steps, prediction=spec.prediction
    )
    names = ("straightness", "stderr", "transport_cost", "transport_stderr")
    result = {name: float(out[name]) for name in names}
    result.update(num=int(num), steps=int(steps))
    return result


def format_table(rows: list[dict]) -> str:
    """A plain-text table with one column per key (the DDIM paper's table shape)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [
        [f"{r.get(k, ''):.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        for r in rows
    ]
    widths = [max(len(k), *(len(row[j]) for row in cells)) for j, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))
    return "\n".join([line(keys), line(["-" * w for w in widths]), *map(line, cells)])
