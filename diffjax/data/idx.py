"""MNIST / Fashion-MNIST from the original IDX files in a local directory (no download).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic number
[0, 0, type code, number of dimensions], then each dimension as a big-endian uint32, then the
values in C order, big-endian. Files may be gzip-compressed (detected from their first bytes,
not their name). Both datasets use the same file names:
`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`,
`t10k-labels-idx1-ubyte[.gz]`.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# IDX type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# split -> file-name prefix used by MNIST and Fashion-MNIST.
IDX_SPLITS = {"train": "train", "test": "t10k"}
# Sub-folders tried below `data_dir` for each named dataset, so `data_dir` may be either the
# folder holding the files or its parent (a folder of several datasets).
IDX_SUBDIRS = {
    "mnist": ("", "mnist", "MNIST"),
    "fashion_mnist": ("", "fashion-mnist", "fashion_mnist", "FashionMNIST"),
}


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"corrupt gzip data in IDX file {path}: {err}") from err


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one IDX blob into a numpy array of its declared dtype and shape.

    Raises:
      ValueError: bad magic number, unknown type code, or a payload whose size does not match
        the header (naming `name`).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name} is not an IDX file: magic bytes {data[:4]!r} do not start 00 00")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{name}: IDX header declares shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header} bytes after the header"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzip or not) into a numpy array; errors name the file."""
    return parse_idx(_read_bytes(path), name=path)


def _find(directory: str, stem: str) -> str:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"neither {stem} nor {stem}.gz found in {directory}")


def find_idx_dir(data_dir: str, dataset: str = "mnist", split: str = "train") -> str:
    """The folder (`data_dir` or a conventional sub-folder) holding the IDX files of a split."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data_dir does not exist or is not a directory: {data_dir}")
    if dataset not in IDX_SUBDIRS:
        raise ValueError(f"unknown IDX dataset {dataset!r}; expected one of {tuple(IDX_SUBDIRS)}")
    stem = f"{IDX_SPLITS[split]}-images-idx3-ubyte"
    for sub in IDX_SUBDIRS[dataset]:
        folder = os.path.join(data_dir, sub)
        if any(os.path.isfile(os.path.join(folder, stem + e)) for e in ("", ".gz")):
            return folder
    raise FileNotFoundError(
        f"no {stem}[.gz] in {data_dir} or its sub-folders {IDX_SUBDIRS[dataset][1:]}"
    )


def load_idx(
    data_dir: str, split: str = "train", dataset: str = "mnist"
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28, 1] and labels int32 [N] of MNIST-style IDX files.

    Args:
      data_dir: the folder with the IDX files, or a parent holding e.g. `mnist/`.
      split: 'train' (train-*) or 'test' (t10k-*).
      dataset: 'mnist' or 'fashion_mnist' (only chooses which sub-folders are tried).
    """
    if split not in IDX_SPLITS:
        raise ValueError(f"unknown IDX split {split!r}; expected one of {tuple(IDX_SPLITS)}")
    folder = find_idx_dir(data_dir, dataset, split)
    prefix = IDX_SPLITS[split]
    image_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{image_path}: expected uint8 images of rank 3, got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{label_path}: {labels.shape} labels do not match {images.shape[0]} images "
            f"in {image_path}"
        )
    return images[..., None], labels.astype(np.int32)
