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


def parse_solvers(text: str) -> list[tuple[str, int]]:
    """'ddim:10,ddim:50,dopri5' -> [('ddim', 10), ('ddim', 50), ('dopri5', 0)]."""
    pairs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, steps = item.partition(":")
        if steps and not steps.isdigit():
            raise ValueError(f"bad solver:steps pair {item!r}; expected e.g. 'ddim:50'")
        pairs.append((name, int(steps or 0)))
    if not pairs:
        raise ValueError(f"no solver:steps pairs in {text!r}")
    return pairs


def data_examples(spec, num: int, with_labels: bool = False):
    """`num` training examples (in the model's range) from the spec's data source, and their
    labels [num] (or None when the source has none) with `with_labels`."""
    # the global stream on every host (as one process reads it), not this host's slice: the
    # statistics compare the gathered global sample set with the same data everywhere
    batches = make_iterator(
        dataclasses.replace(spec.data, prefetch=0), process_index=0, process_count=1
    )
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
    run=None, classifier_options: dict | None = None,
) -> list[dict]:  # fmt: skip
    """One row per (solver, steps): metrics, sampling seconds and the settings used.

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
    features = inception_fn() if data.ndim == 4 and inception else None
    classifier = None
    if workdir is not None and data.ndim == 4:
        classifier = classifier_fn(
            jax.random.fold_in(key, 20_000), spec, workdir, layout=layout,
            **(classifier_options or {}),
        )  # fmt: skip
    rows = []
    for i, (solver, steps) in enumerate(pairs):
        sspec = dataclasses.replace(
            spec.sample,
            solver=solver,
            steps=steps,
            num=num,
            kwargs=carried_options(spec.sample.kwargs, spec.sample.solver, solver),
        )
        sspec = consistency_sampling(sspec, spec.model)  # a consistency model's sigma range
        sspec = learned_variance.sample_options(spec, sspec)  # [mean | v] models: the mean
        if run is not None:  # decoded images (tokens: the real examples' captions)
            sampler = run.sampler(sspec, num, tokens=tokens)
        else:
            sampler = make_sampler(c, sspec, spec.cond, spec.prediction, num)
        t0 = time.time()
        samples = np.asarray(sampler(state.ema_params, jax.random.fold_in(key, i)))
        seconds = time.time() - t0
        metric_key = jax.random.fold_in(key, 10_000 + i)
        values = (
            point_metrics(metric_key, samples, data)
            if data.ndim == 2
            else image_metrics(metric_key, samples, data, features, classifier, workdir, name)
        )
        rows.append({"solver": solver, "steps": steps, "num": num, "seconds": seconds, **values})
        logging.info("%s", rows[-1])
    return rows


def likelihood_bits_per_dim(
    key, spec, c, state, num: int, batch_size: int = 64
) -> dict[str, float]:
    """Probability-flow-ODE bits/dim of `num` data examples (images: 8-bit dequantised)."""
    from diffjax.likelihood import nll_dataset

    data = data_examples(spec, num)
    model = lambda x, t: c.apply(state.ema_params, x, t, None, train=False, key=None)
    result = nll_dataset(
        key,
        model,
        c.process,
        data,
        batch_size=min(batch_size, num),
        prediction=spec.prediction,
        dequantized=data.ndim == 4,
    )
    return {k: float(v) for k, v in result.items() if np.ndim(v) == 0}


def elbo_bits_per_dim(key, spec, c, state, num: int, batch_size: int = 32) -> dict[str, float]:
    """The discrete DDPM bound (`losses.vlb`, every one of the T terms summed exactly, the
    discretised decoder for 8-bit images) in bits/dim over `num` data examples, with its
    standard error over examples. Only for Discrete chains."""
    from diffjax import losses

    if getattr(c.process, "num_steps", None) is None:  # a continuous-time process
        raise ValueError(
            f"the discrete bound needs a Discrete chain; this run trains {type(c.process).__name__}"
        )
    data = data_examples(spec, num)
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
