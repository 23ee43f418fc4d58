"""Read a PyTorch state dict (`.pth`) into numpy arrays without importing torch.

Two on-disk layouts exist, and both hold the same pickle of the state dict, whose
persistent ids `('storage', StorageType, key, location, numel, ...)` point at raw storages:

- zip (torch >= 1.6, the default): `<prefix>/data.pkl`, one `<prefix>/data/<key>` entry
  of raw bytes per storage, `<prefix>/byteorder` ("little" or "big"; absent means little).
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): a stream of pickles
  (magic number, protocol version, system info, the state dict, the list of storage keys)
  followed by each storage as an int64 element count and its raw bytes, in key order.
  Older downloads (pytorch-fid's Inception weights date from 2019) may use it.

The unpickler is restricted: it resolves only `collections.OrderedDict`, torch's two tensor
rebuild functions and the `torch.*Storage` type names, so a file cannot run code on load.
Each tensor is rebuilt from (storage, offset, size, stride) with a bounds-checked
`as_strided` view of its storage, then copied to a contiguous native-endian array.
bfloat16 tensors become float32 (numpy has no bfloat16; the conversion is exact).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import tarfile
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage type name -> numpy dtype of one element (byte order applied later).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("f8"),
    "FloatStorage": np.dtype("f4"),
    "HalfStorage": np.dtype("f2"),
    "BFloat16Storage": np.dtype("u2"),  # raw bits; widened to float32 after rebuilding
    "LongStorage": np.dtype("i8"),
    "IntStorage": np.dtype("i4"),
    "ShortStorage": np.dtype("i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("c8"),
    "ComplexDoubleStorage": np.dtype("c16"),
}


class CheckpointError(ValueError):
    """The file is not a readable PyTorch state dict; the message is one line."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return _STORAGE_DTYPES[self.name]


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes are looked up once the pickle is read."""
    key: str
    storage_type: _StorageType
    numel: int
    view: tuple | None = None  # legacy (view_key, offset, size): a slice of storage `key`


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks, metadata
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    del requires_grad, backward_hooks
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; collects the storages it is pointed at."""

    def __init__(self, stream):
        super().__init__(stream)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"refusing global {module}.{name} (only tensors in (Ordered)dicts are allowed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        view = pid[5] if len(pid) > 5 else None
        root = self.storages.setdefault(key, _StorageRef(key, storage_type, numel))
        if root.storage_type != storage_type:
            raise pickle.UnpicklingError(f"storage {key} is used with two element types")
        if view is None:
            return root
        view_key, offset, view_numel = view
        return _StorageRef(key, storage_type, int(view_numel), (str(view_key), int(offset)))


class _NoPersistentUnpickler(_RestrictedUnpickler):
    def persistent_load(self, pid):
        raise pickle.UnpicklingError("unexpected persistent id in a header pickle")


# ----------------------------------------------------------------------------- tensors


def _storage_array(raw: bytes, ref: _StorageRef, big_endian: bool) -> np.ndarray:
    dtype = ref.storage_type.dtype.newbyteorder(">" if big_endian else "<")
    if len(raw) != ref.numel * dtype.itemsize:
        raise CheckpointError(
            f"storage {ref.key} holds {len(raw)} bytes, expected {ref.numel} x {dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype)


def _materialise(pending: _PendingTensor, storages: dict[str, np.ndarray]) -> np.ndarray:
    ref = pending.storage
    data = storages[ref.key]
    if ref.view is not None:
        _, view_offset = ref.view
        data = data[view_offset:view_offset + ref.numel]
    size, stride, offset = pending.size, pending.stride, pending.offset
    if len(size) != len(stride) or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise CheckpointError(f"bad tensor layout size={size} stride={stride}")
    if 0 in size:
        out = np.zeros(size, dtype=data.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or last >= data.size:
            raise CheckpointError(
                f"tensor (offset {offset}, size {size}, stride {stride}) runs past its "
                f"storage of {data.size} elements")
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=[s * data.itemsize for s in stride],
            writeable=False)
        out = np.array(view, order="C", copy=True)
    out = out.astype(out.dtype.newbyteorder("="), copy=False)
    if ref.storage_type.name == "BFloat16Storage":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _collect(obj) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"top-level object is a {type(obj).__name__}, not a state dict")
    tensors = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _PendingTensor):
            raise CheckpointError(
                f"entry {key!r:.60} is not a tensor (a flat state dict is expected)")
        tensors[key] = value
    return tensors


# ----------------------------------------------------------------------------- formats


def _read_zip(stream) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(stream) as archive:
        names = set(archive.namelist())
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise CheckpointError(f"expected one <prefix>/data.pkl entry, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        big_endian = False
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"unknown byte order {order!r}")
            big_endian = order == "big"
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])))
        pending = _collect(unpickler.load())
        storages = {}
        for key, ref in unpickler.storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise CheckpointError(f"missing storage entry {name}")
            storages[key] = _storage_array(archive.read(name), ref, big_endian)
    return {k: _materialise(t, storages) for k, t in pending.items()}


def _read_legacy(stream) -> dict[str, np.ndarray]:
    try:
        magic = _NoPersistentUnpickler(stream).load()
    except Exception:  # noqa: BLE001 - any unpickling failure means "not this format"
        magic = None
    if magic != _LEGACY_MAGIC:
        raise CheckpointError("not a zip archive and no legacy PyTorch magic number")
    protocol = _NoPersistentUnpickler(stream).load()
    if protocol != _LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = _NoPersistentUnpickler(stream).load()
    big_endian = not sys_info.get("little_endian", True)
    unpickler = _RestrictedUnpickler(stream)
    pending = _collect(unpickler.load())
    keys = _NoPersistentUnpickler(stream).load()
    storages = {}
    for key in keys:
        key = str(key)
        header = stream.read(8)
        if len(header) != 8:
            raise EOFError(f"no size for storage {key}")
        (numel,) = struct.unpack(">q" if big_endian else "<q", header)
        ref = unpickler.storages.get(key)
        if ref is None:
            raise CheckpointError(f"storage {key} is listed but no tensor uses it")
        if numel != ref.numel:
            raise CheckpointError(f"storage {key} has {numel} elements, expected {ref.numel}")
        raw = stream.read(numel * ref.storage_type.dtype.itemsize)
        storages[key] = _storage_array(raw, ref, big_endian)
    missing = set(unpickler.storages) - set(storages)
    if missing:
        raise CheckpointError(f"storages {sorted(missing)[:3]} are missing")
    return {k: _materialise(t, storages) for k, t in pending.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.pth` state dict without torch; each tensor becomes a contiguous numpy array.

    Raises FileNotFoundError for a missing file and ValueError (CheckpointError) with a
    one-line message naming the file for anything that is not a readable flat state dict.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            if zipfile.is_zipfile(stream):
                stream.seek(0)
                return _read_zip(stream)
            stream.seek(0)
            if stream.read(4) == b"PK\x03\x04":
                raise CheckpointError(
                    "zip archive without a readable central directory (truncated or corrupt)")
            if tarfile.is_tarfile(path):
                raise CheckpointError("the pre-1.0 PyTorch tar format is not supported")
            stream.seek(0)
            return _read_legacy(stream)
    except FileNotFoundError:
        raise
    except CheckpointError as error:
        raise CheckpointError(_one_line(path, str(error))) from None
    except Exception as error:  # noqa: BLE001 - untrusted bytes: every failure is "bad file"
        problem = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if isinstance(error, EOFError):
            problem = f"file ends early (truncated?): {problem}"
        raise CheckpointError(_one_line(path, problem)) from None


def _one_line(path: str, problem: Any) -> str:
    text = " ".join(str(problem).split())
    return f"cannot read PyTorch checkpoint {path}: {text}"
