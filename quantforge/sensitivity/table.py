"""Sensitivity tables: what one tensor group costs in KLD at each candidate type.

One typed form for every source: tables ``quantforge sensitivity`` measures, and tables published
by others, imported into the same form:

* **quantforge's own** JSON (``quantforge-sensitivity/1``) or CSV (one row per group and type, the
  method in ``# key: value`` lines at the top);
* **Thireus' GGUF Tool Suite** ``kld_results.csv`` / ``ppl_results.csv``: a header row ``QTYPE,<tensor>,…``
  and one row per quant type, each cell the metric of the whole model with that one tensor at the
  row's type and every other tensor at the suite's baseline type (e.g.
  https://github.com/Thireus/GGUF-Tool-Suite/blob/main/models/DeepSeek-V3.1-Terminus/kld_results.csv).
  Its ``group0/kld_results.csv`` (``QTYPE,group0``: the whole model at each type) is the curve that
  carries a tensor's cost from its measured type to the others; without it the cost is scaled by
  ``2^(-2·Δbpw)`` (quantization noise power falls by 4x per added bit);
* the per-tensor ``tensor,kld`` CSV ``quantforge fit --sensitivity`` has always read (relative weights
  at no stated type, scaled the same way).

``delta`` is the number the solver adds: the group's metric at that type minus the baseline's (what
the model measures with every tensor at the base variant). The predicted metric of a mixture is
``baseline + sum(delta)``; ``checks`` hold measured mixtures against that prediction.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from quantforge.catalogue import Engine, catalogue
from quantforge.errors import InputError
from quantforge.fsutil import atomic_write_text

FORMAT = "quantforge-sensitivity/1"
Metric = Literal["kld", "ppl", "relative"]
How = Literal["measured", "scaled", "imported"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SensitivityGroup(BaseModel):
    """Tensors that change type together (one kind in a layer bucket, or one tensor)."""

    model_config = _FROZEN
    name: str  # "ffn_down@0-9", "token_embd", "blk.3.ffn_down_exps.weight"
    kind: str  # "ffn_down", "token_embd"
    layers: tuple[int, ...] = ()
    tensors: tuple[str, ...]  # exact tensor names (the solver's membership)
    base_type: str | None = None  # the type the base variant writes for them (one, or the first)
    bytes: int = 0  # at the base type


class SensitivityEntry(BaseModel):
    """The metric with one group at one type, every other tensor at the base."""

    model_config = _FROZEN
    group: str
    type: str  # the type asked for (engine spelling)
    written: tuple[str, ...] = ()  # what llama-quantize wrote for the group's tensors, when measured
    value: float  # the metric of that whole model (KLD mean, or PPL)
    value_err: float | None = None
    delta: float  # value - baseline (the group's cost at this type; < 0: better than the base)
    ppl: float | None = None
    bytes: int | None = None  # the group's tensor bytes at this type
    how: How = "measured"
    seconds: float | None = None


class InteractionCheck(BaseModel):
    """A measured mixture against the additive prediction ``baseline + sum(delta)``."""

    model_config = _FROZEN
    name: str  # "all@rank0"
    assignment: dict[str, str]  # group -> type
    measured: float
    measured_err: float | None = None
    predicted: float

    @property
    def ratio(self) -> float:
        """measured / predicted excess over the baseline is what matters; this is of the totals."""
        return self.measured / self.predicted if self.predicted else math.inf


class SensitivityTable(BaseModel):
    """Every group's cost at every candidate type, with the method it was measured by."""

    model_config = _FROZEN
    format: str = FORMAT
    model: str
    arch: str | None = None
    engine: Engine  # the quantizing engine (its type names)
    metric: Metric = "kld"
    evaluator: str | None = None  # bundled | ik | mainline, with version
    corpus: str | None = None
    corpus_sha256: str | None = None
    ctx: int | None = None
    chunks: int | None = None
    base_variant: str | None = None  # the recipe variant everything else stayed at
    base_sha256: str | None = None  # of the model the KLD is against (the F16/BF16 base)
    imatrix_sha256: str | None = None
    baseline: float  # the metric of the base variant itself
    baseline_err: float | None = None
    source: str = "measured"  # or "thireus: <file>", "tensor,kld: <file>"
    notes: tuple[str, ...] = ()
    groups: tuple[SensitivityGroup, ...]
    entries: tuple[SensitivityEntry, ...]
    checks: tuple[InteractionCheck, ...] = ()
    created: str | None = None

    def group(self, name: str) -> SensitivityGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def costs(self) -> dict[str, dict[str, float]]:
        """group -> type -> delta, the base type of each group at 0 (what the solver reads)."""
        out: dict[str, dict[str, float]] = {g.name: {} for g in self.groups}
        for g in self.groups:
            if g.base_type is not None:
                out[g.name][g.base_type] = 0.0
        for e in self.entries:
            out.setdefault(e.group, {})[e.type] = e.delta
        return out

    def predict(self, assignment: dict[str, str]) -> float:
        """``baseline + sum(delta)`` of a group -> type assignment (unknown pairs: KeyError)."""
        costs = self.costs()
        return self.baseline + sum(costs[g][t] for g, t in assignment.items())

    def summary(self) -> str:
        measured = sum(1 for e in self.entries if e.how == "measured")
        lines = [
            f"{self.model}: {len(self.groups)} groups x {len(self.entries)} types ({measured} measured), "
            f"{self.metric} of the base variant {self.base_variant or '?'} = {self.baseline:.6f}"
            + (f" ± {self.baseline_err:.6f}" if self.baseline_err else ""),
            f"method: {self.evaluator or self.source}, corpus {Path(self.corpus).name if self.corpus else '?'}"
            f" ({(self.corpus_sha256 or '')[:12]}), ctx {self.ctx}, {self.chunks} chunks",
            "",
            f"{'group':28s} {'type':12s} {'bytes':>12s} {self.metric:>10s} {'delta':>10s}",
        ]
        for e in sorted(self.entries, key=lambda e: (e.group, e.bytes or 0)):
            lines.append(
                f"{e.group:28s} {e.type:12s} {e.bytes or 0:>12,d} {e.value:>10.6f} {e.delta:>+10.6f}"
                + ("" if e.how == "measured" else f"  ({e.how})")
            )
        for c in self.checks:
            lines.append(
                f"check {c.name}: measured {c.measured:.6f}, additive prediction {c.predicted:.6f} "
                f"(measured excess / predicted excess {excess_ratio(c, self.baseline):.2f})"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def excess_ratio(check: InteractionCheck, baseline: float) -> float:
    """(measured - baseline) / (predicted - baseline): 1.0 means the costs add up exactly."""
    den = check.predicted - baseline
    return (check.measured - baseline) / den if den else math.inf


# --------------------------------------------------------------------------- writing


def write_table(table: SensitivityTable, path: str | Path, *, force: bool = False) -> Path:
    """Write ``table`` as JSON (``.json``) or CSV (anything else), atomically.

    An existing file is replaced only with ``force`` or when it is a table of the same method
    (same base, corpus, context, chunks and evaluator: a resumed or extended run).
    """
    p = Path(path)
    if p.exists() and not force:
        try:
            old = read_table(p, engine=table.engine)
            same = _method(old) == _method(table)
        except InputError:
            same = False
        if not same:
            raise InputError(
                "exists and is not a sensitivity table of this method", where=str(p), hint="pass --force to replace it"
            )
    text = table_json(table) if p.suffix.lower() == ".json" else table_csv(table)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(p, text)


def _method(t: SensitivityTable) -> tuple[object, ...]:
    return (t.model, t.base_variant, t.base_sha256, t.corpus_sha256, t.ctx, t.chunks, t.evaluator, t.metric)


def table_json(table: SensitivityTable) -> str:
    return json.dumps(table.model_dump(mode="json"), indent=1) + "\n"


_META_KEYS = (
    "format", "model", "arch", "engine", "metric", "evaluator", "corpus", "corpus_sha256", "ctx", "chunks",
    "base_variant", "base_sha256", "imatrix_sha256", "baseline", "baseline_err", "source", "created",
)  # fmt: skip
_CSV_COLUMNS = ("group", "kind", "layers", "type", "written", "bytes", "value", "value_err", "delta", "ppl", "how",
                "seconds")  # fmt: skip


def table_csv(table: SensitivityTable) -> str:
    """One row per (group, type); the method as ``# key: value`` lines, each group (its tensors and
    base type) as a ``# group:`` line and each check as a ``# check:`` line (JSON)."""
    out = io.StringIO()
    for key in _META_KEYS:
        value = getattr(table, key)
        if value is not None:
            out.write(f"# {key}: {value}\n")
    for n in table.notes:
        out.write(f"# note: {n}\n")
    for g in table.groups:
        out.write(f"# group: {json.dumps(g.model_dump(mode='json'), separators=(',', ':'))}\n")
    for c in table.checks:
        out.write(f"# check: {json.dumps(c.model_dump(mode='json'), separators=(',', ':'))}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(_CSV_COLUMNS)
    by_group = {g.name: g for g in table.groups}
    for e in table.entries:
        g = by_group[e.group]
        w.writerow([
            g.name, g.kind, format_layers(g.layers), e.type, ";".join(e.written), e.bytes if e.bytes is not None else "",
            repr(e.value), "" if e.value_err is None else repr(e.value_err), repr(e.delta),
            "" if e.ppl is None else repr(e.ppl), e.how, "" if e.seconds is None else repr(e.seconds),
        ])  # fmt: skip
    return out.getvalue()


def format_layers(layers: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (the recipe's layer-range syntax)."""
    if not layers:
        return ""
    xs = sorted(set(layers))
    out = []
    start = prev = xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(out)


# --------------------------------------------------------------------------- reading


def read_table(
    path: str | Path,
    *,
    engine: Engine = "ik",
    curve: str | Path | None = None,
    baseline: float | None = None,
    baseline_type: str | None = None,
    tensors: Iterable[tuple[str, tuple[int, ...]]] | None = None,
) -> SensitivityTable:
    """Any supported sensitivity file as a ``SensitivityTable`` (format detected from its content).

    ``curve`` (Thireus' ``group0/kld_results.csv``) carries per-tensor costs to other types;
    ``baseline`` is the metric of the suite's baseline model (default: the table's smallest value,
    the least sensitive tensor, which barely moves the model); ``tensors`` (name, shape) lets
    imported tables know each tensor's bytes per type.
    """
    from quantforge.paths import MAX_JSON_BYTES, read_input_text

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("no such sensitivity file", where=str(p),
                         hint="a table from quantforge sensitivity, Thireus' kld_results.csv, or tensor,kld rows")  # fmt: skip
    # a regular file of bounded size (a FIFO or device is refused before it is opened)
    text = read_input_text(p, what="sensitivity file", max_bytes=MAX_JSON_BYTES).removeprefix("\ufeff")
    head = text.lstrip()[:200]
    if head.startswith("{"):
        return _read_json(text, p)
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
    cells = [c.strip() for c in first.split(",")]
    if cells and cells[0].upper() == "QTYPE":
        return import_thireus(text, p, engine=engine, curve=curve, baseline=baseline, baseline_type=baseline_type,
                              tensors=tensors)
    if tuple(cells[: len(_CSV_COLUMNS)]) == _CSV_COLUMNS:
        return _read_csv(text, p)
    return import_tensor_kld(text, p, engine=engine, tensors=tensors)


def _read_json(text: str, p: Path) -> SensitivityTable:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"malformed JSON: {exc.msg}", where=f"{p}:{exc.lineno}", hint="fix the JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} table", where=str(p), hint="write it with quantforge sensitivity -o FILE.json")
    try:
        return SensitivityTable.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise InputError(f"{loc}: {err['msg']}", where=str(p), hint="the table was edited or truncated") from None


def _read_csv(text: str, p: Path) -> SensitivityTable:
    meta: dict[str, str] = {}
    notes: list[str] = []
    checks: list[InteractionCheck] = []
    groups: dict[str, SensitivityGroup] = {}
    body: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition(": ")
            try:
                if key == "note":
                    notes.append(value)
                elif key == "check":
                    checks.append(InteractionCheck.model_validate_json(value))
                elif key == "group":
                    g = SensitivityGroup.model_validate_json(value)
                    groups[g.name] = g
                else:
                    meta[key] = value
            except ValidationError:
                raise InputError(f"bad {key} line", where=f"{p}:{n}", hint="the table was edited") from None
        else:
            body.append((n, line))
    rows = csv.DictReader(line for _, line in body)
    entries: list[SensitivityEntry] = []
    from quantforge.recipe import parse_layers

    for (n, _), r in zip(body[1:], rows, strict=False):
        try:
            name = r["group"]
            if name not in groups:  # a hand-written table: the group is its rows' kind and layers
                layers = tuple(parse_layers(r["layers"])) if r["layers"] else ()
                groups[name] = SensitivityGroup(name=name, kind=r["kind"], layers=layers, tensors=(
                    tuple(f"blk.{i}.{r['kind']}.weight" for i in layers) if layers else (f"{r['kind']}.weight",)))
            entries.append(
                SensitivityEntry(
                    group=name, type=r["type"], written=tuple(x for x in r["written"].split(";") if x),
                    bytes=int(r["bytes"]) if r["bytes"] else None, value=float(r["value"]),
                    value_err=float(r["value_err"]) if r["value_err"] else None, delta=float(r["delta"]),
                    ppl=float(r["ppl"]) if r["ppl"] else None, how=r["how"] or "measured",  # type: ignore[arg-type]
                    seconds=float(r["seconds"]) if r.get("seconds") else None,
                )
            )  # fmt: skip
        except (KeyError, ValueError, TypeError, ValidationError):
            raise InputError("bad sensitivity row", where=f"{p}:{n}", hint=f"columns: {','.join(_CSV_COLUMNS)}") from None
    try:
        return SensitivityTable(
            model=meta.get("model", p.stem), arch=meta.get("arch"), engine=meta.get("engine", "ik"),  # type: ignore[arg-type]
            metric=meta.get("metric", "kld"), evaluator=meta.get("evaluator"), corpus=meta.get("corpus"),  # type: ignore[arg-type]
            corpus_sha256=meta.get("corpus_sha256"), ctx=_int(meta.get("ctx")), chunks=_int(meta.get("chunks")),
            base_variant=meta.get("base_variant"), base_sha256=meta.get("base_sha256"),
            imatrix_sha256=meta.get("imatrix_sha256"), baseline=float(meta.get("baseline", "0")),
            baseline_err=float(meta["baseline_err"]) if meta.get("baseline_err") else None,
            source=meta.get("source", "measured"), notes=tuple(notes), groups=tuple(groups.values()),
            entries=tuple(entries), checks=tuple(checks), created=meta.get("created"),
        )  # fmt: skip
    except (ValueError, ValidationError):
        raise InputError("bad table header lines", where=str(p), hint="the # key: value lines were edited") from None


def _int(x: str | None) -> int | None:
    return int(x) if x is not None and x not in ("", "None") else None


# --------------------------------------------------------------------------- imports


_KIND_RE = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")
#: Ternary (BitNet) types: the suite itself leaves them out of its fits (``--exclude-qtypes '.*_bn.*'``).
_TERNARY = re.compile(r"_bn(_|$)")


def _kind_layer(name: str) -> tuple[str, tuple[int, ...]]:
    m = _KIND_RE.match(name)
    if m:
        return m.group(2), (int(m.group(1)),)
    return name[: -len(".weight")] if name.endswith(".weight") else name, ()


def noise_scale(engine: Engine, measured_type: str, other: str) -> float:
    """``2^(-2·(bpw(other) - bpw(measured)))``: quantization noise power at ``other`` relative to
    ``measured`` (uniform-quantizer error variance falls by 4x per bit), the prior that carries a cost
    measured at one type to the others when no curve says better."""
    cat = catalogue(engine)
    return float(2.0 ** (-2.0 * (cat.get(other).bpw - cat.get(measured_type).bpw)))


def _bytes_of(engine: Engine, shapes: dict[str, tuple[int, ...]], names: Sequence[str], typ: str) -> int | None:
    if not names or any(n not in shapes for n in names):
        return None
    from quantforge.errors import RecipeError

    cat = catalogue(engine)
    total = 0
    for n in names:
        try:
            written, _ = cat.resolve(typ, shapes[n], tensor_name=n)
        except RecipeError:
            return -1  # llama-quantize cannot write this type for this tensor
        total += cat.get(written).tensor_bytes(shapes[n])
    return total


def import_thireus(
    text: str,
    p: Path,
    *,
    engine: Engine,
    curve: str | Path | None = None,
    baseline: float | None = None,
    baseline_type: str | None = None,
    tensors: Iterable[tuple[str, tuple[int, ...]]] | None = None,
) -> SensitivityTable:
    """Thireus' ``QTYPE,<tensor>,…`` table: one group per tensor, costs at every type of the curve."""
    cat = catalogue(engine)
    rows = [r for r in csv.reader(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))]
    header = [c.strip() for c in rows[0]]
    names = header[1:]
    if not names:
        raise InputError("the QTYPE header names no tensor", where=f"{p}:1", hint="a kld_results.csv of GGUF Tool Suite")
    measured: dict[str, dict[str, float]] = {n: {} for n in names}  # tensor -> type -> value
    notes: list[str] = []
    skipped: set[str] = set()
    for n, r in enumerate(rows[1:], 2):
        if len(r) != len(header):
            raise InputError(f"row has {len(r)} cells, the header {len(header)}", where=f"{p}:{n}",
                             hint="one value per tensor of the header")  # fmt: skip
        qt = cat.find(r[0].strip())
        if qt is None:
            skipped.add(r[0].strip())
            continue
        if _TERNARY.search(qt.name):
            continue
        for name, cell in zip(names, r[1:], strict=True):
            cell = cell.strip().rstrip("%")
            if not cell or cell.upper() in ("404", "NAN", "N/A"):
                continue
            try:
                v = float(cell)
            except ValueError:
                raise InputError(f"not a number: {cell!r}", where=f"{p}:{n}", hint="cells are the metric, e.g. 0.0042") from None
            if v > 0:
                measured[name][qt.name] = v
    if skipped:
        notes.append(f"types unknown to {engine} skipped: {', '.join(sorted(skipped))}")
    values = [v for d in measured.values() for v in d.values()]
    if not values:
        raise InputError("the table holds no measurement", where=str(p), hint="a kld_results.csv with values")
    base = baseline if baseline is not None else min(values)
    if baseline is None:
        notes.append(f"baseline taken as the table's smallest value {base:.6g} (its least sensitive tensor); "
                     "pass --baseline to set the suite's measured baseline")  # fmt: skip
    metric: Metric = "ppl" if "ppl" in p.name.lower() else "kld"
    curve_values, curve_note = _read_curve(curve, engine) if curve is not None else ({}, None)
    if curve_note:
        notes.append(curve_note)
    anchor = cat.get(baseline_type).name if baseline_type else "q8_0"
    prior_types = [t.name for t in cat.types() if t.quantizable and t.block_size > 1 and t.bpw <= 8.5
                   and not _TERNARY.search(t.name)]  # fmt: skip
    shapes = dict(tensors or ())
    groups: list[SensitivityGroup] = []
    entries: list[SensitivityEntry] = []
    for name in names:
        if not measured[name]:
            continue
        kind, layers = _kind_layer(name)
        groups.append(SensitivityGroup(name=name, kind=kind, layers=layers, tensors=(name,),
                                       base_type=None if curve_values else anchor))  # fmt: skip
        for typ, v in measured[name].items():
            nbytes = _bytes_of(engine, shapes, (name,), typ)
            entries.append(SensitivityEntry(group=name, type=typ, value=v, delta=v - base,
                                            bytes=None if nbytes == -1 else nbytes, how="imported"))  # fmt: skip
        # carry the cost at the lowest measured type to every other type of the curve (or the prior)
        t0 = min(measured[name], key=lambda t: cat.get(t).bpw)
        d0 = measured[name][t0] - base
        for typ in curve_values or prior_types:
            if typ in measured[name] or (not curve_values and typ == anchor):
                continue
            if curve_values:
                scale = _curve_scale(curve_values, t0, typ, base)
            else:
                s0 = noise_scale(engine, anchor, t0) - 1.0
                scale = (noise_scale(engine, anchor, typ) - 1.0) / s0 if s0 > 0 else None
            if scale is None:
                continue
            nbytes = _bytes_of(engine, shapes, (name,), typ)
            if nbytes == -1:
                continue
            entries.append(SensitivityEntry(group=name, type=typ, value=base + d0 * scale, delta=d0 * scale,
                                            bytes=nbytes, how="scaled"))  # fmt: skip
    if curve is not None:
        notes.append(f"costs at other types scaled by the whole-model curve {Path(curve).name}: "
                     "delta(t) = delta(measured) * (curve(t) - baseline) / (curve(measured) - baseline)")  # fmt: skip
    else:
        notes.append(f"no curve given: costs at other types scaled by the 2^(-2·Δbpw) noise prior, {anchor} "
                     "taken as the baseline type (delta 0); pass --curve group0/kld_results.csv for measured scaling")  # fmt: skip
    return SensitivityTable(
        model=p.parent.name or p.stem, engine=engine, metric=metric, evaluator=None, baseline=base,
        source=f"thireus: {p.name}", notes=tuple(notes), groups=tuple(groups), entries=tuple(entries),
    )  # fmt: skip


def _read_curve(path: str | Path, engine: Engine) -> tuple[dict[str, float], str | None]:
    """``QTYPE,group0`` rows: the whole model at each type (0 or empty: not measured)."""
    from quantforge.paths import MAX_JSON_BYTES, read_input_text

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("no such curve file", where=str(p), hint="Thireus' group0/kld_results.csv (QTYPE,group0)")
    cat = catalogue(engine)
    text = read_input_text(p, what="curve file", max_bytes=MAX_JSON_BYTES).removeprefix("\ufeff")
    rows = list(csv.reader(ln for ln in text.splitlines() if ln.strip()))
    if not rows or rows[0][0].strip().upper() != "QTYPE" or len(rows[0]) != 2:
        raise InputError("expected a QTYPE,group0 table", where=f"{p}:1", hint="Thireus' group0/kld_results.csv")
    raw: dict[str, float] = {}
    for n, r in enumerate(rows[1:], 2):
        qt = cat.find(r[0].strip())
        if qt is None or len(r) < 2 or _TERNARY.search(qt.name):
            continue
        try:
            v = float(r[1])
        except ValueError:
            raise InputError(f"not a number: {r[1]!r}", where=f"{p}:{n}", hint="one value per type") from None
        if v > 0:
            raw[qt.name] = v
    # a type missing from the curve takes its row-interleaved twin's value (same numerics)
    out = dict(raw)
    filled = []
    for qt in cat.types():
        if qt.name in out or not qt.quantizable:
            continue
        twin = qt.base or qt.repacked
        if twin and twin in raw:
            out[qt.name] = raw[twin]
            filled.append(qt.name)
    note = f"curve values taken from the interleaved twin for {', '.join(sorted(filled))}" if filled else None
    return out, note


def _curve_scale(curve: dict[str, float], t0: str, typ: str, base: float) -> float | None:
    c0, c = curve.get(t0), curve.get(typ)
    if c0 is None or c is None or c0 <= base:
        return None
    return (c - base) / (c0 - base)


def import_tensor_kld(
    text: str, p: Path, *, engine: Engine, tensors: Iterable[tuple[str, tuple[int, ...]]] | None = None
) -> SensitivityTable:
    """``tensor,kld`` rows (no type stated): relative weights, carried to types by the noise prior.

    The unit is relative (``metric = "relative"``): the solver's choices hold, its predicted number
    is not a KLD."""
    weights: dict[str, float] = {}
    for n, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not row[0].strip() or row[0].startswith("#") or row[0].strip() == "tensor":
            continue
        try:
            name, kld = row[0].strip(), float(row[1])
        except (IndexError, ValueError):
            raise InputError("expected tensor,kld", where=f"{p}:{n}", hint="write one tensor,kld row per line") from None
        weights[name] = weights.get(name, 0.0) + kld
    if not weights:
        raise InputError("no tensor,kld rows", where=str(p), hint="write one tensor,kld row per line")
    shapes = dict(tensors or ())
    cat = catalogue(engine)
    ref = "q8_0"
    ladder = [t.name for t in cat.types() if t.quantizable and t.block_size > 1 and t.interleave == 1 and t.bpw <= 8.5]
    groups = []
    entries = []
    for name, w in weights.items():
        kind, layers = _kind_layer(name)
        groups.append(SensitivityGroup(name=name, kind=kind, layers=layers, tensors=(name,), base_type=ref))
        for typ in ladder:
            if typ == ref:
                continue
            d = w * (noise_scale(engine, ref, typ) - 1.0) / (noise_scale(engine, ref, "iq1_s") - 1.0)
            nbytes = _bytes_of(engine, shapes, (name,), typ)
            if nbytes == -1:
                continue
            entries.append(SensitivityEntry(group=name, type=typ, value=d, delta=d, bytes=nbytes, how="scaled"))
    return SensitivityTable(
        model=p.stem, engine=engine, metric="relative", baseline=0.0, source=f"tensor,kld: {p.name}",
        notes=("tensor,kld rows state no type: each value is taken as the tensor's weight at the lowest type and "
               "carried to others by the 2^(-2·Δbpw) noise prior; predicted values are relative",),
        groups=tuple(groups), entries=tuple(entries),
    )  # fmt: skip

