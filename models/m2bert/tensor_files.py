"""Tensors from checkpoint files, without torch and without running pickled code.

torch's zip format (``torch.save``: ``pytorch_model.bin``, Composer ``.pt``) is read by a
restricted unpickler: ``find_class`` resolves only the names that rebuild a tensor from its
storage (``torch._utils._rebuild_tensor_v2``/``_v3``, ``_rebuild_parameter``, the storage
and dtype names) to this module's own functions, and every other global to an inert
placeholder class that records the name and runs nothing. A placeholder where a tensor is
expected is an error naming the global. ``.safetensors`` headers are parsed here too.

Before any tensor byte is copied, each tensor's dtype, shape, strides and storage offset are
checked against its storage (torch) or byte range (safetensors): views may not overlap
themselves (a stride-0 view of 10 elements cannot become 10^10 elements), storages must be
stored uncompressed with exactly the declared size, safetensors ranges may not overlap, and
the float32 copies of a file's tensors may not exceed ``_MAX_EXPANSION`` times its size.

Floating tensors are returned as float32: float16 and bfloat16 widen exactly; float64 is
accepted when every value is a float32 value (a checkpoint saved with ``model.double()``)
and refused otherwise, since rounding it would be a silent cast. Integer and boolean
tensors keep their dtype.
"""

from __future__ import annotations

import collections
import io
import json
import mmap
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import mlx.core as mx
import numpy as np

from .config import unique_keys


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model: the message says what
    is wrong, by file and parameter name, and what to pass instead."""


class UnsafePickleError(CheckpointError, pickle.UnpicklingError):
    """A pickle that holds something other than tensors: refused, never executed."""


# dtype name -> (numpy dtype of the stored bytes, little-endian; bytes per element)
_DTYPES: Dict[str, Tuple[str, int]] = {
    "float64": ("<f8", 8),
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),  # the upper half of a float32: widened by a 16-bit shift
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int16": ("<i2", 2),
    "int8": ("i1", 1),
    "uint64": ("<u8", 8),
    "uint32": ("<u4", 4),
    "uint16": ("<u2", 2),
    "uint8": ("u1", 1),
    "bool": ("?", 1),
}
# torch's typed storage classes (``_rebuild_tensor_v2``) by the dtype they hold
_TORCH_STORAGES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# torch dtypes this reader refuses, by name, so the error can name them
_OTHER_TORCH_DTYPES = (
    "complex32", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
    "float8_e5m2fnuz", "float8_e8m0fnu", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
)
_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}

_MAX_DIMS = 16
# data.pkl of a state dict has tens of kB, of a Composer .pt with optimizer state some
# hundred kB. A pickle can build ~64 bytes of Python objects per byte (empty dicts): this
# bounds that to ~0.5 GB.
_MAX_PICKLE_BYTES = 8 << 20
# distinct globals a pickle may name (each becomes a placeholder class, ~1 kB)
_MAX_PLACEHOLDER_CLASSES = 4096
_MAX_SAFETENSORS_HEADER_BYTES = 100 << 20  # the limit the safetensors format itself sets
# float32 copies may take this many times the file: float16 doubles, and a weight tied
# to another (one storage, two names) doubles again
_MAX_EXPANSION = 4
# torch < 1.6 wrote a bare pickle stream starting with this magic number
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: Optional[str]  # None for torch.storage.UntypedStorage (bytes; dtype on the tensor)
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A tensor in a torch zip file, not yet read: validated geometry over one storage."""

    storage: _Storage
    dtype: str
    offset: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=object))


class _Refused:
    """What a pickle built that is not a dense tensor; the reason says why it is refused."""

    reason = "not a tensor"

    def __init__(self, *args, **kwargs):
        pass


class _Placeholder(_Refused):
    """Inert stand-in for a global this reader does not resolve: pickling protocol calls
    on it (construction, __setstate__, item and list updates) store nothing and run
    nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _SparseTensor(_Refused):
    reason = "a sparse tensor: save it dense (tensor.to_dense()) and load that"


class _MetaTensor(_Refused):
    reason = "a tensor on the 'meta' device, which holds no values: save the real weights"


class _SubclassTensor(_Refused):
    reason = "a tensor subclass, quantized or wrapped tensor: save plain dense tensors"


def _describe(value: Any) -> str:
    """What a pickled value is, for an error message (never its full repr)."""
    if isinstance(value, _Refused):
        return value.reason
    if isinstance(value, (str, bytes, int, float)):
        text = repr(value)
        return f"{text[:60]}{'...' if len(text) > 60 else ''} ({type(value).__name__})"
    return f"a {type(value).__name__}"  # a container's repr could be huge or deep


@dataclass(frozen=True)
class _TorchDtype:
    """A ``torch.<dtype>`` global (``_rebuild_tensor_v3`` names the dtype of a byte storage)."""

    name: str


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_geometry(
    what: str, shape: Any, strides: Any, offset: Any, storage_numel: int
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Shape and strides as int tuples, or a CheckpointError: non-negative integers, at
    most _MAX_DIMS dimensions, every element inside the storage, and no two indices on
    the same element (so a view never holds more elements than its storage)."""
    if not isinstance(shape, tuple) or not isinstance(strides, tuple):
        raise CheckpointError(f"{what}: size and stride must be tuples of integers")
    if len(shape) != len(strides) or len(shape) > _MAX_DIMS:
        raise CheckpointError(
            f"{what}: size {len(shape)} dims, stride {len(strides)} dims (at most {_MAX_DIMS})"
        )
    if not all(_is_index(v) and v >= 0 for v in shape + strides + (offset,)):
        raise CheckpointError(
            f"{what}: size, stride and storage offset must be non-negative integers"
        )
    if 0 in shape:
        if offset > storage_numel:
            raise CheckpointError(f"{what}: storage offset {offset} beyond its storage")
        return shape, strides
    span = 1  # elements from the first to the last one the dimensions so far reach, + 1
    for size, stride in sorted(
        ((size, stride) for size, stride in zip(shape, strides) if size > 1),
        key=lambda dim: dim[1],
    ):
        if stride < span:
            raise CheckpointError(
                f"{what}: size {shape} with stride {strides} reuses storage elements "
                f"(an expanded or overlapping view); save a contiguous copy "
                f"(tensor.contiguous().clone())"
            )
        span += (size - 1) * stride
    if offset + span > storage_numel:
        raise CheckpointError(
            f"{what}: size {shape}, stride {strides} and offset {offset} reach element "
            f"{offset + span - 1} of a storage of {storage_numel} elements"
        )
    return shape, strides


def _as_float32(what: str, values: np.ndarray, dtype: str) -> np.ndarray:
    """Widen a floating array to float32 exactly; float64 only when every value is a
    float32 value. Integer and boolean arrays are returned as they are."""
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if dtype == "float16":
        return values.astype(np.float32)
    if dtype == "float64":
        narrowed = values.astype(np.float32)
        same = (narrowed.astype(np.float64) == values) | (np.isnan(values) & np.isnan(narrowed))
        if not same.all():
            index = np.unravel_index(int(np.argmin(same)), values.shape)
            raise CheckpointError(
                f"{what} is float64 and holds {float(values[index])!r} at index "
                f"{tuple(map(int, index))}, "
                f"which float32 cannot represent; the model computes with float32 "
                f"parameters and this reader does not round silently: save the tensors "
                f"as float32 (tensor.float()) if rounding is what you want"
            )
        return narrowed
    return values


def _to_mx(what: str, values: np.ndarray, dtype: str) -> mx.array:
    return mx.array(_as_float32(what, values, dtype))


def _check_total(path: Path, numels_and_dtypes, file_size: int) -> None:
    total = sum(numel * (4 if dtype.startswith(("float", "bfloat")) else _DTYPES[dtype][1])
                for numel, dtype in numels_and_dtypes)
    limit = _MAX_EXPANSION * file_size + (1 << 16)
    if total > limit:
        raise CheckpointError(
            f"{path}: its tensors would take {total} bytes, more than {_MAX_EXPANSION} times "
            f"the file's {file_size} bytes; only views sharing one storage can do that: "
            f"save each tensor with its own storage (tensor.clone())"
        )


# --- torch zip ---------------------------------------------------------------------------

def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor{,_v2}(storage, offset, size, stride, requires_grad,
    backward_hooks[, metadata])."""
    if not isinstance(storage, _Storage) or storage.dtype is None:
        return _Refused()
    return _tensor_ref(storage, storage.dtype, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_ignored):
    """torch._utils._rebuild_tensor_v3: an untyped (byte) storage plus a dtype."""
    if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
        return _Refused()
    if dtype.name not in _DTYPES:
        return _unsupported_dtype(dtype.name)
    itemsize = _DTYPES[dtype.name][1]
    if storage.dtype is not None or storage.numel % itemsize:
        raise CheckpointError(
            f"storage {storage.key!r}: {storage.numel} bytes do not hold whole {dtype.name} values"
        )
    typed = _Storage(storage.key, dtype.name, storage.numel // itemsize)
    return _tensor_ref(typed, dtype.name, offset, size, stride)


def _tensor_ref(storage: _Storage, dtype: str, offset, size, stride) -> TensorRef:
    shape, strides = check_geometry(
        f"tensor on storage {storage.key!r}", size, stride, offset, storage.numel
    )
    return TensorRef(storage, dtype, offset, shape, strides)


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter{,_with_state}: a Parameter is its data here."""
    return data


def _unsupported_dtype(name: str) -> _Refused:
    refused = _Refused()
    refused.reason = (
        f"a {name} tensor; this reader takes {', '.join(_DTYPES)}: convert it (tensor.float())"
    )
    return refused


_TORCH_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_sparse_tensor"): _SparseTensor,
    ("torch._utils", "_rebuild_sparse_csr_tensor"): _SparseTensor,
    ("torch._utils", "_rebuild_meta_tensor_no_storage"): _MetaTensor,
    ("torch._utils", "_rebuild_wrapper_subclass"): _SubclassTensor,
    ("torch._utils", "_rebuild_qtensor"): _SubclassTensor,
    ("torch._utils", "_rebuild_nested_tensor"): _SubclassTensor,
    ("torch._utils", "_rebuild_device_tensor_from_numpy"): _SubclassTensor,
    ("torch._tensor", "_rebuild_from_type_v2"): _SubclassTensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles the data.pkl of a torch zip file into dicts, lists, tuples, scalars,
    TensorRef and inert placeholders; no global outside _TORCH_FUNCTIONS is resolved."""

    def __init__(self, file):
        super().__init__(file)
        self._storages: Dict[str, _Storage] = {}
        self._placeholders: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _TORCH_FUNCTIONS:
            return _TORCH_FUNCTIONS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            # the storage's dtype name; persistent_load refuses the ones not in _DTYPES
            return _TORCH_STORAGES.get(name, name)
        if (module, name) == ("torch.storage", "UntypedStorage"):
            return None  # a byte storage: the tensor carries the dtype (_rebuild_tensor_v3)
        if module == "torch" and (name in _DTYPES or name in _OTHER_TORCH_DTYPES):
            return _TorchDtype(name)
        return self._placeholder(module, name)

    def _placeholder(self, module: str, name: str) -> type:
        if (module, name) not in self._placeholders:
            if len(self._placeholders) == _MAX_PLACEHOLDER_CLASSES:
                raise UnsafePickleError(
                    f"data.pkl names more than {_MAX_PLACEHOLDER_CLASSES} distinct globals; "
                    f"a checkpoint names a few"
                )
            reason = f"a pickled {module}.{name} object (refused, never executed)"
            self._placeholders[(module, name)] = type(
                f"Placeholder[{module}.{name}]", (_Placeholder,), {"reason": reason}
            )
        return self._placeholders[(module, name)]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unknown persistent id {_describe(pid)} in data.pkl")
        _, dtype, key, _location, numel = pid
        if not isinstance(key, str) or not _is_index(numel):
            raise CheckpointError(f"malformed storage reference {_describe(pid)} in data.pkl")
        if dtype is not None and dtype not in _DTYPES:
            raise CheckpointError(
                f"storage {key!r} holds {_describe(dtype)}, which this reader does not take "
                f"(complex, quantized or float8 storages); save float, integer or bool tensors"
            )
        storage = _Storage(key, dtype, numel)
        if self._storages.setdefault(key, storage) != storage:
            raise CheckpointError(
                f"storage {key!r} is declared twice with different types or sizes"
            )
        return storage


def _torch_zip_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
    if len(pickles) != 1 or pickles[0].count("/") != 1:
        raise CheckpointError(
            f"{path} is a zip file but not a torch checkpoint (it needs exactly one "
            f"<name>/data.pkl; it has {len(pickles)})"
        )
    return pickles[0][: -len("data.pkl")]


def _check_member(archive: zipfile.ZipFile, name: str, expected_size: Optional[int],
                  path: Path, limit: int) -> None:
    """The member exists, is stored uncompressed (so its size is bounded by the file's)
    and has ``expected_size`` bytes (if given) and at most ``limit``."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{path}: {name} is missing from the archive") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(
            f"{path}: {name} is compressed; torch.save stores members uncompressed: re-save "
            f"the checkpoint with torch.save instead of re-zipping it"
        )
    if expected_size is not None and info.file_size != expected_size:
        raise CheckpointError(
            f"{path}: {name} has {info.file_size} bytes, its tensors declare {expected_size}"
        )
    if info.file_size > limit:
        raise CheckpointError(f"{path}: {name} has {info.file_size} bytes (at most {limit})")


def _read_member(archive: zipfile.ZipFile, name: str, expected_size: Optional[int],
                 path: Path, limit: int) -> bytes:
    _check_member(archive, name, expected_size, path, limit)
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(f"{path}: {name} cannot be read ({error}): truncated?") from None


def read_torch_zip(path: Path) -> Any:
    """The object in a ``torch.save`` zip file, with TensorRef for each tensor and inert
    placeholders for everything not tensor-related; the tensors stay unread."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(
                f"{path} is a damaged or truncated zip file (no central directory): "
                f"download or save it again"
            )
        if head[:1] == b"\x80" and struct.pack("<Q", _LEGACY_TORCH_MAGIC & (2**64 - 1)) in head:
            raise UnsafePickleError(
                f"{path} is in torch's legacy format (torch < 1.6, or "
                f"_use_new_zipfile_serialization=False): re-save it with a current torch.save"
            )
        raise UnsafePickleError(
            f"{path} is not a torch zip checkpoint (torch.save format); bare pickles are "
            f"never unpickled: pass a pytorch_model.bin, .pt or .safetensors file"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path} is a damaged zip file: {error}") from None
    with archive:
        prefix = _torch_zip_prefix(archive, path)
        data = _read_member(archive, prefix + "data.pkl", None, path, _MAX_PICKLE_BYTES)
        unpickler = _RestrictedUnpickler(io.BytesIO(data))
        try:
            return unpickler.load()
        except CheckpointError as error:  # raised by this module while unpickling
            raise type(error)(f"{path}: {error}") from None
        except Exception as error:  # whatever a malformed pickle stream raises
            raise UnsafePickleError(
                f"{path}: data.pkl is not a valid pickle of tensors ({type(error).__name__}: "
                f"{error})"
            ) from None


def select_state_dict(path: Path, loaded: Any) -> Dict[str, TensorRef]:
    """The flat name -> TensorRef dict of a torch file: the object itself, or a Composer
    checkpoint's ``state.model``; anything that is not a tensor is an error naming it."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state"), Mapping) and (
        "model" in loaded["state"]
    ):
        loaded, where = loaded["state"]["model"], "state.model"  # Composer
    else:
        where = "the checkpoint"
    if isinstance(loaded, _Refused):
        raise UnsafePickleError(f"{path}: {where} is {loaded.reason}")
    if not isinstance(loaded, Mapping):
        raise CheckpointError(
            f"{path}: {where} is a {type(loaded).__name__}, not a state dict: save "
            f"model.state_dict() (or pass the HF pytorch_model.bin / Composer .pt)"
        )
    tensors: Dict[str, TensorRef] = {}
    for name, value in loaded.items():
        if not isinstance(name, str):
            raise CheckpointError(
                f"{path}: {where} has the key {_describe(name)}; state dict keys are "
                f"parameter names (strings)"
            )
        if isinstance(value, _Refused):
            error = UnsafePickleError if isinstance(value, _Placeholder) else CheckpointError
            raise error(f"{path}: {name} is {value.reason}")
        if not isinstance(value, TensorRef):
            raise CheckpointError(
                f"{path}: {name} is {_describe(value)}, not a tensor; a state dict maps "
                f"parameter names to tensors"
            )
        tensors[name] = value
    return tensors


def _byte_order(archive: zipfile.ZipFile, prefix: str, path: Path) -> str:
    if prefix + "byteorder" not in archive.namelist():
        return "<"  # files from before torch recorded it were little-endian
    order = _read_member(archive, prefix + "byteorder", None, path, 16)
    if order not in (b"little", b"big"):
        raise CheckpointError(f"{path}: byteorder is {order[:16]!r}, not little or big")
    return "<" if order == b"little" else ">"


def materialise(path: Path, refs: Dict[str, TensorRef]) -> Dict[str, mx.array]:
    """Read the tensors of ``refs`` from the torch zip file at ``path``: every storage's
    member and size, and the total size of the copies, are checked before any is read."""
    arrays: Dict[str, mx.array] = {}
    by_ref: Dict[TensorRef, mx.array] = {}  # a tied weight is read once
    with zipfile.ZipFile(path) as archive:
        prefix = _torch_zip_prefix(archive, path)
        order = _byte_order(archive, prefix, path)

        def member(storage: _Storage) -> Tuple[str, int]:
            return f"{prefix}data/{storage.key}", storage.numel * _DTYPES[storage.dtype][1]

        for storage in {ref.storage for ref in refs.values()}:
            _check_member(archive, *member(storage), path, 1 << 62)
        _check_total(path, ((ref.numel, ref.dtype) for ref in set(refs.values())),
                     path.stat().st_size)
        storages: Dict[str, np.ndarray] = {}
        for name, ref in refs.items():
            if ref not in by_ref:
                code, itemsize = _DTYPES[ref.dtype]
                key = ref.storage.key
                if key not in storages:
                    data = _read_member(archive, *member(ref.storage), path, 1 << 62)
                    storages[key] = np.frombuffer(data, np.dtype(code).newbyteorder(order))
                values = np.lib.stride_tricks.as_strided(
                    storages[key][ref.offset :], ref.shape,
                    tuple(stride * itemsize for stride in ref.strides), writeable=False,
                )
                native = values.astype(np.dtype(code).newbyteorder("="), copy=True)
                by_ref[ref] = _to_mx(f"{path}: {name}", native, ref.dtype)
            arrays[name] = by_ref[ref]
    return arrays


def read_torch_file(path: Path) -> Dict[str, mx.array]:
    """Name -> array of a ``torch.save`` zip file: a state dict or a Composer checkpoint."""
    refs = select_state_dict(path, read_torch_zip(path))
    return materialise(path, refs)


# --- safetensors -------------------------------------------------------------------------

def _safetensors_header(path: Path, handle, file_size: int) -> Tuple[Dict[str, Any], int]:
    if file_size < 8:
        raise CheckpointError(f"{path} has {file_size} bytes: too short for a safetensors file")
    (header_size,) = struct.unpack("<Q", handle.read(8))
    if header_size > min(_MAX_SAFETENSORS_HEADER_BYTES, file_size - 8):
        raise CheckpointError(
            f"{path}: the header claims {header_size} bytes; the file has {file_size} "
            f"(truncated or not a safetensors file)"
        )
    try:
        header = json.loads(handle.read(header_size).decode("utf-8"),
                            object_pairs_hook=unique_keys)
    except ValueError as error:  # not UTF-8, not JSON, or a name given twice
        raise CheckpointError(
            f"{path}: the safetensors header is not valid JSON: {error}"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + header_size


def _safetensors_entry(path: Path, name: str, entry: Any, data_size: int):
    what = f"{path}: {name}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"{what}: an entry needs exactly dtype, shape and data_offsets")
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{what}: dtype {entry['dtype']!r} is not one of {', '.join(_SAFETENSORS_DTYPES)}"
        )
    dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and len(shape) <= _MAX_DIMS
            and all(_is_index(v) and v >= 0 for v in shape)):
        raise CheckpointError(f"{what}: shape must be a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(_is_index(v) for v in offsets) and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise CheckpointError(
            f"{what}: data_offsets {offsets!r} are not [begin, end] within the {data_size} "
            f"data bytes (truncated file?)"
        )
    numel = int(np.prod(shape, dtype=object))
    if numel * _DTYPES[dtype][1] != offsets[1] - offsets[0]:
        raise CheckpointError(
            f"{what}: shape {shape} of {dtype} needs {numel * _DTYPES[dtype][1]} bytes, "
            f"data_offsets give {offsets[1] - offsets[0]}"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_safetensors(path: Path) -> Dict[str, mx.array]:
    """Name -> array of a ``.safetensors`` file, header checked before any data is read:
    known dtypes, sizes that match the byte ranges, ranges that tile the data exactly."""
    file_size = path.stat().st_size
    with open(path, "rb") as handle:
        header, data_start = _safetensors_header(path, handle, file_size)
        metadata = header.pop("__metadata__", None)  # mx.save_safetensors writes null
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
        data_size = file_size - data_start
        entries = {name: _safetensors_entry(path, name, entry, data_size)
                   for name, entry in header.items()}
        position = 0
        for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
            if begin != position:
                raise CheckpointError(
                    f"{path}: {name} starts at data byte {begin}, the previous tensor ends at "
                    f"{position}: the byte ranges "
                    f"{'overlap' if begin < position else 'leave a gap'}"
                )
            position = end
        if position != data_size:
            raise CheckpointError(
                f"{path}: the tensors cover {position} of the {data_size} data bytes"
            )
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return {
                name: _to_mx(f"{path}: {name}",
                             _copy_out(mapped, dtype, shape, data_start + begin), dtype)
                for name, (dtype, shape, begin, _) in entries.items()
            }


def _copy_out(buffer, dtype: str, shape: Tuple[int, ...], offset: int) -> np.ndarray:
    """A copy of the array at ``offset`` of ``buffer``; no view outlives this call (a
    memory map closes only without views into it)."""
    code, _ = _DTYPES[dtype]
    count = int(np.prod(shape, dtype=object))
    return np.frombuffer(buffer, dtype=code, count=count, offset=offset).reshape(shape).copy()


def read_tensors_file(path: os.PathLike) -> Dict[str, mx.array]:
    """Name -> array of a ``.safetensors`` or torch zip (``.bin``/``.pt``/``.pth``) file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return read_torch_file(path)
