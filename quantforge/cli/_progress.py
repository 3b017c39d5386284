"""tqdm progress bars for long steps (stderr, only on a terminal unless asked)."""

from __future__ import annotations

import sys
from typing import Any


class Bars:
    """tqdm bars driven by the runner's progress callbacks (stderr, only on a terminal)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.key: tuple[str, int] | None = None

    def __call__(self, kind: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # startup

        if self.key != (kind, total) or self.bar is None or done < self.bar.n:
            self.close()
            self.bar = tqdm(
                total=total,
                desc=kind,
                unit="tensor" if kind == "quantize" else "chunk",
                file=sys.stderr,
                leave=False,
            )
            self.key = (kind, total)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty()
