"""Weight-sharing supernet and the standalone NAS-ViT model it exports."""
from supernets.nas_vit import NasViT
from supernets.supernet import Supernet

__all__ = ["NasViT", "Supernet"]
