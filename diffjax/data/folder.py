"""A folder of images per class, `root/<split>/<class>/<file>.png|jpg`, as numpy arrays.

`root` may also be a `.tar.gz` / `.tgz` archive with that layout (read directly, no extraction),
or a folder holding exactly one such archive (e.g. the CIFAR-10 JPEG copy). Classes are the
sorted sub-folder names; label k is the k-th class. Files are read in sorted order, so the
arrays are the same on every machine.
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from diffjax.data import imageops

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (".tar.gz", ".tgz", ".tar")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_EXTENSIONS)


def _files_from_dir(root: str, split: str) -> list[tuple[str, str, bytes]]:
    """(class, path, bytes) for every image in root/split/<class>/."""
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"no split folder {split!r} in {root} (expected {split_dir})")
    out = []
    for cls in sorted(os.listdir(split_dir)):
        cls_dir = os.path.join(split_dir, cls)
        if not os.path.isdir(cls_dir):
            continue
        for name in sorted(os.listdir(cls_dir)):
            if _is_image(name):
                with open(os.path.join(cls_dir, name), "rb") as f:
                    out.append((cls, os.path.join(cls_dir, name), f.read()))
    return out


def _files_from_archive(path: str, split: str) -> list[tuple[str, str, bytes]]:
    """(class, member name, bytes) for every image at [prefix/]split/<class>/<file> in a tar."""
    out = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = member.name.strip("/").split("/")
                if member.isfile() and len(parts) >= 3 and parts[-3] == split:
                    if _is_image(parts[-1]):
                        out.append((parts[-2], member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"cannot read archive {path}: {err}") from err
    return sorted(out, key=lambda item: (item[0], item[1]))


def _resolve(root: str) -> str:
    """`root` itself, or the single archive inside a folder that has no split folders."""
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder or archive not found: {root}")
    if os.path.isdir(root):
        entries = os.listdir(root)
        archives = [e for e in entries if _is_archive(e)]
        if len(archives) == 1 and not any(os.path.isdir(os.path.join(root, e)) for e in entries):
            return os.path.join(root, archives[0])
    return root


# Decoded arrays are cached here (override with $DIFFJAX_CACHE; cache_dir=None disables).
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("DIFFJAX_CACHE", os.path.expanduser("~/.cache/diffjax")), "image_folder"
)


def load_image_folder(
    root: str,
    split: str = "train",
    image_size: int | None = None,
    channels: int | None = None,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images uint8 [N, H, W, C], labels int32 [N] and the class names of an image folder.

    Args:
      root: folder with `<split>/<class>/*` (or an archive of it, or a folder with one archive).
      split: the sub-folder to read, e.g. 'train' or 'test'.
      image_size: resize (centre crop, then bilinear) to image_size x image_size; None keeps
        the native size, which must then be the same for every image.
      channels: 1 or 3; None takes 1 if the first image is grayscale, else 3.
      cache_dir: the decoded arrays are kept in `<cache_dir>/<key>.npz`, the key a sha256 of
        the source's path, size and modification time (every file's, for a folder), split,
        image_size and channels: the next call with unchanged files reads them instead of
        decoding (the CIFAR-10 JPEG archive: decoded once). None: no cache. The data folder
        itself is never written to.
    """
    source = _resolve(root)
    path = None if cache_dir is None else _cache_path(cache_dir, source, split, image_size,
                                                      channels)  # fmt: skip
    if path is not None and os.path.exists(path):
        try:
            with np.load(path) as z:
                return z["images"], z["labels"], tuple(str(c) for c in z["classes"])
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: decode again and rewrite it
    out = _decode(root, source, split, image_size, channels)
    if path is not None:
        _write_cache(path, *out)
    return out


def _cache_path(cache_dir, source, split, image_size, channels) -> str:
    import hashlib

    stamp = [os.path.abspath(source), split, image_size, channels]
    if os.path.isdir(source):
        for top, dirs, names in os.walk(source):
            dirs.sort()
            for n in sorted(names):
                st = os.stat(os.path.join(top, n))
                stamp.append((os.path.relpath(os.path.join(top, n), source), st.st_size,
                              st.st_mtime_ns))  # fmt: skip
    else:
        st = os.stat(source)
        stamp.append((st.st_size, st.st_mtime_ns))
    digest = hashlib.sha256(repr(stamp).encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{digest}.npz")


def _write_cache(path, images, labels, classes) -> None:
    """Write atomically (a temporary file, then rename); a failure only skips the cache."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, images=images, labels=labels, classes=np.asarray(classes, dtype=str))
        os.replace(tmp, path)
    except OSError:
        pass


def _decode(root, source, split, image_size, channels):
    files = _files_from_dir(source, split) if os.path.isdir(source) else None
    if files is None:
        files = _files_from_archive(source, split)
    if not files:
        raise ValueError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) under split {split!r} of {root}"
        )
    classes = tuple(sorted({cls for cls, _, _ in files}))
    label_of = {cls: k for k, cls in enumerate(classes)}
    images, labels = [], np.empty(len(files), np.int32)
    for i, (cls, name, data) in enumerate(files):
        img = imageops.decode_image(data, name)
        channels = channels or imageops.channels_of(img)
        arr = imageops.to_array(img, channels)
        if image_size is not None:
            arr = imageops.resize_image(arr, image_size)
        elif images and arr.shape != images[0].shape:
            raise ValueError(
                f"image {name} has shape {arr.shape}, unlike {images[0].shape} of the first "
                "image; pass image_size to resize"
            )
        images.append(arr)
        labels[i] = label_of[cls]
    return np.stack(images), labels, classes
