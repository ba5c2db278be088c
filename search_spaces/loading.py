"""Finding spaces by name or YAML path, and reading arch YAML files (validated against their space)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from search_spaces.arch import Arch, arch_from_dict
from search_spaces.space import SearchSpace, space_from_dict

BUILTIN_DIR = Path(__file__).parent / "spaces"


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def read_yaml(path: Path, what: str) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{what} {str(path)!r} is not valid YAML: {exc}") from None


@lru_cache(maxsize=64)
def load_space(name_or_path: str) -> SearchSpace:
    """A built-in space by name (see `builtin_spaces()`), or a space YAML file by path."""
    if name_or_path in builtin_spaces():
        return space_from_dict(read_yaml(BUILTIN_DIR / f"{name_or_path}.yaml", "space"), name_or_path)
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ValueError(f"space file {name_or_path!r} does not exist")
        return space_from_dict(read_yaml(path, "space"), str(path))
    raise ValueError(f"unknown space {name_or_path!r}; built-in spaces: {builtin_spaces()}, or give a YAML path")


def load_arch(path: str | Path, space: str | SearchSpace | None = None) -> tuple[Arch, SearchSpace]:
    """Read an arch YAML and validate it against its space (the one it names, unless `space` is given).

    Returns the canonical arch and the space. Errors are ValueErrors naming the file and the gene.
    """
    path = Path(path)
    arch = arch_from_dict(read_yaml(path, "arch file"), f"arch file {str(path)!r}")
    if space is None:
        space = _resolve_arch_space(arch.space, path.parent)
    elif isinstance(space, str):
        space = load_space(space)
    if arch.space not in (space.name, space.ref):
        named = _resolve_arch_space(arch.space, path.parent)
        if named.hash != space.hash:
            raise ValueError(f"arch file {str(path)!r} names space {arch.space!r}, which differs from {space.name!r}")
    arch = Arch(space.ref or space.name, arch.stages)
    try:
        return space.validate(arch), space
    except ValueError as exc:
        raise ValueError(f"arch file {str(path)!r}: {exc}") from None


def _resolve_arch_space(ref: str, arch_dir: Path) -> SearchSpace:
    """An arch's `space` is a built-in name or a path (as given, else relative to the arch file)."""
    if ref in builtin_spaces() or Path(ref).exists() or not (arch_dir / ref).exists():
        return load_space(ref)
    return load_space(str(arch_dir / ref))
