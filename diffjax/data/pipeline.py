"""One batching pipeline for every random-access source: shard, shuffle, repeat, batch, augment.

A source is anything that can `fetch(indices [b]) -> {'image': [b, H, W, C], 'label': [b]}`
(numpy arrays in memory, a TFDS ArrayRecord data source). The order of indices is built with
`grain.MapDataset` (random access, no TensorFlow), so the batch at any step can be recomputed
from (seed, step, host) alone: iteration is deterministic and resumes exactly at `start_step`.

Conventions: the batch size passed in is the GLOBAL batch B. The global batch at step n is a
function of (seed, n) only: every host computes the same global order of example indices (and
the same flips), and host p of P reads and yields only rows [p B/P, (p + 1) B/P) of it, the
p-th slice of the batch a 1-process run draws. So a run can move between topologies (1 host
-> 4 hosts -> 2 hosts) and continue with the same batches. Images come out as float32 in
[-1, 1] (`x / max_value * 2 - 1`, so uint8 0 -> -1 and 255 -> 1), labels as int32.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterator

import grain
import numpy as np

Batch = dict[str, np.ndarray]
Fetch = Callable[[np.ndarray], Batch]

# Fixed word mixed into the flip seed so flips and the shuffle never share a random stream.
_FLIP_STREAM = 0x666C6970  # "flip"


def host_batch_size(global_batch: int, process_count: int) -> int:
    """Per-host batch = global batch / number of hosts; ValueError if it does not divide."""
    if global_batch < 1:
        raise ValueError(f"batch_size must be a positive integer; got {global_batch}")
    if process_count < 1:
        raise ValueError(f"process_count must be a positive integer; got {process_count}")
    if global_batch % process_count:
        raise ValueError(
            f"global batch_size={global_batch} is not divisible by the number of hosts "
            f"process_count={process_count}"
        )
    return global_batch // process_count


def check_host(process_index: int, process_count: int) -> None:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must lie in [0, process_count={process_count})"
        )


def host_slice(indices: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """Host `process_index`'s rows of one global batch of indices [B]: [p m, (p + 1) m) with
    m = B // P. A short final batch (no drop_remainder) loses its last B % P rows, so that every
    host still holds an equal part (a multi-host jit step needs equal shards)."""
    part = indices.shape[0] // process_count
    return indices[process_index * part : (process_index + 1) * part]


def index_batches(
    num_examples: int,
    per_host_batch: int,
    *,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """A random-access dataset whose element `step` is this host's int64 array of indices.

    The global stream is that of one process with batch B = per_host_batch * process_count:
    range(num_examples), a fresh permutation every epoch (grain folds the epoch into the seed)
    when `shuffle`, repeated endlessly when `repeat` (batches run across epoch ends), batched
    by B. Element `step` is `host_slice` of its global batch `step`.
    """
    check_host(process_index, process_count)
    if num_examples < 1:
        raise ValueError(f"a data source needs at least one example; got {num_examples}")
    ds = grain.MapDataset.range(num_examples)
    if shuffle:
        ds = ds.shuffle(seed=seed % 2**32)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(per_host_batch * process_count, drop_remainder=drop_remainder)
    if process_count == 1:
        return ds
    if not repeat and len(ds) and len(ds[len(ds) - 1]) < process_count:
        ds = ds[: len(ds) - 1]  # a final batch too short to give every host a row
    return ds.map(lambda idx: host_slice(idx, process_index, process_count))


def scale_to_unit(images: np.ndarray, max_value: float = 255.0) -> np.ndarray:
    """Map [0, max_value] linearly onto [-1, 1] in float32: x / max_value * 2 - 1."""
    return (np.asarray(images, np.float32) * np.float32(2.0 / max_value) - 1.0).astype(np.float32)


def flip_rng(seed: int, step: int) -> np.random.Generator:
    """The random stream for the augmentation of the global batch at one step (the trailing
    0 of the seed words keeps the stream of earlier single-host runs)."""
    return np.random.default_rng([seed % 2**32, _FLIP_STREAM, 0, step])


def random_hflip(rng: np.random.Generator, images: np.ndarray, offset: int = 0) -> np.ndarray:
    """Flip each image [b, H, W, C] left-right (the W axis) with probability 1/2.

    The images are rows [offset, offset + b) of a global batch: the coin of row r is the r-th
    uniform of `rng` (Generator.random fills its output in order), so a host's flips are its
    slice of the flips one process draws for the whole batch.
    """
    flip = rng.random(offset + images.shape[0])[offset:] < 0.5  # [b]
    return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def make_finish(
    *, seed: int, process_index: int, flip: bool, max_value: float, with_labels: bool
) -> Callable[[int, Batch], Batch]:
    """The per-batch augmentation: optional flip, scale to [-1, 1], cast labels to int32."""

    def finish(step: int, raw: Batch) -> Batch:
        images = raw["image"]
        if flip:  # this host holds rows [p b, (p + 1) b) of the global batch
            offset = process_index * images.shape[0]
            images = random_hflip(flip_rng(seed, step), images, offset)
        out = {"image": scale_to_unit(images, max_value)}
        if with_labels:
            out["label"] = np.asarray(raw["label"], np.int32).reshape(-1)
        return out

    return finish


class Batches:
    """Iterator of batch dicts with its position, for exact resume.

    Args:
      batch_at: pure function step -> batch dict (the same step always gives the same batch).
      num_batches: how many batches there are, or None for an infinite stream.
      start_step: the first step to yield (resume by passing the number of steps done).
      prefetch: how many upcoming batches to prepare on a background thread (0: none).
      info: static facts for the caller, e.g. {'shape': (H, W, C), 'num_classes': 10}.

    Attributes:
      step: the step of the next batch `next()` returns.
    """

    def __init__(
        self,
        batch_at: Callable[[int], Batch],
        *,
        num_batches: int | None,
        start_step: int = 0,
        prefetch: int = 0,
        info: dict | None = None,
    ):
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0; got {start_step}")
        self.batch_at = batch_at
        self.num_batches = num_batches
        self.step = start_step
        self.info = dict(info or {})
        self._prefetch = prefetch
        self._pool = None
        self._queue: collections.deque = collections.deque()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite (repeating) stream of batches has no length")
        return self.num_batches

    def _in_range(self, step: int) -> bool:
        return self.num_batches is None or step < self.num_batches

    def __next__(self) -> Batch:
        if not self._in_range(self.step):
            raise StopIteration
        if self._prefetch <= 0:
            batch = self.batch_at(self.step)
        else:
            batch = self._next_prefetched()
        self.step += 1
        return batch

    def _next_prefetched(self) -> Batch:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "diffjax-data")
        # The queue holds (step, future) for the steps self.step, self.step + 1, ...
        while self._queue and self._queue[0][0] != self.step:
            self._queue.popleft()  # stale after a manual change of `step`
        if not self._queue:
            self._queue.append((self.step, self._pool.submit(self.batch_at, self.step)))
        nxt = self._queue[-1][0] + 1
        while len(self._queue) <= self._prefetch and self._in_range(nxt):
            self._queue.append((nxt, self._pool.submit(self.batch_at, nxt)))
            nxt += 1
        return self._queue.popleft()[1].result()

    def close(self) -> None:
        """Stop the prefetch thread (also safe to skip: it exits with the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._queue.clear()


def batches_from_fetch(
    fetch: Fetch,
    num_examples: int,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    random_flip: bool = False,
    max_value: float = 255.0,
    with_labels: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    prefetch: int = 0,
    info: dict | None = None,
) -> Batches:
    """Batches from a random-access `fetch(indices) -> {'image', 'label'}` (see module doc).

    `batch_size` is the global batch; each host gets `batch_size // process_count` examples.
    """
    per_host = host_batch_size(batch_size, process_count)
    indices = index_batches(
        num_examples,
        per_host,
        seed=seed,
        shuffle=shuffle,
        repeat=repeat,
        drop_remainder=drop_remainder,
        process_index=process_index,
        process_count=process_count,
    )
    finish = make_finish(
        seed=seed,
        process_index=process_index,
        flip=random_flip,
        max_value=max_value,
        with_labels=with_labels,
    )
    num_batches = None if repeat else len(indices)
    if num_batches == 0:
        raise ValueError(
            f"no batches: {num_examples} examples give no full global batch of "
            f"batch_size={batch_size} ({process_count} host(s)) with drop_remainder=True"
        )
    info = {
        "key": "image",
        "num_examples": num_examples,
        "per_host_batch": per_host,
        "max_value": float(max_value),  # images are stored as 0..max_value, scaled to [-1, 1]
        **(info or {}),
    }
    return Batches(
        lambda step: finish(step, fetch(np.asarray(indices[step], np.int64))),
        num_batches=num_batches,
        start_step=start_step,
        prefetch=prefetch,
        info=info,
    )


def batches_from_arrays(images: np.ndarray, labels: np.ndarray | None, **options) -> Batches:
    """Batches from in-memory arrays images [N, H, W, C] and labels [N] (or None).

    Options are those of `batches_from_fetch`; `max_value` is the value that maps to 1
    (255 for uint8 images). Without labels, batches carry no 'label' entry.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C]; got shape {images.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1]:
            raise ValueError(
                f"labels shape {labels.shape} does not match images shape {images.shape}"
            )
    else:
        options["with_labels"] = False

    def fetch(idx: np.ndarray) -> Batch:
        return {"image": images[idx], "label": None if labels is None else labels[idx]}

    info = {"shape": images.shape[1:], **options.pop("info", {})}
    return batches_from_fetch(fetch, images.shape[0], info=info, **options)
