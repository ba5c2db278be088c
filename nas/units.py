"""Human-readable numbers for the CLI's tables: 4.35G MACs, 12.3M params."""
from __future__ import annotations


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
