"""PPL / KLD runs: ``llama-perplexity`` of either engine, or the bundled evaluator, with a cached base.

``evaluate(...)`` is the one entry point: it computes the base model's logits once
(``--kl-divergence-base``), caches them under ``CACHE_DIR/kld-base`` keyed by base sha256,
corpus sha256, context, chunks and engine, verifies that key on every read, then measures
each variant's PPL and KLD against it. Results carry corpus, context, chunks, batch sizes,
engine commit and the exact command.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from pydantic import ValidationError

from quantforge import constants
from quantforge.catalogue import Engine
from quantforge.errors import EvalError, InputError, Interrupted, ToolError
from quantforge.evaluate import _util
from quantforge.evaluate.bundled import default_threads, kld_bundled, perplexity_bundled
from quantforge.evaluate.models import EvalEngine, EvalResult
from quantforge.evaluate.parsers import parse_perplexity_log
from quantforge.lock import folder_lock
from quantforge.manifest import Manifest, read_manifest, update_manifest
from quantforge.paths import read_input_json
from quantforge.toolchain import find_toolchain

_P = ParamSpec("_P")
_R = TypeVar("_R")

# ---------------------------------------------------------------- binaries


def find_perplexity(engine: Engine, *, binary: str | None = None,
                    bin_dir: str | None = None) -> tuple[str, str | None]:
    """(path of llama-perplexity, engine version) for ``engine``; ToolError with the fix when absent."""
    if binary:
        p = Path(binary).expanduser()
        if not p.is_file() or not os.access(p, os.X_OK):
            raise ToolError(f"llama-perplexity not found or not executable: {p}", where="--binary",
                            hint="pass the path of a built llama-perplexity")
        return str(p), None
    try:
        tc = find_toolchain(engine, bin_dir=bin_dir)
    except ToolError:
        found = shutil.which("llama-perplexity")
        if found and engine == "mainline":
            return found, None
        raise
    return tc.require("perplexity"), tc.version


def _check_too_short(out: str, ctx: int, corpus: str | Path | None) -> None:
    m = re.search(r"tokenizes to only (\d+) tokens", out)
    if m:
        raise _util.too_short(int(m.group(1)), ctx, corpus)


# ---------------------------------------------------------------- one run with a binary


def perplexity_binary(
    model: str | Path, *, binary: str, engine: Engine, corpus: str | Path | None,
    ctx: int = 512, chunks: int | None = None, threads: int | None = None, batch: int | None = None,
    ubatch: int | None = None, kl_divergence_base: str | Path | None = None, kl_divergence: bool = False,
    engine_version: str | None = None, extra_args: list[str] | None = None, timeout: float | None = None,
) -> tuple[EvalResult, str]:
    """One ``llama-perplexity`` run; the parsed result and the full log."""
    model_p = _util.check_model_file(model)
    corpus_sha = ""
    cmd = [binary, "-m", str(model_p), "-c", str(ctx)]
    if not kl_divergence:
        if corpus is None:
            raise InputError("a PPL run needs a corpus", hint="pass --corpus FILE")
        _, corpus_sha = _util.read_corpus(corpus)
        cmd += ["-f", str(corpus)]
    if chunks is not None and chunks > 0:
        cmd += ["--chunks", str(chunks)]
    threads = threads or _default_threads()
    cmd += ["-t", str(threads)]
    if batch:
        cmd += ["-b", str(batch)]
    if ubatch:
        cmd += ["-ub", str(ubatch)]
    if kl_divergence_base is not None:
        cmd += ["--kl-divergence-base", str(kl_divergence_base)]
    if kl_divergence:
        cmd += ["--kl-divergence"]
    cmd += list(extra_args or [])
    model_sha = _util.sha256_background(model_p)  # hashed while the tool runs: no added wall time
    out, wall = _util.tool_output(cmd, where=str(model_p), timeout=timeout,
                                  check=lambda o: _check_too_short(o, ctx, corpus))
    log = parse_perplexity_log(out, where=f"{Path(binary).name} on {model_p.name}")
    if kl_divergence and log.kld is None:
        raise EvalError("the KLD run printed no statistics (fewer than 100 scored tokens?)",
                        where=str(model_p),
                        hint="use more chunks")
    n_chunks = log.n_chunks
    first = ctx // 2
    result = EvalResult(
        model=str(model_p), model_sha256=model_sha(), model_bytes=model_p.stat().st_size,
        engine=engine, binary=binary, engine_commit=engine_version or log.build, command=cmd,
        corpus=str(corpus) if corpus else None, corpus_sha256=corpus_sha, ctx=log.n_ctx or ctx,
        chunks=n_chunks,
        n_tokens_scored=n_chunks * (ctx - 1 - first), batch=log.n_batch or batch, ubatch=ubatch,
        threads=log.n_threads or threads, ppl=log.ppl, ppl_err=log.ppl_err, chunk_ppl=log.chunk_ppl,
        kld=log.kld,
        wall_s=wall, created=_util.now_iso(),
    )
    return result, out


def _default_threads() -> int:
    return default_threads()


# ---------------------------------------------------------------- the entry point


def _ctrl_c_as_interrupted(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Ctrl-C becomes ``Interrupted``: the bundled evaluator runs in this process, and typer
    (0.29) turns a bare KeyboardInterrupt into a silent exit status 0."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise Interrupted("interrupted",
                              hint="partial base logits were removed; run the same command again") from None

    return wrapper


@_ctrl_c_as_interrupted
def evaluate(
    model: str | Path, *, engine: EvalEngine = "bundled", corpus: str | Path, ctx: int = 512,
    chunks: int | None = None, base: str | Path | None = None, base_logits: str | Path | None = None,
    kld: bool | None = None, threads: int | None = None, batch: int | None = None, ubatch: int | None = None,
    binary: str | None = None, bin_dir: str | None = None, cache_dir: str | Path | None = None,
    timeout: float | None = None,
) -> EvalResult:
    """PPL of ``model`` over ``corpus``; with a ``base`` model (or ``base_logits`` file) also KLD against it.

    The base's logits are computed once per (base sha256, corpus sha256, ctx, chunks, engine)
    and cached; a cached or user-given base whose key does not match is refused.
    """
    if ctx < 4 or ctx % 2:
        raise InputError(f"--ctx must be an even number of at least 4, not {ctx}", where="--ctx")
    model_p = _util.check_model_file(model)
    _, corpus_sha = _util.read_corpus(corpus)
    want_kld = kld if kld is not None else (base is not None or base_logits is not None)
    bin_path: str | None = None
    version: str | None = None
    if engine != "bundled":
        bin_path, version = find_perplexity(engine, binary=binary, bin_dir=bin_dir)

    if not want_kld:
        if engine == "bundled":
            return perplexity_bundled(model_p, corpus=corpus, ctx=ctx, chunks=chunks, threads=threads,
                                      batch=batch,
                                      ubatch=ubatch)
        assert bin_path is not None
        return perplexity_binary(model_p, binary=bin_path, engine=engine, corpus=corpus, ctx=ctx,
                                 chunks=chunks,
                                 threads=threads, batch=batch, ubatch=ubatch, engine_version=version,
                                 timeout=timeout)[0]

    if base_logits is not None:
        logits_p = Path(base_logits)
        if not logits_p.is_file():
            raise InputError("base logits file not found", where=str(logits_p))
        key_found = _util.read_key(logits_p)
        if base is not None:
            base_p = _util.check_model_file(base)
            expected = _util.base_key(model_sha256=_util.sha256_file(base_p), corpus_sha256=corpus_sha,
                                      ctx=ctx,
                                      chunks=_chunks_key(chunks), engine=engine)
            _util.verify_key(logits_p, expected)
        elif key_found is not None:
            expected = dict(key_found)
            expected.update(corpus_sha256=corpus_sha, ctx=ctx, chunks=_chunks_key(chunks))
            _util.verify_key(logits_p, expected)
        base_sha = str(key_found.get("model_sha256")) if key_found else None
        base_name = str(base) if base else None
    else:
        if base is None:
            raise InputError("KLD needs a base model", where="--kld",
                             hint="pass --base FILE.gguf (the F16/BF16/Q8_0 reference)")
        base_p = _util.check_model_file(base)
        base_sha = _util.sha256_file(base_p)
        base_name = str(base_p)
        logits_p = ensure_base_logits(base_p, engine=engine, corpus=corpus, corpus_sha256=corpus_sha, ctx=ctx,
                                      chunks=chunks, threads=threads, batch=batch, ubatch=ubatch,
                                      binary=bin_path, version=version, cache_dir=cache_dir, timeout=timeout)
    n_ctx_file, _, _ = _util.read_logits_header(logits_p)
    if n_ctx_file != ctx:
        raise EvalError(f"base logits were computed for another model/corpus (ctx {n_ctx_file}, not {ctx})",
                        where=str(logits_p))

    if engine == "bundled":
        return kld_bundled(model_p, base_logits=logits_p, threads=threads, batch=batch, ubatch=ubatch,
                           corpus=corpus,
                           corpus_sha256=corpus_sha, base_sha256=base_sha, base_model=base_name)
    assert bin_path is not None
    res, _ = perplexity_binary(model_p, binary=bin_path, engine=engine, corpus=None, ctx=ctx, chunks=None,
                               threads=threads, batch=batch, ubatch=ubatch, kl_divergence_base=logits_p,
                               kl_divergence=True, engine_version=version, timeout=timeout)
    return res.model_copy(update={"corpus": str(corpus), "corpus_sha256": corpus_sha, "base": base_name,
                                  "base_sha256": base_sha})


def _chunks_key(chunks: int | None) -> int:
    return -1 if chunks is None or chunks <= 0 else int(chunks)


def ensure_base_logits(
    base: Path, *, engine: EvalEngine, corpus: str | Path, corpus_sha256: str, ctx: int, chunks: int | None,
    threads: int | None = None, batch: int | None = None, ubatch: int | None = None,
    binary: str | None = None,
    version: str | None = None, cache_dir: str | Path | None = None, timeout: float | None = None,
) -> Path:
    """The cached base-logits file for this key, computed now if absent (and its base PPL recorded)."""
    key = _util.base_key(model_sha256=_util.sha256_file(base), corpus_sha256=corpus_sha256, ctx=ctx,
                         chunks=_chunks_key(chunks), engine=engine)
    root = Path(cache_dir) if cache_dir else constants.CACHE_DIR / "kld-base"
    root.mkdir(parents=True, exist_ok=True)
    path = _util.base_cache_path(root, key)
    if path.is_file():
        try:
            _util.read_logits_header(path)
            _util.verify_key(path, key)
            return path
        except EvalError:
            path.unlink()  # a stale or broken cache entry is recomputed, never compared against
    if engine == "bundled":
        res = perplexity_bundled(base, corpus=corpus, ctx=ctx, chunks=chunks, threads=threads, batch=batch,
                                 ubatch=ubatch, write_base=path, base_key=key)
    else:
        assert binary is not None
        tmp = path.with_name(path.name + ".partial")
        try:
            res, _ = perplexity_binary(base, binary=binary, engine=engine, corpus=corpus, ctx=ctx,
                                       chunks=chunks,
                                       threads=threads, batch=batch, ubatch=ubatch, kl_divergence_base=tmp,
                                       engine_version=version, timeout=timeout)
            _util.read_logits_header(tmp)
            _util.write_key(path, key)  # before the rename: final logits always carry their key
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    _write_base_result(path, res)
    return path


def _write_base_result(path: Path, res: EvalResult) -> None:
    key = _util.read_key(path) or {}
    key["base_ppl"] = {"ppl": res.ppl, "ppl_err": res.ppl_err, "engine": res.engine, "chunks": res.chunks}
    _util.write_key(path, key)


def record_in_manifest(manifest: str | Path, result: EvalResult, *, wait: bool = False) -> Manifest:
    """Add ``result`` to the variant's manifest ``eval`` section (latest per engine+method, plus history).

    The read-modify-write of the manifest holds its folder's lock: a build (or another evaluation)
    of that folder is never interleaved with it; ``wait`` queues behind one instead of stopping.
    """
    with folder_lock(Path(manifest).parent, purpose="quantforge eval", wait=wait):
        m = read_manifest(manifest)
        section: dict[str, Any] = dict(m.eval or {})
        runs = list(section.get("runs", []))
        data = result.model_dump(mode="json")
        runs.append(data)
        section["runs"] = runs
        section["latest"] = data
        return update_manifest(manifest, eval=section)


def read_results(paths: Sequence[str | Path]) -> list[EvalResult]:
    """The evaluations in ``paths``: JSON of ``quantforge eval --json`` (one result or a list) or a
    variant's manifest (its latest evaluation), in order. InputError naming the file and field."""
    out: list[EvalResult] = []
    for r in paths:
        p = Path(r)
        if not p.exists() and not p.is_symlink():
            raise InputError("result file not found", where=str(r))
        data: Any = read_input_json(p, what="result file")
        if isinstance(data, dict) and isinstance(data.get("eval"), dict):  # a manifest
            data = data["eval"].get("latest")
        for d in data if isinstance(data, list) else [data]:
            try:
                out.append(EvalResult.model_validate(d))
            except ValidationError as exc:
                first = exc.errors()[0]
                raise InputError(f"not an evaluation result: {'.'.join(map(str, first['loc'])) or 'value'}: "
                                 f"{first['msg']}", where=str(r),
                                 hint="give the JSON of quantforge eval or a manifest") from None
    return out
