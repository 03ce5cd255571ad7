"""Reflow pair sets on disk as a data source: one .npz file per chunk ('z' noise ends, 'x'
data ends), written by `NpzChunkWriter` (e.g. from `diffjax.reflow.make_pairs`) and read back
as batches {'image' or 'x': x0 [b, ...], 'noise': its paired z [b, ...]}.

The batch at a step is a function of (seed, step, host) alone, through the same index
pipeline as the other random-access sources (`pipeline.index_batches`), so a resumed run sees
the batches an uninterrupted one would, and each host reads a disjoint strided shard.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from diffjax.data.pipeline import Batches, host_batch_size, index_batches

_PATTERN = "pairs_{:06d}.npz"


class NpzChunkWriter:
    """A `writer(index, z, x)` for `diffjax.reflow.make_pairs` that saves chunk `index` as
    DIR/pairs_{index:06d}.npz with arrays 'z' (noise ends) and 'x' (data ends)."""

    def __init__(self, directory: str):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)

    def __call__(self, index: int, z, x) -> None:
        path = os.path.join(self.directory, _PATTERN.format(int(index)))
        tmp = path + ".tmp.npz"
        np.savez(tmp, z=np.asarray(z), x=np.asarray(x))
        os.replace(tmp, path)  # a crash never leaves a half-written chunk under the final name


def chunk_paths(directory: str) -> list[str]:
    """The chunk files of a pair set, in index order."""
    if directory is None or not os.path.isdir(directory):
        raise ValueError(
            f"pair set folder {directory!r} does not exist; make one with launch/reflow_pairs.py"
        )
    names = sorted(
        n for n in os.listdir(directory) if n.startswith("pairs_") and n.endswith(".npz")
    )
    names = [n for n in names if not n.endswith(".tmp.npz")]
    if not names:
        raise ValueError(f"no pair chunks (pairs_*.npz) in {directory!r}")
    return [os.path.join(directory, n) for n in names]


def iter_pairs(directory: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (z, x) chunk by chunk (one chunk in memory at a time)."""
    for path in chunk_paths(directory):
        with np.load(path) as f:
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
