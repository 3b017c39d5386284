"""Environment variables and paths, read once, in one place."""

from __future__ import annotations

import os
from pathlib import Path

#: Where quantforge keeps caches (KLD base logits, downloaded headers, bases).
CACHE_DIR = Path(os.environ.get("QUANTFORGE_CACHE", "") or Path.home() / ".cache" / "quantforge")

#: A directory holding a user build's binaries (``llama-quantize`` …); overrides the bundled ones.
BIN_DIR = os.environ.get("QUANTFORGE_BIN_DIR") or None
#: Per-engine overrides, for users who keep both an ik_llama.cpp and a llama.cpp build.
IK_BIN_DIR = os.environ.get("QUANTFORGE_IK_BIN_DIR") or None
MAINLINE_BIN_DIR = os.environ.get("QUANTFORGE_MAINLINE_BIN_DIR") or None

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
