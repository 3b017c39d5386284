"""The module map of docs/DESIGN.md holds: no import circle, imports only downwards through the
layers, no function-local import without its reason, child processes started only by runner.py.

The imports are read from the source (ast), so a circle hidden in a function body counts as much
as one at module level; only ``if TYPE_CHECKING:`` blocks are left out (they never run).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "quantforge"
#: What a function-local import must say on its first line (DESIGN.md, "Imports").
LOCAL_IMPORT_MARKS = ("# startup", "# optional")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _target(mod: str, is_pkg: bool, node: ast.ImportFrom, name: str) -> str:
    if node.level:
        base = mod.split(".")
        if not is_pkg:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        src = ".".join(base + ([node.module] if node.module else []))
    else:
        src = node.module or ""
    return f"{src}.{name}" if f"{src}.{name}" in MODULES else src


def _imports(mod: str) -> list[tuple[str, int, bool, str]]:
    """(imported quantforge module, line, inside a function, first source line) of ``mod``."""
    path = MODULES[mod]
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, int, bool, str]] = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for ch in ast.iter_child_nodes(node):
            if isinstance(ch, ast.If) and "TYPE_CHECKING" in ast.unparse(ch.test):
                for sub in ch.orelse:
                    visit(ast.Module(body=[sub], type_ignores=[]), in_func)
                continue
            if isinstance(ch, (ast.Import, ast.ImportFrom)):
                names = (
                    [a.name for a in ch.names]
                    if isinstance(ch, ast.Import)
                    else [_target(mod, is_pkg, ch, a.name) for a in ch.names]
                )
                for n in names:
                    while n not in MODULES and "." in n:
                        n = n.rsplit(".", 1)[0]
                    found.append((n, ch.lineno, in_func, lines[ch.lineno - 1]))
            visit(ch, in_func or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(text), False)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod in MODULES:
        for target, _line, _local, _src in _imports(mod):
            if target not in MODULES or target == mod:
                continue
            graph[mod].add(target)
            # importing a.b.c runs a.b's __init__ first (unless a.b is a package of mod itself)
            parts = target.split(".")
            for i in range(2, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in MODULES and not mod.startswith(pkg + ".") and pkg != mod:
                    graph[mod].add(pkg)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _layers() -> list[tuple[str, list[str]]]:
    """(layer name, module patterns) of DESIGN.md's layer table, lowest first."""
    text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"^\| (\d+) ([^|]+?) \| ([^|]+) \|", line)
        if m:
            rows.append((f"{m.group(1)} {m.group(2).strip()}", re.findall(r"`([\w.*]+)`", m.group(3))))
    return rows


def _layer_of(mod: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """The index of the most specific pattern naming ``mod`` (``fit.solver`` beats ``fit.*``)."""
    best: tuple[int, int] | None = None
    name = mod.removeprefix("quantforge.") if mod != "quantforge" else "quantforge"
    for i, (_layer, patterns) in enumerate(layers):
        for pat in patterns:
            if pat.endswith(".*"):
                hit = name == pat[:-2] or name.startswith(pat[:-1])
            else:
                hit = name == pat
            if hit:
                spec = len(pat.rstrip("*"))
                if best is None or spec > best[0]:
                    best = (spec, i)
    return None if best is None else best[1]


def test_no_import_circle() -> None:
    assert _circles(_graph()) == []


def test_a_circle_is_found() -> None:
    # The walker itself: a two-module circle and a three-module one are reported, a chain is not.
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert _circles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer_and_imports_only_downwards() -> None:
    layers = _layers()
    assert len(layers) >= 8, "DESIGN.md lost its layer table"
    unplaced = [m for m in MODULES if _layer_of(m, layers) is None]
    assert unplaced == []
    upward = []
    for mod, targets in _graph().items():
        mine = _layer_of(mod, layers)
        assert mine is not None
        for t in sorted(targets):
            theirs = _layer_of(t, layers)
            assert theirs is not None
            if theirs > mine:
                upward.append(f"{mod} ({layers[mine][0]}) imports {t} ({layers[theirs][0]})")
    assert upward == []


def test_function_local_imports_say_why() -> None:
    unmarked = [
        f"{MODULES[mod].relative_to(REPO)}:{line}: {src.strip()}"
        for mod in MODULES
        for target, line, local, src in _imports(mod)
        if local and not any(mark in src for mark in LOCAL_IMPORT_MARKS)
    ]
    assert unmarked == []


def test_the_cli_modules_import_no_stage_at_module_level() -> None:
    # `quantforge --help` loads every command module: they import typer, the standard library and
    # the cheap CLI helpers only (test_api measures the same through -X importtime).
    allowed = {"quantforge.cli", "quantforge.cli._app", "quantforge.cli._options", "quantforge.cli._progress",
               "quantforge.errors", "quantforge.units"}
    heavy = []
    for mod in MODULES:
        if not mod.startswith("quantforge.cli.cmd_"):
            continue
        for target, line, local, _src in _imports(mod):
            if not local and target.startswith("quantforge") and target not in allowed:
                heavy.append(f"{mod}:{line} imports {target}")
    assert heavy == []


_PROCESS_START = re.compile(
    r"\bsubprocess\b|\bmultiprocessing\b|\bpty\.(spawn|fork)|\bos\.(system|popen|spawn\w*|exec\w*|fork\w*|"
    r"posix_spawn\w*)\s*\(|create_subprocess_(exec|shell)"
)


def test_only_runner_starts_child_processes() -> None:
    found = []
    for mod, path in MODULES.items():
        if mod == "quantforge.runner":
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PROCESS_START.search(code):
                found.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert found == []
    assert _PROCESS_START.search((PKG / "runner.py").read_text(encoding="utf-8"))


@pytest.mark.parametrize("line", ["import subprocess", "proc = subprocess.run(argv)", "os.execvp(a, b)",
                                  "os.system('x')", "from multiprocessing import Pool"])
def test_the_process_check_sees_the_usual_spellings(line: str) -> None:
    assert _PROCESS_START.search(line)


#: Where one stage hands over to the next (DESIGN.md, "Core models"): each is typed with the stages' own
#: models, so a renamed field fails in mypy, not at run time.
STAGE_ENTRY_POINTS = [
    ("quantforge.recipe", "load_recipe"), ("quantforge.recipe", "parse_recipe"),
    ("quantforge.inventory", "load_inventory"), ("quantforge.inventory", "recipe_inventory"),
    ("quantforge.inventory", "load_source"),
    ("quantforge.plan._expand", "expand"),
    ("quantforge.fit.report", "plan_fit"), ("quantforge.fit.report", "plan_command"),
    ("quantforge.fit.api", "plan_source_command"), ("quantforge.fit.api", "breakpoint_matrix"),
    ("quantforge.fit.solver", "solve_recipe"), ("quantforge.fit.ladder", "solve_ladder"),
    ("quantforge.build", "prepare"), ("quantforge.build", "build_variant"), ("quantforge.build", "build"),
    ("quantforge.evaluate.perplexity", "evaluate"), ("quantforge.evaluate.sweep", "run_sweeps"),
    ("quantforge.sensitivity.measure", "run_sensitivity"),
    ("quantforge.publish.card", "card_data_from_manifests"), ("quantforge.publish.card", "render_card"),
    ("quantforge.publish.upload", "build_plan"), ("quantforge.publish.upload", "publish"),
    ("quantforge.publish.upload", "execute"),
    ("quantforge.cluster.build", "build_on_cluster"),
    ("quantforge.cluster.sensitivity", "measure_on_cluster"),
]  # fmt: skip


def _signature_annotations(mod: str, name: str) -> list[str]:
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs, *filter(None, [a.vararg, a.kwarg])]
            out = [f"{p.arg}: {ast.unparse(p.annotation)}" for p in params if p.annotation is not None]
            missing = [p.arg for p in params if p.annotation is None and p.arg not in ("self", "cls")]
            assert not missing, f"{mod}.{name}: parameters without a type: {missing}"
            assert node.returns is not None, f"{mod}.{name} has no return type"
            return [*out, f"return: {ast.unparse(node.returns)}"]
    raise AssertionError(f"{mod}.{name} is not a module-level function any more: update STAGE_ENTRY_POINTS")


@pytest.mark.parametrize(("mod", "name"), STAGE_ENTRY_POINTS, ids=[f"{m}.{n}" for m, n in STAGE_ENTRY_POINTS])
def test_stage_entry_points_have_no_any(mod: str, name: str) -> None:
    loose = [a for a in _signature_annotations(mod, name) if re.search(r"\bAny\b", a)]
    assert loose == []

