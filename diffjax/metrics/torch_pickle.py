"""Read tensors from PyTorch files (torch.save files and TorchScript) without torch.

A PyTorch zip archive holds `<prefix>/data.pkl`, a pickle of the object tree whose tensors
refer by persistent id to raw little-endian storages in `<prefix>/data/<key>` (the legacy
format of torch < 1.6 appends the storages to the pickle stream instead). We unpickle it
with an allow-list: only the few torch rebuild functions (replaced by numpy reconstructions),
storage-type markers, `OrderedDict`, and inert placeholders for TorchScript module classes.
Any other global (e.g. `os.system`) raises ValueError, so no code from the file ever runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import numpy as np


class StorageType:
    """Marker for a torch storage class (e.g. `torch.FloatStorage`) with its numpy dtype."""

    def __init__(self, name: str, dtype):
        self.name = name
        self.dtype = np.dtype(dtype).newbyteorder("<")


_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class ScriptObject:
    """Inert stand-in for a pickled TorchScript module: keeps its attributes, runs nothing."""

    type_name = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise ValueError(f"unexpected state for TorchScript object {self.type_name}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"ScriptObject({self.type_name}, {sorted(self.__dict__)})"


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> np.ndarray | None:
    """numpy version of torch._utils._rebuild_tensor_v2: a strided view, copied."""
    if storage is None:  # the legacy format's dry pass
        return None
    if not isinstance(storage, np.ndarray):
        raise ValueError(f"tensor storage is not a raw storage: {type(storage).__name__}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or storage_offset < 0 or min(size + stride, default=0) < 0:
        raise ValueError(f"invalid tensor: offset {storage_offset}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    # Bounds check before as_strided, which would otherwise read past the buffer.
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise ValueError(f"tensor of size {size} stride {stride} overruns its storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, _requires_grad=None, _hooks=None, *_unused):
    return data


def _build_intlist(values):
    return list(values)


def _script_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (ScriptObject,), {"type_name": qualname})


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.jit._pickle", "build_intlist"): _build_intlist,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for PyTorch pickles that allows only an explicit list of globals.

    Args:
      file: the pickle stream.
      read_storage: `(key, storage_type, numel) -> np.ndarray` returning the raw storage a
        persistent id refers to (or None during the legacy format's first, dry pass).
      source: a name for error messages (the file path).
    """

    def __init__(self, file, read_storage, source: str = "<pickle>"):
        super().__init__(file)
        self._read_storage = read_storage
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return StorageType(name, _STORAGE_DTYPES[name])
        if module.startswith("__torch__.") or module == "__torch__":
            return _script_class(f"{module}.{name}")
        raise ValueError(
            f"refusing to unpickle global {module}.{name} from {self._source}: only torch "
            "tensor/storage rebuild functions and TorchScript module placeholders are allowed"
        )

    def persistent_load(self, pid):
        # zip format: ('storage', type, key, location, numel); legacy: the same + view_metadata.
        ok = isinstance(pid, tuple) and pid[:1] == ("storage",) and len(pid) in (5, 6)
        if not ok or (len(pid) == 6 and pid[5] is not None):
            raise ValueError(f"unsupported persistent id {pid!r} in {self._source}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, StorageType):
            raise ValueError(f"unsupported storage type {storage_type!r} in {self._source}")
        array = self._read_storage(key, storage_type, numel)
        if array is not None and array.size != numel:
            raise ValueError(
                f"storage {key} in {self._source} has {array.size} elements, expected {numel}"
            )
        return array


def _load_zip(path: str):
    """The zip format (torch >= 1.6 `torch.save`, TorchScript): `<prefix>/data.pkl` + `data/`."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise ValueError(f"{path!r} has no single top-level <name>/data.pkl entry")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder") != b"little":
            raise ValueError(f"{path!r} stores big-endian tensors, which are not supported")

        def read_storage(key, storage_type, _numel):
            try:
                return np.frombuffer(archive.read(f"{prefix}data/{key}"), storage_type.dtype)
            except KeyError as err:
                raise ValueError(f"storage data/{key} missing from {path!r}") from err

        return RestrictedUnpickler(io.BytesIO(archive.read(pkls[0])), read_storage, path).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


def _load_legacy(path: str):
    """The legacy format (torch < 1.6): pickled header, object tree, storage keys, raw data.

    The raw storages follow the object pickle, so it is read twice: a dry pass records each
    storage's type and size, the data (int64 element count + bytes per storage) is read, and
    a second pass rebuilds the tensors.
    """
    no_storage = lambda *_: None
    with open(path, "rb") as f:
        header = [RestrictedUnpickler(f, no_storage, path).load() for _ in range(3)]
        if header[0] != _LEGACY_MAGIC or header[1] != _LEGACY_PROTOCOL:
            raise ValueError(f"{path!r} is neither a PyTorch zip archive nor a legacy torch file")
        if not (isinstance(header[2], dict) and header[2].get("little_endian", True)):
            raise ValueError(f"{path!r} stores big-endian tensors, which are not supported")
        start, types = f.tell(), {}

        def record(key, storage_type, numel):
            types[key] = (storage_type, numel)  # returns None: tensors are not built yet

        RestrictedUnpickler(f, record, path).load()
        storages = {}
        for key in RestrictedUnpickler(f, no_storage, path).load():
            storage_type, numel = types[str(key)]
            count = int.from_bytes(f.read(8), "little")
            raw = f.read(numel * storage_type.dtype.itemsize)
            if count != numel or len(raw) != numel * storage_type.dtype.itemsize:
                raise ValueError(f"storage {key} in {path!r} is truncated or inconsistent")
            storages[str(key)] = np.frombuffer(raw, storage_type.dtype)
        f.seek(start)
        return RestrictedUnpickler(f, lambda k, t, n: storages[k], path).load()


def load_torch_file(path: str | os.PathLike):
    """Unpickle a PyTorch file's object tree safely, with tensors as numpy arrays.

    Args:
      path: a `torch.save` file (zip format, or the legacy format of torch < 1.6) or a
        TorchScript `.pt` file.

    Returns:
      The unpickled root object: a dict (state dict) or a `ScriptObject` tree.

    Raises:
      FileNotFoundError: `path` does not exist.
      ValueError: not a PyTorch file, a disallowed global, or corrupt data (names `path`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path!r}")
    try:
        return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except Exception as err:  # any parse failure of an untrusted file becomes a ValueError
        if isinstance(err, ValueError) and repr(path) in str(err):
            raise
        raise ValueError(f"corrupt or unsupported PyTorch file {path!r}: {err!r}") from err
