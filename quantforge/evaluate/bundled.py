"""PPL/KLD and speed sweeps through the bundled ik_llama.cpp ``libllama`` (ctypes), no llama.cpp build needed.

The method is ``llama-perplexity``'s, step for step (ik ``examples/perplexity/perplexity.cpp``):
the whole corpus is tokenised once with the model's special-token rule; it is cut into chunks
of ``ctx`` tokens; the first token of a chunk becomes BOS when the model adds one; each chunk
is decoded from an empty KV cache and only the second half is scored (``first = ctx/2``,
``ctx - 1 - first`` predictions); the log-softmax is taken in float with a double sum;
PPL = exp(mean NLL) and its error is ``ppl * sqrt(var(NLL)/(count-1))``. KLD reads and writes
the ``--kl-divergence-base`` file format (uint16-compressed log-probabilities), so bases can
be shared with the binaries. The per-token work is numpy, vectorised over a whole chunk.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quantforge.errors import EvalError, ToolError
from quantforge.evaluate import _util
from quantforge.evaluate.models import EvalResult, KLDStats, SweepRow

# ---------------------------------------------------------------- the library


class _Lib:
    """ctypes declarations of the few ik libllama functions we use (layouts from the package's bindings)."""

    _inst: _Lib | None = None

    def __init__(self) -> None:
        try:
            from ik_llama_cpp import _ctypes_api as api  # optional
        except (ImportError, OSError) as exc:  # the .so may be missing or not loadable on this machine
            raise ToolError(
                f"the bundled ik libllama cannot be loaded: {exc}",
                hint="pip install ik-llama-cpp-python, or use --engine ik|mainline with your own binaries",
            ) from exc
        self.api = api
        lib = api._lib
        self.lib = lib
        self.path = getattr(lib, "_name", "libllama")
        c = ctypes
        sigs: dict[str, tuple[list[Any], Any]] = {
            "llama_n_vocab": ([c.c_void_p], c.c_int32),
            "llama_add_bos_token": ([c.c_void_p], c.c_int32),
            "llama_token_bos": ([c.c_void_p], c.c_int32),
            "llama_get_logits": ([c.c_void_p], c.POINTER(c.c_float)),
            "llama_get_logits_ith": ([c.c_void_p, c.c_int32], c.POINTER(c.c_float)),
            "llama_tokenize": (
                [c.c_void_p, c.c_char_p, c.c_int32, c.POINTER(c.c_int32), c.c_int32, c.c_bool, c.c_bool],
                c.c_int32,
            ),
            "llama_kv_cache_clear": ([c.c_void_p], None),
            "llama_kv_cache_seq_rm": ([c.c_void_p, c.c_int32, c.c_int32, c.c_int32], c.c_bool),
            "llama_synchronize": ([c.c_void_p], None),
            "llama_model_size": ([c.c_void_p], c.c_uint64),
            "llama_model_n_params": ([c.c_void_p], c.c_uint64),
            "llama_vocab_type": ([c.c_void_p], c.c_int),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name, None)
            if fn is None:
                continue
            fn.argtypes = args
            fn.restype = res
        # Silence llama/ggml logging: library output must not reach the user's terminal.
        self._log_cb = c.CFUNCTYPE(None, c.c_int, c.c_char_p, c.c_void_p)(lambda level, text, ud: None)
        if hasattr(lib, "llama_log_set"):
            lib.llama_log_set.argtypes = [c.c_void_p, c.c_void_p]
            lib.llama_log_set.restype = None
            lib.llama_log_set(c.cast(self._log_cb, c.c_void_p), None)
        api.llama_backend_init()

    @classmethod
    def get(cls) -> _Lib:
        if cls._inst is None:
            cls._inst = _Lib()
        return cls._inst


def bundled_version() -> str:
    try:
        import ik_llama_cpp  # startup

        return f"ik-llama-cpp-python {ik_llama_cpp.__version__}"
    except Exception:  # noqa: BLE001 - version is informative only
        return "ik-llama-cpp-python"


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class BundledModel:
    """One model and one context in the bundled libllama, with numpy access to the logits."""

    def __init__(self, path: str | Path, *, n_ctx: int, n_batch: int | None = None,
                 n_ubatch: int | None = None,
                 threads: int | None = None, flash_attn: bool = True) -> None:
        self.lib = _Lib.get()
        api = self.lib.api
        self.path = str(_util.check_model_file(path))
        mp = api.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = True
        self.model = api.llama_model_load_from_file(self.path.encode(), mp)
        if not self.model:
            raise EvalError("the bundled libllama could not load the model", where=self.path,
                            hint="is it a GGUF of an architecture and types ik_llama.cpp supports?")
        self.n_ctx = n_ctx
        self.n_batch = min(n_batch or n_ctx, n_ctx)
        self.n_ubatch = min(n_ubatch or 512, self.n_batch)
        self.threads = threads or default_threads()
        cp = api.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = self.n_batch
        cp.n_ubatch = self.n_ubatch
        cp.n_seq_max = 1
        cp.n_threads = self.threads
        cp.n_threads_batch = self.threads
        cp.flash_attn = flash_attn  # ik's tools default to flash attention on; keep the same numerics
        self.ctx = api.llama_init_from_model(self.model, cp)
        if not self.ctx:
            api.llama_free_model(self.model)
            raise EvalError(f"the bundled libllama could not create a context of {n_ctx} tokens",
                            where=self.path)
        lib = self.lib.lib
        self.n_vocab = int(lib.llama_n_vocab(self.model))
        add_bos = int(lib.llama_add_bos_token(self.model))
        # common's llama_should_add_bos_token: the GGUF flag, else "SPM vocabularies add BOS"
        self.add_bos = bool(add_bos) if add_bos != -1 else False
        self.bos = int(lib.llama_token_bos(self.model))
        self.batch = api.llama_batch_init(self.n_batch, 0, 1)
        self._tok = np.ctypeslib.as_array(self.batch.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(self.n_batch,))
        self._nseq = np.ctypeslib.as_array(self.batch.n_seq_id, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(self.batch.logits, shape=(self.n_batch,))
        for i in range(self.n_batch):
            self.batch.seq_id[i][0] = 0
        self._nseq[:] = 1

    def close(self) -> None:
        api = self.lib.api
        if getattr(self, "batch", None) is not None:
            api.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            api.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            api.llama_free_model(self.model)
            self.model = None

    def __enter__(self) -> BundledModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> np.ndarray:
        data = text.encode("utf-8")
        cap = len(data) + 2
        buf = (ctypes.c_int32 * cap)()
        n = self.lib.lib.llama_tokenize(self.model, data, len(data), buf, cap, True, False)
        if n < 0:
            cap = -n
            buf = (ctypes.c_int32 * cap)()
            n = self.lib.lib.llama_tokenize(self.model, data, len(data), buf, cap, True, False)
        out: np.ndarray = np.ctypeslib.as_array(buf)[:n].astype(np.int32)
        return out

    def decode(self, tokens: np.ndarray, pos0: int, *, outputs: np.ndarray | None = None) -> None:
        n = len(tokens)
        self._tok[:n] = tokens
        self._pos[:n] = np.arange(pos0, pos0 + n, dtype=np.int32)
        if outputs is None:
            self._out[:n] = 0
            self._out[n - 1] = 1
        else:
            self._out[:n] = outputs
        self.batch.n_tokens = n
        rc = self.lib.api.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise EvalError(f"llama_decode failed (status {rc})", where=self.path)

    def chunk_logits(self, chunk: np.ndarray, first: int) -> np.ndarray:
        """Logits (float32, ``[len(chunk)-first, n_vocab]``) of positions ``first..`` of one chunk."""
        self.lib.lib.llama_kv_cache_clear(self.ctx)
        n = len(chunk)
        parts: list[np.ndarray] = []
        for start in range(0, n, self.n_batch):
            seg = chunk[start:start + self.n_batch]
            pos = np.arange(start, start + len(seg))
            want = (pos >= first).astype(np.int8)
            self.decode(seg, start, outputs=want)
            n_out = int(want.sum())
            if n_out:
                ptr = self.lib.lib.llama_get_logits_ith(self.ctx, int(np.argmax(want)))
                arr = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab)
                parts.append(arr if len(parts) == 0 and start + len(seg) >= n else arr.copy())
        result: np.ndarray = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return result


# ---------------------------------------------------------------- per-chunk maths (vectorised)


def _log_sum_exp(lg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mx = lg.max(axis=1)
    tmp = lg - mx[:, None]
    np.exp(tmp, out=tmp)
    se = tmp.sum(axis=1, dtype=np.float64)  # float terms, double sum, as perplexity.cpp
    return mx, se


def nll_rows(lg: np.ndarray, targets: np.ndarray) -> np.ndarray:
    mx, se = _log_sum_exp(lg)
    picked = lg[np.arange(len(targets)), targets]
    out: np.ndarray = (mx.astype(np.float64) - picked.astype(np.float64)) + np.log(se)
    return out


def compress_rows(lg: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NLL per row and the uint16 rows of a base-logits file (perplexity.cpp's ``log_softmax`` with
    ``log_prob``)."""
    t, v = lg.shape
    mx, se = _log_sum_exp(lg)
    mn = lg.min(axis=1)
    min_logit = np.maximum(mn, mx - np.float32(24)).astype(np.float32)
    lse = np.log(se).astype(np.float32)
    min_log_prob = (min_logit - mx - lse).astype(np.float32)
    scale = ((mx - min_logit) / np.float32(65535)).astype(np.float32)
    out = np.zeros((t, _util.logits_row_u16(v)), dtype=np.uint16)
    hdr = out[:, :4].view(np.float32)
    hdr[:, 0] = scale
    hdr[:, 1] = min_log_prob
    with np.errstate(divide="ignore"):
        inv = np.where(scale > 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    q = (lg - min_logit[:, None]) * inv[:, None]
    np.rint(q, out=q)
    q[lg <= min_logit[:, None]] = 0
    out[:, 4:4 + v] = q.astype(np.uint16)
    nll = (mx.astype(np.float64) + lse.astype(np.float64)) - lg[np.arange(t), targets].astype(np.float64)
    return nll, out


@dataclass
class _KLDAcc:
    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    max_p_diff: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list[np.ndarray] = field(default_factory=list)
    p_diff_values: list[np.ndarray] = field(default_factory=list)


def kld_rows(lg: np.ndarray, base_rows: np.ndarray, targets: np.ndarray, acc: _KLDAcc) -> None:
    """perplexity.cpp's KLD ``log_softmax`` for a whole chunk at once, accumulated into ``acc``."""
    t, v = lg.shape
    ar = np.arange(t)
    imax = lg.argmax(axis=1)
    mx, se = _log_sum_exp(lg)
    lse = np.log(se).astype(np.float32)
    hdr = base_rows[:, :4].view(np.float32)
    scale, min_lp = hdr[:, 0].copy(), hdr[:, 1].copy()
    q = base_rows[:, 4:4 + v]
    nll = (mx + lse - lg[ar, targets]).astype(np.float32)
    nll_base = (-(scale * q[ar, targets].astype(np.float32) + min_lp)).astype(np.float32)
    p_log_base = q.astype(np.float32)
    p_log_base *= scale[:, None]
    p_log_base += min_lp[:, None]
    imax_base = p_log_base.argmax(axis=1)
    mlse = (mx + lse).astype(np.float32)
    # sum over the vocabulary of p_base * (log p_base - log p), for p_base above e^-16 (as the tool)
    term = p_log_base - lg
    term += mlse[:, None]
    pb = np.exp(p_log_base)
    pb[p_log_base <= np.float32(-16)] = 0
    term *= pb
    kld = term.sum(axis=1, dtype=np.float64)
    p_diff = (np.exp(-nll) - np.exp(-nll_base)).astype(np.float32)
    nll64, nllb64, pd64 = nll.astype(np.float64), nll_base.astype(np.float64), p_diff.astype(np.float64)
    acc.sum_nll += float(nll64.sum())
    acc.sum_nll2 += float((nll64 * nll64).sum())
    acc.sum_nll_base += float(nllb64.sum())
    acc.sum_nll_base2 += float((nllb64 * nllb64).sum())
    acc.sum_nll_nll_base += float((nll64 * nllb64).sum())
    acc.sum_kld += float(kld.sum())
    acc.sum_kld2 += float((kld * kld).sum())
    acc.sum_p_diff += float(pd64.sum())
    acc.sum_p_diff2 += float((pd64 * pd64).sum())
    acc.sum_p_diff4 += float((pd64**4).sum())
    acc.max_p_diff = max(acc.max_p_diff, float(np.abs(p_diff).max()))
    acc.n_same_top += int((imax == imax_base).sum())
    acc.count += t
    acc.kld_values.append(kld.astype(np.float32))
    acc.p_diff_values.append(p_diff)


def _mean_unc(s: float, s2: float, n: int) -> tuple[float, float]:
    if n < 1:
        return 0.0, 0.0
    f = s / n
    df = s2 / n - f * f
    return f, (float(np.sqrt(df / (n - 1))) if df > 0 and n > 10 else 0.0)


def _percentile(values: np.ndarray, fraction: float) -> float:
    f32 = np.float32
    if fraction <= 0:
        return float(values[0])
    if fraction >= 1:
        return float(values[-1])
    p = f32(fraction) * f32(len(values) - 1)
    ip = int(p)
    p = f32(p - f32(ip))
    return float((f32(1) - p) * values[ip] + p * values[min(ip + 1, len(values) - 1)])


def _median(values: np.ndarray) -> float:
    n = len(values)
    return float(values[n // 2]) if n % 2 else float(np.float32(0.5) * (values[n // 2] + values[n // 2 - 1]))


_KLD_PCTS = {"99.9": 0.999, "99.0": 0.990, "95.0": 0.950, "90.0": 0.900, "10.0": 0.100, "5.0": 0.050,
             "1.0": 0.010, "0.1": 0.001}
_DP_PCTS = {"99.9": 0.999, "99.0": 0.990, "95.0": 0.950, "90.0": 0.900, "75.0": 0.750, "25.0": 0.250,
            "10.0": 0.100, "5.0": 0.050, "1.0": 0.010, "0.1": 0.001}


def kld_stats(acc: _KLDAcc) -> KLDStats:
    """The final statistics block of a KLD run, computed like perplexity.cpp prints it."""
    n = acc.count
    lp, lp_unc = _mean_unc(acc.sum_nll, acc.sum_nll2, n)
    lb, lb_unc = _mean_unc(acc.sum_nll_base, acc.sum_nll_base2, n)
    mean_cross = (acc.sum_nll / n) * (acc.sum_nll_base / n)
    cov = (acc.sum_nll_nll_base / n - mean_cross) / (n - 1) if n >= 10 else 0.0
    ppl, ppl_b = float(np.exp(lp)), float(np.exp(lb))
    ratio_unc = float(np.sqrt(max(lp_unc**2 + lb_unc**2 - 2 * cov, 0.0)))
    ppl_unc, ppl_b_unc = ppl * lp_unc, ppl_b * lb_unc
    kv = np.sort(np.concatenate(acc.kld_values))
    dv = np.sort(np.concatenate(acc.p_diff_values))
    kmean, kunc = _mean_unc(acc.sum_kld, acc.sum_kld2, n)
    dmean, dunc = _mean_unc(acc.sum_p_diff, acc.sum_p_diff2, n)
    mse, mse_unc = _mean_unc(acc.sum_p_diff2, acc.sum_p_diff4, n)
    rms = float(np.sqrt(mse))
    top = acc.n_same_top / n
    return KLDStats(
        ppl=ppl, ppl_err=ppl_unc, ppl_base=ppl_b, ppl_base_err=ppl_b_unc,
        cor_ln_ppl_pct=100.0 * cov / (lp_unc * lb_unc) if lp_unc and lb_unc else 0.0,
        ln_ppl_ratio=lp - lb, ln_ppl_ratio_err=ratio_unc, ppl_ratio=float(np.exp(lp - lb)),
        ppl_ratio_err=float(np.exp(lp - lb)) * ratio_unc, ppl_diff=ppl - ppl_b,
        ppl_diff_err=float(np.sqrt(max(ppl_unc**2 + ppl_b_unc**2 - 2 * ppl * ppl_b * cov, 0.0))),
        mean=kmean, mean_err=kunc, median=_median(kv), maximum=float(kv[-1]), minimum=float(kv[0]),
        percentiles={k: _percentile(kv, f) for k, f in _KLD_PCTS.items()},
        dp_mean_pct=100 * dmean, dp_mean_pct_err=100 * dunc, dp_median_pct=100 * _median(dv),
        dp_max_pct=100 * float(dv[-1]), dp_min_pct=100 * float(dv[0]),
        dp_percentiles_pct={k: 100 * _percentile(dv, f) for k, f in _DP_PCTS.items()},
        rms_dp_pct=100 * rms, rms_dp_pct_err=100 * (0.5 / rms * mse_unc if rms else 0.0),
        same_top_pct=100 * top, same_top_pct_err=100 * float(np.sqrt(top * (1 - top) / (n - 1))),
    )


# ---------------------------------------------------------------- runs

Progress = Callable[[int, int], None]


def _chunks(tokens: np.ndarray, ctx: int, chunks: int | None, corpus: str | Path | None) -> int:
    if len(tokens) < 2 * ctx:
        raise _util.too_short(len(tokens), ctx, corpus)
    n_max = len(tokens) // ctx
    return n_max if chunks is None or chunks < 0 else min(chunks, n_max)


def perplexity_bundled(
    model: str | Path, *, corpus: str | Path, ctx: int = 512, chunks: int | None = None,
    threads: int | None = None, batch: int | None = None, ubatch: int | None = None,
    write_base: str | Path | None = None, base_key: dict[str, object] | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """PPL of ``model`` over ``corpus``; with ``write_base`` also writes a ``--kl-divergence-base`` file."""
    t0 = time.perf_counter()
    text, corpus_sha = _util.read_corpus(corpus)
    model_p = _util.check_model_file(model)
    model_sha = _util.sha256_background(model_p)
    first = ctx // 2
    with BundledModel(model_p, n_ctx=ctx, n_batch=batch or ctx, n_ubatch=ubatch, threads=threads) as m:
        tokens = m.tokenize(text)
        n_chunk = _chunks(tokens, ctx, chunks, corpus)
        out = None
        tmp = None
        if write_base is not None:
            tmp = Path(str(write_base) + ".partial")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            out = open(tmp, "wb")
            out.write(_util.LOGITS_MAGIC)
            out.write(np.array([ctx, m.n_vocab, n_chunk], dtype=np.int32).tobytes())
            out.write(tokens[: n_chunk * ctx].astype(np.int32).tobytes())
        try:
            nll = 0.0
            nll2 = 0.0
            count = 0
            running: list[float] = []
            for i in range(n_chunk):
                chunk = tokens[i * ctx:(i + 1) * ctx].copy()
                if m.add_bos:
                    chunk[0] = m.bos
                lg = m.chunk_logits(chunk, first)[: ctx - 1 - first]
                targets = tokens[i * ctx + first + 1:(i + 1) * ctx]
                if out is not None:
                    v, rows = compress_rows(lg, targets)
                    out.write(rows.tobytes())
                else:
                    v = nll_rows(lg, targets)
                nll += float(v.sum())
                nll2 += float((v * v).sum())
                count += len(v)
                running.append(float(np.exp(nll / count)))
                if progress:
                    progress(i + 1, n_chunk)
            if out is not None:
                out.close()
                out = None
                assert tmp is not None
                # The key first: logits under their final name always carry the key they were made for.
                if base_key is not None:
                    _util.write_key(Path(write_base), base_key)  # type: ignore[arg-type]
                os.replace(tmp, write_base)  # type: ignore[arg-type]
        finally:
            if out is not None:
                out.close()
            if tmp is not None and tmp.exists():
                tmp.unlink()
        mean = nll / count
        var = nll2 / count - mean * mean
        ppl = float(np.exp(mean))
        err = float(np.sqrt(var / (count - 1))) * ppl if var > 0 else 0.0
        return EvalResult(
            model=str(model_p), model_sha256=model_sha(), model_bytes=model_p.stat().st_size,
            engine="bundled", binary=str(m.lib.path), engine_commit=bundled_version(), command=None,
            corpus=str(corpus), corpus_sha256=corpus_sha, ctx=ctx, chunks=n_chunk, n_tokens_scored=count,
            batch=m.n_batch, ubatch=m.n_ubatch, threads=m.threads, ppl=ppl, ppl_err=err,
            chunk_ppl=tuple(running), wall_s=time.perf_counter() - t0, created=_util.now_iso(),
        )


def kld_bundled(
    model: str | Path, *, base_logits: str | Path, threads: int | None = None, batch: int | None = None,
    ubatch: int | None = None, corpus: str | Path | None = None, corpus_sha256: str | None = None,
    base_sha256: str | None = None, base_model: str | None = None, progress: Progress | None = None,
) -> EvalResult:
    """KLD (and PPL) of ``model`` against a ``--kl-divergence-base`` file, as ``llama-perplexity
    --kl-divergence``."""
    t0 = time.perf_counter()
    base_p = Path(base_logits)
    n_ctx, n_vocab, n_chunk = _util.read_logits_header(base_p)
    model_p = _util.check_model_file(model)
    model_sha = _util.sha256_background(model_p)
    first = n_ctx // 2
    n_scored = n_ctx - 1 - first
    row = _util.logits_row_u16(n_vocab)
    data = np.memmap(base_p, dtype=np.uint8, mode="r")
    tokens = np.frombuffer(data, dtype=np.int32, count=n_ctx * n_chunk, offset=20)
    rows_off = 20 + 4 * n_ctx * n_chunk
    with BundledModel(model_p, n_ctx=n_ctx, n_batch=batch or n_ctx, n_ubatch=ubatch, threads=threads) as m:
        if m.n_vocab != n_vocab:
            raise EvalError(
                f"base logits were computed for another model/corpus (vocabulary {n_vocab} vs {m.n_vocab})",
                where=str(base_p),
            )
        acc = _KLDAcc()
        running: list[float] = []
        for i in range(n_chunk):
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx].copy()
            if m.add_bos:
                chunk[0] = m.bos
            lg = m.chunk_logits(chunk, first)[:n_scored]
            off = rows_off + 2 * i * n_scored * row
            base_rows = np.frombuffer(data, dtype=np.uint16, count=n_scored * row,
                                      offset=off).reshape(n_scored, row)
            kld_rows(lg, base_rows, tokens[i * n_ctx + first + 1:(i + 1) * n_ctx], acc)
            running.append(float(np.exp(acc.sum_nll / acc.count)))
            if progress:
                progress(i + 1, n_chunk)
        stats = kld_stats(acc)
        return EvalResult(
            model=str(model_p), model_sha256=model_sha(), model_bytes=model_p.stat().st_size,
            engine="bundled", binary=str(m.lib.path), engine_commit=bundled_version(), command=None,
            corpus=str(corpus) if corpus else None, corpus_sha256=corpus_sha256 or "", ctx=n_ctx,
            chunks=n_chunk,
            n_tokens_scored=acc.count, batch=m.n_batch, ubatch=m.n_ubatch, threads=m.threads, ppl=stats.ppl,
            ppl_err=stats.ppl_err, chunk_ppl=tuple(running), kld=stats, base=base_model or str(base_p),
            base_sha256=base_sha256, wall_s=time.perf_counter() - t0, created=_util.now_iso(),
        )


# ---------------------------------------------------------------- CPU sweep (sweep-bench method)


def sweep_bundled(
    model: str | Path, *, ctx: int = 512, ubatch: int = 128, tg: int = 16, threads: int | None = None,
    seed: int = 1, flash_attn: bool = True,
) -> tuple[SweepRow, ...]:
    """One ``llama-sweep-bench`` pass through libllama: at N_KV = 0, ub, 2ub, …: TG of ``tg`` tokens, then PP
    of ``ub``.

    As sweep-bench: random tokens, a warm-up (one BOS token and one u-batch), the cache rewound
    to N_KV before each measurement, PP measured as one u-batch at that depth.
    """
    if ubatch > ctx:
        raise EvalError(f"u-batch {ubatch} is larger than the context {ctx}", hint="use a smaller --ubatch")
    rng = np.random.default_rng(seed)
    with BundledModel(model, n_ctx=ctx, n_batch=ubatch, n_ubatch=ubatch, threads=threads,
                      flash_attn=flash_attn) as m:
        lib = m.lib.lib
        m.decode(np.array([m.bos], dtype=np.int32), 0)
        lib.llama_kv_cache_clear(m.ctx)
        m.decode(rng.integers(0, m.n_vocab, ubatch, dtype=np.int32), 0)
        lib.llama_synchronize(m.ctx)
        lib.llama_kv_cache_clear(m.ctx)
        rows: list[SweepRow] = []
        for n_kv in range(0, ctx, ubatch):
            if n_kv + ubatch > ctx:
                break
            lib.llama_kv_cache_seq_rm(m.ctx, 0, n_kv, -1)
            t = time.perf_counter()
            for i in range(tg):
                m.decode(rng.integers(0, m.n_vocab, 1, dtype=np.int32), n_kv + i)
            lib.llama_synchronize(m.ctx)
            t_tg = time.perf_counter() - t
            if not lib.llama_kv_cache_seq_rm(m.ctx, 0, n_kv, -1):
                raise EvalError(f"failed to rewind the KV cache to {n_kv}")
            t = time.perf_counter()
            m.decode(rng.integers(0, m.n_vocab, ubatch, dtype=np.int32), n_kv)
            lib.llama_synchronize(m.ctx)
            t_pp = time.perf_counter() - t
            rows.append(SweepRow(pp=ubatch, tg=tg, n_kv=n_kv, t_pp=t_pp, s_pp=ubatch / t_pp, t_tg=t_tg,
                                 s_tg=tg / t_tg))
        return tuple(rows)
