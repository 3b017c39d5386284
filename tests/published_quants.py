"""Published quants (public model cards, recipes) against the planner: the data behind
docs/published-quants.md, which ``tests/test_published_quants.py`` checks and this module writes:

    PYTHONPATH=. python tests/published_quants.py --write docs/published-quants.md

Each row names where the numbers were published, the recipe as published (a file in
tests/data, or the llama-quantize ftype of a plain mixture), the size as the publisher printed it,
and what quantforge plans for it in the same unit. A row is a match when the prediction is
within 0.01 GiB of tensor data or 0.01 % of file bytes; any other row carries the reason.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

DATA = Path(__file__).parent / "data"
THIREUS_DIR = DATA / "published" / "thireus"
THIREUS_URL = "https://github.com/Thireus/GGUF-Tool-Suite/blob/main/recipe_examples"
BARTOWSKI_V3 = "https://huggingface.co/bartowski/deepseek-ai_DeepSeek-V3-0324-GGUF"
BARTOWSKI_R1 = "https://huggingface.co/bartowski/deepseek-ai_DeepSeek-R1-0528-GGUF"

Measure = Literal["weight_gib", "tensor_gib", "file_bytes", "file_gb"]
_UNIT = {"weight_gib": "GiB", "tensor_gib": "GiB", "file_bytes": "bytes", "file_gb": "GB"}

THIREUS_MODELS = {
    "DeepSeek-R1-0528": "deepseek-ai/DeepSeek-R1-0528",
    "DeepSeek-V3.1": "deepseek-ai/DeepSeek-V3.1",
    "GLM-4.5-Air": "zai-org/GLM-4.5-Air",
    "GLM-4.5": "zai-org/GLM-4.5",
    "Qwen3-235B-A22B-Thinking-2507": "Qwen/Qwen3-235B-A22B-Thinking-2507",
    "Qwen3-4B-Instruct-2507": "Qwen/Qwen3-4B-Instruct-2507",
}

_R1_BUILD_REASON = (
    "cannot be compared: the files are larger than the mixture of any upstream llama.cpp build gives "
    "(see the note on bartowski R1-0528)"
)
_Q6_0_REASON = (
    "cannot be compared: the recipe, filed under llama.cpp_recipes, gives q6_0, a type only ik_llama.cpp "
    "has; llama.cpp's llama-quantize rejects it, so the file cannot have been built as written"
)


@dataclass(frozen=True)
class Row:
    quant: str
    url: str
    recipe: str  # as shown in the table
    engine: str
    published: str  # as the publisher printed it
    measure: Measure
    value: float  # the published number in ``measure``'s unit
    spec: tuple[Any, ...]  # how to plan it (see _plan)
    reason: str | None = None  # set where the row cannot be compared


def _thireus_rows() -> list[Row]:
    files = sorted(THIREUS_DIR.glob("*/*.recipe"))
    name = "DeepSeek-R1-0528.THIREUS-3.1023bpw-3.3467ppl.242GB-GGUF_11GB-GPU_230GB-CPU.569b7f6_eba5f00.recipe"
    files.append(DATA / "dialects" / name)
    rows = []
    for f in files:
        folder = "ik_harmonized_recipes" if f.parent.name == "dialects" else f.parent.name
        model = re.split(r"\.(?:THIREUS|ROOT)-", f.name)[0]
        bpw = re.search(r"-([\d.]+)bpw", f.name)
        total = re.search(r"GPU\+CPU Total: ([\d.]+) GiB", f.read_text())
        assert bpw and total, f
        engine = "mainline" if folder == "llama.cpp_recipes" else "ik"
        rows.append(Row(
            quant=f"Thireus {model} {bpw.group(1)} bpw",
            url=f"{THIREUS_URL}/{folder}/{f.name}",
            recipe=f"`{f.name[:48]}…` ({folder})",
            engine=engine,
            published=f"{total.group(1)} GiB tensor data, {bpw.group(1)} bpw",
            measure="weight_gib",
            value=float(total.group(1)),
            spec=("dialect", str(f), THIREUS_MODELS[model], engine, float(bpw.group(1))),
            reason=_Q6_0_REASON if engine == "mainline" and "=q6_0" in f.read_text() else None,
        ))  # fmt: skip
    return rows


def _bartowski_rows() -> list[Row]:
    rows = []
    v3 = {"Q8_0": 713.29, "Q6_K": 550.80, "Q5_K_M": 475.40, "Q5_K_S": 461.81, "Q4_1": 419.94,
          "Q4_K_M": 404.43}
    for ft, gb in v3.items():
        rows.append(Row(f"bartowski DeepSeek-V3-0324 {ft}", BARTOWSKI_V3,
                        f"`{ft}` mixture, imatrix, llama.cpp b4944",
                        "mainline b4944", f"{gb:.2f} GB", "file_gb", gb,
                        ("mixture", "deepseek-ai/DeepSeek-V3-0324", "legacy", "b4944", ft)))  # fmt: skip
    r1 = {"Q8_0": 713.29, "Q6_K": 552.45, "Q5_K_M": 478.34, "Q5_K_S": 463.03, "Q4_1": 421.04}
    for ft, gb in r1.items():
        rows.append(Row(f"bartowski DeepSeek-R1-0528 {ft}", BARTOWSKI_R1,
                        f"`{ft}` mixture, imatrix, llama.cpp b5524",
                        "mainline b5524", f"{gb:.2f} GB", "file_gb", gb,
                        ("mixture", "deepseek-ai/DeepSeek-R1-0528", "mainline", "b5524", ft),
                        None if ft == "Q8_0" else _R1_BUILD_REASON))  # fmt: skip
    return rows


ROWS: list[Row] = [
    *_thireus_rows(),
    Row("lmganon123 DeepSeek-V3-0324 IQ2_XXS",
        "https://huggingface.co/lmganon123/DeepSeek-V3-0324_IK_GGUF_Q2",
        "`custom=` rules (ubergarm's recipe), tests/data/dialects", "ik", "169.590 GiB (2.168 BPW)",
        "tensor_gib",
        169.590, ("dialect", str(DATA / "dialects" / "lmganon123-DeepSeek-V3-0324-IQ2_XXS.custom-q.sh"),
                  "deepseek-ai/DeepSeek-V3-0324", "ik", None)),
    Row("sokann DeepSeek-V3-0324 IQ1_S_R4", "https://huggingface.co/sokann/DeepSeek-V3-0324-GGUF",
        "`custom=` rules, tests/data/dialects", "ik", "132998282944 bytes", "file_bytes", 132998282944,
        ("dialect", str(DATA / "dialects" / "sokann-DeepSeek-V3-0324-IQ1_S_R4.custom-q.txt"),
         "deepseek-ai/DeepSeek-V3-0324", "ik", None)),
    *_bartowski_rows(),
]  # fmt: skip


@cache
def plan_of(spec: tuple[Any, ...]) -> Any:
    from quantforge.inventory import load_inventory
    from quantforge.plan import ImatrixMeta, expand, recipe_inventory
    from quantforge.publish.dialects import import_dialect
    from quantforge.recipe import parse_recipe

    if spec[0] == "dialect":
        _, path, model, engine, _bpw = spec
        res = import_dialect(path, model=model, engine=engine)
        recipe = parse_recipe(res.text, path=str(Path(path).with_suffix(".toml")))
        return expand(recipe, None, recipe_inventory(recipe), imatrix=False)
    _, model, layout, build, ft = spec
    text = (f'[model]\nid = "{model}"\nengine = "mainline"\nlayout = "{layout}"\nengine_version = "{build}"\n'
            f'[[quant]]\nname = "v"\nftype = "{ft}"\ndefault = "mixture"\n')  # fmt: skip
    inv = load_inventory(model, layout=layout)
    # bartowski quantizes with an importance matrix: its KVs are part of the header.
    imatrix = ImatrixMeta(path="imatrix.dat", entries=tuple(t.name for t in inv.tensors), chunks=125,
                          dataset="x")
    return expand(parse_recipe(text, path="mixture.toml"), None, inv, imatrix=imatrix)


@dataclass(frozen=True)
class Result:
    row: Row
    predicted: float
    delta: float  # predicted - published, in the measure's unit
    within: bool
    error: str | None = None


def evaluate(row: Row) -> Result:
    from quantforge.errors import QuantforgeError

    try:
        plan = plan_of(row.spec)
    except QuantforgeError as exc:
        return Result(row, float("nan"), float("nan"), False, exc.message)
    predicted = {
        "weight_gib": plan.weight_bytes / 2**30,
        "tensor_gib": plan.tensor_bytes / 2**30,
        "file_bytes": float(plan.file_bytes),
        "file_gb": plan.file_bytes / 1e9,
    }[row.measure]
    delta = predicted - row.value
    if row.measure in ("weight_gib", "tensor_gib"):
        # the publisher rounded to its last printed digit: compare at that digit, within 0.01 GiB
        digits = len(f"{row.value}".split(".")[1]) if "." in f"{row.value}" else 0
        within = abs(round(predicted, digits) - row.value) <= 0.01 + 1e-9
    else:
        within = abs(delta) / row.value <= 1e-4
    return Result(row, predicted, delta, within)


def _fmt(r: Result) -> tuple[str, str]:
    unit = _UNIT[r.row.measure]
    if r.error is not None:
        return "—", "—"
    if r.row.measure == "file_bytes":
        return f"{r.predicted:,.0f} bytes", f"{r.delta:+,.0f} bytes ({r.delta / r.row.value * 100:+.4f} %)"
    if r.row.measure == "file_gb":
        return f"{r.predicted:.3f} GB", f"{r.delta:+.3f} GB ({r.delta / r.row.value * 100:+.4f} %)"
    return f"{r.predicted:.3f} {unit}", f"{r.delta:+.3f} {unit}"


def render(results: list[Result]) -> str:
    lines = [
        "| # | Quant | Recipe | Engine | Published | Predicted | Δ | Verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        pred, delta = _fmt(r)
        if r.row.reason is not None:
            verdict = r.row.reason
        elif r.error is not None:
            verdict = f"differs: {r.error}"
        else:
            verdict = "match" if r.within else "differs"
        lines.append(f"| {i} | [{r.row.quant}]({r.row.url}) | {r.row.recipe} | {r.row.engine} | "
                     f"{r.row.published} | "
                     f"{pred} | {delta} | {verdict} |")  # fmt: skip
    return "\n".join(lines) + "\n"


START, END = "<!-- table: generated by tests/published_quants.py -->", "<!-- end of table -->"


def write_doc(path: Path) -> None:
    text = path.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + START + "\n" + render([evaluate(r) for r in ROWS]) + END + tail)


if __name__ == "__main__":
    if sys.argv[1:2] != ["--write"] or len(sys.argv) != 3:
        sys.exit("usage: python tests/published_quants.py --write docs/published-quants.md")
    write_doc(Path(sys.argv[2]))
