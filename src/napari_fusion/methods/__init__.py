"""Fusion methods: the registry, classical baselines and the learned families."""
from .registry import ClassInfo, Method, build_runner, get_method, list_methods, register
from .runner import Runner, as_runner

__all__ = ["ClassInfo", "Method", "Runner", "as_runner", "build_runner", "get_method", "list_methods", "register"]


# `napari_fusion.methods` is both this subpackage and the public API function `methods()`: once the
# subpackage is imported, the package attribute is this module, so make the module callable and
# `from napari_fusion import methods; methods()` lists the registry as documented.
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, segmenting_only: bool = False) -> list:
        """The registered methods (same as :func:`napari_fusion.api.methods`)."""
        return list_methods(segmenting_only=segmenting_only)


_sys.modules[__name__].__class__ = _CallableModule
