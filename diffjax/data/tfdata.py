"""Optional tf.data path for TFDS datasets prepared as TFRecord (needs TensorFlow installed).

Use it when a dataset exists only in TFDS's default TFRecord format (which has no random access).
Topology-independent like the other sources: every host builds the same seeded stream of the
whole dataset (`shuffle_files` with a seeded `ReadConfig`, a seeded `shuffle` buffer of 16 global
batches), batches it by the GLOBAL batch B, and host p of P keeps rows [p B/P, (p + 1) B/P) of
each, so the global batch at step s depends on (seed, s) only and is the one a 1-process run
draws; a run may resume on another number of hosts. Images are decoded after the host's rows
are cut (`SkipDecoding`), so a host decodes only its own rows, though every host reads every
record. Flip, scaling and labels are the shared numpy code of `pipeline`. Resume by skipping
`start_step` global batches (undecoded): exact where the tf.data graph is deterministic (the
default), and it re-reads the skipped records. Prefer ArrayRecord + `tfds_source`.
"""

from __future__ import annotations

import os

from diffjax.data.pipeline import Batches, check_host, host_batch_size, make_finish
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
    """The facts `Batches.info` carries for the other sources: example shape, classes, the
    images' stored scale (uint8: 0..255)."""
    features = _builder(name, data_dir).info.features
    num_classes = getattr(features[label_key], "num_classes", None) if with_labels else None
    shape = tuple(features[image_key].shape)
    return {"shape": shape, "key": "image", "num_classes": num_classes, "per_host_batch": per_host,
            "max_value": 255.0}  # fmt: skip


def _host_rows(batch, host: tuple[int, int]):
    """Host p of P's rows [p m, (p + 1) m), m = b // P, of every feature of a global batch of b
    (`pipeline.host_slice` in tf.data)."""
    import tensorflow as tf

    index, count = host
    size = tf.shape(tf.nest.flatten(batch)[0])[0] // count
    return tf.nest.map_structure(lambda v: v[index * size : (index + 1) * size], batch)


def _dataset(name, split, data_dir, image_key, seed, options, start_step, host):
    """The tf.data stream of this host's rows of each global batch, from step `start_step`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _builder(name, data_dir)
    batch_size, shuffle = options["batch_size"], options["shuffle"]
    read_config = tfds.ReadConfig(shuffle_seed=seed)  # every host reads every file, one order
    decoders = {image_key: tfds.decode.SkipDecoding()}  # decoded once the host's rows are cut
    ds = builder.as_dataset(
        split=split, shuffle_files=shuffle, read_config=read_config, decoders=decoders
    )
    if options["repeat"]:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(16 * batch_size, seed=seed)
    ds = ds.batch(batch_size, drop_remainder=options["drop_remainder"]).skip(start_step)
    if host[1] > 1:  # a final batch too short to give every host a row is dropped
        ds = ds.filter(lambda b: tf.shape(b[image_key])[0] >= host[1])
        ds = ds.map(lambda b: _host_rows(b, host))
    feature = builder.info.features[image_key]
    signature = tf.TensorSpec(feature.shape, tf.uint8)

    def decode(batch):
        images = tf.map_fn(feature.decode_example, batch[image_key], fn_output_signature=signature)
        return {**batch, image_key: images}

    return ds.map(decode).prefetch(tf.data.AUTOTUNE)


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
    """Batches {'image': float32 [b, H, W, C] in [-1, 1], 'label': int32 [b]} through tf.data;
    `batch_size` is global, b = its per-host share, host p's rows those of `pipeline`'s sources.

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
    check_host(process_index, process_count)
    host = (process_index, process_count)
    options = dict(
        batch_size=batch_size, shuffle=shuffle, repeat=repeat, drop_remainder=drop_remainder
    )
    ds = _dataset(name, split, data_dir, image_key, seed, options, start_step, host)
    stream = iter(tfds.as_numpy(ds))
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
