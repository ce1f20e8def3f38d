"""Read a PyTorch checkpoint in the legacy (pre-1.6, non-zip) format without torch.

The legacy format is a sequence of pickles followed by raw storages:

1. the magic number;
2. the protocol version;
3. system info (byte order, type sizes);
4. the state dict, whose tensors reference storages through persistent ids;
5. the list of storage keys, in the order their bytes follow;
6. for each storage, its element count (int64, little-endian) and then its raw bytes.

Unpickling runs code named by the file, so the unpickler here resolves only the few
globals a state dict needs and rejects every other one.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from stream.errors import ModelError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, stride, requires_grad=False, hooks=None, *rest):
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a plain tensor state dict."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _load_restricted(f: BinaryIO):
    return _RestrictedUnpickler(f).load()


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read the tensors of a legacy-format checkpoint as numpy arrays, by state-dict key."""
    try:
        with open(path, "rb") as f:
            return _read(f)
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError) as exc:
        raise ModelError(
            f"cannot read weights file {path}: {exc}; "
            "it must be a PyTorch checkpoint in the legacy (non-zip) format"
        ) from exc


def _read(f: BinaryIO) -> dict[str, np.ndarray]:
    magic = _load_restricted(f)
    if magic != LEGACY_MAGIC:
        raise ValueError("not a legacy PyTorch checkpoint (wrong magic number)")
    protocol = _load_restricted(f)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"unsupported checkpoint protocol version {protocol}")
    sys_info = _load_restricted(f)
    if not sys_info.get("little_endian", False):
        raise ValueError("big-endian checkpoints are not supported")

    state = _load_restricted(f)
    storage_keys = _load_restricted(f)

    storages = _read_storages(f, storage_keys, state)
    return {name: _materialise(ref, storages) for name, ref in state.items()}


def _read_storages(f: BinaryIO, storage_keys: list, state: dict) -> dict[str, np.ndarray]:
    refs = {ref.storage.key: ref.storage for ref in state.values()}
    storages = {}
    for key in storage_keys:
        ref = refs[key]
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != ref.numel:
            raise ValueError(f"storage {key} contains {numel} elements, but the state dict expects {ref.numel}")
        data = f.read(numel * ref.dtype.itemsize)
        if len(data) != numel * ref.dtype.itemsize:
            raise ValueError(f"storage {key} is truncated")
        storages[key] = np.frombuffer(data, dtype=ref.dtype)
    return storages


def _materialise(ref: _TensorRef, storages: dict[str, np.ndarray]) -> np.ndarray:
    flat = storages[ref.storage.key]
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)
