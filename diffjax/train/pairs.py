"""Reflow pair sets on disk: one .npz file per chunk (`z`, `x`), written and read back in order,
so a large pair set never has to live in memory at once."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

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
    return np.concatenate(zs), np.concatenate(xs)
