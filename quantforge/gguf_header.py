"""Reading and writing GGUF headers, bounded, for any tensor type id.

gguf-py's ``GGUFReader`` maps the whole file and refuses type ids it does not know (every
ik_llama.cpp-only type: 139 ``iq4_k``, 339 ``iq4_k_r4`` ...), so it cannot list an ik quant.
This reader streams only the header from any file-like object (a local file, or an HTTP range
reader for ``hf://`` sources), keeps raw type ids (names are resolved by the catalogue), and
checks every count and length against fixed limits and the bytes left in the file before it
allocates anything: a mutated or hostile header ends in ``InventoryError``, never in a huge
allocation or a crash.

The writer half (``header_bytes``, ``serialized_header_size``) serializes a KV set and tensor
infos exactly as ggml does, so the planner can predict a quantized file's header size and the
miniature-model writer can produce real GGUFs.
"""

from __future__ import annotations

import array
import os
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, overload

from pydantic import BaseModel, ConfigDict
from pydantic_core import SchemaSerializer, core_schema

from quantforge.errors import InventoryError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Bounds checked before any allocation (ggml's gguf.cpp has similar ones; ours are stricter
# where a real model never comes close).
MAX_STRING_BYTES = 64 * 1024 * 1024
MAX_ARRAY_COUNT = 1 << 27
MAX_TENSOR_COUNT = 1 << 20
MAX_KV_COUNT = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8
MAX_ELEMENTS = (1 << 63) - 1
#: GGML_MAX_NAME is 64 with the terminating NUL: llama.cpp refuses (mainline) or truncates (ik)
#: longer tensor names, and the regex cost bound of ``quantforge.regex_dialect`` relies on it.
MAX_TENSOR_NAME = 63
MAX_KEY_BYTES = 1 << 16


class ValueType:
    """GGUF metadata value type ids (``enum gguf_type``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# value type -> (struct format, array typecode, byte size) for fixed-size scalars.
_SCALAR: dict[int, tuple[str, str, int]] = {
    ValueType.UINT8: ("<B", "B", 1),
    ValueType.INT8: ("<b", "b", 1),
    ValueType.UINT16: ("<H", "H", 2),
    ValueType.INT16: ("<h", "h", 2),
    ValueType.UINT32: ("<I", "I", 4),
    ValueType.INT32: ("<i", "i", 4),
    ValueType.FLOAT32: ("<f", "f", 4),
    ValueType.BOOL: ("<?", "B", 1),
    ValueType.UINT64: ("<Q", "Q", 8),
    ValueType.INT64: ("<q", "q", 8),
    ValueType.FLOAT64: ("<d", "d", 8),
}
_TYPE_NAMES = {
    v: k.lower() for k, v in vars(ValueType).items() if not k.startswith("_") and isinstance(v, int)
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class StringArray(Sequence[str]):
    """The elements of a GGUF string array, kept as their serialized bytes, decoded on first use.

    A 49k-token vocabulary plus its merges is ~100k length-prefixed strings: decoding them one by
    one was most of a header read, and most readers never look at them (sizes, copies into a new
    header and re-serialization need only the bytes). ``raw`` is exactly what the file holds after
    the array's element count: per element a little-endian u64 length and the UTF-8 bytes
    (undecodable bytes become surrogate escapes, as for single strings).
    """

    __slots__ = ("_items", "_n", "raw")

    def __init__(self, raw: bytes, count: int) -> None:
        self.raw = raw
        self._n = count
        self._items: list[str] | None = None

    def _decoded(self) -> list[str]:
        if self._items is None:
            out: list[str] = []
            append, unpack, raw, off = out.append, _U64.unpack_from, self.raw, 0
            for _ in range(self._n):
                (n,) = unpack(raw, off)
                off += 8
                append(raw[off : off + n].decode("utf-8", errors="surrogateescape"))
                off += n
            self._items = out
        return self._items

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        return self._decoded()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StringArray):
            return self._n == other._n and self.raw == other.raw
        if isinstance(other, (list, tuple)):
            return self._decoded() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringArray([{head}{', …' if self._n > 3 else ''}], {self._n} strings)"

    def __reduce__(self) -> tuple[type[StringArray], tuple[bytes, int]]:
        return (StringArray, (self.raw, self._n))

    def tolist(self) -> list[str]:
        return list(self._decoded())


# ``model_dump(mode="json")`` of a GGUFValue (``value: Any``) serializes a StringArray as a list.
StringArray.__pydantic_serializer__ = SchemaSerializer(  # type: ignore[attr-defined]
    core_schema.any_schema(serialization=core_schema.plain_serializer_function_ser_schema(StringArray.tolist))
)


class GGUFValue(BaseModel):
    """One metadata value with its GGUF type, so it can be re-serialized byte for byte.

    ``value`` is a Python scalar, a ``str`` (undecodable bytes kept as surrogate escapes), or a
    list for arrays (of scalars, or ``GGUFValue`` for nested arrays). String arrays read from a
    file are a ``StringArray`` (a sequence equal to the list, decoded on first use); a plain list
    of ``str`` is accepted when writing.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: int
    value: Any
    #: Element type of an array (None for scalars).
    sub_type: int | None = None
    #: Serialized size of the value (type tag and key excluded); filled in by the reader.
    nbytes: int | None = None

    @classmethod
    def of(cls, value: Any, type: int, sub_type: int | None = None) -> GGUFValue:
        return cls.model_construct(type=type, value=value, sub_type=sub_type, nbytes=None)

    def size(self) -> int:
        """Bytes this value takes in a GGUF file (after its type tag)."""
        if self.nbytes is not None:
            return self.nbytes
        return _value_size(self.type, self.value, self.sub_type)

    def plain(self) -> Any:
        """The value without type information (nested arrays unwrapped)."""
        if self.type == ValueType.ARRAY and self.sub_type == ValueType.ARRAY:
            return [v.plain() for v in self.value]
        return self.value

    @property
    def type_name(self) -> str:
        name = _TYPE_NAMES.get(self.type, str(self.type))
        if self.type == ValueType.ARRAY:
            return f"array[{_TYPE_NAMES.get(self.sub_type or 0, str(self.sub_type))}]"
        return name


class GGUFTensorInfo(BaseModel):
    """One tensor info record: name, ggml shape (ne0 first), raw type id, data offset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: tuple[int, ...]
    #: Raw ``ggml_type`` id, known to gguf-py or not (139 = ik ``iq4_k`` ...).
    type_id: int
    #: Offset of the tensor data relative to the start of the data section.
    offset: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class GGUFHeader(BaseModel):
    """The parsed header of one GGUF file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str | None
    version: int
    kv: dict[str, GGUFValue]
    tensors: tuple[GGUFTensorInfo, ...]
    alignment: int
    #: Bytes from the start of the file to the end of the last tensor info (no padding).
    header_size: int
    #: Start of the tensor data: ``header_size`` rounded up to ``alignment``.
    data_offset: int
    #: Total file size when the source knows it.
    file_size: int | None
    #: Bytes actually read from the source to parse the header (over HTTP: bytes fetched).
    bytes_read: int

    def get(self, key: str, default: Any = None) -> Any:
        """The plain value of a KV key, or ``default``."""
        v = self.kv.get(key)
        return default if v is None else v.plain()

    @property
    def architecture(self) -> str | None:
        arch = self.get("general.architecture")
        return arch if isinstance(arch, str) else None


class _Readable(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


# --------------------------------------------------------------------------------------------
# reading


class _Cursor:
    """A forward-only buffered reader over a file-like object that knows what it is parsing.

    Data is pulled in chunks that grow with what has been read so far (so that a remote
    source fetches less than twice the header), and every length is checked against the
    bytes left in the file before it is requested.
    """

    def __init__(self, f: _Readable, *, size: int | None, where: str, first_chunk: int) -> None:
        self.f = f
        self.size = size
        self.where = where
        self.buf = b""
        self.off = 0
        self.base = 0  # file position of buf[0]
        self.fetched = 0
        self.first_chunk = first_chunk
        self.context = "the file header"

    @property
    def pos(self) -> int:
        return self.base + self.off

    def left(self) -> int | None:
        return None if self.size is None else self.size - self.pos

    def fail(self, message: str, hint: str | None = None) -> InventoryError:
        return InventoryError(message, where=self.where, hint=hint)

    def truncated(self, detail: str | None = None) -> InventoryError:
        extra = f" ({detail})" if detail else ""
        return self.fail(
            f"truncated GGUF header at byte {self.pos}: file ends inside {self.context}{extra}",
            hint="the file is incomplete; download it again",
        )

    def fill(self, n: int) -> None:
        """Make ``n`` bytes available at ``off`` or raise the truncation error."""
        avail = len(self.buf) - self.off
        if avail >= n:
            return
        if self.size is not None and self.pos + n > self.size:
            raise self.truncated()
        want = max(n - avail, self.first_chunk, self.fetched)
        if self.size is not None:
            want = min(want, self.size - self.base - len(self.buf))
        parts = [self.buf[self.off :]]
        got = 0
        while got < n - avail:
            chunk = self.f.read(want - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        self.fetched += got
        self.base += self.off
        self.buf = b"".join(parts)
        self.off = 0
        if len(self.buf) < n:
            raise self.truncated()

    def take(self, n: int) -> bytes:
        self.fill(n)
        b = self.buf[self.off : self.off + n]
        self.off += n
        return b

    def u32(self) -> int:
        self.fill(4)
        (v,) = _U32.unpack_from(self.buf, self.off)
        self.off += 4
        return int(v)

    def u64(self) -> int:
        self.fill(8)
        (v,) = _U64.unpack_from(self.buf, self.off)
        self.off += 8
        return int(v)

    def string(self, what: str) -> str:
        n = self.u64()
        self.check_string_len(n, what)
        return self.take(n).decode("utf-8", errors="surrogateescape")

    def name(self, what: str, limit: int) -> str:
        """A key or tensor name: at most ``limit`` bytes of valid UTF-8, no NUL."""
        at = self.pos
        n = self.u64()
        self.check_string_len(n, what)
        if n > limit:
            raise self.fail(f"malformed GGUF header: {what} is {n} bytes long (at most {limit})",
                            hint="the file is damaged or was not written by ggml")
        raw = self.take(n)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"malformed GGUF header: {what} is not valid UTF-8 (byte {at + 8 + exc.start})",
                            hint="the file is damaged") from None
        if "\0" in text:
            raise self.fail(f"malformed GGUF header: {what} contains a NUL byte", hint="the file is damaged")
        return text

    def check_string_len(self, n: int, what: str) -> None:
        if n > MAX_STRING_BYTES:
            raise self.fail(f"absurd GGUF header: {what} has a string length of {n} bytes (limit {MAX_STRING_BYTES})")
        left = self.left()
        if left is not None and n > left:
            raise self.truncated()

    def check_count(self, count: int, min_item: int, limit: int, what: str) -> None:
        if count > limit:
            raise self.fail(f"absurd GGUF header: {what} is {count} (limit {limit})")
        left = self.left()
        if left is not None and count * min_item > left:
            raise self.truncated(f"{count} items need at least {count * min_item} bytes, {left} are left")

    def string_array(self, count: int, what: str) -> bytes:
        """The serialized bytes of ``count`` length-prefixed strings: lengths walked, nothing decoded."""
        parts: list[bytes] = []
        unpack = _U64.unpack_from
        k = 0
        while True:
            buf, off = self.buf, self.off
            seg, end = off, len(buf)
            # Fast walk through what is buffered. A buffer no longer than the string limit cannot
            # hold an over-long string, so only "does it end inside the buffer" needs checking.
            if end <= MAX_STRING_BYTES:
                first = k
                try:
                    for k in range(first, count):  # noqa: B007 - k, read after the loop, says where it stopped
                        nxt = off + 8 + unpack(buf, off)[0]
                        if nxt > end:
                            break
                        off = nxt
                    else:
                        k = count
                except struct.error:  # fewer than 8 bytes left for element k's length
                    pass
            parts.append(buf[seg:off])
            self.off = off
            if k >= count:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            # Element k the careful way: refill, with the same checks as a single string.
            self.fill(8)
            (n,) = unpack(self.buf, self.off)
            self.off += 8  # messages name the position after the length, as for one string
            self.check_string_len(n, what)
            self.off -= 8
            self.fill(8 + n)  # the length prefix stays: it is part of the raw bytes
            parts.append(self.buf[self.off : self.off + 8 + n])
            self.off += 8 + n
            k += 1


def _read_value(cur: _Cursor, vtype: int, what: str, depth: int = 0) -> GGUFValue:
    start = cur.pos
    if vtype in _SCALAR:
        fmt, _, size = _SCALAR[vtype]
        cur.fill(size)
        (v,) = struct.unpack_from(fmt, cur.buf, cur.off)
        cur.off += size
        return GGUFValue.model_construct(type=vtype, value=v, sub_type=None, nbytes=size)
    if vtype == ValueType.STRING:
        at = cur.pos
        raw_len = cur.u64()
        cur.check_string_len(raw_len, what)
        raw = cur.take(raw_len)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise cur.fail(f"malformed GGUF metadata: {what} is not valid UTF-8 (byte {at + 8 + exc.start})",
                           hint="the file is damaged, or was written by a tool that does not follow the GGUF spec") from None
        return GGUFValue.model_construct(type=vtype, value=s, sub_type=None, nbytes=cur.pos - start)
    if vtype == ValueType.ARRAY:
        if depth >= MAX_ARRAY_NESTING:
            raise cur.fail(f"absurd GGUF header: {what} nests arrays deeper than {MAX_ARRAY_NESTING}")
        sub = cur.u32()
        count = cur.u64()
        if sub in _SCALAR:
            _, code, size = _SCALAR[sub]
            cur.check_count(count, size, MAX_ARRAY_COUNT, f"the element count of {what}")
            raw = cur.take(count * size)
            arr = array.array(code)
            arr.frombytes(raw)
            if sys.byteorder != "little":
                arr.byteswap()
            values: list[Any] = arr.tolist()
            if sub == ValueType.BOOL:
                values = [bool(x) for x in values]
        elif sub == ValueType.STRING:
            cur.check_count(count, 8, MAX_ARRAY_COUNT, f"the element count of {what}")
            strings = StringArray(cur.string_array(count, what), count)
            return GGUFValue.model_construct(type=vtype, value=strings, sub_type=sub, nbytes=cur.pos - start)
        elif sub == ValueType.ARRAY:
            cur.check_count(count, 12, MAX_ARRAY_COUNT, f"the element count of {what}")
            values = [_read_value(cur, sub, what, depth + 1) for _ in range(count)]
        else:
            raise cur.fail(f"unknown GGUF value type {sub} in the elements of {what}")
        return GGUFValue.model_construct(type=vtype, value=values, sub_type=sub, nbytes=cur.pos - start)
    raise cur.fail(f"unknown GGUF value type {vtype} in {what}", hint="the file is damaged or not a GGUF")


def read_header(
    source: str | os.PathLike[str] | BinaryIO | _Readable,
    *,
    size: int | None = None,
    where: str | None = None,
    first_chunk: int = 1 << 20,
) -> GGUFHeader:
    """Parse the header of a GGUF file (a path or a binary file-like object positioned at 0).

    Reads only the header. ``size`` (the file size) enables the bytes-left checks; for a path
    or a real file it is found with ``stat``. ``first_chunk`` is the first read's size; later
    reads grow with the total read so far.
    """
    if isinstance(source, (str, os.PathLike)):
        from quantforge.paths import open_input, os_error

        path = Path(source)
        label = where or str(path)
        if not path.exists() and not path.is_symlink():
            raise InventoryError("no such file", where=label, hint="check the path")
        # A FIFO, a device (/dev/zero), a folder or a symlink loop is refused before one byte is read.
        with open_input(path, what="GGUF", error=InventoryError) as f:
            st = os.fstat(f.fileno())
            try:
                return _parse(f, size=st.st_size, where=label, path=str(path), first_chunk=first_chunk)
            except OSError as exc:
                raise os_error(exc, path, what="GGUF", error=InventoryError) from None
    label = where or str(getattr(source, "name", "<stream>"))
    if size is None:
        try:
            size = os.fstat(source.fileno()).st_size  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            size = None
    return _parse(source, size=size, where=label, path=None, first_chunk=first_chunk)


def _parse(f: _Readable, *, size: int | None, where: str, path: str | None, first_chunk: int) -> GGUFHeader:
    cur = _Cursor(f, size=size, where=where, first_chunk=min(first_chunk, 8 << 20))
    cur.context = "the magic number"
    if size is not None and size < 4:
        raise cur.fail(f"not a GGUF file ({size} bytes long)", hint="give a .gguf model file")
    magic = cur.take(4)
    if magic != GGUF_MAGIC:
        raise cur.fail(f"not a GGUF file (magic {magic!r})", hint="give a .gguf model file")
    cur.context = "the version"
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
            raise cur.fail("big-endian GGUF files are not supported", hint="use a little-endian GGUF")
        raise cur.fail(
            f"unsupported GGUF version {version} (supported: {', '.join(map(str, SUPPORTED_VERSIONS))})",
            hint="re-convert the model with a current convert_hf_to_gguf.py",
        )
    cur.context = "the tensor and KV counts"
    n_tensors = cur.u64()
    n_kv = cur.u64()
    # A KV pair takes at least 8 (key len) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 4 + 8.
    if n_tensors > MAX_TENSOR_COUNT:
        raise cur.fail(f"absurd GGUF header: the tensor count is {n_tensors} (limit {MAX_TENSOR_COUNT})")
    cur.context = "the KV pairs"
    cur.check_count(n_kv, 13, MAX_KV_COUNT, "the KV count")

    kv: dict[str, GGUFValue] = {}
    for i in range(n_kv):
        cur.context = f"KV {i}"
        key = cur.name(f"the key of KV {i}", MAX_KEY_BYTES)
        cur.context = f"KV {i} ({key})"
        if key in kv:
            raise cur.fail(f"duplicate KV key {key!r}")
        vtype = cur.u32()
        kv[key] = _read_value(cur, vtype, f"KV {i} ({key})")

    alignment = DEFAULT_ALIGNMENT
    if "general.alignment" in kv:
        a = kv["general.alignment"]
        if a.type != ValueType.UINT32 or not isinstance(a.value, int) or a.value <= 0 or a.value & (a.value - 1):
            raise cur.fail(f"general.alignment must be a power-of-two uint32, got {a.value!r}")
        alignment = a.value

    cur.context = "the tensor infos"
    cur.check_count(n_tensors, 24, MAX_TENSOR_COUNT, "the tensor count")
    tensors: list[GGUFTensorInfo] = []
    names: set[str] = set()
    for i in range(n_tensors):
        cur.context = f"tensor info {i}"
        name = cur.name(f"the name of tensor info {i}", MAX_TENSOR_NAME)
        if name in names:
            raise cur.fail(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise cur.fail(f"absurd GGUF header: tensor {name!r} has {n_dims} dimensions (ggml allows {MAX_DIMS})")
        cur.fill(8 * n_dims + 12)
        dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.off)
        cur.off += 8 * n_dims
        n = 1
        for d in dims:
            if d <= 0:
                raise cur.fail(f"absurd GGUF header: tensor {name!r} has a dimension of {d}")
            n *= d
            if n > MAX_ELEMENTS:
                raise cur.fail(f"absurd GGUF header: tensor {name!r} has more than 2^63 elements ({list(dims)})")
        type_id = cur.u32()
        offset = cur.u64()
        tensors.append(GGUFTensorInfo(name=name, shape=tuple(int(d) for d in dims), type_id=type_id, offset=offset))

    header_size = cur.pos
    data_offset = _align(header_size, alignment)
    if size is not None and data_offset > size:
        cur.context = "the padding before the tensor data"
        raise cur.truncated()
    return GGUFHeader(
        path=path,
        version=version,
        kv=kv,
        tensors=tuple(tensors),
        alignment=alignment,
        header_size=header_size,
        data_offset=data_offset,
        file_size=size,
        bytes_read=cur.fetched,
    )


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


# --------------------------------------------------------------------------------------------
# writing / sizing


def _value_size(vtype: int, value: Any, sub_type: int | None) -> int:
    if vtype in _SCALAR:
        return _SCALAR[vtype][2]
    if vtype == ValueType.STRING:
        return 8 + len(str(value).encode("utf-8", errors="surrogateescape"))
    if vtype == ValueType.ARRAY:
        if sub_type is None:
            raise ValueError("an array value needs sub_type")
        n = 12
        if sub_type in _SCALAR:
            return n + _SCALAR[sub_type][2] * len(value)
        if sub_type == ValueType.STRING:
            if isinstance(value, StringArray):
                return n + len(value.raw)
            return n + sum(8 + len(s.encode("utf-8", errors="surrogateescape")) for s in value)
        if sub_type == ValueType.ARRAY:
            return n + sum(int(v.size()) for v in value)
    raise ValueError(f"unknown GGUF value type {vtype}")


class _HasShape(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> tuple[int, ...]: ...


def _kv_items(kv: Mapping[str, GGUFValue] | Iterable[tuple[str, GGUFValue]]) -> list[tuple[str, GGUFValue]]:
    return list(kv.items()) if isinstance(kv, Mapping) else list(kv)


def serialized_header_size(
    kv_items: Mapping[str, GGUFValue] | Iterable[tuple[str, GGUFValue]],
    tensor_infos: Iterable[_HasShape],
    alignment: int = DEFAULT_ALIGNMENT,
) -> int:
    """Exact bytes before the tensor data of a GGUF with these KVs and tensors (padding included).

    Equals ``GGUFHeader.data_offset`` of a file ggml (or ``header_bytes``) writes with them.
    """
    n = 4 + 4 + 8 + 8
    for key, value in _kv_items(kv_items):
        n += 8 + len(key.encode("utf-8")) + 4 + value.size()
    for t in tensor_infos:
        n += 8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8
    return _align(n, alignment)


def _write_value(out: list[bytes], vtype: int, value: Any, sub_type: int | None) -> None:
    if vtype in _SCALAR:
        out.append(struct.pack(_SCALAR[vtype][0], value))
    elif vtype == ValueType.STRING:
        b = str(value).encode("utf-8", errors="surrogateescape")
        out.append(_U64.pack(len(b)) + b)
    elif vtype == ValueType.ARRAY:
        if sub_type is None:
            raise ValueError("an array value needs sub_type")
        out.append(_U32.pack(sub_type) + _U64.pack(len(value)))
        if sub_type in _SCALAR:
            fmt = _SCALAR[sub_type][0]
            out.append(struct.pack(f"<{len(value)}{fmt[1]}", *value))
        elif sub_type == ValueType.STRING and isinstance(value, StringArray):
            out.append(value.raw)  # the bytes as read: exact, and no re-encoding
        elif sub_type == ValueType.STRING:
            for s in value:
                b = s.encode("utf-8", errors="surrogateescape")
                out.append(_U64.pack(len(b)) + b)
        elif sub_type == ValueType.ARRAY:
            for v in value:
                _write_value(out, v.type, v.value, v.sub_type)
        else:
            raise ValueError(f"unknown GGUF value type {sub_type}")
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")


def header_bytes(
    kv_items: Mapping[str, GGUFValue] | Iterable[tuple[str, GGUFValue]],
    tensor_infos: Iterable[GGUFTensorInfo],
    alignment: int = DEFAULT_ALIGNMENT,
    *,
    version: int = 3,
) -> bytes:
    """Serialize a GGUF header (magic to the padded start of the tensor data)."""
    items = _kv_items(kv_items)
    infos = list(tensor_infos)
    out: list[bytes] = [GGUF_MAGIC, _U32.pack(version), _U64.pack(len(infos)), _U64.pack(len(items))]
    for key, value in items:
        kb = key.encode("utf-8")
        out.append(_U64.pack(len(kb)) + kb + _U32.pack(value.type))
        _write_value(out, value.type, value.value, value.sub_type)
    for t in infos:
        nb = t.name.encode("utf-8")
        out.append(_U64.pack(len(nb)) + nb + _U32.pack(len(t.shape)))
        out.append(struct.pack(f"<{len(t.shape)}Q", *t.shape))
        out.append(_U32.pack(t.type_id) + _U64.pack(t.offset))
    blob = b"".join(out)
    return blob + b"\0" * (_align(len(blob), alignment) - len(blob))


# ---------------------------------------------------------------------------------------------
# fork detection: which engine wrote the file, decided before any type id is given a name

Fork = Literal["ik", "mainline"]
_FORK_LABEL = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}


class ForkVerdict(BaseModel):
    """Which fork's type ids a GGUF (or a split set) uses, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: "ik" / "mainline" when something in the file belongs to one fork only; None when nothing
    #: does (an F16/BF16 base or a q8_0 quant reads the same in both).
    fork: Fork | None
    #: What decided it, for people ("type id 139 (iq4_k) exists only in ik_llama.cpp", ...).
    evidence: tuple[str, ...] = ()
    #: Type ids present in the file that the forks define differently (41: q1_0 / q1_0_g128).
    ambiguous_ids: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return _FORK_LABEL[self.fork] if self.fork else "either (nothing fork-specific)"


def detect_fork(headers: Sequence[GGUFHeader], *, where: str) -> ForkVerdict:
    """Decide the fork of a GGUF from its tensor type ids and KV metadata (all shards together).

    Type ids that only one fork defines decide it (ik: 139 ``iq4_k`` ...; mainline: 34/35
    ``tq1_0``/``tq2_0``, 40 ``nvfp4``, 42 ``q2_0``); then a ``general.file_type`` value only one
    fork's llama-quantize writes; then ``quantize.imatrix.entries_count`` stored as UINT32, which
    only mainline's llama-quantize does (ik stores INT32); then the ik-only MLA layout. Ids of
    both forks in one file is an ``InventoryError``.
    """
    from quantforge.catalogue import (
        ambiguous_type_ids,
        catalogue,
        file_type_engines,
        file_type_names,
        type_id_engines,
    )

    known = type_id_engines()
    ids = sorted({t.type_id for h in headers for t in h.tensors})
    votes: dict[str, list[str]] = {"ik": [], "mainline": []}
    for type_id in ids:
        engines = known.get(type_id, ())
        if len(engines) == 1:
            eng = engines[0]
            qt = catalogue(eng).by_id(type_id)
            votes[eng].append(f"type id {type_id} ({qt.name if qt else '?'}) exists only in {_FORK_LABEL[eng]}")
    if votes["ik"] and votes["mainline"]:
        raise InventoryError(
            f"the file mixes type ids of both forks ({votes['ik'][0]}; {votes['mainline'][0]})",
            where=where,
            hint="the file is damaged or was written by a third fork; re-download or re-quantize it",
        )
    ambiguous = tuple(i for i in ids if i in ambiguous_type_ids())
    strong = "ik" if votes["ik"] else "mainline" if votes["mainline"] else None
    if strong is not None:
        return ForkVerdict(fork=strong, evidence=tuple(votes[strong][:3]), ambiguous_ids=ambiguous)  # type: ignore[arg-type]
    first = headers[0]
    evidence: list[tuple[Fork, str]] = []
    file_type = first.get("general.file_type")
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        engines = file_type_engines().get(file_type, ())
        if len(engines) == 1:
            name = file_type_names(file_type).get(engines[0], str(file_type))
            evidence.append((engines[0], f"general.file_type {file_type} ({name}) is written only by "
                                         f"{_FORK_LABEL[engines[0]]}"))  # fmt: skip
    count = first.kv.get("quantize.imatrix.entries_count")
    if count is not None and count.type == ValueType.UINT32:
        evidence.append(("mainline", "quantize.imatrix.entries_count is UINT32, as llama.cpp's llama-quantize writes it"))
    names = {t.name for h in headers for t in h.tensors}
    if any(n.endswith(".attn_kv_b.weight") for n in names) and any(n.endswith(".attn_k_b.weight") for n in names):
        evidence.append(("ik", "attn_kv_b next to attn_k_b: the ik_llama.cpp MLA layout"))
    forks = {f for f, _ in evidence}
    if len(forks) == 1:
        fork = forks.pop()
        return ForkVerdict(fork=fork, evidence=tuple(e for f, e in evidence if f == fork), ambiguous_ids=ambiguous)
    return ForkVerdict(fork=None, evidence=tuple(e for _f, e in evidence), ambiguous_ids=ambiguous)


def resolve_fork(verdict: ForkVerdict, engine: Fork | None, *, where: str) -> Fork | None:
    """The fork whose catalogue names this file's type ids, or ``InventoryError`` (one line)
    when an ambiguous id cannot be named: the caller asked for the other fork than the file's,
    or nothing in the file says which fork wrote it and the caller named none."""
    if not verdict.ambiguous_ids:
        return verdict.fork or engine
    from quantforge.catalogue import catalogue

    tid = verdict.ambiguous_ids[0]
    meanings = ", ".join(
        f"{(catalogue(e).by_id(tid) or catalogue(e).get('f32')).name} in {_FORK_LABEL[e]}" for e in ("mainline", "ik")
    )
    if verdict.fork is not None and engine is not None and engine != verdict.fork:
        raise InventoryError(
            f"type id {tid} means {meanings}; this file was written by {_FORK_LABEL[verdict.fork]} "
            f"({verdict.evidence[0]}), so it cannot be read as {_FORK_LABEL[engine]}",
            where=where,
            hint=f"read it with --engine {verdict.fork} (or set engine = \"{verdict.fork}\")",
        )
    if verdict.fork is None and engine is None:
        raise InventoryError(
            f"type id {tid} means {meanings}, and nothing else in the file says which fork wrote it",
            where=where,
            hint="name the fork: --engine ik or --engine mainline",
        )
    return verdict.fork or engine
