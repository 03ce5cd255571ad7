"""Latent diffusion and text conditioning on the training side (Rombach et al. 2022).

A diffusion run with `config.autoencoder.workdir=DIR` trains its denoiser on latents
z' = scale_factor * z, z ~ q(z | x), of the frozen autoencoder trained in DIR (a
`config.task='autoencoder'` run, `diffjax.train.autoencoder`); the images are encoded on the
fly inside the jitted step (the autoencoder's params are a traced `frozen` argument: never
trained, never in the optimiser), or once before training with `cache=True` (the posterior
moments of every training example are kept in memory and z is still drawn per step). Sampling
draws latents and decodes them: the run's grids are decoded images.

With `config.text.captions='pairs'` the data become two-item compositions of the data
source's images (`diffjax.data.captions.PairCaptions`) with captions naming both items in
order, tokenised by a `diffjax.data.text.WordTokenizer` built from every caption the templates
can produce (words outside it map to <unk>; a prompt with more tokens than the context length is
a ValueError); a `TextEncoder` trained jointly with the denoiser feeds its token states to the
cross-attention (`diffjax.models.text.TextConditioned`), and captions are replaced by the null
(empty) caption with probability `caption_dropout` for classifier-free guidance.

Reading a trained latent run (read-only; the interface other modules code against):

    run = load_latent_run(workdir)        # LatentRun; nothing in either workdir is changed
    run.spec          # the denoiser's TrainSpec (spec.example.shape == run.latent_shape)
    run.step          # int: the checkpoint's optimiser step
    run.ema_params    # the trained EMA params: {"denoiser", "encoder"} for a text run
    run.latent_shape  # (h, w, c) of one scaled latent; run.image_shape (H, W, C) of an image
    run.scale_factor  # float: latents are scale_factor * z
    run.process, run.prediction, run.value_range   # (-1, 1) images
    run.encode(images [B, H, W, C] in [-1, 1], key=None) -> scaled latents [B, h, w, c]
                      # key None: the posterior mode (deterministic); a key: a posterior sample
    run.decode(latents [B, h, w, c]) -> images [B, H, W, C] (not clipped)
    run.tokenizer     # the WordTokenizer, or None for a run without text
    run.tokenize(list[str]) -> int32 [B, L]       # unknown words -> <unk>; too long: ValueError
    run.null_cond(n)  # the unconditional cond for CFG: null-caption tokens int32 [n, L] (text
                      # run), null labels [n] (class-conditional run), None (unconditional)
    run.model(params=None, *, context_scale=1.0) -> model(x_t, t, cond=None), a bound pytree
                      # (diffjax.models.bind) of the EMA params (or `params`); cond = tokens
                      # [B, L] (text), labels [B] (class) or None; context_scale=0 zeroes the
                      # text encoder's output (ablation)
    run.sampler(sample_spec, num, labels=None, tokens=None) -> (params, key) -> decoded
                      # images [num, H, W, C] (a text run: tokens [num, L], default the grid's
                      # captions); what launch/sample.py and launch/evaluate.py draw
    run.grid_captions # the captions of the training-loop grid (text runs)
    run.text, run.layout, run.names   # the TextSpec, 'wide' | 'square', item names (or None)

A caption run without an autoencoder (pixel space) loads the same way, with encode/decode the
identity and scale_factor 1. A workdir is a latent and/or caption run when it holds
LATENT_INFO_FILE (`is_latent_workdir`); `load_for_sampling(workdir)` loads any diffusion
workdir, with the LatentRun of such a run. Files in a workdir are read and written through
diffjax.train.paths (writes by the primary process only).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LATENT_INFO_FILE = "latent_info.json"  # in a latent diffusion run's workdir
CAPTION_SOURCES = ("pairs",)
CAPTION_NAMES_BY_SOURCE = {
    "mnist_idx": "mnist",
    "fashion_mnist_idx": "fashion_mnist",
    "digits": "mnist",
}


@dataclasses.dataclass(frozen=True)
class LatentSpec:
    """The frozen first stage of a latent diffusion run (config.autoencoder)."""

    workdir: str  # the autoencoder run's workdir (read-only)
    scale_factor: float  # the factor used: the stored one, or config.autoencoder.scale_factor
    cache: bool  # encode the training set once (posterior moments in memory)
    image_shape: tuple[int, ...]  # (H, W, C) of the autoencoder's images
    latent_shape: tuple[int, ...]  # (h, w, c) of its latents
    module: Any  # the AutoencoderKL
    # its checkpoint step; None: the newest when the run first starts (pin_autoencoder_step
    # then records it in latent_info.json, and a resumed run or a sampler uses that one, so
    # that training the autoencoder further never silently changes a trained latent run)
    step: int | None = None


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """Caption conditioning (config.text)."""

    captions: str  # 'pairs': two-item compositions with order-naming captions
    layout: str  # 'wide' (H x 2W) or 'square' (H x W), see diffjax.data.captions.compose
    names: tuple[str, ...]  # the item names of the data source
    tokenizer: Any  # the WordTokenizer of every caption the templates produce
    encoder: Any  # the TextEncoder
    caption_dropout: float  # probability of the null caption in training (CFG)


# ----------------------------------------------------------------------------------------------
# The config boundary (called by diffjax.train.spec.spec_from_config).


def _fields(section) -> dict[str, Any]:
    if section is None:
        return {}
    return section.to_dict() if hasattr(section, "to_dict") else dict(section)


def _bad(field: str, value, expected: str) -> ValueError:
    return ValueError(f"config.{field} = {value!r}: expected {expected}")


def latent_spec_from_config(section) -> LatentSpec | None:
    """The frozen autoencoder of config.autoencoder (None without a workdir).

    Reads the autoencoder run's config.json, run_info.json and latent_scale.json (no
    checkpoint) and checks them.

    Raises:
      ValueError: unknown fields (e.g. autoencoder-training fields in a diffusion run), a
        workdir that is not an autoencoder run, or no stored scale factor and none configured.
      FileNotFoundError: the workdir holds no run files.
    """
    from diffjax.train.autoencoder import SCALE_FILE, autoencoder_run

    fields = _fields(section)
    known = {"workdir", "scale_factor", "cache", "step"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown field(s) {unknown} in config.autoencoder of a diffusion run; known: "
            f"{sorted(known)} (the autoencoder-training fields belong to task='autoencoder')"
        )
    workdir, scale = fields.get("workdir"), fields.get("scale_factor")
    if workdir is None:
        if scale is not None or fields.get("cache"):
            raise ValueError(
                "config.autoencoder.scale_factor / cache are set but config.autoencoder.workdir "
                "is None: name the trained autoencoder's workdir"
            )
        return None
    from diffjax.train import paths

    workdir = os.path.expanduser(str(workdir))
    if not paths.workdir_path(workdir).is_dir():
        raise _bad("autoencoder.workdir", workdir, "the workdir of a task='autoencoder' run")
    ae_spec, stored = autoencoder_run(workdir)
    if scale is None:
        if stored is None or "scale_factor" not in stored:
            raise ValueError(
                f"the autoencoder run {workdir!r} has no {SCALE_FILE} (it is written when its "
                "training finishes): finish it, or set config.autoencoder.scale_factor"
            )
        scale = stored["scale_factor"]
    if not (np.isfinite(float(scale)) and float(scale) > 0):
        raise _bad("autoencoder.scale_factor", scale, "a finite factor > 0")
    module = ae_spec.model
    h, w, c = ae_spec.example.shape
    latent = (h // module.factor, w // module.factor, module.z_channels)
    step = fields.get("step")
    if step is not None and not (isinstance(step, int) and step >= 0):
        raise _bad("autoencoder.step", step, "a checkpoint step >= 0 (None: the newest)")
    return LatentSpec(
        workdir, float(scale), bool(fields.get("cache", False)), (h, w, c), latent, module, step
    )


def pin_autoencoder_step(spec, workdir: str):
    """`spec` with `spec.latent.step` fixed: the configured step, else the one this run
    recorded in its latent_info.json (a resumed run), else the autoencoder's newest checkpoint.

    Raises:
      ValueError: the configured step contradicts the one the run was trained with.
    """
    from diffjax.train import checkpoint, paths
    from diffjax.train.workdir import CHECKPOINT_DIR

    lat = spec.latent
    if lat is None:
        return spec
    path = paths.workdir_path(workdir) / LATENT_INFO_FILE
    recorded = None
    if path.is_file():
        recorded = (json.loads(path.read_text()).get("latent") or {}).get("autoencoder_step")
    if lat.step is not None and recorded is not None and lat.step != recorded:
        raise ValueError(
            f"config.autoencoder.step = {lat.step} but {workdir!r} was trained against "
            f"autoencoder checkpoint {recorded} (its {LATENT_INFO_FILE})"
        )
    step = lat.step if lat.step is not None else recorded
    if step is None:
        manager = checkpoint.open_read_only(str(paths.workdir_path(lat.workdir) / CHECKPOINT_DIR))
        try:
            steps = sorted(manager.all_steps())
        finally:
            manager.close()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in the autoencoder run {lat.workdir!r}")
        step = steps[-1]
    return dataclasses.replace(spec, latent=dataclasses.replace(lat, step=int(step)))


def text_spec_from_config(section, data_name: str) -> TextSpec | None:
    """The caption conditioning of config.text (None when captions is None)."""
    from diffjax.data.captions import LAYOUTS, NAMES, PAIR_TEMPLATES, pair_caption
    from diffjax.data.text import WordTokenizer
    from diffjax.models.text import TextEncoder

    fields = _fields(section)
    known = {"captions", "layout", "width", "depth", "num_heads", "context_length"}
    known |= {"caption_dropout"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config.text; known: {sorted(known)}")
    captions = fields.get("captions")
    if captions is None:
        return None
    if captions not in CAPTION_SOURCES:
        raise _bad("text.captions", captions, f"None or one of {CAPTION_SOURCES}")
    layout = fields.get("layout", "wide")
    if layout not in LAYOUTS:
        raise _bad("text.layout", layout, f"one of {LAYOUTS}")
    if data_name not in CAPTION_NAMES_BY_SOURCE:
        raise ValueError(
            f"config.text.captions = 'pairs' composes items of a labelled digit/garment source; "
            f"config.data.name = {data_name!r} is not one of {sorted(CAPTION_NAMES_BY_SOURCE)}"
        )
    dropout = float(fields.get("caption_dropout", 0.1))
    if not 0.0 <= dropout < 1.0:
        raise _bad("text.caption_dropout", dropout, "a probability in [0, 1)")
    names = NAMES[CAPTION_NAMES_BY_SOURCE[data_name]]
    every = [pair_caption(t, a, b) for t in PAIR_TEMPLATES for a in names for b in names]
    tokenizer = WordTokenizer.from_captions(every, fields.get("context_length"))
    tokenizer(every)  # a context_length shorter than a caption: ValueError naming both
    width, heads = int(fields.get("width", 64)), int(fields.get("num_heads", 4))
    encoder = TextEncoder(
        tokenizer.vocab_size, tokenizer.context_length, width, int(fields.get("depth", 2)), heads
    )
    return TextSpec(captions, layout, names, tokenizer, encoder, dropout)


def denoiser_example(pixels, latent: LatentSpec | None, text: TextSpec | None):
    """The example the denoiser sees: the data's images, composed (text) and encoded (latent).

    Raises:
      ValueError: the autoencoder's channels or factor do not fit these images.
    """
    from diffjax.train.spec import ExampleSpec

    shape = tuple(pixels.shape)
    if text is not None:
        h, w, c = shape
        shape = (h, 2 * w, c) if text.layout == "wide" else shape
    if latent is None:
        return ExampleSpec(shape=shape, key=pixels.key)
    f, (h, w, c) = latent.module.factor, shape
    if len(shape) != 3 or c != latent.image_shape[-1] or h % f or w % f:
        raise ValueError(
            f"the autoencoder in {latent.workdir!r} encodes images with {latent.image_shape[-1]} "
            f"channel(s) and sides divisible by f={f} (trained on {latent.image_shape}); this "
            f"run's images are {shape}"
        )
    return ExampleSpec(shape=(h // f, w // f, latent.module.z_channels), key=pixels.key)


def model_options(options: dict, example, text: TextSpec | None, cond) -> dict:
    """The denoiser's options with `context_dim` = the text encoder's width (text runs), and
    checks that its input channels fit the (latent) example."""
    options = dict(options)
    if text is not None and cond.class_conditional:
        raise ValueError(
            "config.text.captions and config.cond.class_conditional are both set: a run is "
            "conditioned on captions or on class labels, not both"
        )
    if (
        len(example.shape) == 3
        and options.get("in_channels", example.shape[-1]) != example.shape[-1]
    ):
        raise ValueError(
            f"config.model.kwargs.in_channels = {options['in_channels']} but the denoiser's "
            f"inputs have {example.shape[-1]} channels (example {example.shape}); unset it"
        )
    if text is not None:
        width = text.encoder.width
        if options.setdefault("context_dim", width) != width:
            raise ValueError(
                f"config.model.kwargs.context_dim = {options['context_dim']} but the text "
                f"encoder's width is {width} (config.text.width); they must agree"
            )
    return options


def wrap_text(model, text: TextSpec | None):
    """`TextConditioned(model, encoder, null tokens)` for a text run, else `model`."""
    from diffjax.models.text import TextConditioned

    if text is None:
        return model
    null = tuple(int(i) for i in text.tokenizer.encode(""))
    return TextConditioned(model, text.encoder, null)


# ----------------------------------------------------------------------------------------------
# Building the run's components (called by diffjax.train.builders.build_components).

AE_KEY = "autoencoder"  # its params in Components.frozen (taken out again by `prepare`)
GRID_TEMPLATE = 0  # "{a_left} to the left of {a_right}": the grid's caption template


def grid_captions(num: int, text: TextSpec) -> list[str]:
    """Captions of the training-loop grid: row r names item r on the left, column j item j on
    the right (8 columns), e.g. "a zero to the left of a three"."""
    from diffjax.data.captions import PAIR_TEMPLATES, pair_caption

    n, template = len(text.names), PAIR_TEMPLATES[GRID_TEMPLATE]
    return [pair_caption(template, text.names[(i // 8) % n], text.names[i % n]) for i in range(num)]


def _examples(spec):
    """(fetch(indices) -> numpy batch, number of examples, example shape) of the in-memory
    source, as captioned compositions for a text run."""
    from diffjax.data import load_arrays
    from diffjax.data.captions import PairCaptions
    from diffjax.data.pipeline import scale_to_unit

    if spec.data.random_flip:
        raise ValueError(
            "config.data.random_flip is not supported with captions or a latent cache (a flip "
            "swaps left and right); set it False"
        )
    try:
        images, labels, max_value = load_arrays(spec.data)
    except ValueError as err:
        raise ValueError(f"captions and latent caching read an in-memory source: {err}") from err
    if images.ndim == 3:
        images = images[..., None]
    if spec.text is None:
        fetch = lambda idx: {"image": scale_to_unit(images[idx], max_value), "label": labels[idx]}
        return fetch, len(images)
    pairs = PairCaptions(images, labels, spec.text.names, spec.seed, spec.text.layout)
    tokenizer = spec.text.tokenizer

    def fetch(idx):
        b = pairs.batch(idx)
        return {"image": scale_to_unit(b["image"], max_value), "tokens": tokenizer(b["caption"]),
                "pair_labels": np.asarray(b["labels"], np.int32)}  # fmt: skip

    return fetch, len(pairs)


def _cache_moments(spec, ae_params, fetch, num: int, chunk: int = 256):
    """fetch over every example with the images replaced by their posterior moments
    [N, h, w, 2c] (mean, logvar), encoded once; the other fields fetched as they are."""
    module = spec.latent.module
    encode = jax.jit(
        lambda p, x: jnp.concatenate(module.apply({"params": p}, x, method="encode"), axis=-1)
    )
    parts = [fetch(np.arange(i, min(i + chunk, num))) for i in range(0, num, chunk)]
    moments = np.concatenate([np.asarray(encode(ae_params, b.pop("image"))) for b in parts])
    rest = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    return lambda idx: {"moments": moments[idx], **{k: v[idx] for k, v in rest.items()}}


def _index_batches(spec, fetch, num: int, start: int):
    from diffjax.data.pipeline import Batches, host_batch_size, index_batches

    count, index = jax.process_count(), jax.process_index()
    per_host = host_batch_size(spec.batch_size, count)
    d = spec.data
    indices = index_batches(
        num, per_host, seed=d.seed, shuffle=d.shuffle, repeat=d.repeat,
        drop_remainder=d.drop_remainder, process_index=index, process_count=count,
    )  # fmt: skip
    return Batches(
        lambda step: fetch(np.asarray(indices[step], np.int64)),
        num_batches=None if d.repeat else len(indices),
        start_step=start,
        prefetch=d.prefetch,
        info={"key": "image", "num_examples": num, "per_host_batch": per_host},
    )


def make_prepare(spec, data_key: str = "image"):
    """prepare(frozen, key, batch) -> (batch, frozen, cond) for `Components.prepare`: x0 =
    scale_factor * z, z ~ q(z | x) from the frozen autoencoder (or from cached moments), and
    the caption tokens, each replaced by the null caption with probability caption_dropout
    (Ho & Salimans 2021), as the cond."""
    from diffjax.models.autoencoder import DiagonalGaussian

    latent, text = spec.latent, spec.text
    null = None if text is None else np.asarray(text.tokenizer.encode(""), np.int32)

    def prepare(frozen, key, batch):
        z_key, drop_key = jax.random.split(key)
        batch, cond = dict(batch), None
        if latent is not None:
            frozen = dict(frozen)
            ae = frozen.pop(AE_KEY)
            if "moments" in batch:
                posterior = DiagonalGaussian.from_moments(jnp.asarray(batch.pop("moments")))
            else:
                posterior = latent.module.apply({"params": ae}, batch[data_key], method="encode")
            z = latent.scale_factor * posterior.sample(z_key)
            batch[data_key] = jax.lax.stop_gradient(z)
        if text is not None:
            tokens = jnp.asarray(batch.pop("tokens"), jnp.int32)  # [B, L]
            if text.caption_dropout > 0:
                drop = jax.random.bernoulli(drop_key, text.caption_dropout, tokens.shape[:1])
                tokens = jnp.where(drop[:, None], jnp.asarray(null)[None], tokens)
            cond = tokens
        return batch, frozen, cond

    return prepare


def attach(spec, c, reference_size: int = 1024):
    """Complete `c` (from build_model_components) for a latent and/or caption run: the frozen
    autoencoder, `prepare`, the batch stream and a grid sampler that decodes."""
    from diffjax.train.autoencoder import load_autoencoder
    from diffjax.train.builders import build_batches

    ae_params = None
    if spec.latent is not None:
        _, ae_params, _ = load_autoencoder(spec.latent.workdir, step=spec.latent.step)
        c.frozen[AE_KEY] = ae_params
    if spec.text is not None or (spec.latent is not None and spec.latent.cache):
        fetch, num = _examples(spec)
        if spec.latent is not None and spec.latent.cache:
            fetch = _cache_moments(spec, ae_params, fetch, num)
        c.batches = lambda start: _index_batches(spec, fetch, num, start)
    else:
        c.batches = lambda start: build_batches(spec, start)
    c.prepare = make_prepare(spec, c.data_key)
    c.make_sampler = make_grid_sampler(spec, ae_params)
    c.reference = None  # decoded images are not data-space references for point plots
    del reference_size
    return c


# ----------------------------------------------------------------------------------------------
# Sampling decoded images.


def make_decode(latent: LatentSpec):
    """A jitted (autoencoder params, scaled latents) -> images: decode(z' / scale_factor)."""
    module, scale = latent.module, latent.scale_factor
    return jax.jit(lambda p, z: module.apply({"params": p}, z / scale, method="decode"))


def _text_sampler(c, sample_spec, prediction: str, tokens, null):
    """(params, key) -> samples of the model with the caption tokens bound (CFG against the
    null caption when guidance_scale != 1)."""
    from diffjax import guidance
    from diffjax.samplers import sample
    from diffjax.train.sampling import _apply_eval

    shape, scale = (len(tokens), *c.example_shape), sample_spec.guidance_scale
    uncond = jnp.broadcast_to(null, tokens.shape)

    def run(params, key):
        model = jax.tree_util.Partial(_apply_eval, c.apply, params, y=tokens)
        if scale != 1.0:
            model = guidance.cfg(jax.tree_util.Partial(_apply_eval, c.apply, params), tokens,
                                 uncond, scale)  # fmt: skip
        return sample(key, model, c.process, shape, solver=sample_spec.solver,
                      steps=sample_spec.steps or None, prediction=prediction,
                      **sample_spec.kwargs)  # fmt: skip

    return run


def make_grid_sampler(spec, ae_params, tokens=None):
    """A `Components.make_sampler`: the run's sampler, its latents decoded by the frozen
    autoencoder (decode(z' / spec.latent.scale_factor)), so it returns images [num, H, W, C].

    A text run samples the caption tokens `tokens` [num, L] (default: the captions of
    `grid_captions`), with CFG against the null caption at the sample spec's guidance scale.

    Raises:
      ValueError: `tokens` for a run without text, or not [num, L].
    """
    from diffjax.train.sampling import make_sampler

    if tokens is not None and spec.text is None:
        raise ValueError("caption tokens need a text run (config.text.captions); this has none")

    def factory(c, sample_spec, cond, prediction, num, labels=None):
        if spec.text is None:
            base = make_sampler(c, sample_spec, cond, prediction, num, labels)
        else:
            if tokens is None:
                toks = jnp.asarray(spec.text.tokenizer(grid_captions(num, spec.text)))
            else:
                toks = jnp.asarray(tokens, jnp.int32)
            if toks.ndim != 2 or toks.shape[0] != num:
                raise ValueError(f"caption tokens must be [num={num}, L]; got {toks.shape}")
            null = jnp.asarray(spec.text.tokenizer.encode(""))
            base = _text_sampler(c, sample_spec, prediction, toks, null)
        if spec.latent is None:
            return base
        decode = make_decode(spec.latent)
        return lambda params, key: decode(ae_params, base(params, key))

    return factory


def evaluation_examples(spec, num: int, seed: int = 0):
    """(images float32 [num, H, W, C] in [-1, 1], caption tokens int32 [num, L] or None): the
    real examples a text run's samples are compared with, i.e. `num` compositions of the
    caption source (`diffjax.data.captions.PairCaptions`, the training set's pairs) drawn
    uniformly without replacement (with replacement when num exceeds them), and their captions'
    tokens, which the samples are then conditioned on. For a run without text: the first
    `num` examples of the data stream (`diffjax.train.evaluate.data_examples`) and None."""
    if spec.text is None:
        from diffjax.train.evaluate import data_examples

        return data_examples(spec, num), None
    fetch, total = _examples(spec)
    rng = np.random.default_rng(seed)
    idx = rng.choice(total, size=num, replace=num > total)
    batch = fetch(np.asarray(idx, np.int64))
    return np.asarray(batch["image"], np.float32), np.asarray(batch["tokens"], np.int32)


def write_latent_info(workdir: str, spec) -> None:
    """latent_info.json: the autoencoder, the scale factor used and the tokenizer of a run."""
    from diffjax.train import paths

    info: dict[str, Any] = {"latent": None, "text": None}
    if spec.latent is not None:
        lat = spec.latent
        info["latent"] = {
            "autoencoder_workdir": paths.absolute(lat.workdir),
            "autoencoder_step": lat.step,
            "scale_factor": lat.scale_factor,
            "cache": lat.cache,
            "image_shape": list(lat.image_shape),
            "latent_shape": list(spec.example.shape),
        }
    if spec.text is not None:
        tok = spec.text.tokenizer
        info["text"] = {
            "captions": spec.text.captions,
            "layout": spec.text.layout,
            "words": list(tok.words),
            "context_length": tok.context_length,
            "add_bos_eos": tok.add_bos_eos,
            "null_tokens": [int(i) for i in tok.encode("")],
            "grid_captions": grid_captions(spec.sample.num, spec.text),
        }
    from diffjax.train.workdir import write_workdir_json

    write_workdir_json(workdir, LATENT_INFO_FILE, info)  # atomic, primary process only


# ----------------------------------------------------------------------------------------------
# Reading a trained run back (read-only; see the module docstring).


@dataclasses.dataclass(frozen=True, eq=False)
class LatentRun:
    """A trained latent and/or caption run, read-only (`load_latent_run`)."""

    spec: Any  # the denoiser's TrainSpec
    components: Any  # its model Components (apply, process, example_shape = latent shape)
    step: int
    ema_params: Any  # {"denoiser", "encoder"} for a text run
    scale_factor: float  # 1.0 without an autoencoder
    image_shape: tuple[int, ...]
    autoencoder_params: Any = None  # None: a pixel-space (text-only) run
    # jitted (params, images, key) -> z (mode for key None) and (params, z) -> images
    encode_fn: Any = None
    decode_fn: Any = None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.example.shape)

    @property
    def process(self):
        return self.spec.process

    @property
    def prediction(self) -> str:
        return self.spec.prediction

    @property
    def value_range(self) -> tuple[float, float]:
        return tuple(self.components.value_range)

    @property
    def text(self):
        """The TextSpec (captions, layout, names, tokenizer, encoder), or None."""
        return self.spec.text

    @property
    def layout(self) -> str | None:
        return None if self.spec.text is None else self.spec.text.layout

    @property
    def names(self) -> tuple[str, ...] | None:
        return None if self.spec.text is None else self.spec.text.names

    @property
    def tokenizer(self):
        return None if self.spec.text is None else self.spec.text.tokenizer

    @property
    def grid_captions(self) -> list[str]:
        return [] if self.spec.text is None else grid_captions(self.spec.sample.num, self.spec.text)

    def encode(self, images, key: jax.Array | None = None) -> jax.Array:
        """Images [B, H, W, C] in [-1, 1] -> scaled latents [B, h, w, c]: scale_factor times the
        posterior mode (key None) or a posterior sample. Identity for a pixel-space run."""
        images = jnp.asarray(images, jnp.float32)
        if np.shape(images)[1:] != tuple(self.image_shape):
            raise ValueError(
                f"images must be [B, {', '.join(map(str, self.image_shape))}]; got "
                f"{np.shape(images)}"
            )
        if self.autoencoder_params is None:
            return images
        mode = key is None
        return self.scale_factor * self.encode_fn(self.autoencoder_params, images, key, mode)

    def decode(self, latents) -> jax.Array:
        """Scaled latents [B, h, w, c] -> images [B, H, W, C] (not clipped)."""
        latents = jnp.asarray(latents, jnp.float32)
        if np.shape(latents)[1:] != self.latent_shape:
            raise ValueError(
                f"latents must be [B, {', '.join(map(str, self.latent_shape))}]; got "
                f"{np.shape(latents)}"
            )
        if self.autoencoder_params is None:
            return latents
        return self.decode_fn(self.autoencoder_params, latents / self.scale_factor)

    def sampler(self, sample_spec, num: int, labels=None, tokens=None):
        """(params, key) -> decoded images [num, *image_shape] of `sample_spec`'s solver:
        latents drawn by `diffjax.train.sampling.make_sampler` (labels [num] of a
        class-conditional run; default the grid's), or, in a text run, for the caption tokens
        [num, L] (default: the captions of `grid_captions`, as in the training-loop grid), then
        decoded by the pinned autoencoder with the run's scale factor. Every process samples
        (the batch is split over the devices as in `make_sampler`)."""
        factory = make_grid_sampler(self.spec, self.autoencoder_params, tokens)
        return factory(self.components, sample_spec, self.spec.cond, self.prediction, num, labels)

    def tokenize(self, prompts) -> np.ndarray:
        """Prompts -> int32 [B, L] (unknown words -> <unk>; too many tokens: ValueError)."""
        if self.tokenizer is None:
            raise ValueError("this run has no text conditioning (config.text.captions is None)")
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.tokenizer(list(prompts))

    def null_cond(self, n: int):
        """The unconditional cond for `n` examples (see the module docstring)."""
        if self.spec.text is not None:
            return jnp.asarray(self.spec.model.null(n))
        if self.spec.cond.class_conditional:
            return jnp.full((n,), self.spec.cond.num_classes, jnp.int32)
        return None

    def model(self, params=None, *, context_scale: float = 1.0):
        """model(x_t, t, cond=None), a `diffjax.models.bind` pytree over `params` (default the
        EMA params); context_scale scales the text encoder's output (0: zeroed)."""
        from diffjax.models import bind

        module = self.spec.model
        if context_scale != 1.0:
            if self.spec.text is None:
                raise ValueError("context_scale needs a text run (config.text.captions set)")
            module = module.clone(context_scale=float(context_scale))
        return bind(module, {"params": self.ema_params if params is None else params})


def _autoencoder_fns(module):
    """Jitted encode (params, images, key, mode) -> z and decode (params, z) -> images; the
    params are traced arguments, `mode` static."""

    def encode(params, images, key, mode):
        posterior = module.apply({"params": params}, images, method="encode")
        return posterior.mode() if mode else posterior.sample(key)

    decode = lambda params, z: module.apply({"params": params}, z, method="decode")
    return jax.jit(encode, static_argnums=3), jax.jit(decode)


def read_latent_info(workdir: str) -> dict:
    """latent_info.json of a latent / caption run."""
    from diffjax.train import paths

    path = paths.workdir_path(workdir) / LATENT_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {workdir!r} is not a latent diffusion or caption run"
        )
    return json.loads(path.read_text())


def is_latent_workdir(workdir: str) -> bool:
    """Whether `workdir` is a latent and/or caption run (it holds LATENT_INFO_FILE): its
    samples are drawn with `load_latent_run` (decoded, captioned), not `load_trained` alone."""
    from diffjax.train import paths

    return (paths.workdir_path(workdir) / LATENT_INFO_FILE).is_file()


def load_latent_run(workdir: str, mesh=None) -> LatentRun:
    """The trained run in `workdir` with its frozen autoencoder and tokenizer (read-only).

    The scale factor is the one the run trained with (its latent_info.json), even if the
    autoencoder's own latent_scale.json changed since.

    Raises:
      FileNotFoundError: `workdir` (or its autoencoder's) holds no run files or checkpoint.
      ValueError: `workdir` is neither a latent nor a caption run, or its tokenizer or latent
        shape disagree with the stored ones.
    """
    from diffjax.train.autoencoder import load_autoencoder
    from diffjax.train.workdir import load_trained

    info = read_latent_info(workdir)
    spec, c, trained = load_trained(workdir, mesh)
    if spec.text is not None and info["text"] is not None:
        if list(spec.text.tokenizer.words) != info["text"]["words"]:
            raise ValueError(f"the tokenizer of {workdir!r} differs from its latent_info.json")
    ae_params, scale, image_shape = None, 1.0, tuple(spec.example.shape)
    encode_fn = decode_fn = None
    if spec.latent is not None:
        stored = info["latent"]
        if stored is None or tuple(stored["latent_shape"]) != tuple(spec.example.shape):
            raise ValueError(f"latent_info.json of {workdir!r} does not match its config")
        # the checkpoint the run trained against (runs from before the step was recorded: the
        # newest)
        _, ae_params, _ = load_autoencoder(
            spec.latent.workdir, mesh, stored.get("autoencoder_step")
        )
        scale = float(stored["scale_factor"])
        # the spec as trained: the pinned checkpoint and the scale factor the run used (a later
        # latent_scale.json of the autoencoder run changes neither)
        spec = dataclasses.replace(spec, latent=dataclasses.replace(
            spec.latent, scale_factor=scale, step=stored.get("autoencoder_step")))  # fmt: skip
        f = spec.latent.module.factor
        h, w, _ = spec.example.shape
        image_shape = (h * f, w * f, spec.latent.image_shape[-1])
        encode_fn, decode_fn = _autoencoder_fns(spec.latent.module)
    return LatentRun(
        spec, c, trained.step, trained.ema_params, scale, image_shape, ae_params, encode_fn,
        decode_fn,
    )  # fmt: skip


def load_for_sampling(workdir: str, mesh=None):
    """(spec, components, Trained, run) of any trained diffusion workdir, read-only: `run` is
    the `LatentRun` of a latent and/or caption run (sample with `run.sampler`, which decodes
    and captions; spec, components and Trained are then the run's own), else None (sample
    with `diffjax.train.sampling.make_sampler`; `workdir.load_trained`)."""
    from diffjax.train.workdir import Trained, load_trained

    if is_latent_workdir(workdir):
        run = load_latent_run(workdir, mesh)
        return run.spec, run.components, Trained(ema_params=run.ema_params, step=run.step), run
    return (*load_trained(workdir, mesh), None)
