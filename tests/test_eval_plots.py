"""Ladder chart from the real ik KLD logs (fixture sizes), through the CLI, PNG + SVG."""

from __future__ import annotations

import json
from pathlib import Path

from quantforge.cli import main
from quantforge.evaluate.models import EvalResult
from quantforge.evaluate.parsers import parse_perplexity_log


def test_plot_ladder_from_fixture_logs(ik_fixtures: Path, tmp_path: Path) -> None:
    sizes = {ln.split()[-1]: int(ln.split()[4]) for ln in (ik_fixtures / "sizes.txt").read_text().splitlines()
             if ln.endswith(".gguf")}
    files = []
    for name in ("Q4_K_M", "IQ4_K", "custom", "r4"):
        log = parse_perplexity_log((ik_fixtures / "logs" / f"kld-{name}.log").read_text())
        r = EvalResult(model=f"smol-{name}.gguf", model_sha256="", model_bytes=sizes[f"smol-{name}.gguf"],
                       engine="ik",
                       corpus_sha256="", ctx=512, chunks=log.n_chunks, n_tokens_scored=log.n_chunks * 255,
                       threads=16,
                       ppl=log.ppl, ppl_err=log.ppl_err, kld=log.kld, wall_s=0.0, created="")
        p = tmp_path / f"{name}.json"
        p.write_text(json.dumps(r.model_dump(mode="json")))
        files.append(str(p))
    assert main(["plot", "ladder", *files, "-o", str(tmp_path / "ladder"), "--x", "bpw", "--n-params",
                 "134515008"]) == 0
    png = (tmp_path / "ladder.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
    svg = (tmp_path / "ladder.svg").read_text()
    assert "IQ4_K" in svg and "bits per weight" in svg and "base PPL 5.6357" in svg


def test_plot_ladder_bad_input(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = main(["plot", "ladder", str(tmp_path / "none.json"), "-o", str(tmp_path / "x")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == (f"quantforge: error: {tmp_path / 'none.json'}: result file "
                                               "not found")
