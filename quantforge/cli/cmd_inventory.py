"""``quantforge inventory``: list a model's tensors from a GGUF header, hf:// URL or model id."""

from __future__ import annotations

import re
from typing import Any

import typer

from quantforge.cli._app import app
from quantforge.cli._options import JsonOpt
from quantforge.errors import UsageError
from quantforge.units import human_bytes

_BLK = re.compile(r"^blk\.(\d+)\.")


@app.command(
    "inventory",
    help=(
        "Show the tensor inventory of a model: a recipe's model, a local GGUF (any shard of a split set), "
        "hf://org/repo/file.gguf (reads only the header bytes), an HF id with a shipped inventory, or a "
        "config.json; and which fork (ik_llama.cpp or llama.cpp) a GGUF's type ids belong to.\n\n"
        "Examples:\n\n"
        "  quantforge inventory SmolLM2-135M-Instruct-f16.gguf\n\n"
        "  quantforge inventory "
        "hf://unsloth/DeepSeek-R1-0528-GGUF/BF16/DeepSeek-R1-0528-BF16-00001-of-00030.gguf\n\n"
        "  quantforge inventory deepseek-ai/DeepSeek-R1-0528 --layout mainline --json\n\n"
        "  quantforge inventory path/to/config.json"
    ),
)
def inventory(
    source: str = typer.Argument(
        ...,
        help="A recipe (.toml), a .gguf (any shard), hf://org/repo[@rev]/file.gguf, an HF model id, or a "
             "config.json.",
    ),
    engine: str | None = typer.Option(
        None, "--engine", help="ik or mainline: names ambiguous type ids and picks the usual layout."
    ),
    layout: str | None = typer.Option(
        None, "--layout",
        help="ik, mainline or legacy converter layout of a synthesized DeepSeek/Kimi inventory."
    ),
    nextn: str | None = typer.Option(
        None, "--nextn", help="GLM MTP block: full, shared (no own embed/head copies) or none."
    ),
    as_json: JsonOpt = False,
) -> None:
    from quantforge.cli._output import emit  # startup
    from quantforge.inventory import load_source  # startup

    for flag, value, allowed in (("--engine", engine, ("ik", "mainline")), ("--layout", layout,
                                                                            ("ik", "mainline", "legacy")),
                                 ("--nextn", nextn, ("full", "shared", "none"))):
        if value is not None and value not in allowed:
            raise UsageError(f"unknown {flag[2:]} {value!r}", where=flag,
                             hint="use " + " or ".join(f"{flag} {a}" for a in allowed))
    src = load_source(source, engine=engine, layout=layout, nextn=nextn)  # type: ignore[arg-type]
    emit(_as_dict(src.inventory), as_json=as_json, human=_render)


def _tensor_bytes(dtype: str, shape: tuple[int, ...], engine: Any) -> int | None:
    from quantforge.catalogue import catalogue  # startup

    for eng in ((engine,) if engine else ("ik", "mainline")):
        qt = catalogue(eng).find(dtype)
        if qt is not None:
            return int(qt.tensor_bytes(shape))
    return None


def _as_dict(inv: Any) -> dict[str, Any]:
    # The fork spells the dtypes; a layout names an engine only where it is one of them.
    engine = inv.fork or (inv.layout if inv.layout in ("ik", "mainline") else None)
    sizes = [_tensor_bytes(t.dtype, t.shape, engine) for t in inv.tensors]
    out: dict[str, Any] = {
        "source": inv.source,
        "arch": inv.arch,
        "layout": inv.layout,
        "fork": inv.fork,
        "fork_evidence": list(inv.fork_evidence),
        "hparams": inv.hparams,
        "n_tensors": len(inv.tensors),
        "n_params": inv.n_params,
        "tensor_bytes": None if None in sizes else sum(s for s in sizes if s is not None),
        "n_shards": inv.n_shards,
        "metadata_bytes": inv.metadata_bytes,
        # Synthesized inventories (no GGUF KV) only estimate the header.
        "metadata_bytes_exact": inv.kv is not None,
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "shard": t.shard, "bytes": b}
            for t, b in zip(inv.tensors, sizes, strict=True)
        ],
    }
    if inv.bytes_fetched is not None:
        out["bytes_fetched"] = inv.bytes_fetched
    return out


def _render(d: dict[str, Any]) -> str:
    from quantforge.recipe import format_layers  # startup

    groups: dict[tuple[str, tuple[int, ...], str], dict[str, Any]] = {}
    for t in d["tensors"]:
        m = _BLK.match(t["name"])
        key_name = _BLK.sub("blk.*.", t["name"]) if m else t["name"]
        key = (key_name, tuple(t["shape"]), t["dtype"])
        g = groups.setdefault(key, {"n": 0, "layers": [], "bytes": 0})
        g["n"] += 1
        if m:
            g["layers"].append(int(m.group(1)))
        g["bytes"] = None if g["bytes"] is None or t["bytes"] is None else g["bytes"] + t["bytes"]
    rows = []
    for (name, shape, dtype), g in groups.items():
        count = f"×{g['n']}" if g["layers"] else ""
        layers = f"layers {format_layers(g['layers'])}" if g["layers"] else ""
        size = human_bytes(g["bytes"]) if g["bytes"] is not None else "?"
        rows.append((name, count, "[" + ", ".join(map(str, shape)) + "]", dtype, layers, size))
    widths = [max(len(r[i]) for r in rows) for i in range(6)] if rows else [0] * 6
    shards = f", {d['n_shards']} shards" if d["n_shards"] > 1 else ""
    layout = f", layout {d['layout']}" if d["layout"] else ""
    lines = [f"{d['source']}: {d['arch']}{layout}{shards}"]
    hp = d["hparams"]
    if hp:
        lines.append("  " + "  ".join(f"{k}={v}" for k, v in hp.items()))
    lines.append("")
    for r in rows:
        lines.append(
            f"  {r[0]:<{widths[0]}} {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  "
            f"{r[4]:<{widths[4]}}  {r[5]:>{widths[5]}}".rstrip()
        )
    lines.append("")
    total = human_bytes(d["tensor_bytes"]) if d["tensor_bytes"] is not None else "?"
    tail = f"{d['n_tensors']} tensors, {d['n_params']:,} parameters, {total} of tensor data"
    if d.get("metadata_bytes") is not None:
        tail += f", {d['metadata_bytes']:,} header bytes" + ("" if d["metadata_bytes_exact"]
                                                             else " (estimated)")
    if d.get("bytes_fetched") is not None:
        tail += f"; fetched {d['bytes_fetched']:,} bytes"
    lines.append(tail)
    if d["metadata_bytes_exact"]:  # a real GGUF: say whose type ids it uses, and why
        fork = {"ik": "ik_llama.cpp", "mainline": "llama.cpp"}.get(d["fork"] or "", "")
        if fork:
            lines.append(f"fork: {fork} ({'; '.join(d['fork_evidence'])})")
        else:
            lines.append("fork: either (no type id or metadata specific to ik_llama.cpp or llama.cpp)")
    return "\n".join(lines)
