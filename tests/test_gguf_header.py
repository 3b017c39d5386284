"""The GGUF header reader on real files (gguf-py as the reference where it can read them),
on ik quants gguf-py cannot read, and on damaged / hostile headers."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from quantforge.errors import InventoryError
from quantforge.gguf_header import (
    MAX_STRING_BYTES,
    GGUFTensorInfo,
    GGUFValue,
    StringArray,
    ValueType,
    header_bytes,
    read_header,
    serialized_header_size,
)
from tests.support import cached_quant

SMOL_HEADER_BYTES = 1_785_664  # data offset of the F16 SmolLM2 base


def test_smol_f16_header_matches_gguf_py(smol_f16: Path) -> None:
    from gguf import GGUFReader

    h = read_header(smol_f16)
    r = GGUFReader(str(smol_f16))
    assert h.version == 3
    assert len(h.tensors) == 272
    assert h.alignment == 32
    assert h.file_size == 270_885_952
    assert h.data_offset == r.data_offset == SMOL_HEADER_BYTES
    # header_size: the end of the last tensor info record, as gguf-py's field offsets say.
    last = r.tensors[-1].field
    assert h.header_size == last.offset + sum(int(p.nbytes) for p in last.parts) == 1_785_664
    assert h.tensors[0] == GGUFTensorInfo(name="token_embd.weight", shape=(576, 49152), type_id=1, offset=0)
    assert h.tensors[1] == GGUFTensorInfo(name="blk.0.attn_norm.weight", shape=(576,), type_id=0,
                                          offset=56_623_104)
    for mine, ref in zip(h.tensors, r.tensors, strict=True):
        assert mine.name == ref.name
        assert mine.shape == tuple(int(x) for x in ref.shape)
        assert mine.type_id == int(ref.tensor_type)
        assert mine.offset == int(ref.data_offset) - r.data_offset
    ref_fields = {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert list(h.kv) == list(ref_fields)
    for key, f in ref_fields.items():
        assert h.kv[key].type == int(f.types[0]), key
        ref_value = f.contents()
        mine = h.kv[key].plain()
        if isinstance(ref_value, float):
            assert mine == pytest.approx(ref_value, rel=0, abs=0), key
        else:
            assert mine == ref_value, key
    assert len(h.kv["tokenizer.ggml.tokens"].value) == 49152
    assert len(h.kv["tokenizer.ggml.merges"].value) == 48900
    assert h.get("llama.attention.head_count_kv") == 3
    assert h.architecture == "llama"


def test_header_round_trips_byte_for_byte(smol_f16: Path) -> None:
    h = read_header(smol_f16)
    with open(smol_f16, "rb") as f:
        raw = f.read(h.data_offset)
    assert header_bytes(h.kv, h.tensors, h.alignment) == raw
    assert serialized_header_size(h.kv, h.tensors, h.alignment) == h.data_offset
    # Re-sized from plain values (types kept, sizes recomputed), with two more KVs.
    kv = {k: GGUFValue.of(v.value, v.type, v.sub_type) for k, v in h.kv.items()}
    kv["quantize.imatrix.file"] = GGUFValue.of("smol.imatrix", ValueType.STRING)
    kv["quantize.imatrix.entries_count"] = GGUFValue.of(210, ValueType.INT32)
    extra = (8 + 21 + 4 + 8 + 12) + (8 + 30 + 4 + 4)
    unpadded = h.header_size + extra
    assert serialized_header_size(kv, h.tensors, 32) == (unpadded + 31) // 32 * 32 == 1_785_792
    assert len(header_bytes(kv, h.tensors, 32)) == 1_785_792


def test_string_arrays_stay_bytes_until_read(smol_f16: Path) -> None:
    import pickle

    h = read_header(smol_f16)
    tokens = h.kv["tokenizer.ggml.tokens"]
    assert isinstance(tokens.value, StringArray) and tokens.value._items is None  # nothing decoded yet
    assert len(tokens.value) == 49152 and tokens.size() == 12 + len(tokens.value.raw) == 762_398
    assert header_bytes(h.kv, h.tensors, h.alignment)[:4] == b"GGUF" and tokens.value._items is None
    assert tokens.value[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokens.value[-1] == list(tokens.value)[49151]
    merges = h.kv["tokenizer.ggml.merges"].value
    assert merges[0] == "Ġ t" and len(merges.tolist()) == 48900
    # Equal to the plain list (both ways), to a copy, and after pickling; sized the same as the list.
    plain = tokens.value.tolist()
    assert tokens.value == plain and plain == tokens.value and tokens.value != plain[:-1]
    assert pickle.loads(pickle.dumps(tokens.value)) == tokens.value
    as_list = GGUFValue.of(plain, ValueType.ARRAY, ValueType.STRING)
    assert as_list.size() == tokens.size() and header_bytes({"t": as_list}, []) == header_bytes({"t": tokens},
                                                                                                [])
    assert tokens.model_dump(mode="json")["value"][:2] == ["<|endoftext|>", "<|im_start|>"]
    assert repr(h.kv["general.languages"].value) == "StringArray(['en'], 1 strings)"


def test_string_arrays_across_small_reads(smol_f16: Path) -> None:
    # A 4 KiB first read (an hf:// range reader's case) makes every array straddle many refills.
    whole = read_header(smol_f16)
    with open(smol_f16, "rb") as f:
        h = read_header(f, first_chunk=4096)
    assert h.kv == whole.kv and h.tensors == whole.tensors and h.header_size == whole.header_size
    with open(smol_f16, "rb") as f:
        raw = f.read(h.data_offset)
    assert header_bytes(h.kv, h.tensors, h.alignment) == raw


def test_string_array_limits_and_truncation() -> None:
    def array_of(lengths: list[int], body: bytes) -> bytes:
        kv = b"".join([struct.pack("<Q", 3), b"arr", struct.pack("<IIQ", ValueType.ARRAY, ValueType.STRING,
                                                                 len(lengths))])
        head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv
        return head + b"".join(struct.pack("<Q", n) for n in lengths[:1]) + body

    huge = array_of([MAX_STRING_BYTES + 1], b"x" * 64)
    with pytest.raises(InventoryError) as e:
        read_header(io.BytesIO(huge), size=len(huge) + (MAX_STRING_BYTES + 1), where="h.gguf")
    assert e.value.message == (
        f"absurd GGUF header: KV 0 (arr) has a string length of {MAX_STRING_BYTES + 1} bytes (limit "
        f"{MAX_STRING_BYTES})"
    )
    cut = array_of([10, 10], b"0123456789")  # the second string's length is missing
    with pytest.raises(InventoryError) as e:
        read_header(io.BytesIO(cut), size=len(cut), where="c.gguf")
    assert e.value.one_line() == (
        f"c.gguf: truncated GGUF header at byte {len(cut)}: file ends inside KV 0 (arr) (the file is "
        "incomplete; download it again)"
    )


def test_reading_the_smol_header_is_fast(smol_f16: Path) -> None:
    best = min(_timed(lambda: read_header(smol_f16)) for _ in range(5))
    assert best < 0.15, f"{best * 1000:.0f} ms"


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def smol_iq4_k(ik_quantize: Path, smol_f16: Path, smol_imatrix: Path) -> Path:
    # The fixtures' command: llama-quantize --imatrix smol.imatrix smol-f16.gguf out.gguf IQ4_K
    return cached_quant(ik_quantize, smol_f16, "IQ4_K", imatrix=smol_imatrix)


@pytest.fixture(scope="module")
def smol_q4_k_m(ik_quantize: Path, smol_f16: Path) -> Path:
    return cached_quant(ik_quantize, smol_f16, "Q4_K_M")


def _fixture_listing(ik_fixtures: Path, name: str) -> list[tuple[str, str, tuple[int, ...], int]]:
    rows = []
    for line in (ik_fixtures / f"tensors-{name}.txt").read_text().splitlines():
        tname, tname_type, shape, nbytes = line.split()
        rows.append((tname, tname_type, tuple(int(x) for x in shape.split("x")), int(nbytes)))
    return rows


def _fixture_size(ik_fixtures: Path, name: str) -> int:
    for line in (ik_fixtures / "sizes.txt").read_text().splitlines():
        if line.endswith(f" {name}.gguf"):
            return int(line.split()[4])
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["smol-IQ4_K", "smol-Q4_K_M"])
def test_ik_quants_read_with_any_type_id(
    name: str, request: pytest.FixtureRequest, ik_fixtures: Path
) -> None:
    from quantforge.catalogue import catalogue

    path: Path = request.getfixturevalue("smol_iq4_k" if name == "smol-IQ4_K" else "smol_q4_k_m")
    assert path.stat().st_size == _fixture_size(ik_fixtures, name)
    h = read_header(path)
    expected = _fixture_listing(ik_fixtures, name)
    cat = catalogue("ik")
    assert [t.name for t in h.tensors] == [e[0] for e in expected]
    assert [t.shape for t in h.tensors] == [e[2] for e in expected]
    assert [t.type_id for t in h.tensors] == [cat.get(e[1]).type_id for e in expected]
    assert [cat.get(e[1]).tensor_bytes(e[2]) for e in expected] == [e[3] for e in expected]
    if name == "smol-IQ4_K":
        ids = {t.type_id for t in h.tensors}
        assert ids == {0, 6, 8, 133, 139}  # f32, q5_0, q8_0, q6_0 (ik), iq4_k (ik)
        assert h.get("general.file_type") == 140
        assert h.get("quantize.imatrix.entries_count") == 210
        assert h.get("quantize.imatrix.chunks_count") == 40


def test_gguf_py_cannot_read_the_ik_quant(smol_iq4_k: Path) -> None:
    # Why this reader exists: the reference reader refuses ik type ids.
    from gguf import GGUFReader

    with pytest.raises(ValueError, match="139"):
        GGUFReader(str(smol_iq4_k))


# --- damaged and hostile headers --------------------------------------------------------------


def _small_header() -> bytes:
    kv = {
        "general.architecture": GGUFValue.of("llama", ValueType.STRING),
        "general.alignment": GGUFValue.of(32, ValueType.UINT32),
        "tokenizer.ggml.tokens": GGUFValue.of(["a", "bc", "\u00e9"], ValueType.ARRAY, ValueType.STRING),
        "tokenizer.ggml.scores": GGUFValue.of([0.5, 1.0, -2.0], ValueType.ARRAY, ValueType.FLOAT32),
    }
    infos = [
        GGUFTensorInfo(name="token_embd.weight", shape=(64, 3), type_id=139, offset=0),
        GGUFTensorInfo(name="output_norm.weight", shape=(64,), type_id=0, offset=4096),
    ]
    return header_bytes(kv, infos, 32)


def _read(data: bytes, where: str = "x.gguf") -> object:
    return read_header(io.BytesIO(data), size=len(data), where=where)


def test_small_header_parses() -> None:
    data = _small_header()
    h = read_header(io.BytesIO(data), size=len(data) + 8192)
    assert [t.type_id for t in h.tensors] == [139, 0]
    assert h.get("tokenizer.ggml.tokens") == ["a", "bc", "\u00e9"]
    assert h.get("tokenizer.ggml.scores") == [0.5, 1.0, -2.0]
    assert h.data_offset == len(data) == serialized_header_size(h.kv, h.tensors, 32)


def test_bad_magic_is_not_a_gguf() -> None:
    with pytest.raises(InventoryError) as e:
        _read(b"PK\x03\x04" + b"\0" * 100, "model.zip")
    assert e.value.one_line() == ("model.zip: not a GGUF file (magic b'PK\\x03\\x04') (give a .gguf "
                                  "model file)")


def test_unknown_version() -> None:
    data = bytearray(_small_header())
    data[4:8] = struct.pack("<I", 7)
    with pytest.raises(InventoryError, match=r"unsupported GGUF version 7 \(supported: 2, 3\)"):
        _read(bytes(data))


def test_every_truncation_is_reported_with_its_place() -> None:
    data = _small_header()
    h = read_header(io.BytesIO(data), size=len(data))
    for cut in range(0, h.header_size):
        with pytest.raises(InventoryError) as e:
            _read(data[:cut])
        msg = e.value.message
        assert msg.startswith(("truncated GGUF header at byte", "not a GGUF file")), (cut, msg)
    # One exact message: cut inside the name of the second tensor info.
    second = h.header_size - (8 + len("output_norm.weight") + 4 + 8 + 4 + 8)
    with pytest.raises(InventoryError) as e:
        _read(data[: second + 10])
    assert e.value.message == f"truncated GGUF header at byte {second + 8}: file ends inside tensor info 1"


def test_unknown_value_type() -> None:
    data = bytearray(_small_header())
    # KV 0: key length (8) + key (20) + type tag: set the type tag to 13.
    pos = 24 + 8 + len("general.architecture")
    data[pos : pos + 4] = struct.pack("<I", 13)
    with pytest.raises(InventoryError, match=r"unknown GGUF value type 13 in KV 0 \(general.architecture\)"):
        _read(bytes(data))


def _header_prefix(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


def _kv_string(key: str) -> bytes:
    k = key.encode()
    return struct.pack("<Q", len(k)) + k


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_header_prefix(1 << 40, 0) + b"\0" * 64, r"the tensor count is 1099511627776 \(limit 1048576\)"),
        (_header_prefix(0, 1 << 40) + b"\0" * 64, r"the KV count is 1099511627776 \(limit 1048576\)"),
        (_header_prefix(0, 1000) + b"\0" * 64,
         r"file ends inside the KV pairs \(1000 items need at least 13000 bytes, 64 are left\)"),
        (_header_prefix(0, 1) + struct.pack("<Q", 1 << 40) + b"\0" * 64,
         r"string length of 1099511627776 bytes"),
        (
            _header_prefix(0, 1) + _kv_string("a") + struct.pack("<IIQ", 9, 8, 1 << 26) + b"\0" * 64,
            r"file ends inside KV 0 \(a\) \(67108864 items need at least 536870912 bytes, 64 are left\)",
        ),
        (
            _header_prefix(0, 1) + _kv_string("a") + struct.pack("<IIQ", 9, 6, 1 << 40) + b"\0" * 64,
            r"the element count of KV 0 \(a\) is 1099511627776 \(limit 134217728\)",
        ),
        (
            _header_prefix(1, 0) + _kv_string("t") + struct.pack("<I", 5) + b"\0" * 64,
            r"tensor 't' has 5 dimensions \(ggml allows 4\)",
        ),
        (
            _header_prefix(1, 0) + _kv_string("t") + struct.pack("<IQQ", 2, 4, 0) + b"\0" * 64,
            r"tensor 't' has a dimension of 0",
        ),
        (
            _header_prefix(1, 0) + _kv_string("t") + struct.pack("<IQQQ", 3, 1 << 32, 1 << 32,
                                                                 1 << 32) + b"\0" * 64,
            r"tensor 't' has more than 2\^63 elements",
        ),
        (
            _header_prefix(0, 2) + (_kv_string("a") + struct.pack("<IB", 0, 1)) * 2 + b"\0" * 64,
            r"duplicate KV key 'a'",
        ),
    ],
)
def test_absurd_headers_fail_without_allocating(data: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InventoryError, match=message) as e:
            _read(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert e.value.message.startswith(("absurd GGUF header", "truncated GGUF header",
                                       "duplicate")), e.value.message
    assert e.value.where == "x.gguf"


def test_unknown_size_stream_still_bounded() -> None:
    # A pipe-like source without a known size: the fixed limits still hold.
    data = _header_prefix(0, 1) + struct.pack("<Q", (64 << 20) + 1)
    with pytest.raises(InventoryError, match="limit 67108864"):
        read_header(io.BufferedReader(io.BytesIO(data)), where="pipe")  # type: ignore[arg-type]


def _mutate_strategy() -> object:
    from hypothesis import strategies as st

    data = _small_header()
    edits = st.lists(
        st.tuples(
            st.integers(0, len(data) - 1),
            st.one_of(
                st.binary(min_size=1, max_size=1),
                # 8-byte little-endian counts/lengths: the values that would make a naive reader allocate.
                st.sampled_from([1 << 63, 1 << 40, (1 << 27) + 1, 2**64 - 1, 0, 5]).map(
                    lambda v: struct.pack("<Q", v)
                ),
            ),
        ),
        min_size=1,
        max_size=6,
    )
    return st.tuples(st.just(data), edits, st.integers(0, len(data)))


def test_mutated_headers_never_crash_or_allocate_unboundedly() -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutate_strategy())
    def check(case: tuple[bytes, list[tuple[int, bytes]], int]) -> None:
        data, edits, cut = case
        buf = bytearray(data)
        for pos, patch in edits:
            buf[pos : pos + len(patch)] = patch
        blob = bytes(buf[: max(cut, 4)])
        tracemalloc.start()
        try:
            try:
                h = read_header(io.BytesIO(blob), size=len(blob), where="m.gguf")
            except InventoryError as e:
                assert e.where == "m.gguf" and e.message
            else:
                assert h.data_offset <= len(blob)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak

    check()
