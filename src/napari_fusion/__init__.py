"""napari-fusion: fuse images from different sensors (TDFusion, GIFNet, MultiTaskVIF) and segment them.

Console / batch API (NumPy arrays or napari layers in, arrays or layers out)::

    from napari_fusion import fuse, enhance, segment, evaluate, finetune, load_model, save_model, methods, detect

Objects as boxes (YOLO files, weak labels, mAP): :mod:`napari_fusion.boxes`.
"""
from __future__ import annotations

__version__ = "0.1.0"

_API = ("fuse", "enhance", "segment", "evaluate", "finetune", "load_model", "save_model", "methods", "detect")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    # Lazy so that `import napari_fusion` (napari's plugin scan, the CLI's --help) stays fast.
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'napari_fusion' has no attribute {name!r}")
