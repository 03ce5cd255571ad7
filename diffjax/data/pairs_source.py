"""Reflow pair sets on disk as a data source: one .npz file per chunk ('z' noise ends, 'x'
data ends), written by `NpzChunkWriter` (e.g. from `diffjax.reflow.make_pairs`) and read back
as batches {'image' or 'x': x0 [b, ...], 'noise': its paired z [b, ...]}.

The batch at a step is a function of (seed, step, host) alone, through the same index
pipeline as the other random-access sources (`pipeline.index_batches`), so a resumed run sees
the batches an uninterrupted one would, and host p reads the p-th slice of the global batch.
Files go through etils.epath (the data layer does not import the train layer's `paths`), so a
pair set may live on any filesystem epath reaches.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator

import numpy as np
from etils import epath

from diffjax import parallel
from diffjax.data.pipeline import Batches, host_batch_size, index_batches

_PATTERN = "pairs_{:06d}.npz"
_TMP_SUFFIX = ".tmp.npz"  # a chunk being written (never read)


class NpzChunkWriter:
    """A `writer(index, z, x)` for `diffjax.reflow.make_pairs` that saves chunk `index` as
    DIR/pairs_{index:06d}.npz with arrays 'z' (noise ends) and 'x' (data ends), on any
    filesystem etils.epath reaches (the path type of `diffjax.train.paths`); in a multi-host
    run the primary process alone writes (every host passes the same whole chunk)."""

    def __init__(self, directory: str):
        self.primary = parallel.is_primary()
        self.path = epath.Path(directory)
        self.directory = os.fspath(self.path)
        if self.primary:
            self.path.mkdir(parents=True, exist_ok=True)

    def __call__(self, index: int, z, x) -> None:
        if not self.primary:
            return
        path = self.path / _PATTERN.format(int(index))
        tmp = self.path / (path.name[: -len(".npz")] + _TMP_SUFFIX)
        buffer = io.BytesIO()  # encoded in memory, then one write (any filesystem)
        np.savez(buffer, z=np.asarray(z), x=np.asarray(x))
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)  # a crash never leaves a half-written chunk under the final name


def chunk_paths(directory: str) -> list[str]:
    """The chunk files of a pair set, in index order."""
    root = None if directory is None else epath.Path(directory)
    if root is None or not root.is_dir():
        raise ValueError(
            f"pair set folder {directory!r} does not exist; make one with launch/reflow_pairs.py"
        )
    names = sorted(p.name for p in root.iterdir() if _is_chunk(p.name))
    if not names:
        raise ValueError(f"no pair chunks (pairs_*.npz) in {directory!r}")
    return [os.fspath(root / n) for n in names]


def _is_chunk(name: str) -> bool:
    return name.startswith("pairs_") and name.endswith(".npz") and not name.endswith(_TMP_SUFFIX)


def iter_pairs(directory: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (z, x) chunk by chunk (one chunk in memory at a time)."""
    for path in chunk_paths(directory):
        with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:  # any filesystem
            yield f["z"], f["x"]


def load_pairs(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (z [N, ...], x [N, ...]) concatenated (for pair sets that fit in memory)."""
    zs, xs = zip(*iter_pairs(directory), strict=True)
    z, x = np.concatenate(zs), np.concatenate(xs)
    if z.shape != x.shape or z.ndim < 2:
        raise ValueError(f"pairs in {directory!r} need z and x of one shape [N, ...]; got "
                         f"{z.shape} and {x.shape}")  # fmt: skip
    return z, x


def pairs_batches(
    directory: str,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    prefetch: int = 0,
) -> Batches:
    """Batches {'image' [b, H, W, C] or 'x' [b, D]: x0, 'noise': z} of the pair set in
    `directory` (held in memory as float32); `batch_size` is global, b = its per-host share."""
    z, x = load_pairs(directory)
    z, x = z.astype(np.float32), x.astype(np.float32)
    per_host = host_batch_size(batch_size, process_count)
    indices = index_batches(
        x.shape[0], per_host, seed=seed, shuffle=shuffle, repeat=repeat,
        drop_remainder=drop_remainder, process_index=process_index, process_count=process_count,
    )  # fmt: skip
    num_batches = None if repeat else len(indices)
    if num_batches == 0:
        raise ValueError(f"no batches: {x.shape[0]} pairs give fewer than batch {per_host}")
    key = "image" if x.ndim == 4 else "x"

    def batch_at(step: int) -> dict[str, np.ndarray]:
        idx = np.asarray(indices[step], np.int64)
        return {key: x[idx], "noise": z[idx]}

    info = {
        "key": key,
        "shape": x.shape[1:],
        "num_examples": x.shape[0],
        "per_host_batch": per_host,
    }
    return Batches(
        batch_at, num_batches=num_batches, start_step=start_step, prefetch=prefetch, info=info
    )
