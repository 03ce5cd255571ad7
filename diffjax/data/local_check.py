"""Check a folder of local datasets (one sub-folder per dataset) and report their arrays.

  python -m diffjax.data.local_check /path/to/data [--images]

reads every MNIST / Fashion-MNIST IDX split it finds below the folder (and, with --images,
every image folder or archive of class folders, which is slower: it decodes every image) and
prints shapes, dtypes, value ranges and class counts.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from diffjax.data import folder, idx


def _summary(images: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "images": (images.shape, str(images.dtype)),
        "range": (int(images.min()), int(images.max())),
        "labels": (labels.shape, str(labels.dtype)),
        "class_counts": np.bincount(labels).tolist(),
    }


def describe_local_data(root: str, images: bool = False) -> dict[str, dict]:
    """{'<dataset>/<split>': summary} for the IDX datasets (and image folders) under `root`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder does not exist: {root}")
    found = {}
    for dataset in idx.IDX_SUBDIRS:
        for split in idx.IDX_SPLITS:
            try:
                found[f"{dataset}/{split}"] = _summary(*idx.load_idx(root, split, dataset))
            except FileNotFoundError:
                continue
    if images:
        for entry in sorted(os.listdir(root)):
            for split in ("train", "test"):
                try:
                    x, y, _ = folder.load_image_folder(os.path.join(root, entry), split)
                except (FileNotFoundError, ValueError):
                    continue
                found[f"{entry}/{split}"] = _summary(x, y)
    return found


if __name__ == "__main__":
    for name, summary in describe_local_data(sys.argv[1], "--images" in sys.argv).items():
        print(name, summary)
