"""The fit solver: fills every device of a rig, keeps the planner's checks, never puts a type without
a CUDA kernel (or an interleaved one) on a GPU, and reads the sensitivity tables users have.

DeepSeek-R1 runs from the shipped inventory (no download); its sensitivity is Thireus' published
DeepSeek-V3.1-Terminus table (same architecture and tensor names), imported with its whole-model curve.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from quantforge.catalogue import Engine, catalogue
from quantforge.cli import main
from quantforge.fit.api import recipe_inventory, recipe_plans
from quantforge.fit.report import Settings, plan_fit
from quantforge.fit.solver import solve, solve_recipe
from quantforge.plan import expand, lint
from quantforge.recipe import load_recipe
from quantforge.sensitivity.table import (
    SensitivityEntry,
    SensitivityGroup,
    SensitivityTable,
    noise_scale,
    read_table,
)
from quantforge.targets import load_target

DATA = Path(__file__).parent / "data"
R1 = DATA / "fit" / "deepseek-r1-0528.toml"
THIREUS = DATA / "sensitivity" / "thireus" / "DeepSeek-V3.1-Terminus.kld_results.csv"
CURVE = DATA / "sensitivity" / "thireus" / "DeepSeek-V3.1-Terminus.group0.kld_results.csv"
GIB = 1 << 30


def _ladder_rank(engine: Engine, typ: str) -> float:
    cat = catalogue(engine)
    qt = cat.get(typ)
    return cat.get(qt.base).bpw if qt.base else qt.bpw


# ------------------------------------------------------------------------------ no table: experts only


def test_fit_writes_a_variant_that_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r1.toml"
    shutil.copy(R1, recipe)
    assert main(["fit", str(recipe), "--target", "256gb-24gb", "--ctx", "32768", "--quant", "IQ2_K_R4",
                 "--write", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert res["report"]["verdict"] == "fits"
    cat = catalogue("ik")
    types = res["types"]
    # ffn_down one bpw step above ffn_gate/up in every layer; GPU-resident experts plain, RAM ones _r4
    placement = {}
    for r in res["rules"]:
        if "place" in r:
            placement[(r["match"], r["layers"])] = r["place"]
    for layer in range(3, 61):
        down = types[f"blk.{layer}.ffn_down_exps.weight"]
        gate = types[f"blk.{layer}.ffn_gate_exps.weight"]
        assert types[f"blk.{layer}.ffn_up_exps.weight"] == gate
        assert _ladder_rank("ik", down) > _ladder_rank("ik", gate)
    on_gpu = [n for n, t in types.items() if "_exps" in n and cat.get(t).interleave == 1]
    assert on_gpu and all(cat.get(types[n]).cuda_matmul for n in on_gpu)
    # every device filled to within one expert tensor (the only thing that moves without a table)
    biggest = max(cat.get(t).tensor_bytes((7168, 2048, 256)) for t in types.values() if t.startswith("iq"))
    for d in res["report"]["devices"]:
        assert 0 <= d["headroom_bytes"] < biggest, d
    # the written variant, planned again from the file, fits with the same weights
    assert main(["plan", str(recipe), "--quant", "FIT-256gb-24gb", "--target", "256gb-24gb", "--ctx", "32768",
                 "--json"]) == 0  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rep["verdict"] == "fits" and rep["weights_bytes"] == res["tensor_bytes"]
    assert "# quantforge fit: FIT-256gb-24gb fills 256gb-24gb" in recipe.read_text()


def test_fit_with_tensor_kld_rows_raises_the_sensitive_tensors(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:  # fmt: skip
    csv = tmp_path / "kld.csv"
    csv.write_text(
        "tensor,kld\n"
        + "".join(f"blk.{i}.ffn_down_exps.weight,{1.0 if i >= 50 else 0.01}\n" for i in range(3, 61))
    )
    assert main(["fit", str(R1), "--target", "256gb-24gb", "--ctx", "8192", "--quant", "IQ2_K_R4",
                 "--sensitivity", str(csv), "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    bpw = {i: _ladder_rank("ik", res["types"][f"blk.{i}.ffn_down_exps.weight"]) for i in range(3, 61)}
    # the sensitive layers (50-60) end at least as high as every insensitive one, and above some
    assert min(bpw[i] for i in range(50, 61)) >= max(bpw[i] for i in range(3, 50))
    assert min(bpw[i] for i in range(50, 61)) > min(bpw[i] for i in range(3, 50))
    assert res["metric"] == "relative" and res["report"]["verdict"] == "fits"


def test_fit_bad_sensitivity_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(R1), "--target", "256gb-24gb", "--sensitivity", "nope.csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.csv: no such sensitivity file" in err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "256gb-24gb", "--budget", "100 GB"], "--target or --budget"),
        ([], "--target or --budget"),
        (["--budget", "lots"], "neither a size nor a variant or ftype"),
        (["--target", "256gb-24gb", "--repack", "sometimes"], "--repack"),
        (["--ladder", "256gb-24gb", "--target", "256gb-24gb"], "--ladder replaces"),
    ],
)
def test_fit_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", str(R1), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# ------------------------------------------------------------------------------ Thireus' table on R1


@pytest.fixture(scope="module")
def r1_table() -> SensitivityTable:
    inv = recipe_inventory(load_recipe(R1))
    return read_table(THIREUS, engine="ik", curve=CURVE, tensors=[(t.name, tuple(t.shape)) for t in inv.tensors])


def test_thireus_table_imported_as_published(r1_table: SensitivityTable) -> None:
    header = THIREUS.read_text().splitlines()[0].split(",")
    row = THIREUS.read_text().splitlines()[1].split(",")
    published = dict(zip(header[1:], (float(x) for x in row[1:]), strict=True))
    assert row[0] == "iq1_m_r4" and len(published) == 725
    assert r1_table.baseline == min(published.values())
    assert r1_table.source == f"thireus: {THIREUS.name}" and r1_table.metric == "kld"
    # one group per tensor; the measured cell is the published number, delta against the baseline
    g = r1_table.group("blk.60.ffn_down_exps.weight")
    assert g.tensors == ("blk.60.ffn_down_exps.weight",) and g.layers == (60,) and g.kind == "ffn_down_exps"
    e = next(e for e in r1_table.entries if e.group == g.name and e.type == "iq1_m_r4")
    assert (e.value, e.how) == (published[g.name], "imported")
    assert e.delta == pytest.approx(published[g.name] - r1_table.baseline, abs=1e-15)
    # every other type of the curve scaled from it: delta(t) = delta0 * (curve(t) - base) / (curve(iq1_m_r4) - base)
    curve = {ln.split(",")[0]: float(ln.split(",")[1]) for ln in CURVE.read_text().splitlines()[1:]}
    q8 = next(x for x in r1_table.entries if x.group == g.name and x.type == "q8_0")
    want = e.delta * (curve["q8_0"] - r1_table.baseline) / (curve["iq1_m_r4"] - r1_table.baseline)
    assert (q8.delta, q8.how) == (pytest.approx(want, rel=1e-12), "scaled")
    # bytes of the tensor at that type, from the catalogue (ne0 7168 x 2048 x 256 experts)
    assert q8.bytes == catalogue("ik").get("q8_0").tensor_bytes((2048, 7168, 256))
    # iq2_s was not measured (0 in the curve) and iq1_bn is for ternary models: neither is offered
    assert not any(x.type in ("iq2_s", "iq1_bn") for x in r1_table.entries if x.group == g.name)


@pytest.fixture(scope="module")
def r1_solved(r1_table: SensitivityTable) -> Any:
    return solve_recipe(R1, target="256gb-24gb", settings=Settings(n_ctx=32768), quant="IQ2_K_R4",
                        sensitivity=THIREUS, curve=CURVE)  # fmt: skip


def test_r1_fills_both_devices_within_one_percent(r1_solved: Any) -> None:
    rep = r1_solved.report
    assert rep.verdict == "fits" and [d.name for d in rep.devices] == ["CPU", "CUDA0"]
    for d in rep.devices:
        assert 0 <= d.headroom_bytes <= 0.01 * d.capacity_bytes, (d.name, d.headroom_bytes / GIB)
    assert r1_solved.metric == "kld" and r1_solved.gap < 0.05
    # every group of the table got a type; the prediction is the baseline plus their costs
    assert len(r1_solved.choices) == 725
    assert r1_solved.predicted == pytest.approx(r1_solved.baseline + sum(c.cost for c in r1_solved.choices))


def test_r1_plan_passes_the_planners_checks(r1_solved: Any, tmp_path: Path) -> None:
    """Written into the recipe, the variant lints clean and plans to the same types, bytes and fit."""
    recipe = tmp_path / "r1.toml"
    shutil.copy(R1, recipe)
    res = solve_recipe(recipe, target="256gb-24gb", settings=Settings(n_ctx=32768), quant="IQ2_K_R4",
                       sensitivity=THIREUS, curve=CURVE, write=True)  # fmt: skip
    r = load_recipe(recipe)
    inv = recipe_inventory(r)
    plan = expand(r, res.name, inv, imatrix=False)
    assert {t.name: t.type for t in plan.tensors} == res.types
    errors = [f for f in lint(r, res.name, inv, imatrix=False) if f.severity == "error"]
    assert not errors, [f.message for f in errors]
    _, dims = recipe_plans(r, res.name)
    rep = plan_fit(plan, dims, load_target("256gb-24gb"), settings=Settings(n_ctx=32768), engine="ik",
                   with_placement=True)  # fmt: skip
    assert rep.verdict == "fits" and rep.weights_bytes == res.tensor_bytes
    assert not [f for f in rep.findings if f.code == "r4-on-gpu"]
    assert [d.headroom_bytes for d in rep.devices] == [d.headroom_bytes for d in res.report.devices]


def test_min_tg_constraint_holds(r1_solved: Any) -> None:
    want = r1_solved.report.tg_tokens_per_s * 1.15
    res = solve_recipe(R1, target="256gb-24gb", settings=Settings(n_ctx=32768), quant="IQ2_K_R4",
                       sensitivity=THIREUS, curve=CURVE, min_tg=want)  # fmt: skip
    assert res.report is not None and res.report.tg_tokens_per_s >= want
    assert res.predicted >= r1_solved.predicted - 1e-12  # speed costs quality, never the reverse


# ------------------------------------------------------------------------------ types on devices


def _every_type_table(plan: Any, engine: Engine) -> SensitivityTable:
    """Every quantizable type of the catalogue offered to every group (kind x 3 buckets)."""
    from quantforge.sensitivity.groups import buckets_of, kind_of

    cat = catalogue(engine)
    types = [t.name for t in cat.types() if t.quantizable and t.block_size > 1]
    by: dict[str, list[Any]] = {}
    for t in plan.tensors:
        k = kind_of(t.name)
        if k is not None and t.requested_type is not None and len(t.shape) > 1:
            by.setdefault(k[0], []).append(t)
    groups, entries = [], []
    for kind, ts in by.items():
        layers = sorted({t.layer for t in ts if t.layer is not None})
        for b in buckets_of(layers, 3) if layers else [()]:
            members = [t for t in ts if not b or t.layer in b]
            name = f"{kind}@{b[0]}-{b[-1]}" if b else kind
            groups.append(SensitivityGroup(name=name, kind=kind, layers=tuple(b), tensors=tuple(t.name for t in members)))
            for typ in types:
                d = len(members) * noise_scale(engine, "q8_0", typ)
                entries.append(SensitivityEntry(group=name, type=typ, value=d, delta=d, how="scaled"))
    return SensitivityTable(model="every type", engine=engine, baseline=0.0, groups=tuple(groups),
                            entries=tuple(entries), metric="relative")  # fmt: skip


@pytest.mark.parametrize(("recipe", "quant", "target"), [
    (R1, "IQ2_K_R4", "256gb-24gb"),
    (Path(__file__).parents[1] / "recipes" / "glm-4.5-air.toml", None, "64gb-24gb"),
])  # fmt: skip
def test_no_type_without_a_cuda_kernel_and_no_interleaved_type_on_a_gpu(
    recipe: Path, quant: str | None, target: str
) -> None:
    r = load_recipe(recipe)
    plans, dims = recipe_plans(r, quant)
    plan = plans[0]
    table = _every_type_table(plan, r.engine)
    cat = catalogue(r.engine)
    assert any(not t.cuda_matmul for t in cat.types() if t.quantizable and t.block_size > 1)
    tgt = load_target(target)
    s = Settings(n_ctx=16384)
    for repack in ("auto", "always"):
        got = solve(plan, dims, tgt, settings=s, table=table, repack=repack)  # type: ignore[arg-type]
        rep = plan_fit(got.tensors, dims, tgt, settings=s, engine=r.engine, with_placement=True)
        assert rep.verdict == "fits" and rep.placement is not None
        on_gpu = {n: got.types[n] for n, dev in rep.placement.items() if dev != "CPU"}
        assert on_gpu, "something must live on the GPU"
        for name, typ in on_gpu.items():
            qt = cat.get(typ)
            assert qt.interleave == 1 and (qt.cuda_matmul or qt.block_size == 1), (name, typ)
        in_ram = [got.types[n] for n, dev in rep.placement.items() if dev == "CPU"]
        if r.engine == "ik" and repack == "always":
            assert any(cat.get(t).interleave > 1 for t in in_ram), "RAM-resident experts take _r4 twins"
