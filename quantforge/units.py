"""Byte sizes, read and written in one place: ``parse_size``, ``human_bytes``, ``exact_size``.

Binary units (``GiB``) are powers of 1024, decimal ones (``GB``) powers of 1000, as the Hub,
``llama-gguf-split`` and hardware data sheets use them.
"""

from __future__ import annotations

import re

_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
# number, unit prefix, "i" for binary, the "B", an optional "/s" (bandwidths in targets).
_SIZE_RE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*(/s)?\s*", re.IGNORECASE)


def parse_size(value: object, *, bare: bool = False, rate: bool = False) -> int:
    """Bytes of ``"24 GiB"`` (binary), ``"24 GB"`` (decimal) or an int (taken as bytes).

    Strings must name their unit with its ``B`` unless ``bare`` (command-line flags: ``"50G"`` is
    50 GB, ``"123"`` is 123 bytes). ``rate`` accepts a ``/s`` suffix (``"25 GB/s"``).
    Raises ``ValueError`` with the accepted forms; callers turn it into their own error.
    """
    if isinstance(value, bool):
        raise ValueError(f'expected a size such as "24 GiB", got {value!r}')
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f'expected a size such as "24 GiB", got {value!r}')
    m = _SIZE_RE.fullmatch(value)
    ok = m is not None and (rate or not m.group(5))
    if m is not None and not bare:
        ok = ok and bool(m.group(4))  # an explicit unit, "B" included: "24" or "24 G" is ambiguous
    if m is None or not ok:
        example = '"24 GiB" or "25 GB/s"' if rate else ('50G, 40MiB or 500000000' if bare else '"24 GiB"')
        raise ValueError(f"cannot read {value!r} as a size; write e.g. {example}")
    number, prefix, binary, _, _ = m.groups()
    base = 1024 if binary else 1000
    return int(round(float(number) * base ** _POWER[prefix.lower()]))


def human_bytes(n: float) -> str:
    """Binary units as publishers print them: ``1.61 GiB`` (plain bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover - the loop returns at TiB


def exact_size(n: int) -> str | None:
    """``n`` in the largest binary unit that divides it (``"24 GiB"``), or None if none does.

    Written sizes read back to the same number of bytes with ``parse_size``.
    """
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n % f == 0:
            return f"{n // f} {unit}"
    return None
