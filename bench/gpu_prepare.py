"""Prepare what bench/gpu_validate.sh needs on the lent GPU machine (run HERE, not there).

Writes, under .qf-cache/gpu-carry/ (git-ignored; pass it to the run tool as carry):
  ik/            the ik_llama.cpp source subset needed for a CUDA build (~17 MB, from /tmp/src/ik)
  smol8.gguf     SmolLM2 cut to 8 layers (same tokenizer), quantized like the fixtures' quant c
Usage: python bench/gpu_prepare.py [--ik-src /tmp/src/ik] [--smol .qf-cache/smol-f16.gguf]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEEP = ["CMakeLists.txt", "cmake", "ggml", "src", "common", "include", "examples/CMakeLists.txt",
        "examples/sweep-bench", "examples/llama-bench", "examples/main", "examples/quantize"]  # fmt: skip


def cut_layers(src: Path, dst: Path, n_layer: int) -> None:
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    w = gguf.GGUFWriter(str(dst), arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vt = f.types[0]
        if f.name == f"{arch}.block_count":
            w.add_uint32(f.name, n_layer)
            continue
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                w.add_array(f.name, [str(bytes(f.parts[i]), "utf-8") for i in f.data])
            else:
                w.add_array(f.name, [f.parts[i][0].item() for i in f.data])
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(f.name, str(bytes(f.parts[-1]), "utf-8"))
        else:
            w.add_key_value(f.name, f.parts[-1][0].item(), vt)
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layer:
            continue
        w.add_tensor(
            t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type
        )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ik-src", default="/tmp/src/ik")
    ap.add_argument("--smol", default=str(REPO / ".qf-cache" / "smol-f16.gguf"))
    ap.add_argument("--layers", type=int, default=8)
    a = ap.parse_args()
    out = REPO / ".qf-cache" / "gpu-carry"
    if out.exists():
        shutil.rmtree(out)
    (out / "ik").mkdir(parents=True)
    src = Path(a.ik_src)
    for k in KEEP:
        p = src / k
        if p.is_dir():
            shutil.copytree(p, out / "ik" / k, ignore=shutil.ignore_patterns("*.o", "build*"))
        elif p.is_file():
            (out / "ik" / k).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, out / "ik" / k)
    # examples/CMakeLists.txt adds every example: keep only the ones carried
    ex = out / "ik" / "examples" / "CMakeLists.txt"
    lines = [ln for ln in ex.read_text().splitlines() if "add_subdirectory" not in ln
             or any(n in ln for n in ("sweep-bench", "llama-bench", "main)", "quantize)"))]  # fmt: skip
    ex.write_text("\n".join(lines) + "\n")
    f16 = out / "smol8-f16.gguf"
    cut_layers(Path(a.smol), f16, a.layers)
    import ik_llama_cpp

    q = Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize"
    fx = REPO.parent / "shared" / "fixtures" / "ik" / "smol.imatrix"
    subprocess.run([str(q), "--imatrix", str(fx), "--custom-q",
                    "ffn_down=q6_K,attn_.*=iq4_ks,ffn_(gate|up)=iq3_k,token_embd=q4_0",
                    str(f16), str(out / "smol8.gguf"), "IQ4_K"], check=True, capture_output=True)  # fmt: skip
    f16.unlink()
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")
    return 0 if size < 60 * 2**20 else 1


if __name__ == "__main__":
    sys.exit(main())
