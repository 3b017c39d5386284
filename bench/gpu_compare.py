"""Compare the planner with real CUDA loads (logs from bench/gpu_validate.sh), as a Markdown table.

Usage: python bench/gpu_compare.py DIR_WITH_LOGS [MODEL.gguf]   (MODEL default: .qf-cache/gpu-carry/smol8.gguf)
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantforge.fit.compute import compute_buffer, host_compute_buffer  # noqa: E402
from quantforge.fit.dims import dims_from_hparams  # noqa: E402
from quantforge.fit.kv import kv_cache  # noqa: E402
from quantforge.fit.placement import apply_overrides, device_weight_bytes, fit_tensors, prepare  # noqa: E402
from quantforge.fit.probe import parse_buffer_log  # noqa: E402
from quantforge.inventory import load_inventory  # noqa: E402

MIB = 1 << 20


def main(argv: list[str]) -> int:
    logs = Path(argv[0])
    model = Path(argv[1]) if len(argv) > 1 else Path(".qf-cache/gpu-carry/smol8.gguf")
    inv = load_inventory(str(model), engine="ik")
    dims = dims_from_hparams(inv.arch, inv.hparams)
    from quantforge.catalogue import catalogue

    cat = catalogue("ik")

    class T:  # a TensorPlan-like view of the real file
        def __init__(self, e: object) -> None:
            self.name, self.shape, self.type = e.name, e.shape, e.dtype  # type: ignore[attr-defined]
            self.bytes = cat.get(self.type).tensor_bytes(self.shape)

    prep = prepare(fit_tensors([T(e) for e in inv.tensors]), engine="ik", n_layer=dims.n_layer)
    print("| run | buffer | logged MiB | predicted MiB | diff |")
    print("| --- | --- | ---: | ---: | ---: |")
    for log in sorted(logs.glob("*-ub*.log")):
        text = log.read_text(errors="replace")
        b = parse_buffer_log(text)
        if not b.params:
            continue
        ot = [a for a in re.findall(r"-ot (\S+)", log.name)]  # names carry no args; read them from the script
        cmd = next(
            (ln for ln in Path("bench/gpu_validate.sh").read_text().splitlines() if log.stem in ln), ""
        )
        args = shlex.split(cmd)
        ot = [args[i + 1] for i, a in enumerate(args) if a == "-ot"]
        ctk = args[args.index("-ctk") + 1] if "-ctk" in args else "f16"
        ctv = args[args.index("-ctv") + 1] if "-ctv" in args else "f16"
        names = [t.name for t in prep.tensors]
        dev = apply_overrides(names, ot, lambda n: "CPU" if n == "token_embd.weight" else "CUDA0")
        w = device_weight_bytes(prep, dev)
        fa = bool(b.params.get("flash_attn", 1))
        kv = kv_cache(dims, n_ctx=b.params["n_ctx"], type_k=ctk, type_v=ctv, flash_attn=fa)
        ub = b.params["n_ubatch"]
        rows = [
            ("weights CUDA0", b.weights_mib.get("CUDA0"), w.get("CUDA0", 0)),
            ("weights host", b.weights_mib.get("CUDA_Host", b.weights_mib.get("CPU")), w.get("CPU", 0)),
            ("KV", b.kv_self_mib, kv.total),
            (
                "compute CUDA0",
                b.compute_mib.get("CUDA0"),
                compute_buffer(dims, kv_size=kv.kv_size, ub=ub, flash_attn=fa),
            ),
            (
                "compute CUDA_Host",
                b.compute_mib.get("CUDA_Host"),
                host_compute_buffer(dims, kv_size=kv.kv_size, ub=ub, flash_attn=fa),
            ),
        ]
        for label, logged, pred in rows:
            if logged is None:
                continue
            print(f"| {log.stem} | {label} | {logged:.2f} | {pred / MIB:.2f} | {pred / MIB - logged:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
