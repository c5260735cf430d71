"""Byte sizes in and out: the one place that parses "24GiB" and prints "1.50 GiB" (no torch).

Decimal prefixes are powers of 1000 (GB, as GPU vendors write memory), binary ones powers of 1024 (GiB,
as the allocator counts). Everything membench prints is binary.
"""

from __future__ import annotations

import re

KiB, MiB, GiB, TiB = 2**10, 2**20, 2**30, 2**40

_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": KiB, "mi": MiB, "gi": GiB, "ti": TiB}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?i?b?)\s*", re.IGNORECASE)


def parse_bytes(text: str | int | float) -> int | None:
    """'24GiB', '24 GB', '8e9', '512', 1024 -> bytes; None when the text is not a size (callers say why).

    Zero is a size; a sign is not (a negative size is never meant)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int | float):
        return int(text) if text >= 0 else None
    m = _SIZE.fullmatch(str(text))
    if not m:
        return None
    return int(float(m.group(1)) * _SCALE[m.group(2).lower().rstrip("b")])


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.50 KiB'; bytes below 1 KiB as '512 B'; None -> '-'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"  # pragma: no cover (the loop returns)


def mib(n: int | float | None, digits: int = 1) -> str:
    """Bytes as a MiB figure with thousands separators, no unit (table cells whose header names it);
    None -> '-'."""
    return "-" if n is None else f"{float(n) / MiB:,.{digits}f}"


def axis_unit(max_bytes: float) -> tuple[str, float]:
    """The binary unit that keeps an axis readable (values >= 2 of it) and its divisor."""
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if max_bytes and max_bytes >= 2 * div:
            return unit, float(div)
    return "B", 1.0
