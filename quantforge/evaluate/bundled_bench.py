"""A ``llama-sweep-bench`` for the bundled engine: ``python -m quantforge.evaluate.bundled_bench``.

The bundled ik_llama.cpp ships ``libllama`` but no ``llama-sweep-bench``. This command runs the
bundled sweep (sweep-bench's method through ``libllama``, :func:`quantforge.evaluate.bundled.sweep_bundled`)
in its own process and prints what sweep-bench prints — the version line, the ``system_info``
line, the ``main: n_kv_max = …`` settings line and the PP/TG/N_KV table — so every reader,
A/B run and bisect treats it like the real tool. ``--lib PATH`` loads another ``libllama.so``
(an ik_llama.cpp build's), which is how two builds of the library are compared: one process each.

    python -m quantforge.evaluate.bundled_bench -m model.gguf -c 512 -ub 128 -n 16 -t 2
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path

from quantforge.errors import QuantforgeError
from quantforge.evaluate.bundled import _Lib, default_threads, sweep_bundled


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bundled_bench: error: {message} (see --help)\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m quantforge.evaluate.bundled_bench",
                description="llama-sweep-bench's table through the bundled (or a given) ik libllama.")
    p.add_argument("-m", "--model", help="GGUF model")
    p.add_argument("-c", "--ctx-size", type=int, default=512,
                   help="context: the sweep goes up to it (default 512)")
    p.add_argument("-ub", "--ubatch-size", type=int, default=128,
                   help="u-batch: PP size and N_KV step (default 128)")
    p.add_argument("-b", "--batch-size", type=int, default=None,
                   help="accepted for sweep-bench compatibility")
    p.add_argument("-n", "--n-predict", type=int, default=None, help="TG tokens per row (default ub/4)")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="on",
                   help="flash attention on|off (default on)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random tokens")
    p.add_argument("--lib", help="libllama.so to load instead of the bundled one")
    p.add_argument("-o", "--output-format", choices=("md", "jsonl"), default="md")
    p.add_argument("--version", action="store_true", help="print the library version and exit")
    return p


def _lib_version(lib: str | None) -> str:
    try:
        pkg = f"ik-llama-cpp-python {importlib.metadata.version('ik-llama-cpp-python')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - the package is a dependency
        pkg = "ik-llama-cpp-python"
    path = Path(lib) if lib else _bundled_lib()
    if path is None or not path.is_file():
        return pkg
    h = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{pkg} ({'libllama ' + str(path) if lib else 'bundled libllama'} sha256 {h})"


def _bundled_lib() -> Path | None:
    try:
        spec = importlib.util.find_spec("ik_llama_cpp")
    except (ImportError, ValueError):  # pragma: no cover
        return None
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / "lib" / "libllama.so"
    return p if p.is_file() else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.lib:
        lib = Path(args.lib)
        if lib.is_dir():
            lib = lib / "libllama.so"
        if not lib.is_file():
            sys.stderr.write(f"bundled_bench: error: {lib}: no libllama.so there (pass the library or its "
                             "folder)\n")
            return 2
        # the bindings read this once, when they are first imported (below, inside the sweep)
        os.environ["IK_LLAMA_CPP_LIB_PATH"] = str(lib.resolve())
        args.lib = str(lib.resolve())
    version = _lib_version(args.lib)
    if args.version:
        sys.stdout.write(f"version: {version}\nbuilt with the ik-llama-cpp-python bindings\n")
        return 0
    if not args.model:
        sys.stderr.write("bundled_bench: error: -m MODEL is required\n")
        return 2

    ub = args.ubatch_size
    tg = args.n_predict if args.n_predict and args.n_predict > 0 else max(ub // 4, 1)
    fa = str(args.flash_attn).lower() in ("on", "1", "true")
    threads = args.threads or default_threads()
    try:
        rows = sweep_bundled(args.model, ctx=args.ctx_size, ubatch=ub, tg=tg, threads=threads, seed=args.seed,
                             flash_attn=fa)
        lib_h = _Lib.get().lib
        fn = lib_h.llama_print_system_info
        fn.restype = ctypes.c_char_p
        fn.argtypes = []
        system_info = (fn() or b"").decode(errors="replace").strip()
    except QuantforgeError as exc:
        sys.stderr.write(f"bundled_bench: error: {exc.one_line()}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    out = sys.stdout
    settings = (f"n_kv_max = {args.ctx_size}, n_batch = {ub}, n_ubatch = {ub}, flash_attn = {int(fa)}, "
                f"n_gpu_layers = 0, n_threads = {threads}, n_threads_batch = {threads}")
    if args.output_format == "jsonl":
        for r in rows:
            out.write(json.dumps({"n_kv_max": args.ctx_size, "n_batch": ub, "n_ubatch": ub,
                                  "flash_attn": int(fa),
                                  "n_gpu_layers": 0, "n_threads": threads, "n_threads_batch": threads,
                                  "pp": r.pp,
                                  "tg": r.tg, "n_kv": r.n_kv, "t_pp": r.t_pp, "speed_pp": r.s_pp,
                                  "t_tg": r.t_tg,
                                  "speed_tg": r.s_tg}) + "\n")
        return 0
    out.write(f"version: {version}\nsystem_info: n_threads = {threads} | {system_info}\n\nmain: "
              f"{settings}\n\n")
    out.write(f"|{'PP':>6} | {'TG':>6} | {'N_KV':>6} | {'T_PP s':>8} | {'S_PP t/s':>8} | {'T_TG s':>8} | "
              f"{'S_TG t/s':>8} |\n")
    out.write(f"|{'-' * 7}|{'-' * 8}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|\n")
    for r in rows:
        out.write(f"|{r.pp:6d} | {r.tg:6d} | {r.n_kv:6d} | {r.t_pp:8.3f} | {r.s_pp:8.2f} | {r.t_tg:8.3f} | "
                  f"{r.s_tg:8.2f} |\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
