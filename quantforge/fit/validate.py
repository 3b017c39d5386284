"""The planner against real load logs: per-buffer predictions for a recorded run.

A run is one ``llama-sweep-bench`` (or ``llama-server``/``llama-cli``) command line and the log it
wrote. ``predict_buffers`` sizes every buffer the loader logs (weights per buffer, KV, the
compute buffers of the GPU and of the pinned host) with the fit stage's own functions, from
the model file's real tensor inventory and the flags of the command. ``compare_log`` puts the
prediction next to the logged numbers with the acceptance rule of ``docs/memory-validation.md``:
weights and KV exact (to the 0.01 MiB the libraries print), compute buffers within 5 % or 64 MiB.

``cut_layers`` makes the small models of the GPU validation: a GGUF with its first ``n`` layers
(every KV copied, ``{arch}.block_count`` set to ``n``, ``blk.N`` tensors with ``N >= n`` dropped).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
import shlex
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from quantforge import runner
from quantforge.acquire import copy_kv
from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InputError, ToolError
from quantforge.fit.buffers import run_buffers
from quantforge.fit.cmdline import parse_command
from quantforge.fit.dims import ModelDims, ModelExtras, dims_from_hparams, extras_from_hparams
from quantforge.fit.margin import AttentionKind, MeasuredMargin
from quantforge.fit.placement import FitTensor, Prepared, expert_part, prepare
from quantforge.fit.probe import LoadBuffers, parse_buffer_log
from quantforge.fit.realwidth import VALIDATION_MODELS, realwidth_header
from quantforge.fsutil import sha256_file
from quantforge.gguf_header import GGUFHeader, read_header
from quantforge.inventory import inventory_from_headers
from quantforge.miniature import write_miniature

_MIB = 1 << 20
#: Compute-buffer acceptance: within this fraction of the logged size, or within ``_COMPUTE_ABS``.
COMPUTE_REL = 0.05
COMPUTE_ABS_MIB = 64.0


@dataclass(frozen=True)
class RunSpec:
    """One recorded run: its log's stem, the model file's stem and the exact command."""

    name: str
    model: str
    command: tuple[str, ...]
    note: str = ""

    def flag(self, name: str, default: str | None = None) -> str | None:
        args = self.command
        for i, a in enumerate(args[:-1]):
            if a == name:
                return args[i + 1]
        return default

    def flags(self, name: str) -> list[str]:
        args = self.command
        return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def load_runs(path: str | Path) -> list[RunSpec]:
    """The runs of a TSV table (``name``, ``model``, ``command``, ``note``; ``#`` lines are comments)."""
    p = Path(path)
    rows = [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    out = []
    for lineno, row in enumerate(csv.reader(rows, delimiter="\t"), start=1):
        if row[:3] == ["name", "model", "command"]:
            continue
        if len(row) < 3:
            raise InputError("a run needs name, model and command columns", where=f"{p}:{lineno}")
        out.append(
            RunSpec(
                name=row[0],
                model=row[1],
                command=tuple(shlex.split(row[2])),
                note=row[3] if len(row) > 3 else "",
            )
        )
    return out


@dataclass(frozen=True)
class BufferRow:
    """One logged buffer next to its prediction."""

    run: str
    buffer: str  # "weights CPU", "weights CUDA_Host", "weights CUDA0", "KV", "compute CUDA0", ...
    logged_mib: float
    predicted_bytes: int
    exact: bool  # weights/KV must be exact; compute within tolerance

    @property
    def predicted_mib(self) -> float:
        return self.predicted_bytes / _MIB

    @property
    def diff_mib(self) -> float:
        return self.predicted_mib - self.logged_mib

    @property
    def ok(self) -> bool:
        if self.exact:
            return round(self.predicted_mib, 2) == self.logged_mib
        return abs(self.diff_mib) <= max(COMPUTE_REL * self.logged_mib, COMPUTE_ABS_MIB)


@dataclass(frozen=True)
class ModelFacts:
    """What the predictions need of one model file (read once, shared by its runs)."""

    dims: ModelDims
    tensors: tuple[FitTensor, ...]
    offsets: tuple[int, ...]  # data offset of each tensor in the file (mainline maps a range of them)
    extras: ModelExtras

    @property
    def prep(self) -> Prepared:
        return prepare(list(self.tensors), engine="ik", n_layer=self.dims.n_layer)


def facts_from_header(header: GGUFHeader, *, engine: Engine = "ik") -> ModelFacts:
    """``ModelFacts`` of a GGUF from its header alone (tensor types, shapes and offsets)."""
    name = header.path or "model.gguf"
    inv = inventory_from_headers([header], source=name, engine=engine, names=[name])
    dims = dims_from_hparams(inv.arch, inv.hparams)
    cat = catalogue(engine)
    out = []
    for info in header.tensors:
        qt = cat.by_id(info.type_id)
        if qt is None:
            raise InputError(f"tensor {info.name}: type id {info.type_id} unknown to {engine}",
                             where=str(header.path))
        layer = int(info.name.split(".")[1]) if info.name.startswith("blk.") else None
        out.append(FitTensor(name=info.name, shape=tuple(info.shape), type=qt.name,
                             bytes=qt.tensor_bytes(info.shape), layer=layer))  # fmt: skip
    return ModelFacts(dims=dims, tensors=tuple(out), offsets=tuple(t.offset for t in header.tensors),
                      extras=extras_from_hparams(inv.arch, inv.hparams,
                                                 layout=inv.layout or "ik"))  # fmt: skip


def model_facts(path: str | Path, *, engine: Engine = "ik") -> ModelFacts:
    return facts_from_header(read_header(path), engine=engine)


def run_engine(run: RunSpec, default: Engine = "ik") -> Engine:
    tool = run.command[0] if run.command else ""
    if "batched-bench" in tool or "fit-params" in tool:
        return "mainline"
    return default


def predict_buffers(facts: ModelFacts, run: RunSpec, *, engine: Engine | None = None,
                    n_gpus: int = 1) -> dict[str, int]:  # fmt: skip
    """Bytes of every buffer the run's command allocates, labelled as ``logged_buffers`` labels
    the log (``weights CUDA0``, ``KV``, ``compute CUDA_Host`` ...)."""
    eng = engine or run_engine(run)
    cmd = parse_command(list(run.command), engine=eng)
    rb = run_buffers(facts.tensors, facts.dims, cmd, n_gpus=n_gpus, extras=facts.extras,
                     offsets=facts.offsets)
    out: dict[str, int] = {}
    for b in rb.buffers:
        if b.kind == "weights":
            out[f"weights {b.device}"] = out.get(f"weights {b.device}", 0) + b.bytes
        elif b.kind == "kv":
            out["KV"] = out.get("KV", 0) + b.bytes
            out[f"KV {b.device}"] = b.bytes
        elif b.kind == "compute":
            out[f"compute {b.device}"] = b.bytes
    return out


def logged_buffers(b: LoadBuffers) -> dict[str, float]:
    """The same labels as ``predict_buffers``, read from a parsed log."""
    out: dict[str, float] = {f"weights {k}": v for k, v in b.weights_mib.items()}
    if b.kv_self_mib is not None:
        out["KV"] = b.kv_self_mib
    elif b.kv_mib:
        out["KV"] = round(sum(b.kv_mib.values()), 2)
    out.update({f"compute {k}": v for k, v in b.compute_mib.items()})
    return out


def compare_log(facts: ModelFacts, run: RunSpec, log_text: str, *,
                engine: Engine | None = None) -> list[BufferRow]:
    """Every buffer the log reports, with its prediction (a buffer the prediction lacks is 0 B)."""
    b = parse_buffer_log(log_text)
    pred = predict_buffers(facts, run, engine=engine)
    rows = []
    for label, logged in logged_buffers(b).items():
        rows.append(
            BufferRow(run=run.name, buffer=label, logged_mib=logged, predicted_bytes=pred.get(label, 0),
                      exact=not label.startswith("compute"))
        )  # fmt: skip
    return rows


def markdown_table(rows: Sequence[BufferRow]) -> str:
    lines = [
        "| run | buffer | logged MiB | predicted MiB | diff MiB | ok |",
        "| --- | --- | ---: | ---: | ---: | :-: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.run} | {r.buffer} | {r.logged_mib:.2f} | {r.predicted_mib:.2f} | "
            f"{round(r.diff_mib, 2) + 0.0:+.2f} | "
            f"{'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(lines)


def cut_layers(src: str | Path, dst: str | Path, n_layer: int) -> Path:
    """Write ``dst``: ``src`` with its first ``n_layer`` layers (see the module docstring)."""
    import gguf  # startup

    r = gguf.GGUFReader(str(src))
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")
    w = gguf.GGUFWriter(str(dst), arch)
    copy_kv(r, w, uint32={f"{arch}.block_count": n_layer})
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layer:
            continue
        w.add_tensor(t.name, t.data, raw_shape=[int(x) for x in reversed(t.shape)], raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)


#: The two model files the H100 runs of ``docs/gpu-logs/`` loaded, by the digest of their tensors
#: (``tensor_digest``: every tensor's name, type, shape and data bytes). That, not the whole file,
#: is what sizes the buffers and what the GPU computed on; the header differs only in the
#: ``quantize.imatrix.file`` string, which records the imatrix path as llama-quantize was given it.
GPU_MODEL_TENSORS_SHA256 = {
    "smol6": "b8a8c1d22f09b67e68a3f215732b4eb28030294b4037e59b4249bd7261d08499",
    "mini-deepseek2": "6c320b9025c8714fa15e55ba8177a9b2836806065501ae73c4c618d3498048e5",
}
#: sha256 of the whole files ``make_gpu_models`` writes: stable on every machine, because the
#: imatrix is named by a fixed relative path (the files the GPU loaded held an absolute one:
#: smol6 ``3a18f35d…1bef18``; mini-deepseek2, made without an imatrix, is that very file).
GPU_MODEL_SHA256 = {
    "smol6": "1f79d21818166310a4ebaa120d1a50f5e70e7400b23a062cf0a03114503e08d4",
    "mini-deepseek2": "d0c7211d464a46304c762ca4fbd22ca85b6cdee7eaa9b3cbdd15a28d1168d9a4",
}
#: ``smol6.gguf``: SmolLM2 F16 cut to 6 layers, quantized like the fixtures' quant c.
SMOL6_CUSTOM_Q = "ffn_down=q6_K,attn_.*=iq4_ks,ffn_(gate|up)=iq3_k,token_embd=q4_0"


def tensor_digest(path: str | Path) -> str:
    """sha256 over every tensor's name, type, shape and data bytes, in file order.

    Two GGUF files with the same digest load into the same buffers and compute the same
    numbers, whatever else their KV headers say.
    """
    import gguf  # startup

    h = hashlib.sha256()
    for t in gguf.GGUFReader(str(path)).tensors:
        shape = ",".join(str(int(x)) for x in t.shape)
        h.update(f"{t.name}\0{int(t.tensor_type)}\0{shape}\0{int(t.n_bytes)}\0".encode())
        h.update(t.data.tobytes())
    return h.hexdigest()


def make_gpu_models(
    out_dir: str | Path, *, smol_f16: str | Path, imatrix: str | Path, quantize: str | Path
) -> dict[str, Path]:
    """Write (or reuse, when the cached file has the recorded digest) ``smol6.gguf`` and
    ``mini-deepseek2.gguf`` under ``out_dir`` with the ik ``llama-quantize`` at ``quantize``.

    smol6: ``cut_layers(smol_f16, 6)``, then ``--imatrix smol.imatrix --custom-q SMOL6_CUSTOM_Q … IQ4_K``
    run beside a copy of ``imatrix`` (so the file records the same relative name on every machine);
    mini-deepseek2: ``write_miniature("deepseek2", layout="ik")`` (seed 0, bf16), then
    ``--custom-q "token_embd=q4_0,.*=q4_0" … Q4_0``. Raises ``ToolError`` when a file's tensors
    differ from those the GPU runs loaded, or the file from the one recorded.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"{name}.gguf" for name in GPU_MODEL_SHA256}
    for name, dst in paths.items():
        marker = dst.with_name(dst.name + ".sha256")
        if dst.is_file() and marker.is_file() and marker.read_text().strip() == GPU_MODEL_SHA256[name]:
            continue
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            src = Path(tmp) / "src.gguf"
            if name == "smol6":
                cut_layers(smol_f16, src, 6)
                shutil.copyfile(imatrix, Path(tmp) / "smol.imatrix")
                args = [
                    "--imatrix",
                    "smol.imatrix",
                    "--custom-q",
                    SMOL6_CUSTOM_Q,
                    "src.gguf",
                    str(dst.resolve()),
                    "IQ4_K",
                ]
            else:
                write_miniature("deepseek2", src, layout="ik")
                args = ["--custom-q", "token_embd=q4_0,.*=q4_0", "src.gguf", str(dst.resolve()), "Q4_0"]
            done = runner.capture([str(quantize), *args], merge=False, cwd=tmp)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ToolError(f"llama-quantize failed (exit {done.returncode}): {tail}", where=str(dst))
        tensors = tensor_digest(dst)
        if tensors != GPU_MODEL_TENSORS_SHA256[name]:
            raise ToolError(
                f"{dst.name}: its tensors differ from those the GPU runs loaded ({tensors[:12]})",
                where=str(dst),
                hint="regenerate from the fixtures' F16 base and imatrix with ik llama-quantize 8337e4cd3",
            )  # fmt: skip
        digest = sha256_file(dst)
        if digest != GPU_MODEL_SHA256[name]:
            raise ToolError(
                f"{dst.name}: same tensors as the GPU runs, but the file differs from the recorded one "
                f"({digest[:12]})",
                where=str(dst), hint="its KV header changed: compare `quantforge inventory` of both files",
            )  # fmt: skip
        marker.write_text(digest)
    return paths


def device_line(nvidia_smi: str) -> str:
    """``NVIDIA H100 80GB HBM3, 81559 MiB, driver 580.159.04, CUDA 13.0`` from an ``nvidia-smi`` log."""
    drv = re.search(r"Driver Version:\s*(\S+)", nvidia_smi)
    cuda = re.search(r"CUDA Version:\s*(\S+)", nvidia_smi)
    gpu = re.search(r"^\|\s+\d+\s+(.+?)\s{2,}(?:On|Off)\s+\|", nvidia_smi, re.M)
    mem = re.search(r"/\s*(\d+)MiB", nvidia_smi)
    parts = [gpu.group(1) if gpu else "unknown GPU"]
    if mem:
        parts.append(f"{mem.group(1)} MiB")
    if drv:
        parts.append(f"driver {drv.group(1)}")
    if cuda:
        parts.append(f"CUDA {cuda.group(1)}")
    return ", ".join(parts)


@functools.cache
def realwidth_facts(model: str) -> ModelFacts:
    """The facts of a ``VALIDATION_MODELS`` header (the very file the GPU runs loaded)."""
    return facts_from_header(realwidth_header(VALIDATION_MODELS[model]), engine="ik")


def _grid_runs(d: Path) -> Iterator[tuple[str, Engine, str, str, str, Path]]:
    """(name, engine, model, split, command, log) of every ``runs.tsv`` row whose log is there (the
    dbg-* runs are kept compressed, .log.xz, for reading)."""
    for line in (d / "runs.tsv").read_text().splitlines():
        if not line or line.startswith(("#", "name\t")):
            continue
        name, engine, model, split, command = line.split("\t")
        log = d / "logs" / f"{name}.log"
        if log.is_file():
            yield name, "ik" if engine == "ik" else "mainline", model, split, command, log


def realwidth_rows(log_dir: str | Path) -> list[tuple[str, Engine, BufferRow]]:
    """Every logged buffer of the real-width H200 runs (``runs.tsv`` + ``logs/``) with its
    prediction: (split, engine, row). The models are the headers ``quantforge.fit.realwidth``
    writes (the runs loaded those very files; no weights needed)."""
    out = []
    for name, eng, model, split, command, log in _grid_runs(Path(log_dir)):
        run = RunSpec(name=name, model=model, command=tuple(shlex.split(command)))
        for r in compare_log(realwidth_facts(model), run, log.read_text(errors="replace"), engine=eng):
            out.append((split, eng, r))
    return out


def measure_margins(log_dir: str | Path) -> list[MeasuredMargin]:
    """``quantforge.fit.margin.MEASURED_MARGINS`` recomputed from a run folder (``runs.tsv``,
    ``results.jsonl``, ``logs/``): per-process GPU memory at the first sweep step minus the CUDA0
    weights, KV and compute logged; whether routed experts were on the GPU from the run's command,
    placed by the simulation on the model header the run loaded."""
    d = Path(log_dir)
    results = {}
    for line in (d / "results.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            results[r["name"]] = r
    out = []
    for name, eng, model, split, command, log in _grid_runs(d):
        r = results.get(name)
        if not r or not r.get("step"):
            continue
        b = parse_buffer_log(log.read_text(errors="replace"))
        cuda0 = b.weights_mib.get("CUDA0", 0.0) + b.compute_mib.get("CUDA0", 0.0)
        cuda0 += b.kv_self_mib if b.kv_self_mib is not None else sum(b.kv_mib.values())
        proc = (r.get("at_row") or {}).get("proc_mib") or r["peak_proc_mib"]
        cmd = parse_command(command, engine=eng)
        spec = VALIDATION_MODELS[model]
        f = realwidth_facts(model)
        rb = run_buffers(f.tensors, f.dims, cmd, n_gpus=1, extras=f.extras, offsets=f.offsets)
        experts = any(buf == "CUDA0" and expert_part(t) is not None for t, buf in rb.placement.items())
        attention: AttentionKind = "mla" if spec.model.startswith(("deepseek", "kimi")) else "gqa"
        out.append(MeasuredMargin(name, eng, attention, cmd.flash_attn, cmd.effective_ubatch,
                                  round(proc - cuda0, 1), "holdout" if split == "holdout" else "fit",
                                  experts))  # fmt: skip
    return out
