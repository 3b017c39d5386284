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


class TaskBars:
    """The cluster's progress view: one bar per task (``variant @ node: kind``), redrawn in place."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}
        self.keys: dict[str, tuple[str, str, int]] = {}

    def __call__(self, task: str, node: str, kind: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # startup

        bar = self.bars.get(task)
        if bar is None or self.keys.get(task) != (node, kind, total) or done < bar.n:
            if bar is not None:
                bar.reset(total=total)
            else:
                bar = tqdm(total=total, file=sys.stderr, leave=False, position=len(self.bars),
                           dynamic_ncols=True)
                self.bars[task] = bar
            bar.set_description_str(f"{task} @ {node}: {kind}")
            self.keys[task] = (node, kind, total)
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
        self.keys.clear()


def progress_enabled(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return sys.stderr.isatty()
