"""NAS for vision transformers: CLI, cost model, training, search and export.

Importing `nas` registers the standalone model with timm as "nas_vit".
"""
import supernets.nas_vit  # noqa: F401  (registers timm's "nas_vit")
