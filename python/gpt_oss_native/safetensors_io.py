"""The safetensors format, read through mmap and written in a stream, with NumPy only (no torch).

A file is an 8-byte little-endian header length N, N bytes of JSON ``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then the data buffer, which the offsets index
(relative to its start) completely and without overlap. The header is validated in full before any tensor
is viewed, so a truncated or garbled file raises :class:`CheckpointError` instead of faulting in mmap.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Element sizes and the NumPy dtype each safetensors dtype is viewed as. bf16 and fp8 have no NumPy dtype:
# they are viewed as same-sized unsigned integers (the native module's convention for bf16).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "F8_E4M3": np.dtype(np.uint8),
    "F8_E5M2": np.dtype(np.uint8),
    "F8_E8M0": np.dtype(np.uint8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
# The same limit as the reference implementation (the `safetensors` crate): a larger header is garbage.
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and, where it applies, the tensor."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors spelling: "BF16", "U8", ...
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def _parse_entry(path: Path, name: str, entry: object) -> TensorInfo:
    where = f"tensor '{name}' in {path}"
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(
            f"{where}: header entry must have exactly dtype, shape and data_offsets, got {entry!r}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}"
        )
    info = TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if info.nbytes != expected:
        raise CheckpointError(
            f"{where}: data_offsets span {info.nbytes} bytes but {dtype} {list(shape)} needs {expected}"
        )
    return info


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


class SafetensorsFile:
    """A safetensors file mapped read-only. Tensors are zero-copy NumPy views that keep the mapping alive."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self.file_size = os.fstat(f.fileno()).st_size
                if self.file_size < 8:
                    raise CheckpointError(
                        f"{self.path}: {self.file_size} bytes is too short for a safetensors file "
                        "(truncated download?)"
                    )
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > MAX_HEADER_BYTES or 8 + header_len > self.file_size:
                    raise CheckpointError(
                        f"{self.path}: header length {header_len} does not fit the file "
                        f"({self.file_size} bytes): the file is truncated or not safetensors"
                    )
                header_bytes = f.read(header_len)
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror or e})") from e
        self.data_start = 8 + header_len
        self.metadata, self.tensors = self._parse_header(header_bytes)

    def _parse_header(self, header_bytes: bytes) -> tuple[dict[str, str], dict[str, TensorInfo]]:
        try:
            header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise CheckpointError(
                f"{self.path}: the header is not valid JSON ({e}): the file is corrupt"
            ) from e
        if not isinstance(header, dict):
            raise CheckpointError(
                f"{self.path}: the header must be a JSON object, got {type(header).__name__}"
            )
        metadata = header.pop(METADATA_KEY, {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise CheckpointError(f"{self.path}: {METADATA_KEY} must map strings to strings")
        tensors = {name: _parse_entry(self.path, name, entry) for name, entry in header.items()}
        # The buffer must be covered exactly: sorted by offset, each tensor starts where the previous ended.
        data_size = self.file_size - self.data_start
        previous: TensorInfo | None = None
        for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
            expected_begin = previous.end if previous else 0
            if previous and info.begin < expected_begin:
                raise CheckpointError(
                    f"tensor '{info.name}' in {self.path}: data_offsets {[info.begin, info.end]} "
                    f"overlap tensor '{previous.name}': the header is corrupt"
                )
            if info.begin > expected_begin:
                raise CheckpointError(
                    f"tensor '{info.name}' in {self.path}: data_offsets {[info.begin, info.end]} "
                    f"leave a gap after byte {expected_begin}: the header is corrupt"
                )
            if info.end > data_size:
                raise CheckpointError(
                    f"tensor '{info.name}' in {self.path}: its data ends at byte "
                    f"{self.data_start + info.end} but the file has only {self.file_size} bytes: "
                    "the file is truncated (download it again)"
                )
            previous = info
        return metadata, tensors

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only, C-contiguous view of the file (copied only if misaligned)."""
        info = self.tensors[name]
        dtype = DTYPES[info.dtype]
        count = math.prod(info.shape)
        offset = self.data_start + info.begin
        if count == 0:
            return np.empty(info.shape, dtype)
        view = np.frombuffer(self._mmap, dtype=dtype, count=count, offset=offset).reshape(info.shape)
        # Writers align tensors to their element size; a file that does not gets an aligned copy.
        return view if offset % dtype.itemsize == 0 else view.copy()


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its chunks (any shapes, C order, the right dtype) concatenate to the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Iterable[np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


def _header_bytes(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, object] = {METADATA_KEY: metadata} if metadata else {}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # data starts 8-aligned, as the reference writer does


def write_safetensors(
    path: str | os.PathLike[str], specs: Iterable[TensorSpec], metadata: dict[str, str] | None = None
) -> None:
    """Streams tensors to `path` chunk by chunk (never holding a whole tensor), via a temporary file.

    Tensors are laid out largest element size first so every tensor stays aligned to its element size.
    """
    ordered = sorted(specs, key=lambda s: -DTYPES[s.dtype].itemsize)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    header = _header_bytes(ordered, metadata)
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for spec in ordered:
                written = 0
                for chunk in _checked_chunks(spec):
                    f.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                    written += chunk.nbytes
                if written != spec.nbytes:
                    raise ValueError(
                        f"tensor '{spec.name}': chunks gave {written} bytes, expected {spec.nbytes}"
                    )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _checked_chunks(spec: TensorSpec) -> Iterator[np.ndarray]:
    want = DTYPES[spec.dtype]
    for chunk in spec.chunks:
        if chunk.dtype != want:
            raise TypeError(
                f"tensor '{spec.name}': chunk dtype {chunk.dtype}, expected {want} ({spec.dtype})"
            )
        yield chunk
