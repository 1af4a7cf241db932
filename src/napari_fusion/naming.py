"""The one naming rule of result layers, shared by the console API and the napari widgets (Qt-free).

A job's result layers are named after the method and the job's inputs, so each job owns its layers:
running the same method on the same inputs again updates them in place, other inputs get their own
layers, and nothing is silently taken over::

    fused_name("laplacian", "ir", "vi")          -> "laplacian (ir + vi)"
    labels_name("multitaskvif", "flair", "t1c")  -> "multitaskvif labels (flair + t1c)"
    labels_name("threshold", "ir")               -> "threshold labels (ir)"      (one image segmented)
    boxes_name("blobs", "ir", "vi")              -> "blobs boxes (ir + vi)"
    enhanced_name("gifnet", "vi")                -> "gifnet enhanced (vi)"
    band_name("laplacian (pan + ms)", "B2 blue") -> "laplacian (pan + ms) B2 blue"
    band_name("sharpened", 0)                    -> "sharpened [0]"              (a band without a name)
"""
from __future__ import annotations

from typing import Any

__all__ = ["inputs_text", "fused_name", "labels_name", "boxes_name", "enhanced_name", "band_name"]


def _name(x: Any) -> str:
    """A name from a string or anything with ``.name`` (a layer, an API source)."""
    return str(x if isinstance(x, str) else getattr(x, "name", x))


def inputs_text(a: Any, b: Any = None) -> str:
    """``"(A + B)"``, or ``"(A)"`` for a job on one input."""
    return f"({_name(a)})" if b is None else f"({_name(a)} + {_name(b)})"


def fused_name(method: str, a: Any, b: Any) -> str:
    """The fused image of ``method`` on sources ``a`` and ``b``: ``"{method} ({A} + {B})"``."""
    return f"{method} {inputs_text(a, b)}"


def labels_name(method: str, a: Any, b: Any = None) -> str:
    """The labels of ``method`` on a pair (``"{method} labels ({A} + {B})"``) or on one image
    (``"{method} labels ({A})"``)."""
    return f"{method} labels {inputs_text(a, b)}"


def boxes_name(method: str, a: Any, b: Any = None) -> str:
    """The boxes (Shapes layer) drawn from ``method``'s labels: ``"{method} boxes ({A} + {B})"``."""
    return f"{method} boxes {inputs_text(a, b)}"


def enhanced_name(method: str, image: Any) -> str:
    """A single-image enhancement: ``"{method} enhanced ({image})"``."""
    return f"{method} enhanced {inputs_text(image)}"


def band_name(base: str, band: Any) -> str:
    """One band of a multi-band result: the source band's name after the result's name, or its
    index in brackets when the band has no name."""
    if isinstance(band, str) and band.strip():
        return f"{base} {band.strip()}"
    return f"{base} [{int(band)}]"
