"""The bad-input catalogue: one TOML case per file, materialised and rendered.

A case file holds ``description``, ``argv`` (the quantforge command line), ``exit_code``
(2: bad input, 1: runtime failure), ``stderr_regex`` (the one line) and optional
``[[files]]`` to create first, each with one of ``text``, ``bytes_hex``,
``head = {from = "{smol_f16}", bytes = N}`` (a truncated copy) or ``link`` (a symlink).
``env`` sets environment variables for the run; ``debug = false`` marks click usage
errors, which have no traceback to show under ``--debug``.

Placeholders in argv, file texts, links and env: ``{case_dir}`` (the case's scratch
folder), ``{repo}``, ``{smol_f16}``, ``{smol_imatrix}``, ``{faulty_bin}``,
``{real_quantize}`` and ``{smol}`` (a folder holding the SmolLM2 recipe, its base and
its imatrix, ready to build).

``python tests/bad_inputs/catalogue.py`` rewrites ``docs/bad-inputs.md`` from the cases.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DOC = REPO / "docs" / "bad-inputs.md"


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


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(HERE.glob("[0-9][0-9][0-9]-*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        cases.append(
            Case(
                id=path.stem,
                description=data["description"],
                argv=list(data["argv"]),
                exit_code=int(data["exit_code"]),
                stderr_regex=data["stderr_regex"],
                files=list(data.get("files", [])),
                env=dict(data.get("env", {})),
                debug=bool(data.get("debug", True)),
                area=data.get("area", ""),
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


def materialise(case: Case, case_dir: Path, values: dict[str, str]) -> None:
    for spec in case.files:
        dst = case_dir / fill(spec["path"], values)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if "text" in spec:
            dst.write_text(fill(spec["text"], values), encoding="utf-8")
        elif "bytes_hex" in spec:
            dst.write_bytes(bytes.fromhex("".join(spec["bytes_hex"].split())))
        elif "head" in spec:
            with open(fill(spec["head"]["from"], values), "rb") as f:
                dst.write_bytes(f.read(int(spec["head"]["bytes"])))
        elif "link" in spec:
            dst.symlink_to(fill(spec["link"], values))
        elif "mode" in spec:
            dst.mkdir(exist_ok=True)
        else:
            raise ValueError(f"{case.id}: file {spec['path']} has no content")
        if "mode" in spec:
            dst.chmod(int(spec["mode"], 8))


def render_doc(cases: list[Case]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Bad inputs: what quantforge says",
        "",
        "Generated from `tests/bad_inputs/*.toml` by `python tests/bad_inputs/catalogue.py`;",
        "`tests/test_bad_inputs.py` runs every case and fails when this table is stale.",
        "Every case ends with exit code 2 (bad input) or 1 (runtime failure) and one line on",
        "stderr naming the problem and the fix; `--debug` shows the traceback instead.",
        "",
        f"{len(cases)} cases.",
        "",
        "| case | area | input | command | exit | the line (regex) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in cases:
        cmd = "quantforge " + " ".join(c.argv)
        lines.append(
            f"| {c.id[:3]} | {cell(c.area)} | {cell(c.description)} | `{cell(cmd)}` | {c.exit_code} | `{cell(c.stderr_regex)}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render_doc(load_cases()), encoding="utf-8")
    print(f"wrote {DOC} ({len(load_cases())} cases)", file=sys.stderr)
