"""NAS for vision transformers: CLI, cost model, training, search and export.

Importing `nas` registers the standalone model with timm as "nas_vit", without importing torch or timm itself (the
CLI's light commands start in a fraction of a second): at once when timm is already imported, else as soon as it is.
"""
import importlib.abc
import importlib.util
import sys

TIMM = "timm"


def _register_nas_vit() -> None:
    import nas.export.timm_model  # noqa: F401  (its @register_model registers timm's "nas_vit")


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps timm's own loader so that "nas_vit" is registered right after timm is imported
    (before `import timm` returns), then leaves the import system as it was."""

    def find_spec(self, name, path=None, target=None):
        if name != TIMM:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(TIMM)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _register_nas_vit()

    def __getattr__(self, name):  # the rest of timm's loader (is_package, get_resource_reader, ...)
        return getattr(self.loader, name)


if TIMM in sys.modules:
    _register_nas_vit()
elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
