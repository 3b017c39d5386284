"""Run ``quantforge`` with a fault injected at one file operation (fault injection, not a double).

    python -m support.faultpoint KIND SUFFIX [COUNT] -- ARGS...

The COUNT-th (default first) ``os.replace(src, dst)`` whose destination ends with ``SUFFIX``
does not happen; instead, according to KIND:

* ``sigkill``: the process (and only it) is killed at that moment, as by ``kill -9``;
* ``sigint``: a real SIGINT is delivered to the process at that moment (what Ctrl-C does);
* ``raise-sigint``: ``KeyboardInterrupt`` is raised right there, where no signal mask can defer it;
* ``enospc``: the call fails with ``OSError(ENOSPC)``, as on a full disk.

Everything else is the real program: the real ``llama-quantize``, the real files.
"""

from __future__ import annotations

import errno
import os
import signal
import sys


def main() -> int:
    args = sys.argv[1:]
    sep = args.index("--")
    kind, suffix, *rest = args[:sep]
    count = int(rest[0]) if rest else 1
    real_replace = os.replace
    seen = [0]

    def replace(src: object, dst: object, *a: object, **k: object) -> None:
        if str(dst).endswith(suffix):
            seen[0] += 1
            if seen[0] == count:
                if kind == "sigkill":
                    os.kill(os.getpid(), signal.SIGKILL)
                if kind == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)
                    return real_replace(src, dst)  # type: ignore[arg-type]
                if kind == "raise-sigint":
                    raise KeyboardInterrupt
                if kind == "enospc":
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real_replace(src, dst, *a, **k)  # type: ignore[arg-type]

    os.replace = replace  # type: ignore[assignment]
    from quantforge.cli import main as qf_main

    return qf_main(args[sep + 1 :])


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
