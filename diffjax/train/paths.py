"""The one path layer for workdirs: every read and write of a run's files goes through here.

A workdir is an `etils.epath.Path` (the path type orbax uses), so `gs://bucket/run` and the
other remote schemes epath knows (s3://, az://, hf://) work wherever their client library is
installed, and a local path is a plain folder. `workdir_path` checks the scheme and its client
before any work, so a missing client is one clear error naming the package to install, never a
local folder called `gs:`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from etils import epath

# scheme -> (modules any one of which lets epath reach it, what to pip install). epath reads
# gs:// through tf.io.gfile when TensorFlow is installed, else through fsspec's client.
CLIENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "gs": (("gcsfs", "tensorflow"), "gcsfs"),
    "s3": (("s3fs", "tensorflow"), "s3fs"),
    "az": (("adlfs",), "adlfs"),
    "hf": (("huggingface_hub",), "huggingface_hub"),
}
# TensorBoard event files on a remote workdir are written by tensorboardX's own uploader.
TENSORBOARD_CLIENTS: dict[str, tuple[str, str]] = {
    "gs": ("google.cloud.storage", "google-cloud-storage"),
    "s3": ("boto3", "boto3"),
}


def scheme(path: Any) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path."""
    text = os.fspath(path) if not isinstance(path, str) else path
    head, sep, _ = text.partition("://")
    return head if sep and head.isalnum() else None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


def check_filesystem(path: Any) -> None:
    """Raise unless `path`'s filesystem can be used here (local, or a scheme with its client).

    Raises:
      ValueError: an unknown scheme (names the supported ones).
      ImportError: the scheme's client library is not installed (names the package).
    """
    name = scheme(path)
    if name is None:
        return
    if name not in CLIENTS:
        raise ValueError(
            f"workdir {os.fspath(path)!r} has the unsupported filesystem scheme {name!r}://; "
            f"expected a local path or one of {[s + '://' for s in CLIENTS]}"
        )
    modules, package = CLIENTS[name]
    if not any(_installed(m) for m in modules):
        raise ImportError(
            f"workdir {os.fspath(path)!r} is on {name}://, whose client is not installed: "
            f"pip install {package}"
        )


def workdir_path(path: Any) -> epath.Path:
    """The workdir as an epath.Path after `check_filesystem`; '~' is expanded locally."""
    check_filesystem(path)
    if scheme(path) is None:
        path = os.path.expanduser(os.fspath(path))
    return epath.Path(path)


def absolute(path: Any) -> str:
    """An absolute local path, or a remote URL unchanged (os.path.abspath would turn
    'gs://b/x' into './gs:/b/x', a local folder named after the URL)."""
    text = os.fspath(path)
    return text if scheme(text) is not None else os.path.abspath(os.path.expanduser(text))


def tensorboard_available(path: Any) -> tuple[bool, str]:
    """(whether tensorboardX can write events under `path`, why not)."""
    name = scheme(path)
    if name is None:
        return True, ""
    if name not in TENSORBOARD_CLIENTS:
        return False, f"tensorboardX cannot write to {name}://"
    module, package = TENSORBOARD_CLIENTS[name]
    if not _installed(module):
        return False, f"TensorBoard events on {name}:// need: pip install {package}"
    return True, ""


def read_json(path: Any) -> Any:
    return json.loads(epath.Path(path).read_text())


def write_text_atomic(path: Any, text: str) -> None:
    """Write `text` at `path` through a temporary name and a rename where the filesystem has an
    atomic rename (local), so a crash never leaves half a file; an object store's single PUT is
    atomic already."""
    path = epath.Path(path)
    if scheme(path) is not None:
        path.write_text(text)
        return
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Any, value: Any) -> None:
    """Write `value` as indented JSON atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(value, indent=2))


def write_bytes_file(path: Any, data: bytes) -> None:
    """Write bytes (an encoded PNG, say) at `path`, creating its folder."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_npz(path: Any, **arrays: Any) -> None:
    """`np.savez(path, **arrays)` on any filesystem (encoded in memory, then one write)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_file(path, buffer.getvalue())


def create_exclusive(path: Any, text: str) -> bool:
    """Create `path` holding `text` unless it exists; True if this call created it.

    Atomic on a local filesystem (O_CREAT | O_EXCL); on an object store an existence check then
    a write (two runs started within the same moment on one remote workdir can both succeed).
    """
    path = epath.Path(path)
    if scheme(path) is not None:
        if path.exists():
            return False
        path.write_text(text)
        return True
    try:
        fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return True
