"""Scoring one measured variant (shared by the local runs in ``measure.py`` and the cluster's tasks)."""

from __future__ import annotations

import threading
from pathlib import Path

from quantforge.errors import EvalError
from quantforge.evaluate import _util
from quantforge.evaluate.bundled import kld_bundled
from quantforge.evaluate.models import EvalEngine, EvalResult
from quantforge.evaluate.perplexity import perplexity_binary
from quantforge.fsutil import remove_quietly
from quantforge.manifest import manifest_path
from quantforge.names import log_file


class Cancelled(Exception):
    pass


def remove_outputs(gguf: Path) -> None:
    """A scored variant's GGUF, its log and manifest (a measured run keeps only its number)."""
    remove_quietly([gguf, log_file(gguf), manifest_path(gguf)])


def score_kld(
    gguf: Path, *, engine: EvalEngine, logits: Path, corpus: Path, corpus_sha: str, threads: int,
    binary: str | None, version: str | None, stop: threading.Event,
) -> EvalResult:  # fmt: skip
    """The KLD of ``gguf`` against the base logits, with the bundled evaluator or llama-perplexity;
    ``stop`` (set by another thread) cancels a bundled run between chunks."""
    if engine == "bundled":
        def check_stop(done: int, total: int) -> None:
            if stop.is_set():
                raise Cancelled()

        return kld_bundled(gguf, base_logits=logits, threads=threads, corpus=corpus, corpus_sha256=corpus_sha,
                           progress=check_stop)  # fmt: skip

    assert binary is not None
    res, _ = perplexity_binary(gguf, binary=binary, engine=engine, corpus=None,
                               ctx=_util.read_logits_header(logits)[0],
                               threads=threads, kl_divergence_base=logits, kl_divergence=True,
                               engine_version=version)  # fmt: skip
    if res.kld is None:  # pragma: no cover - perplexity_binary raises first
        raise EvalError("the KLD run printed no statistics", where=str(gguf))
    return res
