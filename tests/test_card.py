"""The model card of the SmolLM2 ladder: Hub metadata, measured numbers, Markdown, rebuildable commands."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import TEST_CACHE, sha256_file
from support.publish_ladder import LADDER, build_ladder

from quantforge.cli import main
from quantforge.publish.card import NOT_MEASURED

# Real llama-perplexity KLD logs of the fixtures, parsed by the evaluation stage's parser, stand
# for the evaluation of two variants; the two others stay unmeasured on purpose.
EVAL_LOGS = {"IQ4_KS": "kld-custom.log", "IQ2_KS": "kld-IQ4_K.log"}


@pytest.fixture(scope="module")
def ladder(smol_f16: Path, ik_quantize: Path, ik_fixtures: Path) -> tuple[Path, dict[str, Path]]:
    from quantforge.evaluate.parsers import parse_perplexity_log
    from quantforge.manifest import read_manifest, update_manifest

    recipe, outs = build_ladder(TEST_CACHE, smol_f16.resolve(), ik_quantize)
    for name, out in outs.items():
        if name in EVAL_LOGS:
            log = parse_perplexity_log((ik_fixtures / "logs" / EVAL_LOGS[name]).read_text())
            assert log.kld is not None
            update_manifest(out, eval={
                "ppl": log.ppl, "ppl_err": log.ppl_err, "ctx": log.n_ctx, "chunks": log.n_chunks,
                "corpus": str(ik_fixtures / "corpus.txt"), "engine": "ik",
                "kld": {"mean": log.kld.mean, "p99": log.kld.percentiles["99.0"], "percentiles": log.kld.percentiles},
            })
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
        assert row[1] == f"{man.actual_file_bytes / 1024**3:.3f}"
        assert row[2] == f"{man.plan['bpw']:.3f}"
        if name in EVAL_LOGS:
            ev = man.eval
            assert row[3] == f"{ev['ppl']:.4f} ± {ev['ppl_err']:.4f}"
            assert row[4] == f"{ev['kld']['mean']:.6f}"
            assert row[5] == f"{ev['kld']['p99']:.6f}"
        else:
            assert row[3:6] == [NOT_MEASURED] * 3
    # exact values printed in the fixture log kld-custom.log ("Mean KLD: 0.060173", "99.0% KLD: 0.371523")
    assert _row(card, "IQ4_KS")[4:6] == ["0.060173", "0.371523"]


def test_card_sections(card, ladder):
    assert "70c3472644ef62f7cde32e2e9b8f38be17b83f17c4bf245f1e7325a0805b9fda" in card  # imatrix sha256
    assert "- chunks: 40" in card
    assert "- **R4**: ik_llama.cpp only" in card and "row-interleaved" in _section(card, "Compatibility")
    assert "hf download test-org/SmolLM2-135M-Instruct-GGUF --include SmolLM2-135M-Instruct-IQ5_KS.gguf" in card
    assert card.count("<details>") == len(LADDER)
    assert str(Path.home()) not in card and "/work/" not in card and ".qf-cache" not in card


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_card_renders_as_markdown(card):
    from markdown_it import MarkdownIt

    body = card.split("\n---\n", 1)[1]
    html = MarkdownIt("js-default", {"html": True}).render(body)
    assert html.count("<tr>") == len(LADDER) + 1
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
