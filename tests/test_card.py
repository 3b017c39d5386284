"""The model card of the SmolLM2 ladder: Hub metadata, measured numbers, Markdown, rebuildable commands."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import TEST_CACHE, sha256_file
from support.publish_ladder import LADDER, build_ladder

from quantforge.catalogue import catalogue
from quantforge.cli import main
from quantforge.inventory import load_inventory
from quantforge.publish.card import NOT_MEASURED

# Real llama-perplexity KLD logs of the fixtures, parsed by the evaluation stage's parser, stand
# for the evaluation of two variants; the two others stay unmeasured on purpose.
EVAL_LOGS = {"IQ4_KS": "kld-custom.log", "IQ2_KS": "kld-IQ4_K.log"}


@pytest.fixture(scope="module")
def ladder(smol_f16: Path, ik_quantize: Path, ik_fixtures: Path) -> tuple[Path, dict[str, Path]]:
    from quantforge.evaluate.models import EvalResult
    from quantforge.evaluate.parsers import parse_perplexity_log
    from quantforge.evaluate.perplexity import record_in_manifest
    from quantforge.manifest import read_manifest, update_manifest

    recipe, outs = build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)
    for name, out in outs.items():
        if name in EVAL_LOGS:
            log = parse_perplexity_log((ik_fixtures / "logs" / EVAL_LOGS[name]).read_text())
            assert log.kld is not None
            # Recorded exactly as `quantforge eval` records it (eval = {latest, runs}).
            update_manifest(out, eval=None)
            record_in_manifest(out, EvalResult(
                model=str(out), model_sha256="0" * 64, model_bytes=out.stat().st_size, engine="ik",
                corpus=str(ik_fixtures / "corpus.txt"), corpus_sha256="0" * 64, ctx=log.n_ctx or 512, chunks=log.n_chunks,
                n_tokens_scored=log.n_chunks * 255, threads=16, ppl=log.ppl, ppl_err=log.ppl_err,
                kld=log.kld, wall_s=1.0, created="2026-11-23T16:12:00+00:00", engine_commit="unknown",
            ))
        elif read_manifest(out).eval is not None:
            update_manifest(out, eval=None)
    return recipe, outs


@pytest.fixture(scope="module")
def card(ladder) -> str:
    from quantforge.publish.upload import make_card

    return make_card(ladder[0], repo="test-org/SmolLM2-135M-Instruct-GGUF").text


def _row(card: str, name: str) -> list[str]:
    line = next(ln for ln in card.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_card_metadata_parses_with_huggingface_hub(card):
    from huggingface_hub import ModelCard

    data = ModelCard(card, ignore_metadata_errors=False).data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["base_model_relation"] == "quantized"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-generation"
    assert data["library_name"] == "gguf"
    assert data["quantized_by"] == "quantforge"
    assert data["tags"] == ["gguf", "imatrix", "ik_llama.cpp"]


def test_card_shows_the_manifests_numbers(card, ladder):
    from quantforge.manifest import read_manifest

    for name, out in ladder[1].items():
        man = read_manifest(out)
        row = _row(card, name)
        # tensor data as model cards print it, ik's per-row scales alone, the file's bytes
        assert row[1] == f"{man.verification['tensor_bytes'] / 1024**3:.3f}"
        assert man.verification["tensor_bytes"] == man.planned_tensor_bytes
        inv = load_inventory(out)
        meta = sum(math.prod(t.shape[1:]) * catalogue("ik").get(t.dtype).row_meta_size for t in inv.tensors)
        assert row[2] == f"{meta / 1024**3:.3f}"
        assert row[3] == f"{man.actual_file_bytes:,}" and man.actual_file_bytes == out.stat().st_size
        assert row[4] == f"{man.plan['bpw']:.3f}"
        if name in EVAL_LOGS:
            ev = man.eval["latest"]
            assert row[5] == f"{ev['ppl']:.4f} ± {ev['ppl_err']:.4f}"
            assert row[6] == f"{ev['kld']['mean']:.6f}"
            assert row[7] == f"{ev['kld']['percentiles']['99.0']:.6f}"
        else:
            assert row[5:8] == [NOT_MEASURED] * 3
    assert "Measured with ik_llama.cpp's llama-perplexity" in card
    # exact values printed in the fixture log kld-custom.log ("Mean KLD: 0.060173", "99.0% KLD: 0.371523")
    assert _row(card, "IQ4_KS")[6:8] == ["0.060173", "0.371523"]


def test_card_sections(card, ladder):
    assert "70c3472644ef62f7cde32e2e9b8f38be17b83f17c4bf245f1e7325a0805b9fda" in card  # imatrix sha256
    assert "- chunks: 40" in card
    assert "- **R4**: ik_llama.cpp only" in card and "row-interleaved" in _section(card, "Compatibility")
    assert "hf download test-org/SmolLM2-135M-Instruct-GGUF --include SmolLM2-135M-Instruct-IQ5_KS.gguf" in card
    assert card.count("<details>") == 2 * len(LADDER)  # exact quantize command + run commands per variant
    assert str(Path.home()) not in card and "/work/" not in card and ".qf-cache" not in card


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_card_renders_as_markdown(card):
    from markdown_it import MarkdownIt

    body = card.split("\n---\n", 1)[1]
    html = MarkdownIt("js-default", {"html": True}).render(body)
    assert html.count("<tr>") == 2 * (len(LADDER) + 1)  # the quant table and the fit matrix
    assert "<h2>Recipes</h2>" in html and "<code class=\"language-bash\">" in html
    assert "<details>" in html


def _card_command(card: str, name: str) -> list[str]:
    block = card.split(f"<summary>{name}: exact llama-quantize command</summary>", 1)[1]
    code = re.search(r"```bash\n(.*?)\n```", block, re.S)
    assert code
    return shlex.split(code.group(1))


def test_card_command_rebuilds_byte_identical(card, ladder, smol_f16, ik_quantize, tmp_path):
    from quantforge.manifest import read_manifest

    out = ladder[1]["IQ2_KS"]
    argv = _card_command(card, "IQ2_KS")
    assert argv[0] == "llama-quantize" and "smol-f16.gguf" in argv and out.name in argv
    # The card's placeholders are base names: substitute the local files and run it as printed,
    # from the folder holding the imatrix.
    argv = [str(ik_quantize)] + [str(smol_f16.resolve()) if a == "smol-f16.gguf" else
                                 str(tmp_path / a) if a == out.name else a for a in argv[1:]]
    proc = subprocess.run(argv, cwd=ladder[0].parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rebuilt = tmp_path / out.name
    assert sha256_file(rebuilt) == read_manifest(out).files[0].sha256 == sha256_file(out)


def test_card_cli_writes_readme(ladder, tmp_path, capsys):
    dst = tmp_path / "README.md"
    assert main(["card", str(ladder[0]), "--quant", "IQ4_KS", "-o", str(dst)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = dst.read_text()
    assert "| IQ4_KS |" in text and "| IQ2_KS |" not in text
    assert main(["card", str(ladder[0]), "--quant", "IQ4_KS", "-o", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0]


def test_card_variant_not_built(ladder, tmp_path, capsys):
    assert main(["card", str(ladder[0]), "--out-dir", str(tmp_path), "-o", "-"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "variant IQ5_KS is not built yet" in err[0] and "quantforge build" in err[0]


# -- hardware fit (the planner's verdicts, largest contexts and run commands) ----------------

VERDICT_TEXT = {"fits": "fits (max {})", "fits_smaller_ctx": "only up to {}", "does_not_fit": "does not fit"}


def _k(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _matrix(card: str) -> dict[tuple[str, str], str]:
    rows = [ln for ln in _section(card, "Hardware fit").splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    out = {}
    for ln in rows[2:]:  # after the header and the --- line
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for target, cell in zip(head[1:], cells[1:], strict=True):
            out[(cells[0], target)] = cell
    return out


def _run_commands(card: str) -> dict[tuple[str, str], str]:
    out = {}
    for block in _section(card, "Run").split("<summary>")[1:]:
        name = block.split(":", 1)[0]
        for target, cmd in re.findall(r"\*\*([^*]+)\*\* \([^)]*\):\n\n```bash\n(.*?)\n```", block, re.S):
            out[(name, target)] = cmd
    return out


def _expected(recipe_path: Path, targets: list, n_ctx: int) -> tuple[dict, dict]:
    """The planner's own answers: the breakpoint matrix and plan_fit's command per fitting cell."""
    from quantforge.fit.api import breakpoint_matrix, recipe_plans
    from quantforge.fit.report import Settings, plan_fit
    from quantforge.recipe import load_recipe

    plans, dims = recipe_plans(load_recipe(recipe_path))
    m = breakpoint_matrix(plans, dims, targets, settings=Settings(n_ctx=n_ctx))
    by_t = {t.name: t for t in targets}
    by_p = {p.name: p for p in plans}
    cells, cmds = {}, {}
    for c in m.cells:
        cells[(c.quant, c.target)] = VERDICT_TEXT[c.verdict].format(_k(c.max_ctx))
        if c.verdict != "does_not_fit":
            ctx = n_ctx if c.verdict == "fits" else c.max_ctx
            argv = plan_fit(by_p[c.quant], dims, by_t[c.target], settings=Settings(n_ctx=ctx)).command
            cmds[(c.quant, c.target)] = shlex.join(
                [f"SmolLM2-135M-Instruct-{c.quant}.gguf" if a == "MODEL.gguf" else a for a in argv])
    return cells, cmds


def test_card_fit_matrix_is_the_planners_on_every_shipped_target(card, ladder):
    from quantforge.targets import list_targets

    shipped = list_targets()
    cells, cmds = _expected(ladder[0], shipped, 8192)  # [publish] ctx = 8192 in the SmolLM2 recipe
    assert _matrix(card) == cells
    assert len(cells) == len(LADDER) * len(shipped) == 44
    # SmolLM2 (0.1 GiB + 0.18 GiB of KV at 8K) fits every shipped machine at its full 8K context.
    assert set(cells.values()) == {"fits (max 8K)"}
    for name in LADDER:
        assert _row(card, name)[8] == f"all {len(shipped)} targets: 8K"
    assert _run_commands(card) == cmds
    assert cmds[("IQ4_KS", "cpu-128gb")] == (
        "llama-server -m SmolLM2-135M-Instruct-IQ4_KS.gguf -c 8192 -fa on -ctk f16 -ctv f16 -b 2048 -ub 512 -t 16")
    assert cmds[("IQ2_KS", "512gb-4x24gb")] == (
        "llama-server -m SmolLM2-135M-Instruct-IQ2_KS.gguf -c 8192 -ngl 999 -ts 24576,24576,24576,24576 -fa on -ctk f16 -ctv f16 "
        "-b 2048 -ub 512 -t 32")
    assert "Planned by quantforge at 8K context (-ctk f16 -ctv f16, -b 2048 -ub 512, flash attention)" in card


TINY = """name = "{name}"
[ram]
total = "{mib} MiB"
os_reserved = "0 MiB"
[cpu]
name = "SBC"
physical_cores = 4
memory_bandwidth = "10 GB/s"
"""


def test_card_fit_small_machines_give_every_verdict(ladder, tmp_path):
    from quantforge.publish.upload import make_card
    from quantforge.targets import load_target

    for mib in (200, 370):
        (tmp_path / f"sbc-{mib}.toml").write_text(TINY.format(name=f"sbc-{mib}", mib=mib))
    names = ["cpu-128gb", str(tmp_path / "sbc-200.toml"), str(tmp_path / "sbc-370.toml")]
    card = make_card(ladder[0], targets=names).text
    cells, cmds = _expected(ladder[0], [load_target(n) for n in names], 8192)
    assert _matrix(card) == cells
    assert _run_commands(card) == cmds
    # At 8K SmolLM2 needs 367-389 MiB of RAM (weights + 180 MiB of KV + buffers): exact planner answers.
    assert {k: v for k, v in cells.items() if k[1] != "cpu-128gb"} == {
        ("IQ5_KS", "sbc-200"): "does not fit", ("IQ5_KS", "sbc-370"): "only up to 7K",
        ("IQ4_KS", "sbc-200"): "only up to 256", ("IQ4_KS", "sbc-370"): "only up to 7936",
        ("IQ2_KS", "sbc-200"): "only up to 512", ("IQ2_KS", "sbc-370"): "fits (max 8K)",
        ("R4", "sbc-200"): "does not fit", ("R4", "sbc-370"): "only up to 7680",
    }
    assert _row(card, "IQ5_KS")[8] == "8K: cpu-128gb<br>7K only: sbc-370"
    assert _row(card, "IQ4_KS")[8] == "8K: cpu-128gb<br>256 only: sbc-200<br>7936 only: sbc-370"
    assert _row(card, "IQ2_KS")[8] == "8K: cpu-128gb, sbc-370<br>512 only: sbc-200"
    # A smaller context only: the command runs at the largest context that fits; none where nothing fits.
    assert cmds[("IQ4_KS", "sbc-200")] == (
        "llama-server -m SmolLM2-135M-Instruct-IQ4_KS.gguf -c 256 -fa on -ctk f16 -ctv f16 -b 2048 -ub 512 -t 4")
    assert ("IQ5_KS", "sbc-200") not in _run_commands(card)


def test_card_fit_from_the_recipe_publish_section(ladder, tmp_path, capsys):
    from quantforge.publish.card import card_targets
    from quantforge.recipe import load_recipe

    (tmp_path / "sbc-200.toml").write_text(TINY.format(name="sbc-200", mib=200))
    text = ladder[0].read_text().replace("ctx = 8192\n", 'ctx = 4096\ntargets = ["32gb-16gb", "sbc-200.toml"]\n')
    assert "sbc-200.toml" in text
    recipe = tmp_path / "r.toml"
    recipe.write_text(text)
    assert [t.name for t in card_targets(load_recipe(recipe))] == ["32gb-16gb", "sbc-200"]
    # A misspelt target is an input error before anything is read (here nothing is built in tmp_path).
    recipe.write_text(text.replace('"32gb-16gb"', '"32gb-16gib"'))
    assert main(["card", str(recipe), "-o", "-"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"quantforge: error: {recipe}: publish.targets[0]: 32gb-16gib: no such target file")
    assert "shipped targets: 128gb-24gb" in err[0]
