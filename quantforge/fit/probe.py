"""Measure what a real load allocates: the bundled ik ``libllama`` on the CPU.

``probe_load(path, n_ctx=..., n_ubatch=...)`` runs the load in a child Python process (so a
crash or the library's global state cannot touch the caller) and parses the buffer lines the
library logs on stderr (``CPU buffer size``, ``KV self size``, ``CPU compute buffer size``,
``CUDA0 …`` on a CUDA build). ``parse_buffer_log`` reads the same lines from any llama.cpp /
ik_llama.cpp log, e.g. the fixtures' ``llama-sweep-bench`` logs. Used to validate the planner.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from quantforge import runner
from quantforge.catalogue import catalogue
from quantforge.errors import ToolError

_MIB = 1 << 20
# ik: "llm_load_tensors:  CUDA_Host buffer size = ..."; mainline (after its timestamp prefix):
# "load_tensors:   CPU_Mapped model buffer size = ...", "llama_kv_cache:      CUDA0 KV buffer size = ..."
_BUF_RE = re.compile(
    r"^(?:[0-9.]+ [A-Z] )?(llm_load_tensors|load_tensors):\s+(\S+) (?:model )?buffer size =\s+([0-9.]+) MiB",
    re.M
)
_KVBUF_RE = re.compile(r"(?:llama_kv_cache_init|llama_kv_cache):\s+(\S+) KV buffer size =\s+([0-9.]+) MiB")
_KVSELF_RE = re.compile(r"KV self size\s+=\s+([0-9.]+) MiB")
_COMPUTE_RE = re.compile(r"\s(\S+) compute buffer size =\s+([0-9.]+) MiB")
_OUTPUT_RE = re.compile(r"\s(\S+)\s+output buffer size =\s+([0-9.]+) MiB")
_CTX_RE = re.compile(
    r"llama_init_from_model: (n_ctx|n_batch|n_ubatch|flash_attn|mla_attn|attn_max_b)\s+=\s+(\d+)"
)


class LoadBuffers(BaseModel):
    """Buffer sizes (MiB, as logged with two decimals) of one model load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights_mib: dict[str, float]  # buffer name ("CPU", "CUDA0", "CUDA_Host") -> MiB
    kv_mib: dict[str, float]
    kv_self_mib: float | None
    compute_mib: dict[str, float]
    output_mib: dict[str, float]
    params: dict[str, int]


def parse_buffer_log(text: str) -> LoadBuffers:
    """The buffer lines of one load log (the first context of the log)."""
    weights: dict[str, float] = {}
    for m in _BUF_RE.finditer(text):
        weights[m.group(2)] = weights.get(m.group(2), 0.0) + float(m.group(3))
    kv = {m.group(1): float(m.group(2)) for m in _KVBUF_RE.finditer(text)}
    ks = _KVSELF_RE.search(text)
    compute = {m.group(1): float(m.group(2)) for m in _COMPUTE_RE.finditer(text)}
    output = {m.group(1): float(m.group(2)) for m in _OUTPUT_RE.finditer(text)}
    params = {m.group(1): int(m.group(2)) for m in _CTX_RE.finditer(text)}
    return LoadBuffers(
        weights_mib=weights,
        kv_mib=kv,
        kv_self_mib=float(ks.group(1)) if ks else None,
        compute_mib=compute,
        output_mib=output,
        params=params,
    )


_CHILD = r"""
import ctypes, json, sys
import ik_llama_cpp._ctypes_api as C
a = json.loads(sys.argv[1])
C.llama_backend_init()
mp = C.llama_model_default_params()
mp.use_mmap = a["mmap"]
mp.n_gpu_layers = 0
m = C.llama_model_load_from_file(a["path"].encode(), mp)
if not m:
    sys.exit(3)
cp = C.llama_context_default_params()
cp.n_ctx = a["n_ctx"]; cp.n_batch = a["n_batch"]; cp.n_ubatch = a["n_ubatch"]
cp.flash_attn = a["fa"]; cp.n_threads = 1; cp.n_threads_batch = 1
cp.type_k = a["type_k"]; cp.type_v = a["type_v"]
if a["mla"] is not None: cp.mla_attn = a["mla"]
if a["amb"] is not None: cp.attn_max_batch = a["amb"]
ctx = C.llama_init_from_model(m, cp)
if not ctx:
    sys.exit(4)
sys.stderr.flush()
"""


def probe_load(
    path: str | Path,
    *,
    n_ctx: int,
    n_ubatch: int = 512,
    n_batch: int | None = None,
    flash_attn: bool = True,
    type_k: str = "f16",
    type_v: str = "f16",
    mla: int | None = None,
    amb: int | None = None,
    mmap: bool = True,
    timeout: float = 300.0,
) -> LoadBuffers:
    """Load ``path`` with the bundled ik ``libllama`` (CPU) and return what it allocated."""
    cat = catalogue("ik")
    args = {
        "path": str(path),
        "n_ctx": n_ctx,
        "n_batch": n_batch or max(n_ubatch, 2048),
        "n_ubatch": n_ubatch,
        "fa": flash_attn,
        "type_k": cat.get(type_k).type_id,
        "type_v": cat.get(type_v).type_id,
        "mla": mla,
        "amb": amb,
        "mmap": mmap,
    }
    done = runner.capture([sys.executable, "-c", _CHILD, json.dumps(args)], merge=False, timeout=timeout)
    if done.timed_out:
        raise ToolError("ik libllama load timed out", where=str(path))
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolError(f"ik libllama load failed (exit {done.returncode}): {tail}", where=str(path))
    return parse_buffer_log(done.stderr + done.output)
