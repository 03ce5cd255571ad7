"""Data layer: the TFDS (ArrayRecord) pipeline, local-file loaders, the built-in digits default
and toy batches, all behind `make_iterator(DataConfig(...))`. No TensorFlow needed."""

from diffjax.data.digits import load_digits_arrays
from diffjax.data.folder import load_image_folder
from diffjax.data.idx import load_idx, read_idx
from diffjax.data.pipeline import (
    Batches,
    batches_from_arrays,
    batches_from_fetch,
    host_batch_size,
    scale_to_unit,
)
from diffjax.data.sources import SOURCES, DataConfig, load_arrays, make_iterator

__all__ = [
    "SOURCES",
    "Batches",
    "DataConfig",
    "batches_from_arrays",
    "batches_from_fetch",
    "host_batch_size",
    "load_arrays",
    "load_digits_arrays",
    "load_idx",
    "load_image_folder",
    "make_iterator",
    "read_idx",
    "scale_to_unit",
]
