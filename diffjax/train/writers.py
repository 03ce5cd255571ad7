"""Outputs a person reads: metrics (stdout, JSON lines, TensorBoard), image grids, loss curves."""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Writes scalar metrics to absl logging, `<workdir>/metrics.jsonl` and TensorBoard files.

    The JSON-lines file is appended to, so a resumed run continues the same file.
    """

    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        logging.info(
            "step %d: %s", step, ", ".join(f"{k} = {v:.5g}" for k, v in sorted(values.items()))
        )
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, int(step))
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """All records of a metrics.jsonl file (for plots and tests)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def image_grid(
    images: np.ndarray, value_range=(-1.0, 1.0), min_size: int = 32, cols: int | None = None
) -> np.ndarray:
    """Tile images [N, H, W, C] into one uint8 array [rows*H', cols*W', C], C in {1, 3}.

    Values are mapped from `value_range` to [0, 255] and clipped; each image is upscaled by an
    integer nearest-neighbour factor so that its side is at least `min_size` (8x8 -> 32x32),
    with a 1-pixel border between tiles. `cols` defaults to ceil(sqrt(N)).
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid needs images [N, H, W, 1 or 3]; got shape {images.shape}")
    lo, hi = value_range
    pixels = np.clip((images - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    n, h, w, c = pixels.shape
    scale = max(1, math.ceil(min_size / max(h, w)))
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pixels[
            i
        ]
    return grid


def save_image_grid(
    path: str, images: np.ndarray, value_range=(-1.0, 1.0), cols: int | None = None
) -> str:
    """Write `image_grid(images, value_range, cols=cols)` as a PNG at `path`; returns the path."""
    from PIL import Image

    grid = image_grid(images, value_range, cols=cols)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def save_points_plot(path: str, points: np.ndarray, reference: np.ndarray | None = None) -> str:
    """Scatter plot PNG of 2-D samples [N, 2] (and optionally data [M, 2]) for toy problems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ax.scatter(*np.asarray(reference).T, s=2, alpha=0.3, label="data")
    ax.scatter(*np.asarray(points).T, s=2, alpha=0.6, label="samples")
    ax.legend(loc="upper right")
    ax.set_aspect("equal")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_loss_curve(path: str, records: list[dict], key: str = "loss") -> str | None:
    """Plot `key` against step from metric records into a PNG; None if there is nothing."""
    points = [(r["step"], r[key]) for r in records if key in r]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*sorted(dict(points).items()), strict=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_yscale("log" if min(values) > 0 else "linear")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
