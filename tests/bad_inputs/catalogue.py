"""The bad-input catalogue: one TOML case per file, materialised, run and rendered.

A case file holds ``description``, ``area``, ``argv`` (the quantforge command line),
``exit_code`` (2: bad input, 1: runtime failure, 130: interrupted), ``stderr_regex`` (the one
line) and optionally:

* ``[[files]]`` to create first, each ``path`` with one of ``text``, ``bytes_hex``,
  ``head = {from = "{smol_f16}", bytes = N}`` (a truncated copy), ``copy`` (a copy of a file),
  ``hardlink`` (a hard link of a file), ``link`` (a symlink), ``dir = true``, ``fifo = true``,
  ``socket = true``, ``loop = true`` (a symlink to itself), ``sparse = N`` (N bytes, all holes),
  or ``gguf = {from = …, kv = {KEY = [TYPE, VALUE]}, drop = [KEY…], tensor_name = [I, HEX]}``
  (the real header of ``from`` with metadata changed, header bytes only), or ``json_set =
  {"a.b" = VALUE}`` (an edit of a JSON file already there, e.g. a built manifest); ``mode`` sets the
  permissions (``mode = "0000"`` makes a file unreadable, which needs ``drop_dac = true`` when the
  tests run as root);
* ``env``: environment variables; ``debug = false`` marks cases without a traceback to show
  under ``--debug`` (click usage errors, subprocess runs);
* ``runner = "subprocess"``: run ``python -m quantforge`` in a child (for signals and for
  ``drop_dac``: root's permission override dropped with ``setpriv``);
* ``[signal]``: ``name`` (INT, TERM), sent once ``when`` (a path glob in the case folder, or a
  text a file there contains: ``when = "out/*.log"``, ``contains = "/ 272]"``) holds, plus
  ``after`` seconds;
* ``[hub]``: a loopback Hub (the real huggingface_hub client talks to it): ``files = {"org/repo"
  = {"f.gguf" = "{smol_f16}"}}``, ``answers = {resolve = {headers = {ETag = "…"}}}`` to answer
  as a broken or hostile endpoint would; ``{hub}`` in argv/env is its URL;
* ``hold_lock = "out"``: another live process holds that folder's lock during the run;
* ``changes = [...]``: files the run may change or remove (everything else it was given must be
  left byte for byte as it was); ``absent = [...]``: globs that must not exist afterwards;
* ``timeout``: seconds (default 60); a case that runs longer has hung.

Placeholders in argv, file texts, links and env: ``{case_dir}`` (the case's folder: the root
nothing may be written outside of), ``{repo}``, ``{smol_f16}``, ``{smol_imatrix}``,
``{faulty_bin}``, ``{faults}``, ``{real_quantize}``, ``{smol}`` (a folder holding the SmolLM2
recipe, its base and its imatrix, ready to build), ``{built}`` (``{smol}`` with the IQ2_KS
variant built and verified) and ``{hub}``.

``python tests/bad_inputs/catalogue.py`` rewrites ``docs/bad-inputs.md`` from the cases.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOC = REPO / "docs" / "bad-inputs.md"

AREAS = ("recipe", "regex", "gguf", "inventory", "imatrix", "target", "plan", "fit", "filesystem", "build",
         "card", "publish", "environment", "hub", "interrupt", "eval", "sweep", "sensitivity", "cluster")


@dataclass(frozen=True)
class Case:
    id: str
    description: str
    argv: list[str]
    exit_code: int
    stderr_regex: str
    files: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    debug: bool = True
    area: str = ""
    runner: str = "inprocess"
    drop_dac: bool = False
    signal: dict[str, Any] | None = None
    hub: dict[str, Any] | None = None
    hold_lock: str | None = None
    changes: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    timeout: float = 60.0

    @property
    def in_process(self) -> bool:
        return self.runner == "inprocess"


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(HERE.glob("[0-9][0-9][0-9]-*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        runner = data.get("runner",
                          "subprocess" if data.get("signal") or data.get("drop_dac") else "inprocess")
        cases.append(
            Case(
                id=path.stem,
                description=data["description"],
                argv=list(data["argv"]),
                exit_code=int(data["exit_code"]),
                stderr_regex=data["stderr_regex"],
                files=list(data.get("files", [])),
                env=dict(data.get("env", {})),
                debug=bool(data.get("debug", runner == "inprocess")),
                area=data.get("area", ""),
                runner=runner,
                drop_dac=bool(data.get("drop_dac", False)),
                signal=data.get("signal"),
                hub=data.get("hub"),
                hold_lock=data.get("hold_lock"),
                changes=list(data.get("changes", [])),
                absent=list(data.get("absent", [])),
                timeout=float(data.get("timeout", 60)),
            )
        )
    return cases


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def smol_folder(dst: Path, *, smol_f16: Path, smol_imatrix: Path) -> Path:
    """The shipped SmolLM2 recipe next to links to its base and imatrix (what `build` expects)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "recipes" / "smollm2-135m.toml", dst / "r.toml")
    for name, target in (("smollm2-135m-f16.gguf", smol_f16), ("smollm2-135m.imatrix", smol_imatrix)):
        link = dst / name
        if not link.exists():
            link.symlink_to(target)
    return dst


def built_folder(dst: Path, *, smol_f16: Path, smol_imatrix: Path, built_gguf: Path) -> Path:
    """``smol_folder`` plus the built IQ2_KS variant (hard-linked from the test cache) and its manifest."""
    smol_folder(dst, smol_f16=smol_f16, smol_imatrix=smol_imatrix)
    out = dst / built_gguf.name
    try:
        os.link(built_gguf, out)
    except OSError:
        shutil.copy(built_gguf, out)
    shutil.copy(str(built_gguf) + ".log", dst)
    import json

    man = json.loads(Path(str(built_gguf) + ".manifest.json").read_text())
    # the cached ladder's manifest names its own recipe and imatrix; point it at this folder's
    man["recipe"]["sha256"] = __import__("hashlib").sha256((dst / "r.toml").read_bytes()).hexdigest()
    man["imatrix"]["path"] = "smollm2-135m.imatrix"
    (dst / (built_gguf.name + ".manifest.json")).write_text(json.dumps(man, indent=2))
    return dst


def _gguf(spec: dict[str, Any], values: dict[str, str]) -> bytes:
    """The header of a real GGUF with its metadata edited as the case says (header bytes only)."""
    from quantforge.gguf_header import GGUFTensorInfo, GGUFValue, ValueType, header_bytes, read_header

    h = read_header(fill(spec["from"], values))
    kv = dict(h.kv)
    for key in spec.get("drop", []):
        kv.pop(key, None)
    types = {name.lower(): getattr(ValueType, name) for name in dir(ValueType) if name.isupper()}
    for key, (tname, value) in spec.get("kv", {}).items():
        if tname == "string_hex":  # raw bytes, e.g. not UTF-8
            kv[key] = GGUFValue.of(bytes.fromhex(value).decode("utf-8", "surrogateescape"), ValueType.STRING)
        elif tname.startswith("array:"):
            kv[key] = GGUFValue.of(list(value), ValueType.ARRAY, types[tname.split(":", 1)[1]])
        else:
            kv[key] = GGUFValue.of(value, types[tname])
    tensors = list(h.tensors)
    placeholder = None
    raw_name = None
    if "tensor_name" in spec:
        index, hexname = spec["tensor_name"]
        raw_name = bytes.fromhex(hexname)
        placeholder = b"Q" * len(raw_name)
        t = tensors[index]
        tensors[index] = GGUFTensorInfo(name=placeholder.decode(), shape=t.shape, type_id=t.type_id,
                                        offset=t.offset)
    if "tensor_type" in spec:
        index, type_id = spec["tensor_type"]
        t = tensors[index]
        tensors[index] = GGUFTensorInfo(name=t.name, shape=t.shape, type_id=type_id, offset=t.offset)
    if "tensor_shape" in spec:
        index, shape = spec["tensor_shape"]
        t = tensors[index]
        tensors[index] = GGUFTensorInfo(name=t.name, shape=tuple(shape), type_id=t.type_id, offset=t.offset)
    blob = header_bytes(kv, tensors, h.alignment)
    if placeholder is not None and raw_name is not None:
        at = blob.index(placeholder)
        blob = blob[:at] + raw_name + blob[at + len(raw_name):]
    return blob


def materialise(case: Case, case_dir: Path, values: dict[str, str]) -> list[socket.socket]:
    """Create the case's files; returns the sockets to close after the run."""
    sockets: list[socket.socket] = []
    for spec in case.files:
        dst = case_dir / fill(spec["path"], values)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if "json_set" not in spec and (dst.is_symlink() or dst.is_file()):
            dst.unlink()  # the case replaces a file of {smol} / {built}
        if "text" in spec:
            dst.write_text(fill(spec["text"], values), encoding="utf-8")
        elif "bytes_hex" in spec:
            dst.write_bytes(bytes.fromhex("".join(spec["bytes_hex"].split())))
        elif "head" in spec:
            with open(fill(spec["head"]["from"], values), "rb") as f:
                dst.write_bytes(f.read(int(spec["head"]["bytes"])))
        elif "copy" in spec:
            shutil.copy(fill(spec["copy"], values), dst)
        elif "hardlink" in spec:
            try:
                os.link(fill(spec["hardlink"], values), dst)
            except OSError:  # another file system
                shutil.copy(fill(spec["hardlink"], values), dst)
        elif "link" in spec:
            dst.symlink_to(fill(spec["link"], values))
        elif spec.get("dir"):
            dst.mkdir(exist_ok=True)
        elif spec.get("fifo"):
            os.mkfifo(dst)
        elif spec.get("socket"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(str(dst))
            sockets.append(s)
        elif spec.get("loop"):
            dst.symlink_to(dst.name)
        elif "sparse" in spec:
            with open(dst, "wb") as f:
                f.truncate(int(spec["sparse"]))
        elif "gguf" in spec:
            dst.write_bytes(_gguf(spec["gguf"], values))
        elif "json_set" in spec:
            import json

            data = json.loads(dst.read_text(encoding="utf-8"))
            for dotted, value in spec["json_set"].items():
                *parents, last = dotted.split(".")
                node = data
                for part in parents:
                    if not isinstance(node.get(part), dict):  # absent, or null in a manifest never evaluated
                        node[part] = {}
                    node = node[part]
                node[last] = fill(value, values) if isinstance(value, str) else value
            dst.write_text(json.dumps(data), encoding="utf-8")
        elif "mode" in spec:
            dst.mkdir(exist_ok=True)
        else:
            raise ValueError(f"{case.id}: file {spec['path']} has no content")
        if "mode" in spec:
            dst.chmod(int(spec["mode"], 8))
    return sockets


def render_doc(cases: list[Case]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    by_area: dict[str, int] = {}
    for c in cases:
        by_area[c.area] = by_area.get(c.area, 0) + 1
    lines = [
        "# Bad inputs: what quantforge says",
        "",
        "Generated from `tests/bad_inputs/*.toml` by `python tests/bad_inputs/catalogue.py`;",
        "`tests/test_bad_inputs.py` runs every case and fails when this table is stale.",
        "Every case ends within its time bound with exit code 2 (bad input), 1 (runtime failure) or",
        "130 (interrupted) and one line on stderr naming the problem and the fix, without a traceback",
        "(`--debug` shows it instead); every file the case was given is left as it was, and nothing is",
        "written outside the case's folder.",
        "",
        f"{len(cases)} cases: " + ", ".join(f"{n} {a}" for a, n in sorted(by_area.items())) + ".",
        "",
        "| case | area | input | command | exit | the line (regex) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in cases:
        cmd = "quantforge " + " ".join(c.argv)
        lines.append(
            f"| {c.id[:3]} | {cell(c.area)} | {cell(c.description)} | `{cell(cmd)}` | {c.exit_code} | "
            f"`{cell(c.stderr_regex)}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render_doc(load_cases()), encoding="utf-8")
    print(f"wrote {DOC} ({len(load_cases())} cases)", file=sys.stderr)
