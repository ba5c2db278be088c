"""Human-readable numbers for the CLI's tables: 4.35G MACs, 12.3M params."""
from __future__ import annotations

import math


def human(n: float) -> str:
    """Three significant digits with a K/M/G/T suffix (powers of 1000, as MAC and param counts are quoted)."""
    value, suffix = float(n), ""
    for bigger in "KMGT":
        if abs(value) < 999.5:  # 999.5 would round up to "1e+03"; show it as 1K instead
            break
        value, suffix = value / 1000, bigger
    if not suffix:
        return f"{value:g}"
    return f"{value:#.3g}".rstrip(".") + suffix  # '#' keeps trailing zeros (12.0M), then drop a bare '.' (100M)


SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
BUDGET_FORMS = "a positive count with an optional K/M/G/T suffix (powers of 1000), e.g. 4G, 4.5G, 600M, 4e9"


def parse_count(text: str, option: str) -> int:
    """A budget such as '4G', '4.5G', '600M', '4e9' or '4000000000' as an int; ValueError naming `option`."""
    stripped = str(text).strip()
    suffix = stripped[-1:].upper() if stripped[-1:].isalpha() and stripped[-1:].upper() in SUFFIXES else ""
    number = stripped[:len(stripped) - len(suffix)]
    try:
        value = float(number) * SUFFIXES[suffix]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected {BUDGET_FORMS}") from None
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{option} {text!r}: expected {BUDGET_FORMS}")
    return round(value)


def percent(value: float | None, signed: bool = False) -> str:
    """A [0, 1] accuracy in percent ('97.78%'), or with `signed` a difference of two in points ('+1.39'); an em dash
    for None or a non-finite value. The one format of accuracies in tables, bars, reports."""
    if value is None or not math.isfinite(value):
        return "—"
    return f"{100 * value:{'+' if signed else ''}.2f}" + ("" if signed else "%")

