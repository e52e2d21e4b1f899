"""Atomic file writes and the safetensors container, in plain Python + numpy.

safetensors layout (https://github.com/huggingface/safetensors, "Format"):

    8 bytes      N, unsigned little-endian 64-bit: the length of the header
    N bytes      UTF-8 JSON object: {"__metadata__": {str: str}, TENSOR: {"dtype": "F32",
                 "shape": [...], "data_offsets": [begin, end]}, ...}, padded with spaces
    rest         the tensors' bytes, little-endian, C order; offsets are relative to the
                 start of this section, contiguous, and together cover it exactly

Nothing here knows about models; :mod:`halcdl.io.native` defines what goes in the file.
Errors are raised as :class:`FileFormatError` (what is wrong) or ``OSError``; the caller
turns them into HALCON error numbers naming the file.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import secrets
import stat
import time
from typing import Callable, Iterable

import numpy as np

__all__ = [
    "FileFormatError",
    "canonical_json",
    "atomic_write",
    "write_safetensors",
    "parse_safetensors",
    "looks_like_safetensors",
]

# dtype names of the safetensors format <-> numpy (little-endian)
_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1"}
_DTYPE_OF = {np.dtype(v): k for k, v in _DTYPES.items()}
# the safetensors library refuses headers above 100 MB; so do we (a corrupted length field)
MAX_HEADER = 100_000_000
# deepest JSON nesting accepted in a header (halcdl writes at most ~6 levels)
MAX_JSON_DEPTH = 64
# at most this many tensors in one file (a 20,000-layer network has ~80,000)
MAX_TENSORS = 1_000_000


class FileFormatError(Exception):
    """The bytes are not what they should be.  ``kind``: 'truncated', 'corrupted' or
    'magic' (not this kind of file at all)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _plain(o):
    if isinstance(o, np.generic):  # numpy scalars that slipped into parameters
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def canonical_json(obj) -> str:
    """The one JSON spelling used for headers and checksums: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=_plain)


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def _write_bytes(f, data) -> None:
    """Every byte of a file goes through here (tests replace it to simulate a failure)."""
    f.write(data)


def atomic_write(path: str, write: Callable[[Callable[[bytes], None]], None]) -> None:
    """Write a file so that ``path`` holds either its old content or the complete new one.

    ``write(put)`` produces the content by calling ``put(bytes_like)`` any number of times.
    The bytes go to a temporary file in the same folder (so the rename cannot cross file
    systems), which is flushed and fsync'ed, then renamed over ``path`` (``os.replace``,
    atomic on POSIX); the folder is fsync'ed so the rename itself survives a crash.  On any
    error the temporary file is removed and the exception propagates (``OSError`` for the
    file system's errors).  A symbolic link at ``path`` is followed: its target is replaced.
    """
    # symbolic links (of the file or of a folder above it) resolved: the temporary file goes
    # next to the real file, and the rename replaces that file, not the link
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "is a directory", path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device, FIFO or socket: a rename would replace it by a regular file, and writing
        # into it directly is not atomic; refused (the caller raises 7781)
        raise OSError(errno.EINVAL, "not a regular file (device, FIFO or socket): refused",
                      path)
    folder = os.path.dirname(path)
    started = time.time()
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}."
                               f"{secrets.token_hex(4)}.tmp")
    # O_EXCL: never follow or reuse anything that is already there; 0o666 & ~umask as for a
    # plain open()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(lambda data: _write_bytes(f, data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename durable; not possible on every platform / file system
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    remove_stale_temporaries(folder, started)


# .<file name>.<pid>.<8 hex digits>.tmp, as atomic_write names its temporary files
_TMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return True


def remove_stale_temporaries(folder: str, before: float) -> list[str]:
    """Remove the temporary files of atomic_write that a killed write left in ``folder``:
    halcdl's naming, a regular file, last modified before ``before`` (the start of the
    current write), and its writer process no longer running — or not modified for a day.
    Returns the names removed; errors are ignored (best effort)."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        mt = _TMP_RE.match(e.name)
        if not mt:
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime >= before:
                continue
            if _alive(int(mt.group(1))) and st.st_mtime > before - 86400:
                continue
            os.unlink(e.path)
            removed.append(e.name)
        except OSError:
            continue
    return removed


# --------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------
def _le(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if a.dtype not in _DTYPE_OF:
        raise TypeError(f"unsupported tensor dtype {a.dtype}")
    return a


def tensor_table(tensors: Iterable[tuple[str, np.ndarray]]) -> tuple[dict, list[np.ndarray]]:
    """The header entries and the little-endian arrays, in the given order."""
    table: dict = {}
    arrays: list[np.ndarray] = []
    offset = 0
    for name, arr in tensors:
        if name in table or name == "__metadata__":
            raise ValueError(f"duplicate or reserved tensor name {name!r}")
        a = _le(np.asarray(arr))
        table[name] = {"dtype": _DTYPE_OF[a.dtype],
                       "shape": [int(s) for s in a.shape],
                       "data_offsets": [offset, offset + a.nbytes]}
        arrays.append(a)
        offset += a.nbytes
    return table, arrays


def header_bytes(header: dict) -> bytes:
    """Canonical JSON, padded with spaces to a multiple of 8 (the data section stays
    8-byte aligned, as the safetensors library writes it)."""
    raw = canonical_json(header).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(put: Callable[[bytes], None], header: dict,
                      arrays: list[np.ndarray]) -> None:
    """Emit a complete file: header (with ``__metadata__`` and the table) then the data."""
    put(header_bytes(header))
    for a in arrays:
        if a.nbytes:
            put(memoryview(a.reshape(-1)).cast("B"))


def looks_like_safetensors(head: bytes) -> bool:
    """True if the first bytes are those of a safetensors file: a length, then '{'."""
    return len(head) >= 9 and head[8:9] == b"{"


def json_depth_ok(obj, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if ``obj`` (parsed JSON) nests lists/dicts at most ``limit`` deep (iterative)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = o.values()
        elif not isinstance(o, list):
            continue
        if d > limit:
            return False
        stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return True


def load_json(text, what: str = "the header", check_depth: bool = True):
    """``json.loads`` with bounded nesting; :class:`FileFormatError` on anything wrong
    (invalid JSON, nesting beyond MAX_JSON_DEPTH, numbers beyond a double)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise FileFormatError("corrupted", f"{what} nests JSON too deeply") from None
    except (UnicodeDecodeError, ValueError, TypeError) as err:
        raise FileFormatError("corrupted", f"{what} is not valid JSON ({err})") from None
    if check_depth and not json_depth_ok(obj):
        raise FileFormatError("corrupted", f"{what} nests JSON deeper than {MAX_JSON_DEPTH} "
                                           f"levels")
    return obj


def read_safetensors_file(f, size: int) -> tuple[bytes, tuple[dict, dict, memoryview]]:
    """``(bytes, (metadata, table, data_section))`` of an open safetensors file of ``size``
    bytes (the header parsed once), the data read only after its header
    (length, JSON, tensor table) promises exactly ``size`` bytes: a corrupted length or a
    table claiming more data than there is fails before the data is read."""
    head = f.read(8)
    if len(head) < 8:
        raise FileFormatError("truncated", f"the file holds {len(head)} bytes, less than a "
                                           f"header")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER:
        raise FileFormatError("corrupted", f"header length field {n} is implausible")
    if 8 + n > size:
        raise FileFormatError("truncated", f"the header is {n} bytes but the file ends after "
                                           f"{size - 8}")
    header_raw = f.read(n)
    meta, table = _parse_header(header_raw)
    need = max((e["data_offsets"][1] for e in table.values()), default=0)
    if 8 + n + need > size:
        raise FileFormatError("truncated", f"the data section holds {size - 8 - n} of {need} "
                                           f"bytes")
    if 8 + n + need < size:
        raise FileFormatError("corrupted", f"{size - 8 - n - need} unexpected bytes after the "
                                           f"last tensor")
    data = head + header_raw + f.read(need)
    if len(data) != 8 + n + need:
        raise FileFormatError("truncated", "the file changed while it was read")
    return data, (meta, table, memoryview(data)[8 + n:])


def _parse_header(raw) -> tuple[dict, dict]:
    """(metadata, table) of the JSON header bytes, every entry checked (dtype, shape, offsets
    with exact integer arithmetic, contiguity)."""
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as err:
        raise FileFormatError("corrupted", f"the header is not valid UTF-8 ({err})") from None
    # depth: json's own recursion guard (RecursionError → 7780) suffices here, as every
    # entry below is checked to be flat (strings, a dtype, lists of ints)
    header = load_json(text, check_depth=False)
    if not isinstance(header, dict):
        raise FileFormatError("corrupted", "the header is not a JSON object")
    if len(header) > MAX_TENSORS + 1:
        raise FileFormatError("corrupted", f"the header lists {len(header) - 1} tensors")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise FileFormatError("corrupted", "__metadata__ must map strings to strings")
    spans = []
    for name, e in header.items():
        ok = (isinstance(e, dict) and e.get("dtype") in _DTYPES
              and isinstance(e.get("shape"), list) and len(e["shape"]) <= 8
              and all(type(s) is int and s >= 0 for s in e["shape"])
              and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
              and all(type(o) is int for o in e["data_offsets"]))
        if not ok:
            raise FileFormatError("corrupted", f"bad header entry for tensor {name!r}")
        b, end = e["data_offsets"]
        # Python ints: a shape of 2**70 cannot wrap around
        nbytes = math.prod(e["shape"]) * np.dtype(_DTYPES[e["dtype"]]).itemsize
        if end - b != nbytes or b < 0:
            raise FileFormatError("corrupted", f"tensor {name!r}: offsets {b}..{end} do not "
                                               f"match its shape {e['shape']}")
        spans.append((b, end, name))
    spans.sort()
    pos = 0
    for b, end, name in spans:
        if b != pos:
            raise FileFormatError("corrupted", f"tensor {name!r} starts at {b}, expected {pos}")
        pos = end
    return meta, header


def parse_safetensors(data: bytes) -> tuple[dict, dict, memoryview]:
    """``(metadata, table, data_section)`` of a whole file's bytes.

    Checks the structure only: the header length, JSON, each entry's dtype/shape/offsets,
    that the offsets are contiguous, and that the data section is exactly as long as they
    say.  Raises :class:`FileFormatError`."""
    size = len(data)
    if size < 9:
        raise FileFormatError("truncated", f"the file holds {size} bytes, less than a header")
    if not looks_like_safetensors(data):
        raise FileFormatError("magic", "not a safetensors file (no JSON header after the "
                                       "8-byte length)")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER:
        raise FileFormatError("corrupted", f"header length field {n} is implausible")
    if 8 + n > size:
        raise FileFormatError("truncated", f"the header is {n} bytes but the file ends after "
                                           f"{size - 8}")
    meta, header = _parse_header(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    pos = max((e["data_offsets"][1] for e in header.values()), default=0)
    if len(body) < pos:
        raise FileFormatError("truncated", f"the data section holds {len(body)} of {pos} "
                                           f"bytes")
    if len(body) > pos:
        raise FileFormatError("corrupted", f"{len(body) - pos} unexpected bytes after the "
                                           f"last tensor")
    return meta, header, body


def tensor_view(table: dict, body: memoryview, name: str) -> np.ndarray:
    """Read-only array view of one tensor of a parsed file (native byte order)."""
    e = table[name]
    b, end = e["data_offsets"]
    a = np.frombuffer(body[b:end], dtype=np.dtype(_DTYPES[e["dtype"]]))
    return a.reshape(e["shape"]).astype(a.dtype.newbyteorder("="), copy=False)
