"""TFDS image datasets prepared as ArrayRecord, read by random access without TensorFlow.

`tfds.data_source(name, split, data_dir, download=False)` gives a random-access sequence of
decoded records; the shared pipeline (grain index order, host shard, batch, flip, scale) turns
it into batches. Nothing here ever downloads: before TFDS is touched the data directory must
exist and the name must be one TFDS knows (or a folder in `data_dir`); an unprepared dataset
fails at once with FileNotFoundError (a real `download_and_prepare` would retry DNS for
minutes on machines without internet).

Prepare elsewhere with e.g. `tfds build mnist --file_format=array_record --data_dir=DIR`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from diffjax.data import imageops
from diffjax.data.pipeline import Batch, Batches, batches_from_fetch


def default_data_dir() -> str:
    """TFDS's default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def check_tfds_name(name: str, data_dir: str) -> None:
    """ValueError unless TFDS registers `name` (config and version stripped) or data_dir has it."""
    import tensorflow_datasets as tfds

    base = name.split(":")[0].split("/")[0]
    if os.path.isdir(os.path.join(data_dir, base)):
        return
    if base not in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"unknown TFDS dataset {name!r}: not a registered builder and no folder "
            f"{os.path.join(data_dir, base)}"
        )


def _explain_failure(name: str, data_dir: str, err: Exception) -> Exception:
    """Turn TFDS's error for data it cannot read into one that says what to do."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        return FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in data_dir={data_dir} (expected files in "
            f"{builder.data_dir}). diffjax never downloads: run `tfds build {name} "
            f"--file_format=array_record --data_dir={data_dir}` on a machine with internet."
        )
    if "array_record" not in str(builder.info.file_format).lower():
        return ValueError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
            f"{builder.info.file_format}, which has no random access; convert it with "
            "`tfds convert_format --file_format=array_record` or read it through tf.data "
            "with data.tfds_reader='tf_data' (needs tensorflow-cpu: pip install 'diffjax[tf]')"
        )
    return err


def tfds_data_source(name: str, split: str = "train", data_dir: str | None = None) -> Sequence:
    """The random-access data source of a prepared TFDS dataset, after the fail-fast checks.

    Raises:
      FileNotFoundError: `data_dir` does not exist, or the dataset is not prepared in it.
      ValueError: TFDS does not know `name`, or the data is not in a random-access format.
    """
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"TFDS data_dir does not exist: {data_dir}")
    check_tfds_name(name, data_dir)
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # TFDS raises assorted types; re-raise with a clear one
        explained = _explain_failure(name, data_dir, err)
        if explained is err:
            raise
        raise explained from err


def _num_classes(source: Sequence, label_key: str) -> int | None:
    info = getattr(source, "dataset_info", None)
    try:
        return int(info.features[label_key].num_classes)
    except (AttributeError, KeyError, TypeError):
        return None


def make_tfds_fetch(
    source: Sequence, image_key: str, label_key: str | None, image_size: int | None
):
    """fetch(indices) -> {'image': uint8 [b, H, W, C], 'label': [b]} reading records one by one."""

    def fetch(idx: np.ndarray) -> Batch:
        records = [source[int(i)] for i in idx]
        images = [np.asarray(r[image_key]) for r in records]
        if image_size is not None:
            images = [imageops.resize_image(im, image_size) for im in images]
        labels = None if label_key is None else np.array([r[label_key] for r in records])
        return {"image": np.stack(images), "label": labels}

    return fetch


def tfds_batches(
    name: str,
    *,
    split: str = "train",
    data_dir: str | None = None,
    image_key: str = "image",
    label_key: str = "label",
    image_size: int | None = None,
    **options,
) -> Batches:
    """Batches of a TFDS image dataset; `options` are those of `pipeline.batches_from_fetch`.

    Without labels (`with_labels=False`), `label_key` is not read.
    """
    source = tfds_data_source(name, split, data_dir)
    first = source[0]
    if image_key not in first:
        raise ValueError(
            f"TFDS dataset {name!r} has no feature {image_key!r}; it has {list(first)}"
        )
    image = np.asarray(first[image_key])
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(
            f"TFDS feature {name}/{image_key} must be uint8 [H, W, C]; got {image.dtype} "
            f"{image.shape}"
        )
    with_labels = options.get("with_labels", True)
    if with_labels and label_key not in first:
        raise ValueError(
            f"TFDS dataset {name!r} has no feature {label_key!r} (it has {list(first)}); "
            "pass with_labels=False or another label_key"
        )
    shape = image.shape if image_size is None else (image_size, image_size, image.shape[-1])
    info = {"shape": shape, "num_classes": _num_classes(source, label_key) if with_labels else None}
    fetch = make_tfds_fetch(source, image_key, label_key if with_labels else None, image_size)
    return batches_from_fetch(fetch, len(source), max_value=255.0, info=info, **options)
