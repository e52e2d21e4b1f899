"""HALCON's binary dict files (``.hdict``, written by ``write_dict``), read and written in
plain Python + numpy.  The layout is described in docs/hdict.md; in short (all integers
big-endian):

    dict     := "HDICTIONARY\\0" u8 version(=1) u8 top(1 for the file's dict, 0 nested)
                u64 n_entries entry*n "YRANOITCIDH"
    entry    := key value
    key      := 0x04 string | 0x01 i64                     (string / integer key)
    value    := 0x00 tuple | 0x01 object                    (object: halcdl's extension)
    tuple    := u32 type u64 count element*count
                type 0 (empty), 1 (int: i64), 2 (real: f64), 4 (string), 8 (mixed: each
                element is u32 type + element), 16 (handle)
    string   := u32 n bytes[n] where the bytes are UTF-8 text, "\\0" and the encoding mark "u"
    handle   := u32 1 dict | u32 2 u64 index          (2: the same dict as handle number
                                                       `index`; handles are numbered from 0
                                                       in file order, inline or reference)

Python values: a dict is a HALCON dict (``str``/``int`` keys); a tuple of one value reads as
that value and a longer or empty one as a ``list`` (the convention of
:mod:`halcdl.operators.dict_ops`); a tuple HALCON stored as *mixed* reads as
:class:`MixedTuple` (a ``list``) so that writing it back gives the same bytes.  Images
(numpy arrays of rank 2 or 3) are stored as iconic objects (halcdl's own layout).

Errors: a damaged file raises HOperatorError 7780 naming the file; a missing one 5200; a
value that cannot be written 1201 (wrong type) or 1301 (wrong value); a failed write 7781.
"""

from __future__ import annotations

import numbers
import os
import stat
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_FILE_READ,
    H_ERR_DL_FILE_WRITE,
    H_ERR_FNF,
    H_ERR_WIPT1,
    H_ERR_WIPV1,
    HOperatorError,
)
from .files import atomic_write

__all__ = ["read_hdict", "write_hdict", "parse_hdict", "serialize_hdict", "read_file_bytes",
           "MixedTuple", "MAX_DEPTH"]

MAGIC = b"HDICTIONARY\x00"
TRAILER = b"YRANOITCIDH"
VERSION = 1

KEY_INT, KEY_STR = 0x01, 0x04
VALUE_TUPLE, VALUE_OBJECT = 0x00, 0x01
T_EMPTY, T_INT, T_REAL, T_STRING, T_MIXED, T_HANDLE = 0, 1, 2, 4, 8, 16
H_DICT, H_REF = 1, 2

#: the deepest nesting of inline dicts a file may have (HALCON's own files: < 10)
MAX_DEPTH = 100

# iconic objects (halcdl's extension): pixel type codes are HALCON's image type bits
_PIXEL_TYPES = {
    1: np.dtype("u1"),  # byte
    2: np.dtype(">i4"),  # int4
    4: np.dtype(">f4"),  # real
    32: np.dtype("i1"),  # int1
    512: np.dtype(">i2"),  # int2
    1024: np.dtype(">u2"),  # uint2
    4096: np.dtype(">i8"),  # int8
    0x10000: np.dtype(">f8"),  # halcdl only: double (HALCON has no such image type)
}
_PIXEL_CODE = {dt.newbyteorder("=").kind + str(dt.itemsize): code
               for code, dt in _PIXEL_TYPES.items()}

# the fewest bytes an item can take (checked before any allocation)
_MIN_ENTRY = 1 + 4 + 2 + 1 + 4 + 8  # string key "\0u" + empty tuple
_MIN_ELEMENT = {T_INT: 8, T_REAL: 8, T_STRING: 6, T_MIXED: 10, T_HANDLE: 12}
_MIN_IMAGE = 4 + 1 + 24  # pixel type, rank, height, width, channels


class MixedTuple(list):
    """A tuple HALCON stored as *mixed* (each element with its own type tag).  It is a plain
    ``list`` in every other respect; :func:`write_hdict` writes it as mixed again."""

    __slots__ = ()


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
class _Damaged(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.b = memoryview(data)
        self.n = len(data)
        self.p = 0
        self.handles: list = []  # handle number -> dict (None: a reference, not a target)

    def need(self, k: int, what: str) -> int:
        if k < 0 or k > self.n - self.p:
            raise _Damaged(f"truncated: {what} needs {k} bytes, {self.n - self.p} left")
        p = self.p
        self.p += k
        return p

    def u8(self, what: str) -> int:
        return self.b[self.need(1, what)]

    def u32(self, what: str) -> int:
        p = self.need(4, what)
        return int.from_bytes(self.b[p:p + 4], "big")

    def u64(self, what: str) -> int:
        p = self.need(8, what)
        return int.from_bytes(self.b[p:p + 8], "big")

    def i64(self, what: str) -> int:
        p = self.need(8, what)
        return int.from_bytes(self.b[p:p + 8], "big", signed=True)

    def string(self, what: str) -> str:
        n = self.u32(what + " length")
        if n < 2:
            raise _Damaged(f"{what}: length {n} is too short for the terminator")
        p = self.need(n, what)
        raw = bytes(self.b[p:p + n])
        if raw[-2:] != b"\x00u":
            raise _Damaged(f"{what}: missing terminator and UTF-8 mark")
        body = raw[:-2]
        if b"\x00" in body:
            raise _Damaged(f"{what}: NUL inside the string")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Damaged(f"{what}: not UTF-8 ({err.reason})") from None

    def count(self, min_size: int, what: str) -> int:
        c = self.u64(what + " count")
        if c * min_size > self.n - self.p:
            raise _Damaged(f"{what}: count {c} exceeds the remaining {self.n - self.p} bytes")
        return c

    # ---- structure
    def dict_(self, depth: int) -> dict:
        if depth > MAX_DEPTH:
            raise _Damaged(f"dicts nested deeper than {MAX_DEPTH}")
        p = self.need(len(MAGIC), "dict magic")
        if bytes(self.b[p:p + len(MAGIC)]) != MAGIC:
            raise _Damaged("not a HALCON dict (no HDICTIONARY magic)")
        version = self.u8("version")
        if version != VERSION:
            raise _Damaged(f"unsupported dict version {version}")
        flag = self.u8("header flag")
        if flag not in (0, 1):
            raise _Damaged(f"unknown header flag {flag}")
        return self.body(depth)

    def body(self, depth: int, into: dict | None = None) -> dict:
        d: dict = {} if into is None else into
        n = self.count(_MIN_ENTRY, "dict entries")
        for _ in range(n):
            tag = self.u8("key tag")
            if tag == KEY_STR:
                key: Any = self.string("key")
            elif tag == KEY_INT:
                key = self.i64("integer key")
            else:
                raise _Damaged(f"unknown key tag {tag}")
            if key in d:
                raise _Damaged(f"duplicate key {key!r}")
            kind = self.u8("value kind")
            if kind == VALUE_TUPLE:
                d[key] = self.tuple_(depth)
            elif kind == VALUE_OBJECT:
                d[key] = self.object_()
            else:
                raise _Damaged(f"unknown value kind {kind} for key {key!r}")
        p = self.need(len(TRAILER), "dict trailer")
        if bytes(self.b[p:p + len(TRAILER)]) != TRAILER:
            raise _Damaged("dict trailer YRANOITCIDH missing")
        return d

    def element(self, t: int, depth: int) -> Any:
        if t == T_INT:
            return self.i64("int")
        if t == T_REAL:
            p = self.need(8, "real")
            return float(np.frombuffer(self.b[p:p + 8], ">f8")[0])
        if t == T_STRING:
            return self.string("string")
        if t == T_HANDLE:
            return self.handle(depth)
        raise _Damaged(f"unknown element type {t} in a mixed tuple")

    def handle(self, depth: int) -> dict:
        kind = self.u32("handle kind")
        number = len(self.handles)
        if kind == H_DICT:
            d: dict = {}
            self.handles.append(d)  # registered first: the dict may refer to itself
            p = self.need(len(MAGIC), "dict magic")
            if bytes(self.b[p:p + len(MAGIC)]) != MAGIC:
                raise _Damaged("handle is not a dict (no HDICTIONARY magic)")
            if self.u8("version") != VERSION:
                raise _Damaged("unsupported nested dict version")
            if self.u8("header flag") not in (0, 1):
                raise _Damaged("unknown nested header flag")
            if depth + 1 > MAX_DEPTH:
                raise _Damaged(f"dicts nested deeper than {MAX_DEPTH}")
            return self.body(depth + 1, d)
        if kind == H_REF:
            ref = self.u64("handle reference")
            self.handles.append(None)
            if ref >= number or self.handles[ref] is None:
                raise _Damaged(f"handle reference {ref} names no earlier dict")
            return self.handles[ref]
        raise _Damaged(f"unsupported handle kind {kind} (only dicts are supported)")

    def tuple_(self, depth: int) -> Any:
        t = self.u32("tuple type")
        if t == T_EMPTY:
            if self.u64("tuple count") != 0:
                raise _Damaged("an empty tuple with elements")
            return []
        if t not in _MIN_ELEMENT:
            raise _Damaged(f"unknown tuple type {t}")
        c = self.count(_MIN_ELEMENT[t], "tuple")
        if c == 0:
            raise _Damaged(f"tuple of type {t} with no elements")
        if t in (T_INT, T_REAL):
            p = self.need(8 * c, "tuple data")
            vals = np.frombuffer(self.b[p:p + 8 * c], ">i8" if t == T_INT else ">f8").tolist()
        elif t == T_STRING:
            vals = [self.string("string") for _ in range(c)]
        elif t == T_HANDLE:
            vals = [self.handle(depth) for _ in range(c)]
        else:  # mixed
            return MixedTuple(self.element(self.u32("mixed element type"), depth)
                              for _ in range(c))
        return vals[0] if c == 1 else vals

    def object_(self) -> Any:
        c = self.count(_MIN_IMAGE, "object")
        if c == 0:
            raise _Damaged("an empty object")
        imgs = [self.image() for _ in range(c)]
        return imgs[0] if c == 1 else imgs

    def image(self) -> np.ndarray:
        code = self.u32("pixel type")
        if code not in _PIXEL_TYPES:
            raise _Damaged(f"unknown pixel type {code}")
        rank = self.u8("image rank")
        h, w, ch = self.u64("height"), self.u64("width"), self.u64("channels")
        if rank not in (2, 3) or (rank == 2 and ch != 1) or 0 in (h, w, ch):
            raise _Damaged(f"bad image rank {rank} / channels {ch}")
        dt = _PIXEL_TYPES[code]
        size = h * w * ch * dt.itemsize
        p = self.need(size, "image data")
        planes = np.frombuffer(self.b[p:p + size], dt).reshape(ch, h, w)
        img = np.ascontiguousarray(planes.transpose(1, 2, 0)).astype(dt.newbyteorder("="))
        return img[:, :, 0] if rank == 2 else img


def parse_hdict(data: bytes, name: str = "<bytes>") -> dict:
    """The dict in the bytes of a ``.hdict`` file; 7780 naming ``name`` if they are not one."""
    r = _Reader(bytes(data))
    try:
        d = r.dict_(0)
        if r.p != r.n:
            raise _Damaged(f"{r.n - r.p} bytes after the end of the dict")
    except _Damaged as err:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read dict file {name!r}: {err} (offset {r.p})") from None
    except RecursionError:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read dict file {name!r}: nested too deeply") from None
    return d


def read_file_bytes(path: str) -> bytes:
    """The bytes of a regular file: 5200 if it does not exist, 7780 if it cannot be read or
    is not a regular file (a directory, a device or a pipe would never end)."""
    name = os.fspath(path)
    not_regular = HOperatorError(H_ERR_DL_FILE_READ,
                                 f"cannot read dict file {name!r}: not a regular file")
    try:
        if not stat.S_ISREG(os.stat(name).st_mode):  # before open: a FIFO would block it
            raise not_regular
        with open(name, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise not_regular
            return f.read()
    except FileNotFoundError:
        raise HOperatorError(H_ERR_FNF, f"file {name!r} not found") from None
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read dict file {name!r}: {err.strerror or err}") from None
    except (ValueError, UnicodeError) as err:  # a NUL character, a lone surrogate in the name
        raise HOperatorError(H_ERR_DL_FILE_READ,
                             f"cannot read dict file {name!r}: invalid file name ({err})") from None


def read_hdict(path: str) -> dict:
    """Read a HALCON ``.hdict`` file (5200 if missing, 7780 if damaged)."""
    return parse_hdict(read_file_bytes(path), os.fspath(path))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _wrong_type(where: str, what: str) -> HOperatorError:
    return HOperatorError(H_ERR_WIPT1, f"cannot store {what} at {where} in a dict file")


def _is_int(v: Any) -> bool:
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, np.bool_)


def _is_real(v: Any) -> bool:
    return isinstance(v, (float, np.floating)) and not isinstance(v, np.complexfloating)


def _is_image(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim >= 2


class _Writer:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.numbers: dict[int, int] = {}  # id(dict) -> handle number
        self.count = 0
        self.keep: list = []  # keeps ids stable while writing

    def string(self, s: str, where: str) -> bytes:
        raw = s.encode("utf-8", errors="strict") if s.isascii() else self._utf8(s, where)
        if b"\x00" in raw:
            raise HOperatorError(H_ERR_WIPV1, f"string with a NUL character at {where}")
        raw += b"\x00u"
        return len(raw).to_bytes(4, "big") + raw

    @staticmethod
    def _utf8(s: str, where: str) -> bytes:
        try:
            return s.encode("utf-8")
        except UnicodeEncodeError:
            raise HOperatorError(H_ERR_WIPV1, f"string that is not valid Unicode at {where}") \
                from None

    def int64(self, v: Any, where: str) -> bytes:
        v = int(v)
        if not -(1 << 63) <= v < (1 << 63):
            raise HOperatorError(H_ERR_WIPV1, f"integer {v} beyond 64 bits at {where}")
        return v.to_bytes(8, "big", signed=True)

    def dict_(self, d: dict, top: bool, where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise HOperatorError(H_ERR_WIPV1, f"dicts nested deeper than {MAX_DEPTH} at {where}")
        put = self.out.append
        put(MAGIC + bytes([VERSION, 1 if top else 0]) + len(d).to_bytes(8, "big"))
        for key, value in list(d.items()):
            if isinstance(key, str):
                put(bytes([KEY_STR]) + self.string(key, where + " (a key)"))
            elif _is_int(key) and not isinstance(key, bool):
                put(bytes([KEY_INT]) + self.int64(key, where + " (a key)"))
            else:
                raise _wrong_type(where, f"a key of type {type(key).__name__}")
            self.value(value, f"{where}[{key!r}]", depth)
        put(TRAILER)

    def value(self, v: Any, where: str, depth: int) -> None:
        if _is_image(v) or (isinstance(v, (list, tuple)) and v and not isinstance(v, MixedTuple)
                            and all(_is_image(x) for x in v)):
            imgs = [v] if isinstance(v, np.ndarray) else list(v)
            self.out.append(bytes([VALUE_OBJECT]) + len(imgs).to_bytes(8, "big"))
            for img in imgs:
                self.image(img, where)
            return
        self.out.append(bytes([VALUE_TUPLE]))
        self.tuple_(v, where, depth)

    def image(self, img: np.ndarray, where: str) -> None:
        if img.ndim > 3:
            raise _wrong_type(where, f"an array of rank {img.ndim}")
        key = img.dtype.kind + str(img.dtype.itemsize)
        code = _PIXEL_CODE.get(key) if img.dtype.kind in "uif" else None
        if code is None:
            raise _wrong_type(where, f"an image of dtype {img.dtype}")
        h, w = img.shape[:2]
        ch = img.shape[2] if img.ndim == 3 else 1
        if 0 in (h, w, ch):
            raise HOperatorError(H_ERR_WIPV1, f"an empty image {img.shape} at {where}")
        planes = img.reshape(h, w, ch).transpose(2, 0, 1)
        data = np.ascontiguousarray(planes, dtype=_PIXEL_TYPES[code]).tobytes()
        self.out.append(code.to_bytes(4, "big") + bytes([img.ndim]) + h.to_bytes(8, "big")
                        + w.to_bytes(8, "big") + ch.to_bytes(8, "big") + data)

    def elements(self, v: Any, where: str) -> list:
        if v is None:
            return []
        if isinstance(v, dict):
            return [v]
        if isinstance(v, np.ndarray):
            if v.ndim > 1:
                raise _wrong_type(where, "an image inside a tuple")
            if v.dtype.kind not in "biuf" and v.dtype != object and v.dtype.kind != "U":
                raise _wrong_type(where, f"an array of dtype {v.dtype}")
            return list(v.reshape(-1))
        if isinstance(v, (list, tuple)):
            return list(v)
        return [v]

    def tuple_(self, v: Any, where: str, depth: int) -> None:
        put = self.out.append
        mixed = isinstance(v, MixedTuple)
        vals = self.elements(v, where)
        types = [self.type_of(x, where) for x in vals]
        if not vals:
            put(T_EMPTY.to_bytes(4, "big") + (0).to_bytes(8, "big"))
            return
        t = types[0] if not mixed and all(x == types[0] for x in types) else T_MIXED
        put(t.to_bytes(4, "big") + len(vals).to_bytes(8, "big"))
        if t == T_REAL:
            arr = np.asarray([float(x) for x in vals], dtype=">f8")
            put(arr.tobytes())
            return
        for x, xt in zip(vals, types):
            if t == T_MIXED:
                put(xt.to_bytes(4, "big"))
            self.element(x, xt, where, depth)

    def type_of(self, x: Any, where: str) -> int:
        if isinstance(x, dict):
            return T_HANDLE
        if isinstance(x, (str, np.str_)):
            return T_STRING
        if isinstance(x, (bool, np.bool_)) or _is_int(x):
            return T_INT
        if _is_real(x):
            return T_REAL
        if isinstance(x, (list, tuple)):
            raise _wrong_type(where, "a list inside a tuple (HALCON tuples are flat)")
        raise _wrong_type(where, f"a value of type {type(x).__name__}")

    def element(self, x: Any, t: int, where: str, depth: int) -> None:
        if t == T_INT:
            self.out.append(self.int64(x, where))
        elif t == T_REAL:
            self.out.append(np.asarray(float(x), ">f8").tobytes())
        elif t == T_STRING:
            self.out.append(self.string(str(x), where))
        else:  # a dict handle
            number = self.count
            self.count += 1
            known = self.numbers.get(id(x))
            if known is not None:
                self.out.append(H_REF.to_bytes(4, "big") + known.to_bytes(8, "big"))
                return
            self.numbers[id(x)] = number
            self.keep.append(x)
            self.out.append(H_DICT.to_bytes(4, "big"))
            self.dict_(x, False, where, depth + 1)


def serialize_hdict(obj: dict) -> bytes:
    """The bytes of a ``.hdict`` file holding ``obj`` (1201/1301 for values it cannot hold)."""
    if not isinstance(obj, dict):
        raise HOperatorError(H_ERR_WIPT1, f"a dict file holds a dict, got {type(obj).__name__}")
    w = _Writer()
    try:
        w.dict_(obj, True, "dict", 0)
    except RecursionError:
        raise HOperatorError(H_ERR_WIPV1, "dicts nested too deeply") from None
    return b"".join(w.out)


def write_hdict(obj: dict, path: str) -> None:
    """Write ``obj`` as a HALCON ``.hdict`` file, atomically (the file holds its old content
    or the complete new one).  Nothing is written if ``obj`` cannot be stored."""
    name = os.fspath(path)
    data = serialize_hdict(obj)
    try:
        atomic_write(name, lambda put: put(data))
    except OSError as err:
        raise HOperatorError(H_ERR_DL_FILE_WRITE,
                             f"cannot write dict file {name!r}: {err.strerror or err}") from None

