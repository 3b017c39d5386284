"""Test support code: small real servers standing in for remote services (never for the tools),
and helpers that make real GGUF files once and cache them between runs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_CACHE = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache"))


def deepseek_names() -> tuple[str, ...]:
    """The 1147 tensor names of DeepSeek-R1 (ik layout), from the shipped offline inventory."""
    from quantforge.inventory import load_inventory

    return tuple(t.name for t in load_inventory("deepseek-ai/DeepSeek-R1-0528", engine="ik").tensors)


def sigint_default() -> None:
    """``preexec_fn`` for a child the test will interrupt: SIGINT at its default disposition.

    A test run started in the background by a non-interactive shell inherits SIGINT ignored, and
    Python then never installs its KeyboardInterrupt handler, so the child would shrug off the
    test's Ctrl-C and finish with exit status 0.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cached_quant(binary: Path, src: Path, ftype: str, *, imatrix: Path | None = None,
                 extra: tuple[str, ...] = ()) -> Path:
    """Run the real ``llama-quantize`` once for these inputs; later calls reuse the output."""
    # Run next to the imatrix and name it relatively, as the fixtures' commands did, so the
    # output's quantize.imatrix.file KV (and so the file size) equals theirs.
    args = [*(["--imatrix", imatrix.name] if imatrix else []), *extra]
    cwd = imatrix.parent if imatrix else None
    key_src = f"v2:{binary}:{binary.stat().st_size}:{src.name}:{src.stat().st_size}:{imatrix}:{args}:{ftype}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    out = TEST_CACHE / f"{src.stem}-{ftype}-{key}.gguf"
    if not out.is_file():
        tmp = out.with_name(out.name + ".partial")
        proc = subprocess.run(
            [str(binary), *args, str(src.resolve()), str(tmp.resolve()), ftype], capture_output=True, text=True, cwd=cwd
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        os.replace(tmp, out)
    return out


def write_split(src: Path, prefix: Path, n_shards: int) -> list[Path]:
    """Split ``src`` into ``prefix-0000K-of-0000N.gguf`` the way llama-gguf-split lays shards out.

    Shard 1 keeps every KV pair and gets ``split.no``/``split.count``/``split.tensors.count``
    appended; the others hold only those three. Tensors are dealt out in order, evenly.
    """
    from quantforge.gguf_header import GGUFTensorInfo, GGUFValue, ValueType, header_bytes, read_header

    h = read_header(src)
    size = src.stat().st_size
    data_sizes = []
    for i, t in enumerate(h.tensors):
        end = h.tensors[i + 1].offset if i + 1 < len(h.tensors) else size - h.data_offset
        data_sizes.append(end - t.offset)
    per = -(-len(h.tensors) // n_shards)
    paths = []
    with open(src, "rb") as f:
        for k in range(n_shards):
            idx = range(k * per, min((k + 1) * per, len(h.tensors)))
            split_kv = {
                "split.no": GGUFValue.of(k, ValueType.UINT16),
                "split.count": GGUFValue.of(n_shards, ValueType.UINT16),
                "split.tensors.count": GGUFValue.of(len(h.tensors), ValueType.INT32),
            }
            kv = {**h.kv, **split_kv} if k == 0 else split_kv
            infos, off = [], 0
            for i in idx:
                t = h.tensors[i]
                infos.append(GGUFTensorInfo(name=t.name, shape=t.shape, type_id=t.type_id, offset=off))
                off += data_sizes[i]
            path = prefix.with_name(f"{prefix.name}-{k + 1:05d}-of-{n_shards:05d}.gguf")
            with open(path, "wb") as out:
                out.write(header_bytes(kv, infos, h.alignment))
                for i in idx:
                    f.seek(h.data_offset + h.tensors[i].offset)
                    out.write(f.read(data_sizes[i]))
            paths.append(path)
    return paths
