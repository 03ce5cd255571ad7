"""Optional tf.data path for TFDS datasets prepared as TFRecord (needs TensorFlow installed).

Use it when a dataset exists only in TFDS's default TFRecord format (which has no random access).
Host sharding uses TFDS's `input_context` (files are split between hosts, so a dataset needs at
least `process_count` files), shuffling uses `shuffle_files` with a seeded `ReadConfig` and a
seeded `shuffle` buffer. Flip, scaling and labels are the shared numpy code of `pipeline`.
Resume by skipping `start_step` batches: exact only where the tf.data graph is deterministic
(the default), and it re-reads the skipped data. Prefer ArrayRecord + `tfds_source`.
"""

from __future__ import annotations

import itertools
import os

from diffjax.data.pipeline import Batches, host_batch_size, make_finish
from diffjax.data.tfds_source import default_data_dir


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir} "
            f"(expected {builder.data_dir}); diffjax never downloads"
        )
    return builder


def _info(name, data_dir, image_key, label_key, with_labels, per_host) -> dict:
    """The facts `Batches.info` carries for the other sources: example shape, classes."""
    features = _builder(name, data_dir).info.features
    num_classes = getattr(features[label_key], "num_classes", None) if with_labels else None
    shape = tuple(features[image_key].shape)
    return {"shape": shape, "key": "image", "num_classes": num_classes, "per_host_batch": per_host}


def _dataset(name, split, data_dir, per_host, seed, shuffle, repeat, drop_remainder, host):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    context = tf.distribute.InputContext(num_input_pipelines=host[1], input_pipeline_id=host[0])
    read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=context)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle, read_config=read_config)
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(16 * per_host, seed=seed)
    return ds.batch(per_host, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def tfdata_batches(
    name: str,
    *,
    batch_size: int,
    split: str = "train",
    data_dir: str | None = None,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    random_flip: bool = False,
    with_labels: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    image_size: int | None = None,
    prefetch: int = 0,
) -> Batches:
    """Batches {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} through tf.data.

    Reached from `make_iterator` with `DataConfig(name='tfds:<name>', tfds_reader='tf_data')`.
    `prefetch` is accepted for the common signature (tf.data prefetches by itself).
    """
    del prefetch
    if not tensorflow_available():
        raise ImportError(
            "the tf.data path needs TensorFlow: pip install 'diffjax[tf]' (tensorflow-cpu)"
        )
    if image_size is not None:
        raise ValueError(f"the tf.data path does not resize; got image_size={image_size}")
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"TFDS data_dir does not exist: {data_dir}")
    per_host = host_batch_size(batch_size, process_count)
    host = (process_index, process_count)
    ds = _dataset(name, split, data_dir, per_host, seed, shuffle, repeat, drop_remainder, host)
    stream = iter(itertools.islice(tfds.as_numpy(ds), start_step, None))
    finish = make_finish(
        seed=seed,
        process_index=process_index,
        flip=random_flip,
        max_value=255.0,
        with_labels=with_labels,
    )
    expected = [start_step]

    def batch_at(step: int):
        if step != expected[0]:
            raise ValueError(
                f"the tf.data path reads in order: asked step {step}, at {expected[0]}"
            )
        expected[0] += 1
        raw = next(stream)
        return finish(step, {"image": raw[image_key], "label": raw.get(label_key)})

    info = _info(name, data_dir, image_key, label_key, with_labels, per_host)
    return Batches(batch_at, num_batches=None, start_step=start_step, info=info)
