"""The one entry point of the data layer: `make_iterator(DataConfig(...))`, sources by name.

Sources (explicit dict `SOURCES`):
  'digits'             scikit-learn's bundled 8x8 digits, the built-in default (no files needed)
  'mnist_idx'          MNIST IDX files in `data_dir`
  'fashion_mnist_idx'  Fashion-MNIST IDX files in `data_dir`
  'image_folder'       `data_dir/<split>/<class>/*.png|jpg` (or a .tar.gz of that)
  'tfds:<name>'        a TFDS dataset prepared as ArrayRecord in `data_dir` (or 'tfds' with
                       `tfds_name`); never downloads
  'toy_<preset>'       endless draws from `diffjax.toy.PRESETS[preset]`, e.g. 'toy_ring'
  'pairs'              a reflow pair set (`NpzChunkWriter` chunks) in `data_dir`: batches
                       {'image' or 'x': x0, 'noise': its paired z}, no labels
Image sources yield {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]}, toy sources
{'x': float32 [b, D], 'label': int32 [b]}, as numpy arrays; b = batch_size // process_count:
host p yields rows [p b, (p + 1) b) of the global batch one process would draw at that step, so
the global batch depends on (seed, step) only, for every source (the tf.data reader included).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from diffjax import parallel, toy
from diffjax.data import digits, folder, idx, imageops
from diffjax.data.pipeline import Batches, batches_from_arrays
from diffjax.data.toy_source import toy_batches


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Plain arguments of `make_iterator` (the train layer converts its ConfigDict to this).

    Attributes:
      name: a key of SOURCES, or 'tfds:<tfds name>'.
      batch_size: the GLOBAL batch; each host yields batch_size // process_count examples.
      seed: seeds the shuffle (a new permutation each epoch), the flips and toy draws.
      split: e.g. 'train' or 'test'.
      data_dir: folder of the files (IDX, image folder, TFDS data_dir); None for 'digits', toy,
        and TFDS's default (~/tensorflow_datasets).
      image_size: resize images to image_size x image_size (bilinear); None keeps the native
        size (8 for digits, 28 for MNIST).
      random_flip: flip each image left-right with probability 1/2 (not for digits or MNIST,
        where a flip changes the character).
      shuffle, repeat, drop_remainder: training defaults (shuffled, endless, full batches);
        for one evaluation pass in order use shuffle=False, repeat=False.
      with_labels: include 'label' in each batch.
      tfds_name, image_key, label_key: for TFDS sources.
      tfds_reader: 'array_record' (random access through grain, no TensorFlow) or 'tf_data'
        (datasets prepared as TFRecord, through `diffjax.data.tfdata`; needs tensorflow-cpu,
        the `tf` extra; reads in order, so a resume re-reads the skipped batches).
      toy_kwargs: keyword arguments of the toy preset, e.g. {'k': 8, 'radius': 2.0}.
      prefetch: batches prepared ahead on a background thread (0: none).
    """

    name: str = "digits"
    batch_size: int = 128
    seed: int = 0
    split: str = "train"
    data_dir: str | None = None
    image_size: int | None = None
    random_flip: bool = False
    shuffle: bool = True
    repeat: bool = True
    drop_remainder: bool = True
    with_labels: bool = True
    tfds_name: str | None = None
    tfds_reader: str = "array_record"
    image_key: str = "image"
    label_key: str = "label"
    toy_kwargs: dict | None = None
    prefetch: int = 0


def _need_dir(config: DataConfig) -> str:
    if config.data_dir is None:
        raise ValueError(f"data source {config.name!r} needs data_dir (a local folder); got None")
    return str(config.data_dir)


def _digits_arrays(config: DataConfig):
    images, labels = digits.load_digits_arrays(config.split, config.image_size)
    return images, labels, digits.DIGITS_MAX_VALUE, {"num_classes": 10}


def _idx_arrays(dataset: str, config: DataConfig):
    images, labels = idx.load_idx(_need_dir(config), config.split, dataset)
    return imageops.resize_images(images, config.image_size), labels, 255.0, {"num_classes": 10}


def _folder_arrays(config: DataConfig):
    images, labels, classes = folder.load_image_folder(
        _need_dir(config), config.split, config.image_size
    )
    return images, labels, 255.0, {"num_classes": len(classes), "classes": classes}


# name -> config -> (images [N, H, W, C], labels [N], max_value, extra info): in-memory sources.
ARRAY_LOADERS: dict[str, Callable] = {
    "digits": _digits_arrays,
    "mnist_idx": functools.partial(_idx_arrays, "mnist"),
    "fashion_mnist_idx": functools.partial(_idx_arrays, "fashion_mnist"),
    "image_folder": _folder_arrays,
}


def load_arrays(config: DataConfig) -> tuple[np.ndarray, np.ndarray, float]:
    """All images [N, H, W, C] (scale 0..max_value), labels int32 [N] and max_value of an
    in-memory source, e.g. for reference statistics of a sample-quality metric."""
    if config.name not in ARRAY_LOADERS:
        raise ValueError(
            f"load_arrays supports the in-memory sources {tuple(ARRAY_LOADERS)}; "
            f"got {config.name!r}"
        )
    images, labels, max_value, _ = ARRAY_LOADERS[config.name](config)
    return images, labels, max_value


def _pipeline_options(config: DataConfig, host: tuple[int, int], start_step: int) -> dict:
    return dict(
        batch_size=config.batch_size,
        seed=config.seed,
        shuffle=config.shuffle,
        repeat=config.repeat,
        drop_remainder=config.drop_remainder,
        random_flip=config.random_flip,
        with_labels=config.with_labels,
        process_index=host[0],
        process_count=host[1],
        start_step=start_step,
        prefetch=config.prefetch,
    )


def _array_source(name: str, config: DataConfig, host, start_step: int) -> Batches:
    images, labels, max_value, info = ARRAY_LOADERS[name](config)
    options = _pipeline_options(config, host, start_step)
    return batches_from_arrays(images, labels, max_value=max_value, info=info, **options)


TFDS_READERS = ("array_record", "tf_data")


def _tfds_source(config: DataConfig, host, start_step: int) -> Batches:
    from diffjax.data.tfds_source import tfds_batches  # imports tensorflow_datasets lazily

    if not config.tfds_name:
        raise ValueError("data source 'tfds' needs tfds_name (or use name='tfds:<name>')")
    if config.tfds_reader not in TFDS_READERS:
        raise ValueError(
            f"unknown tfds_reader {config.tfds_reader!r}; expected one of {TFDS_READERS}"
        )
    read = tfds_batches
    if config.tfds_reader == "tf_data":
        from diffjax.data.tfdata import tfdata_batches as read  # needs TensorFlow
    return read(
        config.tfds_name,
        split=config.split,
        data_dir=config.data_dir,
        image_key=config.image_key,
        label_key=config.label_key,
        image_size=config.image_size,
        **_pipeline_options(config, host, start_step),
    )


def _toy_source(preset: str, config: DataConfig, host, start_step: int) -> Batches:
    if not config.repeat:
        raise ValueError(
            f"toy source {config.name!r} is an endless stream of fresh draws; repeat=False is not "
            "supported (take a fixed number of batches with itertools.islice)"
        )
    return toy_batches(
        preset,
        batch_size=config.batch_size,
        seed=config.seed,
        preset_kwargs=config.toy_kwargs,
        with_labels=config.with_labels,
        process_index=host[0],
        process_count=host[1],
        start_step=start_step,
    )


def _pairs_source(config: DataConfig, host, start_step: int) -> Batches:
    from diffjax.data.pairs_source import pairs_batches

    options = _pipeline_options(config, host, start_step)
    for name in ("random_flip", "with_labels"):  # pairs carry no labels; a flip breaks a pair
        options.pop(name)
    return pairs_batches(_need_dir(config), **options)


SOURCES: dict[str, Callable[..., Batches]] = {
    **{name: functools.partial(_array_source, name) for name in ARRAY_LOADERS},
    "pairs": _pairs_source,
    "tfds": _tfds_source,
    **{f"toy_{preset}": functools.partial(_toy_source, preset) for preset in toy.PRESETS},
}


def resolve_name(config: DataConfig) -> DataConfig:
    """'tfds:<name>' -> name 'tfds' with tfds_name=<name>; other names are checked."""
    if config.name.startswith("tfds:"):
        return dataclasses.replace(config, name="tfds", tfds_name=config.name[len("tfds:") :])
    if config.name not in SOURCES:
        raise ValueError(
            f"unknown data source {config.name!r}; expected one of {tuple(SOURCES)} "
            "or 'tfds:<name>'"
        )
    return config


def make_iterator(
    config: DataConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
) -> Batches:
    """An iterator of batch dicts for `config` (see the module docstring for the sources).

    Args:
      config: what to read and how to batch it.
      process_index, process_count: this host and the number of hosts; default
        `diffjax.parallel.process_index()` and `process_count()` (no mesh needed).
      start_step: the first step to yield; the batches are a function of (seed, step, host),
        so restarting at the step count of a checkpoint resumes the data stream exactly.

    Returns:
      A `Batches` iterator; `.step` is the next step, `.info` has 'shape' (per example),
      'num_classes' and 'per_host_batch'.
    """
    config = resolve_name(config)
    host = (
        parallel.process_index() if process_index is None else process_index,
        parallel.process_count() if process_count is None else process_count,
    )
    return SOURCES[config.name](config, host, start_step)
