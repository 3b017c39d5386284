"""Environment variables and paths, in one place: read once at import, or, for the few a
long-lived process may see change, by a function here at call time."""

from __future__ import annotations

import os
from pathlib import Path

#: Where quantforge keeps caches (KLD base logits, downloaded headers, bases).
CACHE_DIR = Path(os.environ.get("QUANTFORGE_CACHE", "") or Path.home() / ".cache" / "quantforge")



def bin_dir_overrides(engine: str) -> list[tuple[str, Path]]:
    """The tool folders the environment names for ``engine``, most specific first:
    ``QUANTFORGE_<ENGINE>_BIN_DIR`` (for users who keep both an ik_llama.cpp and a llama.cpp
    build), then ``QUANTFORGE_BIN_DIR``. Read at call time: a long-lived process (or a test)
    that changes them sees the change."""
    out = []
    for var in (f"QUANTFORGE_{engine.upper()}_BIN_DIR", "QUANTFORGE_BIN_DIR"):
        value = os.environ.get(var)
        if value:
            out.append((var, Path(value).expanduser()))
    return out


def hf_endpoint() -> str | None:
    """``HF_ENDPOINT`` at call time (huggingface_hub freezes it at import; mirrors and tests set it later)."""
    return os.environ.get("HF_ENDPOINT") or None

#: User config file (TOML) with tool paths and defaults.
CONFIG_FILE = Path(
    os.environ.get("QUANTFORGE_CONFIG", "") or Path.home() / ".config" / "quantforge" / "config.toml"
)

#: A Ray cluster to run build/eval/sensitivity/sweep tasks on (``ray://HOST:PORT``); ``--cluster`` wins.
CLUSTER_ADDRESS = os.environ.get("QUANTFORGE_CLUSTER") or None
#: This node's scratch folder for cluster tasks (outputs built before they are pulled, shipped inputs).
SCRATCH_DIR = Path(os.environ["QUANTFORGE_SCRATCH"]) if os.environ.get("QUANTFORGE_SCRATCH") else None

#: Hugging Face's hard per-file limit; outputs above it are split with llama-gguf-split.
HF_MAX_FILE_BYTES = 50 * 1000**3

#: GGUF tensor data alignment (general.alignment default).
GGUF_DEFAULT_ALIGNMENT = 32

#: Package data folder (shipped inventories, the demo recipe).
DATA_DIR = Path(__file__).resolve().parent / "data"
