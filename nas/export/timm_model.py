"""timm's entry point of the standalone model: `timm.create_model("nas_vit", arch=...)` (registered by `import nas`).

It lives in nas/, not in supernets/, because `pretrained=True` reads an export folder (`exported_model`): the
network itself knows nothing of export folders. It imports the network only when a model is built: `import nas`
registers it the moment timm is imported, which may be from inside supernets/nas_vit.py."""
from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

from timm.models import build_model_with_cfg, register_model

if TYPE_CHECKING:
    from search_spaces import Arch, SearchSpace
    from supernets.nas_vit import NasViT

MODEL_OPTIONS = ("features_only", "out_indices", "feature_cls",  # handled by timm's build_model_with_cfg
                 "drop_path_rate")  # NasViT's own



@register_model
def nas_vit(pretrained: bool = False, arch: Arch | str | Path | None = None, space: SearchSpace | str | None = None,
            num_classes: int | None = None, **kwargs) -> NasViT:
    """timm entry point: `timm.create_model("nas_vit", arch=PATH_OR_ARCH, num_classes=K)`.

    `pretrained=True` with the arch.yaml of an export folder loads that folder's weights (checked against its
    meta.json); `features_only=True` (with `out_indices`) returns the stage maps, as timm's backbones do."""
    from nas.export.exported_model import check_weights, read_meta
    from search_spaces import Arch
    from supernets.nas_vit import NasViT, pretrained_cfg, resolve_arch

    if arch is None:
        raise ValueError("nas_vit needs arch=: an arch YAML path or an Arch")
    folder = None if isinstance(arch, Arch) else _export_folder(Path(arch))
    if pretrained and folder is None:
        raise ValueError("nas_vit has no hub weights: pretrained=True loads an export folder's weights, so pass "
                         "arch='DIR/arch.yaml' of a folder written by 'nas export' (see docs/export.md)")
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    kwargs.pop("pretrained_cfg", None), kwargs.pop("cache_dir", None)
    in_chans = kwargs.pop("in_chans", None)
    unexpected = sorted(set(kwargs) - set(MODEL_OPTIONS))
    if unexpected:
        raise ValueError(f"nas_vit got unexpected argument(s) {unexpected}")
    meta = None
    if folder is not None:
        meta = read_meta(folder)
        check_weights(folder, meta)  # refuse an export's damaged weights before timm loads them
        if pretrained:
            overlay.setdefault("file", str(folder / "model.safetensors"))
    arch, space = resolve_arch(arch, space)
    if in_chans not in (None, space.in_chans):
        raise ValueError(f"nas_vit: in_chans={in_chans}, but the space {space.name!r} has {space.in_chans}")
    cfg = pretrained_cfg(space, (meta or {}).get("num_classes", space.num_classes), meta)
    return build_model_with_cfg(
        NasViT, "nas_vit", pretrained, pretrained_cfg=cfg, pretrained_cfg_overlay=overlay,
        feature_cfg=dict(out_indices=tuple(range(len(arch.stages))), feature_cls="getter"),
        kwargs_filter=("in_chans",), arch=arch, space=space,
        num_classes=cfg["num_classes"] if num_classes is None else num_classes, **kwargs)


def _export_folder(arch_file: Path) -> Path | None:
    """The folder of `arch_file` when it is an export folder (arch.yaml beside model.safetensors and meta.json)."""
    folder = arch_file.parent
    return folder if (folder / "meta.json").is_file() and (folder / "model.safetensors").is_file() else None
