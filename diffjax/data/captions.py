"""Captioned datasets built from real images, shipped as code: two-item compositions of MNIST /
Fashion-MNIST with captions naming both items and their order, and templated class captions
(CIFAR-10). Random access and deterministic in (seed, index), so hosts can shard by index."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from diffjax.data.idx import load_idx

MNIST_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_MNIST_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
NAMES = {"mnist": MNIST_NAMES, "fashion_mnist": FASHION_MNIST_NAMES, "cifar10": CIFAR10_NAMES}

PAIR_TEMPLATES = (
    "{a_left} to the left of {a_right}",
    "{a_right} to the right of {a_left}",
    "{left} then {right}",
    "{left} on the left, {right} on the right",
    "{right} on the right and {left} on the left",
)
"""Captions of a (left, right) pair. The item named first is the left one in some templates and
the right one in others, so neither a label embedding nor a bag of words can read the layout:
the relation words and their order carry it (the text encoder is needed)."""

CLASS_TEMPLATES = (
    "{a}",
    "a photo of {a}",
    "a picture of {a}",
    "a small photo of {a}",
    "a blurry photo of {a}",
)

LAYOUTS = ("wide", "square")


def with_article(name: str) -> str:
    """'seven' -> 'a seven', 'eight' -> 'an eight', 'ankle boot' -> 'an ankle boot'."""
    return ("an " if name[0] in "aeiou" else "a ") + name


def pair_caption(template: str, left: str, right: str) -> str:
    """Fill a `PAIR_TEMPLATES` entry with the names of the left and right items."""
    return template.format(
        left=left, right=right, a_left=with_article(left), a_right=with_article(right)
    )


def compose(left: np.ndarray, right: np.ndarray, layout: str = "wide") -> np.ndarray:
    """Two [28, 28, C] images -> one canvas, dtype kept.

    "wide": side by side, [28, 56, C], no resampling (the default: both items keep every pixel).
    "square": [28, 28, C], each item 2x2-mean-pooled to 14x14 and the pair placed in rows 7..20
    (the canvas size of the single-digit models, at half the item resolution).
    """
    if left.shape != right.shape or left.ndim != 3:
        raise ValueError(f"items must be [H, W, C] of one shape; got {left.shape}, {right.shape}")
    if layout == "wide":
        return np.concatenate([left, right], axis=1)
    if layout != "square":
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    h, w, c = left.shape
    if h % 2 or w % 2:
        raise ValueError(f"the square layout needs even item sizes; got {h}x{w}")
    pool = lambda im: im.astype(np.float32).reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))
    canvas = np.zeros((h, w, c), np.float32)
    canvas[h // 4 : h // 4 + h // 2] = np.concatenate([pool(left), pool(right)], axis=1)
    return np.round(canvas).astype(left.dtype) if left.dtype == np.uint8 else canvas


def _check_arrays(images: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or np.shape(labels) != (images.shape[0],) or not len(images):
        raise ValueError(
            f"need images [N, H, W(, C)] and labels [N], N > 0; got {images.shape}, "
            f"{np.shape(labels)}"
        )
    if np.min(labels) < 0 or np.max(labels) >= len(names):
        raise ValueError(f"labels must lie in [0, {len(names)}); got [{np.min(labels)}, ...]")
    return images


def _rng(seed: int, index: int, length: int) -> np.random.Generator:
    if not 0 <= index < length:
        raise ValueError(f"index {index} out of range [0, {length})")
    return np.random.default_rng([seed, index])


@dataclasses.dataclass(frozen=True, eq=False)
class PairCaptions:
    """Example `index` = two items (uniformly drawn, with replacement) composed left | right,
    a caption from `templates` naming both in order, and labels (left, right).

    Deterministic in (seed, index): the draws use `np.random.default_rng([seed, index])`, so
    any index is available without the others (random access, shardable across hosts).

    Attributes:
      images: [N, 28, 28] or [N, 28, 28, C] (e.g. uint8 MNIST from `load_idx`).
      labels: int [N] in [0, len(names)).
      names: class names (MNIST_NAMES, FASHION_MNIST_NAMES).
      seed: the dataset's seed.
      layout: "wide" (28x56) or "square" (28x28), see `compose`.
      length: number of examples (default N).
    """

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...] = MNIST_NAMES
    seed: int = 0
    layout: str = "wide"
    templates: tuple[str, ...] = PAIR_TEMPLATES
    length: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "images", _check_arrays(self.images, self.labels, self.names))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32))
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")

    @classmethod
    def from_idx(cls, data_dir: str, dataset: str = "mnist", split: str = "train", **kw):
        """Read a user's MNIST / Fashion-MNIST IDX files with `diffjax.data.load_idx`."""
        images, labels = load_idx(data_dir, split, dataset)
        return cls(images, labels, NAMES[dataset], **kw)

    def __len__(self) -> int:
        return self.length or len(self.labels)

    def __getitem__(self, index: int) -> dict:
        """{"image": [H, W', C], "caption": str, "labels": int32 [2] (left, right),
        "template": int}."""
        rng = _rng(self.seed, int(index), len(self))
        i, j = rng.integers(len(self.labels), size=2)
        k = int(rng.integers(len(self.templates)))
        left, right = self.labels[i], self.labels[j]
        caption = pair_caption(self.templates[k], self.names[left], self.names[right])
        image = compose(self.images[i], self.images[j], self.layout)
        return dict(image=image, caption=caption, labels=np.array([left, right]), template=k)

    def batch(self, indices) -> dict:
        """Stack examples: image [B, ...], labels [B, 2], template [B], caption list[str]."""
        items = [self[int(i)] for i in indices]
        out = {k: np.stack([it[k] for it in items]) for k in ("image", "labels", "template")}
        return {**out, "caption": [it["caption"] for it in items]}

    def all_captions(self) -> list[str]:
        """Every caption the dataset can produce (for `WordTokenizer.from_captions`)."""
        pairs = itertools.product(self.templates, self.names, self.names)
        return [pair_caption(t, a, b) for t, a, b in pairs]


@dataclasses.dataclass(frozen=True, eq=False)
class ClassCaptions:
    """Example `index` = image `index` with a caption from `templates` naming its class (e.g.
    CIFAR-10: "a photo of a cat"); the template draw is deterministic in (seed, index)."""

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...] = CIFAR10_NAMES
    seed: int = 0
    templates: tuple[str, ...] = CLASS_TEMPLATES

    def __post_init__(self):
        object.__setattr__(self, "images", _check_arrays(self.images, self.labels, self.names))
        object.__setattr__(self, "labels", np.asarray(self.labels, np.int32))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        k = int(_rng(self.seed, int(index), len(self)).integers(len(self.templates)))
        label = int(self.labels[index])
        caption = self.templates[k].format(a=with_article(self.names[label]))
        return dict(image=self.images[index], caption=caption, labels=np.int32(label), template=k)

    def all_captions(self) -> list[str]:
        return [t.format(a=with_article(n)) for t in self.templates for n in self.names]
