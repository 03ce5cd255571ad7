"""Outputs a person reads: metrics (stdout, JSON lines, TensorBoard), image grids, loss curves.

Every file goes through `diffjax.train.paths` (etils.epath), so a workdir may be remote. In a
multi-host run only the primary process (index 0) writes: the others' writers do nothing.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
from absl import logging
from etils import epath

from diffjax import parallel
from diffjax.train import paths

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Writes scalar metrics to absl logging, `<workdir>/metrics.jsonl` and TensorBoard files.

    The JSON-lines file continues across resumes: `resume_step` (the restored checkpoint's step)
    drops the rows a killed run wrote after its last checkpoint (step > resume_step), which the
    resumed run writes again, so no step appears twice. Only the primary process writes; on the
    other processes every method is a no-op. Use as a context manager or call `close()`.
    """

    def __init__(
        self,
        workdir,
        tensorboard: bool = True,
        *,
        resume_step: int | None = None,
        primary: bool | None = None,
    ):
        self.primary = parallel.is_primary() if primary is None else primary
        workdir = paths.workdir_path(workdir)
        self.path = workdir / METRICS_FILE
        self._file = self._tb = None
        self._remote = paths.scheme(workdir) is not None
        self._rows: list[str] = []
        if not self.primary:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_metrics(self.path, resume_step)
        if self._remote:  # object stores cannot append: rewrite the whole (small) file
            self._rows = self.path.read_text().splitlines() if self.path.exists() else []
        else:
            self._file = self.path.open("a")
        use_tb, why = paths.tensorboard_available(workdir)
        if tensorboard and not use_tb:
            logging.warning("no TensorBoard events: %s", why)
        if tensorboard and use_tb:
            self._tb = _summary_writer()(os.fspath(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.primary:
            return
        values = {k: float(v) for k, v in metrics.items()}
        logging.info(
            "step %d: %s", step, ", ".join(f"{k} = {v:.5g}" for k, v in sorted(values.items()))
        )
        line = json.dumps({"step": int(step), **values})
        if self._remote:
            self._rows.append(line)
            self.path.write_text("\n".join(self._rows) + "\n")
        elif self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, int(step))
            self._tb.flush()

    def close(self) -> None:
        """Close the files (safe to call more than once)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch: tensorboardX imports torch (when
    installed) only to accept torch tensors, which costs ~12 s on these CPUs; floats need none.
    A later `import torch` elsewhere works as usual."""
    import sys

    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, caught there
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


def truncate_metrics(path, last_step: int) -> int:
    """Drop the rows with step > `last_step` from a metrics.jsonl file (missing: nothing to do);
    rewrites it atomically where the filesystem allows. Returns how many rows were dropped."""
    path = epath.Path(path)
    if not path.exists():
        return 0
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = []
    for ln in lines:
        try:
            step = json.loads(ln)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a half-written last line of a killed run
        if step <= last_step:
            keep.append(ln)
    if len(keep) != len(lines):
        paths.write_text_atomic(path, "".join(ln + "\n" for ln in keep))
        logging.info("%s: dropped %d rows after step %d", path, len(lines) - len(keep), last_step)
    return len(lines) - len(keep)


def read_metrics(path) -> list[dict]:
    """All records of a metrics.jsonl file (for plots and tests)."""
    text = epath.Path(path).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(buffer, format="PNG")
    paths.write_bytes_file(path, buffer.getvalue())
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
    _save_figure(fig, path)
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
    _save_figure(fig, path)
    return path


def _save_figure(fig, path) -> None:
    """A matplotlib figure as a PNG at `path` (any filesystem), then closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    paths.write_bytes_file(path, buffer.getvalue())
