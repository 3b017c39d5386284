"""Helpers shared by the evaluate runners: hashing, corpora, the base-logits cache and its key."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

from quantforge import fsutil
from quantforge.errors import EvalError, InputError
from quantforge.fsutil import cached_sha256

_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) so a ladder of runs hashes each file once.

    Behind the in-process memo is the on-disk cache of ``fsutil.cached_sha256``: a base or a
    variant is hashed once across processes.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = cached_sha256(p)
    return _HASHES[key]


def sha256_background(path: str | Path) -> Callable[[], str]:
    """Start hashing ``path`` in a thread while a run goes on; call the result to wait."""
    return fsutil.sha256_background(path, hasher=sha256_file)


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def read_corpus(path: str | Path) -> tuple[str, str]:
    """Text and sha256 of an evaluation corpus (UTF-8, as llama-perplexity reads it: raw bytes)."""
    from quantforge.paths import MAX_CORPUS_BYTES, read_input_bytes

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("corpus file not found", where=str(p), hint="pass --corpus FILE (plain UTF-8 text)")
    data = read_input_bytes(p, what="corpus", max_bytes=MAX_CORPUS_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"corpus is not UTF-8 text (byte {exc.start})", where=str(p)) from exc
    return text, hashlib.sha256(data).hexdigest()


def check_model_file(path: str | Path) -> Path:
    from quantforge.paths import open_input

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError("model file not found", where=str(p), hint="pass an existing .gguf file")
    with open_input(p, what="model (GGUF)") as f:
        if f.read(4) != b"GGUF":
            raise InputError("not a GGUF file (bad magic)", where=str(p))
    return p


def too_short(n_tokens: int, ctx: int, corpus: str | Path | None) -> EvalError:
    # llama-perplexity itself refuses fewer than 2*n_ctx tokens; the bundled evaluator keeps the same rule
    return EvalError(
        f"corpus too short: it tokenizes to {n_tokens} tokens, at least {2 * ctx} are needed for ctx {ctx}",
        where=str(corpus) if corpus else None,
        hint="use a longer corpus or a smaller --ctx",
    )


# ---------------------------------------------------------------- base-logits files

LOGITS_MAGIC = b"_logits_"


def logits_row_u16(n_vocab: int) -> int:
    """uint16 values per scored token in a base-logits file: 2 floats of header + the vocabulary, even."""
    return 2 * ((n_vocab + 1) // 2) + 4


def read_logits_header(path: str | Path) -> tuple[int, int, int]:
    """(n_ctx, n_vocab, n_chunk) of a ``--kl-divergence-base`` file; EvalError if it is not one."""
    p = Path(path)
    with open(p, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:8] != LOGITS_MAGIC:
        raise EvalError("not a base-logits file (no _logits_ magic)", where=str(p))
    n_ctx, n_vocab, n_chunk = struct.unpack("<iii", head[8:20])
    expected = 20 + 4 * n_ctx * n_chunk + 2 * n_chunk * (n_ctx - 1 - n_ctx // 2) * logits_row_u16(n_vocab)
    size = p.stat().st_size
    if size != expected:
        raise EvalError(
            f"base-logits file is truncated or corrupt ({size} bytes, {expected} expected)", where=str(p),
            hint="delete it and compute the base again",
        )
    return n_ctx, n_vocab, n_chunk


def base_key(*, model_sha256: str, corpus_sha256: str, ctx: int, chunks: int, engine: str) -> dict[str, object]:
    return {
        "model_sha256": model_sha256,
        "corpus_sha256": corpus_sha256,
        "ctx": ctx,
        "chunks": chunks,
        "engine": engine,
    }


def base_cache_path(cache_dir: Path, key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"{str(key['model_sha256'])[:12]}-{digest}.logits"


def write_key(logits_path: Path, key: dict[str, object]) -> None:
    from quantforge.fsutil import atomic_write_text

    # A unique temporary name (two evaluations may share a cache folder), fsync, rename.
    atomic_write_text(logits_path.with_name(logits_path.name + ".json"), json.dumps(key, indent=2, sort_keys=True))


def read_key(logits_path: Path) -> dict[str, object] | None:
    side = logits_path.with_name(logits_path.name + ".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def verify_key(logits_path: Path, expected: dict[str, object], *, strict_engine: bool = False) -> None:
    """Refuse base logits computed for another model, corpus, context or chunk count."""
    found = read_key(logits_path)
    if found is None:
        raise EvalError(
            "base logits carry no key (model/corpus/ctx/chunks), so they cannot be checked",
            where=str(logits_path),
            hint="let quantforge compute the base with --base FILE.gguf",
        )
    fields = ["model_sha256", "corpus_sha256", "ctx", "chunks"] + (["engine"] if strict_engine else [])
    bad = [f for f in fields if found.get(f) != expected.get(f)]
    if bad:
        what = ", ".join(f"{f} {str(found.get(f))[:16]} != {str(expected.get(f))[:16]}" for f in bad)
        raise EvalError(
            f"base logits were computed for another model/corpus ({what})",
            where=str(logits_path),
            hint="use the base model and corpus the logits were made from, or recompute the base",
        )
