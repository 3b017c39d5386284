"""The bad-input catalogue (tests/bad_inputs/*.toml): every case through `quantforge.cli.main`.

Each case must end with its exit code (2 bad input, 1 runtime failure), exactly one line on
stderr matching its regex, no traceback; with ``--debug`` the exception propagates instead.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bad_inputs"))
from catalogue import DOC, Case, fill, load_cases, materialise, render_doc, smol_folder  # noqa: E402

from quantforge.cli import main  # noqa: E402
from quantforge.errors import QuantforgeError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = load_cases()


@pytest.fixture(scope="module")
def real_quantize() -> Path:
    import ik_llama_cpp

    return Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize"


def _values(case_dir: Path, smol_f16: Path, smol_imatrix: Path, real_quantize: Path) -> dict[str, str]:
    return {
        "case_dir": str(case_dir),
        "repo": str(REPO),
        "smol_f16": str(smol_f16),
        "smol_imatrix": str(smol_imatrix),
        "faulty_bin": str(REPO / "tests" / "support" / "faulty_bin"),
        "faults": str(REPO / "tests" / "support" / "faults"),
        "real_quantize": str(real_quantize),
        "smol": str(case_dir / "smol"),
    }


def _run(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    smol_f16: Path, smol_imatrix: Path, real_quantize: Path, *, debug: bool,
) -> tuple[int, str]:  # fmt: skip
    values = _values(tmp_path, smol_f16, smol_imatrix, real_quantize)
    if any("{smol}" in a for a in case.argv) or any("{smol}" in str(f) for f in case.files):
        smol_folder(tmp_path / "smol", smol_f16=smol_f16, smol_imatrix=smol_imatrix)
    materialise(case, tmp_path, values)
    for key, value in case.env.items():
        monkeypatch.setenv(key, fill(value, values))
    monkeypatch.chdir(tmp_path)
    argv = [fill(a, values) for a in case.argv]
    if debug:
        argv = ["--debug", *argv]
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_with_one_line(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    smol_f16: Path, smol_imatrix: Path, real_quantize: Path,
) -> None:  # fmt: skip
    code, err = _run(case, tmp_path, capsys, monkeypatch, smol_f16, smol_imatrix, real_quantize, debug=False)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == case.exit_code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("quantforge: error: "), lines[0]
    assert re.search(case.stderr_regex, lines[0]), lines[0]


@pytest.mark.parametrize("case", [c for c in CASES if c.debug], ids=[c.id for c in CASES if c.debug])
def test_bad_input_shows_the_traceback_with_debug(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    smol_f16: Path, smol_imatrix: Path, real_quantize: Path,
) -> None:  # fmt: skip
    with pytest.raises(QuantforgeError) as info:
        _run(case, tmp_path, capsys, monkeypatch, smol_f16, smol_imatrix, real_quantize, debug=True)
    assert info.value.exit_code == case.exit_code
    assert re.search(case.stderr_regex, "quantforge: error: " + info.value.one_line())


def test_catalogue_is_large_and_well_formed() -> None:
    assert len(CASES) >= 40
    assert len({c.id[:3] for c in CASES}) == len(CASES), "case numbers must be unique"
    for c in CASES:
        assert c.exit_code in (1, 2), c.id
        re.compile(c.stderr_regex)


def test_doc_table_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == render_doc(CASES), "run: python tests/bad_inputs/catalogue.py"
