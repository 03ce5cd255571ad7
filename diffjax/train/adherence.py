"""Prompt adherence of generated two-item compositions, read by a classifier of single items.

The captioned datasets of `diffjax.data.captions` compose two 28x28 items (MNIST digits or
Fashion-MNIST articles) side by side ("wide": a [28, 56] canvas) or pooled to 14x14 in the
middle rows of a [28, 28] canvas ("square"). This module trains the project's small CNN
(`diffjax.train.classifier.SmallCNN`) on REAL single items, shown to it exactly as one half of a
composed canvas looks (`item_view`), then splits a generated canvas into its two halves
(`split_canvas`) and classifies each: a composition adheres to its caption when both items are
right and in the caption's order. The classifier is cached in a folder (trained once per data
and settings, `classifier.train_classifier`'s sha256 cache key).

Chance levels, for K items drawn uniformly: 1/K per position, 1/K^2 for both in order. With the
text encoder's output zeroed the generator cannot know the caption, so adherence must fall to
about 1/K^2; `order_accuracy` (among samples whose two predicted items are the caption's two
distinct items, the fraction in the caption's order) is the order-only test, chance 1/2.

Real measurements (2026-12-02; 2 CPU cores shared with other helpers' jobs):
  - Classifier: `train_adherence_classifier(PRNGKey(0), MNIST train items (60k, uint8),
    labels, layout='wide', cache_dir='workdirs/adherence_mnist', steps=800)` (SmallCNN widths
    (32, 64), hidden 128, batch 128): 2774 s wall-clock, load average 15-22 for most of it
    (3.0 at the end). Held-out accuracy on the 10k real MNIST TEST items: 0.9879. Real
    compositions of two random test items (2000): both-in-order 0.976, left 0.989, right
    0.987, order accuracy 1.000 (1750 distinct pairs): the ceiling a perfect generator reaches.
  - B's text LDM workdirs/ldm_pairs_mnist at step 900 (a checkpoint of a run still training
    to step 1000; autoencoder workdirs/ae_mnist_f4), 160 random captions, DDIM 20 steps, read
    with `load_run` + `generate` + `adherence` as `adherence_report` does (load_trained's
    model-config check had to be bypassed in the throwaway script: it refused the workdir,
    "model.kwargs: stored {}, now 'absent'"); generation 152 s at load 6-14:
      scale 1: both 0.025, left 0.094, right 0.150, FD(two-half features) 425.8
      scale 3: both 0.019, left 0.169, right 0.106, FD 438.6
      text zeroed (context_scale 0), scale 3: both 0.006, left 0.100, right 0.081, FD 406.3
      chance: both 0.010, position 0.100. At this training length the model does not follow
      its captions (near chance with and without text; B: the grid shows strokes, not digits).
      Negative prompt at scale 3 with the null caption as prompt, frequency over 320 halves
      vs the unconditional model: "zero then zero" 0.041 -> 0.031, "one then one" 0.062 ->
      0.028 (binomial sd ~0.012: suggestive, not significant at this model quality).
  - The same LDM trained on to step 4000 (experiments/ldm.py's docstring has the commands),
    through `launch/evaluate.py --adherence_num=64` with this cached classifier: both-in-order
    0.062 at scales 1 and 3, 0.000 with the text zeroed; negative prompts lower the named
    digit's frequency (e.g. "one then one" 0.062 -> 0.008 of 128 halves).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.captions import LAYOUTS
from diffjax.train import classifier as clf
from diffjax.train import paths
from diffjax.typing import Array, ArrayLike, PyTree

CACHE_SUBDIR = "adherence_{layout}"  # the classifier cache below a cache root, one per layout


def _as_float(images: ArrayLike) -> np.ndarray:
    """[N, H, W] or [N, H, W, C] -> float32 [N, H, W, C] in [-1, 1] (uint8 mapped, floats
    clipped: generated images may overshoot the data range a little)."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"images must be [N, H, W] or [N, H, W, C] with N >= 1; got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [-1, 1]; got dtype {x.dtype}")
    return np.clip(x.astype(np.float32), -1.0, 1.0)


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def _pool_up(x: np.ndarray) -> np.ndarray:
    """2x2 mean pooling then 2x nearest upsampling: [N, H, W, C] -> [N, H, W, C]."""
    n, h, w, c = x.shape
    pooled = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return np.repeat(np.repeat(pooled, 2, axis=1), 2, axis=2)


def item_view(items: ArrayLike, layout: str = "wide") -> np.ndarray:
    """Single items [N, H, W(, C)] (uint8 or float in [-1, 1]) as the classifier sees one half
    of a composed canvas: float32 [N, H, W, C] in [-1, 1]. "wide": unchanged; "square": 2x2
    mean-pooled (as `captions.compose` does, rounded for uint8) and upsampled back to H x W."""
    _check_layout(layout)
    x = np.asarray(items)
    x = x[..., None] if x.ndim == 3 else x
    if layout == "wide":
        return _as_float(x)
    if x.ndim != 4 or x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"the square layout needs items [N, H, W, C] of even H, W; got {x.shape}")
    if x.dtype == np.uint8:  # compose pools in float and rounds back to uint8
        n, h, w, c = x.shape
        pooled = np.round(x.astype(np.float32).reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4)))
        return _as_float(np.repeat(np.repeat(pooled.astype(np.uint8), 2, 1), 2, 2))
    return _pool_up(_as_float(x))


def split_canvas(images: ArrayLike, layout: str = "wide") -> tuple[np.ndarray, np.ndarray]:
    """Composed canvases -> (left, right) item views, each float32 [N, H, W, C] in [-1, 1].

    "wide": canvases [N, H, 2W, C] are cut at column W. "square": canvases [N, H, W, C] hold
    the two items pooled to (H/2) x (W/2) in rows H/4 .. 3H/4, left and right of column W/2; each
    half is upsampled 2x (nearest), which is what `item_view(..., 'square')` gives a real item.
    """
    _check_layout(layout)
    x = _as_float(images)
    n, h, w, c = x.shape
    if layout == "wide":
        if w != 2 * h:
            raise ValueError(f"a wide canvas is [N, H, 2H, C] (e.g. 28x56); got {x.shape}")
        return x[:, :, : w // 2], x[:, :, w // 2 :]
    if h != w or h % 4:
        raise ValueError(f"a square canvas is [N, H, H, C] with H divisible by 4; got {x.shape}")
    band = x[:, h // 4 : h // 4 + h // 2]  # [N, H/2, W, C]
    up = lambda half: np.repeat(np.repeat(half, 2, axis=1), 2, axis=2)  # noqa: E731
    return up(band[:, :, : w // 2]), up(band[:, :, w // 2 :])


def train_adherence_classifier(
    key: Array,
    items: ArrayLike,
    labels: ArrayLike,
    *,
    layout: str = "wide",
    cache_dir: str | None = None,
    steps: int = 800,
    batch_size: int = 128,
    **kwargs,
) -> PyTree:
    """`classifier.SmallCNN` trained on real single items in their `item_view`, cached in
    `<cache_dir>/adherence_<layout>` (trained once per data and settings; None: no cache).

    Args:
      key: PRNG key (init and minibatches).
      items: real single items [N, H, W(, C)], uint8 or float in [-1, 1].
      labels: int [N] item classes.
      layout: the composition layout the classifier will read ('wide' or 'square').
      steps, batch_size, **kwargs: `classifier.train_classifier`'s settings.
    Returns:
      the classifier's params.
    """
    workdir = None
    if cache_dir is not None:  # through the path layer (a gs:// cache root stays one)
        workdir = os.fspath(paths.workdir_path(cache_dir) / CACHE_SUBDIR.format(layout=layout))
    return clf.train_classifier(
        key, item_view(items, layout), np.asarray(labels), steps=steps, batch_size=batch_size,
        workdir=workdir, **kwargs,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=0)
def _predict(module, params: PyTree, x: Array) -> Array:
    return jnp.argmax(module.apply(params, x), axis=-1)


def classify_items(params: PyTree, views: ArrayLike, *, chunk: int = 256) -> np.ndarray:
    """Arg-max classes int [N] of item views [N, H, W, C], in chunks of `chunk` (the last one
    zero-padded), so that every call with one image size reuses one compiled program."""
    x = np.asarray(views, np.float32)
    module = clf._module_from_params(params)
    pad = -len(x) % chunk
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)]) if pad else x
    out = [np.asarray(_predict(module, params, x[i : i + chunk])) for i in range(0, len(x), chunk)]
    return np.concatenate(out)[: len(x) - pad]


def classify_halves(params: PyTree, images: ArrayLike, layout: str = "wide") -> np.ndarray:
    """Predicted (left, right) items int [N, 2] of composed canvases."""
    left, right = split_canvas(images, layout)
    return classify_items(params, np.concatenate([left, right])).reshape(2, -1).T


def adherence_from_predictions(pred: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Adherence numbers from predicted and captioned (left, right) items, both int [N, 2].

    Returns:
      accuracy: both items right and in order; left / right: per-position accuracies;
      swapped: both items right but in the opposite order; order_accuracy: among examples with
      two distinct captioned items whose predicted pair is the captioned pair in either order,
      the fraction in the captioned order (chance 1/2), and n_order, that count; n.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(
            f"predictions and labels must both be [N, 2]; got {pred.shape} and {labels.shape}"
        )
    left, right = pred[:, 0] == labels[:, 0], pred[:, 1] == labels[:, 1]
    swapped = (pred[:, 0] == labels[:, 1]) & (pred[:, 1] == labels[:, 0])
    distinct = labels[:, 0] != labels[:, 1]
    same_pair = distinct & ((left & right) | swapped)
    n_order = int(same_pair.sum())
    order = float((left & right)[same_pair].mean()) if n_order else float("nan")
    return {
        "accuracy": float(np.mean(left & right)),
        "left": float(np.mean(left)),
        "right": float(np.mean(right)),
        "swapped": float(np.mean(swapped & distinct)),
        "order_accuracy": order,
        "n_order": n_order,
        "n": int(len(labels)),
    }


def adherence(
    params: PyTree, images: ArrayLike, labels: ArrayLike, layout: str = "wide"
) -> dict[str, float]:
    """Prompt adherence of composed canvases `images` to their captions' (left, right) items
    `labels` int [N, 2]: see `adherence_from_predictions` for the returned numbers."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != 2 or labels.shape[0] != np.shape(images)[0]:
        raise ValueError(
            f"labels must be [N, 2] (left, right) for N = {np.shape(images)[0]} images; got "
            f"{labels.shape}"
        )
    return adherence_from_predictions(classify_halves(params, images, layout), labels)


def item_frequency(
    params: PyTree, images: ArrayLike, num_classes: int, layout: str = "wide"
) -> np.ndarray:
    """Frequency [K] of each item over both halves of the canvases (sums to 1)."""
    pred = classify_halves(params, images, layout).ravel()
    return np.bincount(pred, minlength=num_classes)[:num_classes] / pred.size


def held_out_accuracy(
    params: PyTree, items: ArrayLike, labels: ArrayLike, layout: str = "wide"
) -> float:
    """Accuracy of the classifier on real single items (e.g. the test split) in their view."""
    return float(np.mean(classify_items(params, item_view(items, layout)) == np.asarray(labels)))


def pair_accuracy_on_real(
    key: Array, params: PyTree, items: ArrayLike, labels: ArrayLike, num: int,
    layout: str = "wide",
) -> dict[str, float]:  # fmt: skip
    """Adherence of REAL compositions (two random held-out items composed as in training): the
    ceiling a perfect generator would reach with this classifier."""
    from diffjax.data.captions import compose

    items, labels = np.asarray(items), np.asarray(labels)
    items = items[..., None] if items.ndim == 3 else items
    idx = np.asarray(jax.random.randint(key, (num, 2), 0, len(labels)))
    canvases = np.stack([compose(items[i], items[j], layout) for i, j in idx])
    return adherence(params, canvases, labels[idx], layout)


# ------------------------------------------------------------------------------------ the report
def real_items(data, holdout: float = 0.2):
    """(train items, train labels, held-out items, held-out labels) of a run's data source, as
    float32 [N, H, W, C] in [-1, 1]: an IDX source's 'test' split is the held-out set; any other
    in-memory source (e.g. 'digits', or IDX files without a test split) keeps the last
    `holdout` fraction of its training split apart."""
    import dataclasses

    from diffjax.data import load_arrays

    def scaled(cfg):
        images, labels, max_value = load_arrays(cfg)
        images = images[..., None] if images.ndim == 3 else images
        # x / (max / 2) - 1: for 8-bit data the very floats of `item_view`'s uint8 mapping, so
        # a classifier cached from uint8 items is found again (the cache key hashes the data)
        x = images.astype(np.float32) / np.float32(max_value / 2.0) - np.float32(1.0)
        return x, np.asarray(labels, np.int32)

    x, y = scaled(dataclasses.replace(data, split="train"))
    if str(data.name).endswith("_idx"):
        try:
            return (x, y, *scaled(dataclasses.replace(data, split="test")))
        except FileNotFoundError:  # a folder with the training files only: hold out a part
            pass
    cut = int(round(len(y) * (1.0 - holdout)))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def canvas_features(params: PyTree, canvases: ArrayLike, layout: str) -> np.ndarray:
    """Penultimate features of both halves, concatenated: [N, 2F] (the Fréchet distance's
    feature space for compositions)."""
    left, right = split_canvas(canvases, layout)
    f = lambda v: np.asarray(clf.classifier_features(params, jnp.asarray(v)))  # noqa: E731
    return np.concatenate([f(left), f(right)], axis=1)


def random_captions(key: Array, num: int, names, templates=None):
    """`num` captions with uniform (left, right) items and templates, and their labels
    int [num, 2] (seeded by `key`)."""
    from diffjax.data.captions import PAIR_TEMPLATES, pair_caption

    templates = PAIR_TEMPLATES if templates is None else templates
    item_key, template_key = jax.random.split(key)
    labels = np.asarray(jax.random.randint(item_key, (num, 2), 0, len(names)))
    which = np.asarray(jax.random.randint(template_key, (num,), 0, len(templates)))
    captions = [pair_caption(templates[k], names[a], names[b])
                for (a, b), k in zip(labels, which, strict=True)]  # fmt: skip
    return captions, labels.astype(np.int32)


def generate(run, key: Array, tokens, uncond, scale: float, *, context_scale: float = 1.0,
             solver: str | None = None, steps: int | None = None, chunk: int = 100):  # fmt: skip
    """Decoded samples [N, H, W, C] of a caption run for tokens [N, L] (CFG against `uncond`
    [N, L] at `scale`; `context_scale` = 0 zeroes the text encoder's output), drawn `chunk` at a
    time (the last chunk padded) so that every chunk reuses one compiled loop."""
    from diffjax.samplers import sample
    from diffjax.train.edit_sample import bound_model

    tokens, uncond = np.asarray(tokens), np.asarray(uncond)
    n = len(tokens)
    if n < 1 or uncond.shape != tokens.shape:
        raise ValueError(f"need tokens and uncond of one shape [N >= 1, L]; got {tokens.shape}, "
                         f"{uncond.shape}")  # fmt: skip
    chunk = min(chunk, n)
    wrap = np.arange(n + (-n % chunk)) % n  # pad the last chunk with the first examples
    tokens, uncond = tokens[wrap], uncond[wrap]
    spec = run.spec.sample
    solver = solver or spec.solver
    options = dict(spec.kwargs) if solver == spec.solver else {}
    out = []
    for i in range(0, len(tokens), chunk):
        model = bound_model(run, jnp.asarray(tokens[i : i + chunk]),
                            jnp.asarray(uncond[i : i + chunk]), scale, context_scale)  # fmt: skip
        z = sample(jax.random.fold_in(key, i), model, run.process, (chunk, *run.latent_shape),
                   solver=solver, steps=steps or spec.steps or None, prediction=run.prediction,
                   **options)  # fmt: skip
        out.append(np.asarray(run.decode(z)))
    return np.concatenate(out)[:n]


def _fd(params, samples, reference_stats, layout) -> float:
    from diffjax import metrics

    mu, sigma = metrics.feature_statistics(canvas_features(params, samples, layout))
    return float(metrics.frechet_distance(*reference_stats, mu, sigma))


def adherence_report(
    workdir: str,
    *,
    scales=(1.0, 2.0, 4.0),
    num: int = 200,
    cache_dir: str | None = None,
    data_dir: str | None = None,
    negative_items: int = 3,
    negative_scale: float | None = None,
    solver: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    classifier_steps: int = 800,
) -> dict:
    """Prompt adherence of a caption run (read-only; see the module docstring).

    Rows: for each guidance scale, `num` samples for random captions (uniform items and
    templates), their adherence and the Fréchet distance of their two-half classifier features
    to real compositions of held-out items; one row with the text encoder's output zeroed
    (context_scale 0, at the largest scale: CFG then has nothing to amplify). Negative prompts:
    for the first `negative_items` items c, `num` samples of the null caption with the negative
    prompt "c then c" at `negative_scale` (default the largest scale), against the
    unconditional model (null caption, scale 1): the frequency of c over both halves must drop.
    The classifier: trained once on the run's real training items (cached in
    `<cache_dir>/adherence_<layout>`, default the workdir) and its held-out accuracy.
    """
    import dataclasses
    import time

    from diffjax import metrics
    from diffjax.data.captions import PAIR_TEMPLATES, compose, pair_caption
    from diffjax.train.edit_sample import load_run

    t0 = time.time()
    run = load_run(workdir)
    text = getattr(run.spec, "text", None)
    if text is None or run.tokenizer is None:
        raise ValueError(f"{workdir!r} is not a caption run (config.text.captions): no adherence")
    layout, names = text.layout, tuple(text.names)
    data = (
        run.spec.data if data_dir is None else dataclasses.replace(run.spec.data, data_dir=data_dir)
    )
    x_tr, y_tr, x_te, y_te = real_items(data)
    key = jax.random.PRNGKey(seed)
    clf_key, cap_key, sample_key, ref_key = jax.random.split(key, 4)
    params = train_adherence_classifier(clf_key, x_tr, y_tr, layout=layout,
                                        cache_dir=cache_dir or workdir, steps=classifier_steps,
                                        num_classes=len(names))  # fmt: skip
    report = {
        "workdir": workdir, "step": int(run.step), "layout": layout, "num": num,
        "chance": {"accuracy": 1 / len(names) ** 2, "position": 1 / len(names), "order": 0.5},
        "classifier": {"held_out_accuracy": held_out_accuracy(params, x_te, y_te, layout),
                       "num_train": int(len(y_tr)), "num_held_out": int(len(y_te))},
    }  # fmt: skip
    idx = np.asarray(jax.random.randint(ref_key, (max(num, 500), 2), 0, len(y_te)))
    real = np.stack([compose(x_te[i], x_te[j], layout) for i, j in idx])
    report["classifier"]["real_pairs"] = adherence(params, real, y_te[idx], layout)
    ref_stats = metrics.feature_statistics(canvas_features(params, real, layout))
    captions, labels = random_captions(cap_key, num, names)
    tokens = run.tokenize(captions)
    null = np.asarray(run.null_cond(num))
    rows = []
    for i, s in enumerate([*scales, None]):
        zeroed = s is None
        scale = max(scales) if zeroed else float(s)
        images = generate(
            run,
            jax.random.fold_in(sample_key, i),
            tokens,
            null,
            scale,
            context_scale=0.0 if zeroed else 1.0,
            solver=solver,
            steps=steps,
        )
        row = {"setting": "text zeroed" if zeroed else "prompt", "scale": scale,
               **adherence(params, images, labels, layout),
               "fd_pairs": _fd(params, images, ref_stats, layout)}  # fmt: skip
        rows.append(row)
    report["rows"] = rows
    neg_scale = max(scales) if negative_scale is None else float(negative_scale)
    uncond_images = generate(run, jax.random.fold_in(sample_key, 100), null, null, 1.0,
                             solver=solver, steps=steps)  # fmt: skip
    base = item_frequency(params, uncond_images, len(names), layout)
    negatives = []
    for c in range(min(negative_items, len(names))):
        prompt = pair_caption(PAIR_TEMPLATES[2], names[c], names[c])  # "{c} then {c}"
        neg = np.tile(run.tokenize([prompt]), (num, 1))
        images = generate(run, jax.random.fold_in(sample_key, 200 + c), null, neg, neg_scale,
                          solver=solver, steps=steps)  # fmt: skip
        freq = item_frequency(params, images, len(names), layout)
        negatives.append({"item": names[c], "negative_prompt": prompt, "scale": neg_scale,
                          "freq_unconditional": float(base[c]), "freq_with_negative":
                          float(freq[c])})  # fmt: skip
    report["negative"] = negatives
    report["wall_s"] = round(time.time() - t0, 1)
    return report


def format_report(report: dict) -> str:
    """The report as plain-text tables."""
    cls = report["classifier"]
    lines = [
        f"adherence of {report['workdir']} (step {report['step']}, {report['num']} samples per "
        f"row, layout {report['layout']}); chance: both {report['chance']['accuracy']:.3f}, "
        f"position {report['chance']['position']:.3f}, order 0.5",
        f"classifier: held-out accuracy {cls['held_out_accuracy']:.4f} on "
        f"{cls['num_held_out']} real items; real compositions: both-in-order "
        f"{cls['real_pairs']['accuracy']:.4f}",
        f"{'setting':<12} {'scale':>5} {'both':>6} {'left':>6} {'right':>6} {'order':>6} "
        f"{'swapped':>7} {'fd_pairs':>9}",
    ]
    for r in report["rows"]:
        lines.append(
            f"{r['setting']:<12} {r['scale']:>5.2f} {r['accuracy']:>6.3f} {r['left']:>6.3f} "
            f"{r['right']:>6.3f} {r['order_accuracy']:>6.3f} {r['swapped']:>7.3f} "
            f"{r['fd_pairs']:>9.3f}"
        )
    lines.append(f"{'negative prompt':<28} {'scale':>5} {'freq uncond':>11} {'freq with':>9}")
    for r in report["negative"]:
        lines.append(
            f"{r['negative_prompt']:<28} {r['scale']:>5.2f} {r['freq_unconditional']:>11.3f} "
            f"{r['freq_with_negative']:>9.3f}"
        )
    return "\n".join(lines)
