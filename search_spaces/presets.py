"""Presets: the archs of `unified-224` closest to the published models (`presets/NAME.yaml`), the baselines a
search result is compared against. docs/presets.md gives each one's published figures and what differs."""
from __future__ import annotations

from pathlib import Path

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS_SPACE = "unified-224"  # the space every preset is an arch of


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The arch YAML of preset `name`; ValueError naming --preset and the presets there are."""
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in preset_names():
        raise ValueError(f"--preset {name!r}: choose from {preset_names()}")
    return path
