"""Which fork wrote a GGUF, decided before any type id is named (files made by the real binaries).

Type id 41 is ``q1_0`` in llama.cpp and ``q1_0_g128`` in ik_llama.cpp; 34/35/40/42 exist only
in llama.cpp, 133+ only in ik_llama.cpp. ``general.file_type`` values and the KV value type of
``quantize.imatrix.entries_count`` (UINT32 from mainline's llama-quantize, INT32 from ik's) are
the other evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantforge.catalogue import ambiguous_type_ids, type_id_engines
from quantforge.cli import main
from quantforge.errors import InventoryError
from quantforge.gguf_header import (
    GGUFTensorInfo,
    GGUFValue,
    ValueType,
    detect_fork,
    header_bytes,
    read_header,
)
from quantforge.inventory import load_inventory
from tests.support import TEST_CACHE, cached_quant


def _miniature(arch: str, layout: str) -> Path:
    from quantforge.miniature import write_miniature

    d = TEST_CACHE / "plan-mini"
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{arch}-{layout}.gguf"
    if not p.is_file():
        write_miniature(arch, p, seed=1, layout=layout)  # type: ignore[arg-type]
    return p


def test_the_catalogue_knows_the_ambiguous_and_fork_only_ids() -> None:
    assert ambiguous_type_ids() == frozenset({41})
    only = type_id_engines()
    assert [i for i, e in only.items() if e == ("mainline",)] == [34, 35, 40, 42]
    assert only[139] == ("ik",) and only[41] == ("ik", "mainline") and only[39] == ("ik", "mainline")


@pytest.fixture(scope="module")
def ik_q1_0_g128(ik_quantize: Path) -> Path:
    # ik's llama-quantize writes q1_0_g128 (id 41) where a rule asks for it, iq4_k elsewhere.
    return cached_quant(
        ik_quantize, _miniature("llama", "ik"), "IQ4_K", extra=("--custom-q", "ffn_down=q1_0_g128")
    )


@pytest.fixture(scope="module")
def mainline_q1_0(mainline_bin_dir: Path) -> Path:
    return cached_quant(mainline_bin_dir / "llama-quantize", _miniature("llama", "mainline"), "Q1_0")


def test_ik_file_with_id_41_is_named_by_ik_and_refused_as_mainline(
    ik_q1_0_g128: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v = detect_fork([read_header(ik_q1_0_g128)], where="x")
    assert v.fork == "ik" and v.ambiguous_ids == (41,)
    assert v.evidence[0] == "type id 139 (iq4_k) exists only in ik_llama.cpp"
    inv = load_inventory(ik_q1_0_g128)
    assert inv.fork == "ik"
    assert {t.dtype for t in inv.tensors if t.name.endswith("ffn_down.weight")} == {"q1_0_g128"}
    with pytest.raises(InventoryError, match="so it cannot be read as llama.cpp") as e:
        load_inventory(ik_q1_0_g128, engine="mainline")
    assert e.value.hint == 'read it with --engine ik (or set engine = "ik")'
    assert main(["inventory", str(ik_q1_0_g128), "--engine", "mainline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "type id 41 means q1_0 in llama.cpp, q1_0_g128 in ik_llama.cpp" in err[0]
    assert main(["inventory", str(ik_q1_0_g128)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("fork: ik_llama.cpp (type id 139 (iq4_k) exists only in ik_llama.cpp")


def test_mainline_q1_0_is_named_by_mainline_and_refused_as_ik(
    mainline_q1_0: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = read_header(mainline_q1_0)
    assert h.get("general.file_type") == 40
    v = detect_fork([h], where="x")
    assert (v.fork, v.evidence, v.ambiguous_ids) == (
        "mainline", ("general.file_type 40 (Q1_0) is written only by llama.cpp",), (41,))  # fmt: skip
    inv = load_inventory(mainline_q1_0)
    assert inv.fork == "mainline" and "q1_0" in {t.dtype for t in inv.tensors}
    assert "q1_0_g128" not in {t.dtype for t in inv.tensors}
    with pytest.raises(InventoryError, match="so it cannot be read as ik_llama.cpp"):
        load_inventory(mainline_q1_0, engine="ik")
    assert main(["inventory", str(mainline_q1_0), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fork"] == "mainline" and d["fork_evidence"] == [
        "general.file_type 40 (Q1_0) is written only by llama.cpp"
    ]


def test_imatrix_count_value_type_tells_mainline_from_ik(
    mainline_bin_dir: Path, ik_quantize: Path, smol_f16: Path, smol_imatrix: Path
) -> None:
    ml = cached_quant(mainline_bin_dir / "llama-quantize", smol_f16, "Q4_K_M", imatrix=smol_imatrix)
    ik = cached_quant(ik_quantize, smol_f16, "Q4_K_M", imatrix=smol_imatrix)
    hm, hi = read_header(ml), read_header(ik)
    assert hm.kv["quantize.imatrix.entries_count"].type == ValueType.UINT32
    assert hi.kv["quantize.imatrix.entries_count"].type == ValueType.INT32
    assert detect_fork([hm], where="m").fork == "mainline"
    # ik's Q4_K_M holds only types both forks share: nothing says it is ik's, and nothing needs to.
    assert detect_fork([hi], where="i").fork is None
    assert load_inventory(ik).fork is None


def _gguf(path: Path, type_ids: list[int], kv: list[tuple[str, GGUFValue]] | None = None) -> Path:
    infos, off = [], 0
    for i, tid in enumerate(type_ids):
        infos.append(GGUFTensorInfo(name=f"blk.0.t{i}.weight", shape=(256, 4), type_id=tid, offset=off))
        off += 256 * 4
    items = [("general.architecture", GGUFValue.of("llama", ValueType.STRING)), *(kv or [])]
    path.write_bytes(header_bytes(items, infos) + b"\0" * off)
    return path


def test_an_unresolvable_id_41_needs_the_fork_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _gguf(tmp_path / "x.gguf", [0, 41])
    with pytest.raises(InventoryError, match="nothing else in the file says which fork wrote it") as e:
        load_inventory(p)
    assert e.value.hint == "name the fork: --engine ik or --engine mainline"
    assert load_inventory(p, engine="ik").tensors[1].dtype == "q1_0_g128"
    assert load_inventory(p, engine="mainline").tensors[1].dtype == "q1_0"
    assert main(["inventory", str(p)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_ids_of_both_forks_in_one_file_are_refused(tmp_path: Path) -> None:
    p = _gguf(tmp_path / "x.gguf", [139, 42])
    with pytest.raises(InventoryError, match="mixes type ids of both forks"):
        load_inventory(p)


@pytest.fixture(scope="module")
def gguf_imatrix(
    mainline_bin_dir: Path, smol_f16: Path, smol_imatrix: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    # mainline's llama-imatrix rewrites the fixtures' legacy matrix in its GGUF format (no compute).
    import subprocess

    out = tmp_path_factory.mktemp("imx") / "smol.imatrix.gguf"
    proc = subprocess.run([str(mainline_bin_dir / "llama-imatrix"), "-m", str(smol_f16), "--in-file",
                           str(smol_imatrix),
                           "-o", str(out), "--output-format", "gguf"], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_imatrix_fork_and_the_ik_recipe_that_cannot_read_it(
    gguf_imatrix: Path, smol_imatrix: Path, smol_f16: Path, tmp_path: Path
) -> None:
    from quantforge.imatrix import read_imatrix
    from quantforge.plan import lint
    from quantforge.recipe import parse_recipe

    g, d = read_imatrix(gguf_imatrix), read_imatrix(smol_imatrix)
    assert (g.format, g.fork, d.format, d.fork) == ("gguf", "mainline", "dat", None)
    assert g.names() == d.names()
    inv = load_inventory(smol_f16)
    for engine, want in (("ik", ["imatrix-fork"]), ("mainline", [])):
        text = (f'[model]\nbase = "{smol_f16}"\nengine = "{engine}"\n[[quant]]\nname = "v"\nftype = '
                '"Q4_K_M"\ndefault = "q4_K"\n')
        recipe = parse_recipe(text, path=str(tmp_path / "r.toml"))
        got = [f.code for f in lint(recipe, None, inv, imatrix=str(gguf_imatrix)) if f.severity == "error"]
        assert got == want, engine
        assert not [f for f in lint(recipe, None, inv, imatrix=str(smol_imatrix)) if f.severity == "error"]
