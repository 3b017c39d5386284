"""Property-based fuzzing of the whole offline pipeline: recipes, regexes, GGUF headers, inventory,
recipe import and diff, and the planners.

    python bench/fuzz.py --examples 10000          # the acceptance run (every target)
    python bench/fuzz.py --examples 200 --target gguf-header

Targets (a "crash" is any exception outside the project's error classes, or a broken property):

* ``recipe-compile``: generated recipe TOML (valid and broken keys, types, regexes, layer
  ranges, extends chains) either compiles or raises a ``QuantforgeError``; every accepted
  regex is searched, as the engines' std::regex matches, against the 1147 DeepSeek-R1 tensor
  names within a time bound.
* ``regex-dialect``: generated regexes over the ECMAScript grammar (and raw character soup)
  are accepted or refused with ``RegexError``; for accepted ones the Python translation agrees
  with a step-counting model of libstdc++'s matcher (``tests/support/std_regex.py``) on tensor
  names, and the model's work stays within the checker's bound.
* ``layer-regex``: a compiled layer range matches ``blk.N.`` exactly for its layers.
* ``gguf-header``: mutated real GGUF headers (the SmolLM2 F16 header with a shortened
  vocabulary, plus an ik quant's) parse or raise ``InventoryError``, never anything else,
  and never allocate more than a bound (tracemalloc peak).
* ``inventory``: the same mutated headers written to a file and read by ``load_inventory``
  (hparams, split keys, type ids, names).
* ``recipe-import``: ``import_recipe`` of a mutated header (recipe written and re-expanded).
* ``recipe-diff``: ``diff_quants`` of a mutated header against a real one, and of two mutated.
* ``plan``: every variant of the shipped SmolLM2 recipe and a generated one expanded, linted
  and fitted (``plan_fit`` on a shipped target) against the inventory of a mutated header.

Each target prints one summary line: ``recipe-compile: 10000 examples, 0 crashes``.
``tests/test_fuzz.py`` runs the same targets with the small ``ci`` profile.
"""

from __future__ import annotations

import argparse
import io
import re
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantforge.errors import InventoryError, QuantforgeError  # noqa: E402

# An accepted regex must finish all 1147 names in this time (the planner's budget per rule).
REGEX_TIME_BOUND_S = 1.0
# A header a few hundred KB long must not make the reader allocate more than this.
HEADER_ALLOC_BOUND = 64 << 20


@dataclass
class Outcome:
    target: str
    examples: int = 0
    crashes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.target}: {self.examples} examples, {len(self.crashes)} crashes"


# --------------------------------------------------------------------------- recipe strategies


@cache
def deepseek_names() -> tuple[str, ...]:
    from quantforge.inventory import load_inventory

    return tuple(t.name for t in load_inventory("deepseek-ai/DeepSeek-R1-0528", engine="ik").tensors)


@cache
def ik_types() -> tuple[str, ...]:
    from quantforge.catalogue import catalogue

    return tuple(catalogue("ik").names())


_ATOMS = [
    "a",
    "e",
    "_",
    "ffn",
    "down",
    "exps",
    "attn",
    r"\.",
    ".",
    r"\d",
    "[0-9]",
    "[a-z]",
    "blk",
    "weight",
    "x",
]
_REGEX_CHARS = "ab._-()[]{}|*+?^$\\0123456789dwsfn,"


def _regex_tree(leaf: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.recursive(
        leaf,
        lambda sub: st.one_of(
            st.tuples(sub, sub).map("".join),
            st.tuples(sub, sub).map(lambda t: f"({t[0]}|{t[1]})"),
            sub.map(lambda s: f"({s})"),
            st.tuples(sub, st.sampled_from(["*", "+", "?", "{2}", "{0,30}", "{1,3}", "*?"])).map(
                lambda t: f"({t[0]}){t[1]}"
            ),
        ),
        max_leaves=8,
    )


def regexes() -> st.SearchStrategy[str]:
    """Structured regexes (nested groups, alternations, quantifiers) and raw character soup."""
    return st.one_of(_regex_tree(st.sampled_from(_ATOMS)), st.text(_REGEX_CHARS, max_size=24))


def _toml_str(s: str) -> str:
    # A TOML literal string when possible (regexes are written that way), else a basic string.
    if "'" not in s and "\n" not in s and all(ord(c) >= 32 for c in s):
        return f"'{s}'"
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _mostly(
    good: st.SearchStrategy[object], bad: st.SearchStrategy[object], odds: int = 8
) -> st.SearchStrategy[object]:
    """``good`` about ``odds`` times out of ``odds + 1``: most generated recipes must compile."""
    return rare(odds).flatmap(lambda r: bad if r else good)


def rare(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n + 1`` draws. (Hypothesis favours the ends of a range, so the rare
    outcome sits in its middle, or it would come up far more often than intended.)"""
    return st.integers(0, n).map(lambda k: k == n // 2)


@cache
def mainline_types() -> tuple[str, ...]:
    from quantforge.catalogue import catalogue

    return tuple(catalogue("mainline").names())


@st.composite
def recipe_texts(draw: st.DrawFn) -> str:
    engine = str(draw(_mostly(st.sampled_from(["ik", "ik", "mainline"]), st.just("vllm"))))
    known = ik_types() if engine == "ik" else mainline_types()
    types = _mostly(
        st.sampled_from(known), st.one_of(st.sampled_from(["Q4_K", "iq9_k", "", "q8"]), st.text(max_size=6))
    )
    layers = st.one_of(
        st.none(),
        st.lists(st.integers(0, 80), min_size=1, max_size=4).map(lambda xs: ",".join(map(str, xs))),
        st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: f"{min(t)}-{max(t)}"),
        _mostly(st.none(), st.text("0123456789-, x", max_size=8), odds=3),
    )
    lines = ["[model]", 'id = "HuggingFaceTB/SmolLM2-135M-Instruct"', f'engine = "{engine}"']
    if draw(rare(3)):
        chunks = draw(st.sampled_from(["4", "-1", "0", '"many"', "1e3", "40"]))
        lines += ["[imatrix]", f"chunks = {chunks}"]
    names = [f"V{i}" for i in range(int(draw(_mostly(st.integers(1, 3), st.just(0)))))]
    for i, name in enumerate(names):
        lines += ["[[quant]]", f'name = "{name}"']
        if draw(_mostly(st.just(True), st.just(False))):
            lines.append(f"default = {_toml_str(str(draw(types)))}")
        if draw(rare(4)):
            lines.append(f'ftype = "{draw(st.sampled_from(["IQ4_KS", "Q4_K_M", "NOPE", "F16", "Q8_0"]))}"')
        if i and draw(st.booleans()):
            lines.append(f'extends = "{draw(st.sampled_from([*names, "NOPE"]))}"')
        if draw(rare(12)):
            lines.append(f"{draw(st.sampled_from(['rulez', 'repack_cpu', 'defualt']))} = true")
        rules = []
        for _ in range(draw(st.integers(0, 4))):
            regex = draw(
                _mostly(_regex_tree(st.sampled_from(_ATOMS)), st.text(_REGEX_CHARS, max_size=24), odds=3)
            )
            parts = [f"match = {_toml_str(str(regex))}", f"type = {_toml_str(str(draw(types)))}"]
            lay = draw(layers)
            if lay is not None:
                parts.append(f"layers = {_toml_str(lay)}")
            if draw(rare(3)):
                parts.append(f'place = "{draw(_mostly(st.sampled_from(["cpu", "gpu"]), st.just("tpu")))}"')
            if engine == "ik" and draw(rare(5)):
                parts.append(f"repack = {draw(st.sampled_from(['true', 'false']))}")
            rules.append("{ " + ", ".join(parts) + " }")
        lines.append("rules = [\n  " + ",\n  ".join(rules) + ",\n]" if rules else "rules = []")
    text = "\n".join(lines) + "\n"
    if draw(rare(12)):  # a damaged file: cut, or a byte appended
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "[", "=", "\x00", '"']))
    return text


def check_recipe(text: str) -> None:
    """The property: a Recipe, or a QuantforgeError; accepted regexes run in bounded time."""
    from quantforge.recipe import check_regex, parse_recipe

    try:
        recipe = parse_recipe(text, path="fuzz.toml")
    except QuantforgeError:
        return
    names = deepseek_names()
    for q in recipe.quants:
        for r in q.rules:
            rx = check_regex(r.pattern)  # matched as the engines match it
            t0 = time.perf_counter()
            for n in names:
                rx.search(n)
            took = time.perf_counter() - t0
            assert took < REGEX_TIME_BOUND_S, f"regex {r.pattern!r} took {took:.2f} s over {len(names)} names"


def check_layers(layers: set[int]) -> None:
    from quantforge.recipe import compile_layers

    spec = ",".join(str(x) for x in sorted(layers))
    rx = re.compile(compile_layers(spec) + "ffn_down")
    for n in range(0, max(layers) + 25):
        name = f"blk.{n}.ffn_down_exps.weight"
        assert bool(rx.search(name)) == (n in layers), (spec, name)


# --------------------------------------------------------------------------- GGUF header mutation


@cache
def seed_headers() -> tuple[bytes, ...]:
    """Real GGUF headers: the SmolLM2 F16 one (vocabulary cut to 64 tokens so an example parses
    in milliseconds; every other KV and all 272 tensor infos kept) and an ik quant's."""
    from quantforge.gguf_header import GGUFValue, header_bytes, read_header

    out = []
    cache_dir = REPO / ".qf-cache"
    sources = [cache_dir / "smol-f16.gguf", *sorted(cache_dir.glob("smol-f16-IQ4_K-*.gguf"))[:1]]
    for src in sources:
        if not src.is_file():
            continue
        h = read_header(src)
        kv = {}
        for key, v in h.kv.items():
            if isinstance(v.value, list) and len(v.value) > 64:
                v = GGUFValue.of(v.value[:64], v.type, v.sub_type)
            kv[key] = v
        out.append(header_bytes(kv, h.tensors))
    if not out:
        raise SystemExit("no real GGUF under .qf-cache/ (run the test suite once: it makes smol-f16.gguf)")
    return tuple(out)


_BIG = [2**32 - 1, 2**31, 2**62, 2**63 - 1, 2**64 - 1, 1 << 40, 0, 1, 7]


@st.composite
def mutated_headers(draw: st.DrawFn) -> tuple[bytes, bool]:
    data = bytearray(draw(st.sampled_from(seed_headers())))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "u32", "u64", "cut", "insert", "delete", "count"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "u32" and pos + 4 <= len(data):
            data[pos : pos + 4] = struct.pack("<I", draw(st.sampled_from(_BIG)) & 0xFFFFFFFF)
        elif kind == "u64" and pos + 8 <= len(data):
            data[pos : pos + 8] = struct.pack("<Q", draw(st.sampled_from(_BIG)))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "count" and len(data) >= 24:  # the tensor / KV counts right after the version
            at = draw(st.sampled_from([8, 16]))
            data[at : at + 8] = struct.pack("<Q", draw(st.sampled_from(_BIG)))
    return bytes(data), draw(st.booleans())


@cache
def _seed_parsed() -> tuple[object, ...]:
    import io as _io

    from quantforge.gguf_header import read_header

    return tuple(read_header(_io.BytesIO(h), size=len(h), where="seed") for h in seed_headers())


_VALUES = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.sampled_from([0, 1, 2, 7, 64, 576, 49152, 2**31, 2**40]),
    st.floats(allow_nan=True, allow_infinity=True, width=32), st.booleans(), st.text(max_size=12),
    st.lists(st.integers(0, 2**32 - 1), max_size=4),
)


@st.composite
def edited_headers(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A real header with its metadata edited (well-formed bytes, hostile values): a new type or value for
    a KV, a KV dropped, a tensor's shape, type id or name changed. Reaches the stages past the reader."""
    from quantforge.gguf_header import GGUFTensorInfo, GGUFValue, ValueType, header_bytes

    h = draw(st.sampled_from(_seed_parsed()))
    kv = dict(h.kv)  # type: ignore[attr-defined]
    tensors = list(h.tensors)  # type: ignore[attr-defined]
    keys = sorted(kv)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["kv", "kv", "drop", "shape", "type", "name"]))
        if kind in ("kv", "drop"):
            key = draw(st.sampled_from([k for k in keys if not k.startswith("tokenizer.ggml.")] +
                                       ["split.count", "split.no", "general.alignment", "llama.expert_count"]))
            if kind == "drop":
                kv.pop(key, None)
                continue
            value = draw(_VALUES)
            if isinstance(value, bool):
                kv[key] = GGUFValue.of(value, ValueType.BOOL)
            elif isinstance(value, int):
                vt = draw(st.sampled_from([ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64]))
                lo, hi = {ValueType.UINT32: (0, 2**32 - 1), ValueType.INT32: (-(2**31), 2**31 - 1),
                          ValueType.UINT64: (0, 2**64 - 1), ValueType.INT64: (-(2**63), 2**63 - 1)}[vt]
                kv[key] = GGUFValue.of(min(max(value, lo), hi), vt)
            elif isinstance(value, float):
                kv[key] = GGUFValue.of(value, ValueType.FLOAT32)
            elif isinstance(value, str):
                kv[key] = GGUFValue.of(value, ValueType.STRING)
            else:
                kv[key] = GGUFValue.of(value, ValueType.ARRAY, ValueType.UINT32)
        elif tensors:
            i = draw(st.integers(0, len(tensors) - 1))
            t = tensors[i]
            if kind == "shape":
                shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 32, 256, 576, 1536, 49152, 2**20, 2**31]),
                                            min_size=1, max_size=4)))
                tensors[i] = GGUFTensorInfo(name=t.name, shape=shape, type_id=t.type_id, offset=t.offset)
            elif kind == "type":
                tensors[i] = GGUFTensorInfo(name=t.name, shape=t.shape, type_id=draw(st.integers(0, 400)), offset=t.offset)
            else:
                name = draw(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=20))
                if name not in {x.name for x in tensors}:
                    tensors[i] = GGUFTensorInfo(name=name, shape=t.shape, type_id=t.type_id, offset=t.offset)
    return header_bytes(kv, tensors, h.alignment), draw(st.booleans())  # type: ignore[attr-defined]


def any_headers() -> st.SearchStrategy[tuple[bytes, bool]]:
    return st.one_of(mutated_headers(), edited_headers(), edited_headers())


def check_header(data: bytes, with_size: bool) -> None:
    from quantforge.gguf_header import read_header

    tracemalloc.start()
    try:
        read_header(io.BytesIO(data), size=len(data) if with_size else None, where="fuzz.gguf")
    except InventoryError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < HEADER_ALLOC_BOUND, f"reading a {len(data)}-byte header allocated {peak} bytes"


# --------------------------------------------------------------------------- regex dialect

#: ECMAScript pieces, including the ones Python reads differently (they must be refused, not crash).
_ECMA_ATOMS = ["a", "e", "_", r"\.", ".", r"\d", r"\w", r"\s", r"\D", "[0-9]", "[a-z]", "[^a-z]", "[a-f_.]", "blk",
               "ffn", "exps", "x", r"\b", "^", "$", r"\x2e", "[[:alpha:]]", "(?>a)", r"\N{X}", "(?P<n>a)", "a{", "[]a]",
               r"\1", "(?=_)", "(?!x)", "(?:a|e)", "é", "a**", r"\Z", "[a-]", r"[\-.]"]
_ECMA_CHARS = "ab._-()[]{}|*+?^$\\0123456789dwsfnx=:!<>,"


def ecma_regexes() -> st.SearchStrategy[str]:
    return st.one_of(_regex_tree(st.sampled_from(_ECMA_ATOMS)), st.text(_ECMA_CHARS, max_size=20))


def _sample_names() -> tuple[str, ...]:
    names = deepseek_names()
    return (*names[::97], "blk.0.é.weight", "", "x" * 63)


def check_regex_dialect(pattern: str) -> None:
    """Refused with RegexError, or: the translation matches as libstdc++ does, within the bound."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.std_regex import search as std_search

    from quantforge.regex_dialect import NAME_MAX, RegexError, check

    try:
        rx = check(pattern)
    except RegexError:
        return
    for name in _sample_names():
        matched, steps = std_search(pattern, name, budget=int((NAME_MAX + 1) * rx.work) + 1000)
        assert matched is not None, f"{pattern!r} on {name!r}: std::regex work over the bound {rx.work:.3g}"
        assert matched == bool(rx.search(name)), f"{pattern!r} on {name!r}: std::regex {matched}, translation not"


# --------------------------------------------------------------------------- the pipeline on mutated headers


@cache
def _scratch() -> Path:
    import atexit
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="qf-fuzz-"))
    atexit.register(shutil.rmtree, d, True)
    return d


def _write(data: bytes, name: str) -> Path:
    p = _scratch() / name
    p.write_bytes(data)
    return p


def check_inventory(data: bytes, _with_size: bool) -> None:
    from quantforge.inventory import load_inventory

    try:
        inv = load_inventory(_write(data, "inv.gguf"))
    except QuantforgeError:
        return
    inv.model_dump(mode="json")  # what `inventory --json` prints
    _ = inv.n_params


def check_import(data: bytes, _with_size: bool) -> None:
    from quantforge.publish.importer import import_recipe

    try:
        res = import_recipe(str(_write(data, "imp.gguf")))
    except QuantforgeError:
        return
    assert res.text


def check_diff(data: bytes, two: bool) -> None:
    from quantforge.publish.importer import diff_quants

    a = _write(data, "a.gguf")
    b = _write(data[::-1] if two else seed_headers()[0], "b.gguf")
    for x, y in ((a, b), (b, a)):
        try:
            diff_quants(str(x), str(y))
        except QuantforgeError:
            pass


@cache
def _plan_recipes() -> tuple[object, ...]:
    from quantforge.recipe import load_recipe, parse_recipe

    generated = parse_recipe(
        '[model]\nid = "HuggingFaceTB/SmolLM2-135M-Instruct"\n[[quant]]\nname = "M"\nftype = "Q4_K_M"\n'
        'default = "mixture"\n[[quant]]\nname = "R"\ndefault = "iq4_ks"\nrepack_cpu = true\nrules = [\n'
        '  { match = "ffn_(gate|up)", layers = "0-9", type = "iq2_k", place = "cpu" },\n'
        '  { match = "attn_", type = "q8_0" },\n]\n', path="fuzz-plan.toml")
    return (load_recipe(REPO / "recipes" / "smollm2-135m.toml"), generated)


def check_plan(data: bytes, with_fit: bool) -> None:
    from quantforge.fit.dims import dims_from_hparams
    from quantforge.fit.report import plan_fit
    from quantforge.inventory import load_inventory
    from quantforge.plan import expand, lint
    from quantforge.targets import load_target

    try:
        inv = load_inventory(_write(data, "plan.gguf"))
    except QuantforgeError:
        return
    for recipe in _plan_recipes():
        for v in recipe.quants:  # type: ignore[attr-defined]
            try:
                plan = expand(recipe, v.name, inv, imatrix=False)
                lint(recipe, v.name, inv, imatrix=False)
                if with_fit:
                    plan_fit(plan, dims_from_hparams(inv.arch, inv.hparams), load_target("64gb-24gb"))
            except QuantforgeError:
                pass


# --------------------------------------------------------------------------- runner

TARGETS: dict[str, tuple[Callable[[], st.SearchStrategy[object]], Callable[..., None]]] = {
    "recipe-compile": (recipe_texts, check_recipe),
    "layer-regex": (lambda: st.sets(st.integers(0, 160), min_size=1, max_size=12), check_layers),
    "gguf-header": (mutated_headers, check_header),
    "regex-dialect": (ecma_regexes, check_regex_dialect),
    "inventory": (any_headers, check_inventory),
    "recipe-import": (any_headers, check_import),
    "recipe-diff": (any_headers, check_diff),
    "plan": (any_headers, check_plan),
}


def run_target(name: str, examples: int, *, seed: int | None = None) -> Outcome:
    """Run one target for ``examples`` examples; every unexpected exception counts as a crash."""
    make, check = TARGETS[name]
    outcome = Outcome(name)

    def body(value: object) -> None:
        outcome.examples += 1
        try:
            check(*value) if isinstance(value, tuple) else check(value)
        except Exception as exc:  # noqa: BLE001 - that is what a crash is
            if len(outcome.crashes) < 20:
                import traceback

                frame = traceback.extract_tb(exc.__traceback__)[-1]
                at = f"{Path(frame.filename).name}:{frame.lineno}"
                outcome.crashes.append(f"{type(exc).__name__} at {at}: {exc} <- {value!r:.300}")
            else:
                outcome.crashes.append(type(exc).__name__)

    test = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=seed is None,
        suppress_health_check=list(HealthCheck),
    )(given(make())(body))
    if seed is not None:
        test = __import__("hypothesis").seed(seed)(test)
    test()
    return outcome


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="examples per target (default 10000)")
    ap.add_argument(
        "--target", action="append", choices=sorted(TARGETS), help="run only this target (repeatable)"
    )
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized)")
    args = ap.parse_args(argv)
    failed = 0
    for name in args.target or list(TARGETS):
        t0 = time.perf_counter()
        outcome = run_target(name, args.examples, seed=args.seed)
        print(f"{outcome.line()} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for c in outcome.crashes[:5]:
            print(f"  crash: {c}", flush=True)
        failed += bool(outcome.crashes)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
