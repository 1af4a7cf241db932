"""The runner contract as a class: what the engine reads from a method's runner, with its defaults.

A runner turns two 2-D float32 images in [0, 1] of one shape into one such image (:meth:`Runner.fuse`);
a segmenting runner also gives int32 labels (:meth:`Runner.segment`, :meth:`Runner.fuse_and_segment`)
whose values are the indices of its ``classes``. What the engine needs besides (the context around a
tile, the size every call is padded to, the fastest tile, whether tiles are exact, the intensity
mapping the model was trained with) is an attribute here with a default, so the engine reads
``runner.halo`` rather than asking whether there is one.

Every runner of the package subclasses :class:`Runner`. A user's own object with a ``fuse`` method
(duck typed, no base class) or a plain function ``(a, b) -> fused`` still goes wherever a method
goes: :func:`as_runner` turns it into a Runner, reading its optional attributes; that adapter is the
one place that asks an object which attributes it has. :class:`WrappedRunner` runs another runner
differently (only segmenting, enhancing) with the traits copied from it once.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..color import InputIntensity

__all__ = ["Runner", "WrappedRunner", "FunctionRunner", "as_runner", "is_runner"]


class Runner:
    """Base class of runners: the attributes the engine reads, their defaults, and the calls.

    Subclasses implement :meth:`fuse`; segmenting ones set ``classes`` and implement :meth:`segment`
    and/or :meth:`fuse_and_segment` (the default of each is written with the other). Attributes may
    be plain class or instance attributes or properties.
    """

    #: what results and layers are called after; empty: the engine uses the class name
    name: str = ""
    #: the model family that rebuilds a saved model (``"TDFusion"``, ``"GIFNet"``, ...); None: not learned
    family: str | None = None
    #: context pixels a tile needs on each side for tiled == untiled; None: not declared (the engine
    #: takes the registered Method's halo, else 32)
    halo: int | None = None
    #: every call is padded to a multiple of this (a network's down-sampling factor)
    pad_multiple: int = 1
    #: the tile side that runs fastest on the runner's current device, or None (no preference)
    preferred_tile: int | None = None
    #: halo'd tiles give the untiled result exactly (the halo covers the receptive field), so the
    #: engine's automatic tiles need no blended overlap
    tiles_exact: bool = False
    #: ``ClassInfo(index, name, color)`` of the labels a segmenting runner gives (label = index)
    classes: tuple = ()
    #: where the runner's model lives (torch runners: a ``torch.device``)
    device: Any = "cpu"

    # --- metadata ------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """The model's record (method name, training, ``input_intensity``); a dict of its own per runner."""
        d = self.__dict__.get("_meta")
        if d is None:
            d = self.__dict__["_meta"] = {}
        return d

    @meta.setter
    def meta(self, value: dict | None) -> None:
        self.__dict__["_meta"] = {} if value is None else value

    @property
    def input_intensity(self) -> InputIntensity | None:
        """The intensity mapping the model was trained with (``meta["input_intensity"]``), or None (the default)."""
        spec = self.meta.get("input_intensity")
        return spec if isinstance(spec, InputIntensity) else InputIntensity.from_meta(spec)

    # --- what it can do ------------------------------------------------------------------------
    @property
    def can_segment(self) -> bool:
        """Whether the runner has labelling code (its class overrides ``segment`` or ``fuse_and_segment``).
        Whether it gives labels also needs ``classes``: see :attr:`segments`."""
        cls = type(self)
        return cls.segment is not Runner.segment or cls.fuse_and_segment is not Runner.fuse_and_segment

    @property
    def segments(self) -> bool:
        """Whether the runner gives labels: it can segment and has a class table."""
        return bool(self.classes) and self.can_segment

    # --- running -------------------------------------------------------------------------------
    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Two 2-D float32 unit images of one shape -> the fused 2-D float32 unit image."""
        raise NotImplementedError(f"{type(self).__name__} does not implement fuse(a, b)")

    def segment(self, fused: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        """int32 labels of a fused unit image (``a``, ``b``: its sources, for runners that read them)."""
        if type(self).fuse_and_segment is not Runner.fuse_and_segment:
            return self.fuse_and_segment(fused if a is None else a, fused if b is None else b)[1]
        raise TypeError(f"{self.name or type(self).__name__!r} does not segment (no fuse_and_segment or segment)")

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fused image and its labels (default: :meth:`fuse`, then :meth:`segment` of the result)."""
        fused = self.fuse(a, b)
        return fused, self.segment(fused, a, b)

    def enhance(self, image: np.ndarray) -> np.ndarray:
        """Single-image enhancement (default: the image fused with itself)."""
        return self.fuse(image, image)


class WrappedRunner(Runner):
    """A runner that runs another one differently; the traits are copied from it once.

    ``inner``: the runner (anything :func:`as_runner` takes); keyword arguments replace traits
    (``name``, ``halo``, ``classes``, ...). By default it fuses as ``inner`` does; subclasses change
    a call.
    """

    _TRAITS = ("name", "family", "meta", "halo", "pad_multiple", "preferred_tile", "tiles_exact", "classes", "device")

    def __init__(self, inner: Any, **traits: Any):
        self.inner = as_runner(inner)
        unknown = set(traits) - set(self._TRAITS)
        if unknown:
            raise TypeError(f"unknown runner traits {sorted(unknown)}; known: {', '.join(self._TRAITS)}")
        for key in self._TRAITS:
            setattr(self, key, traits[key] if key in traits else getattr(self.inner, key))
        self._input_intensity = self.inner.input_intensity

    @property
    def input_intensity(self) -> InputIntensity | None:
        return self._input_intensity

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.inner.fuse(a, b)


class FunctionRunner(Runner):
    """A fusion function ``fn(a, b) -> fused`` as a runner (the classical baselines, a user's function).

    Where labels are asked of it (``fuse_and_segment``, e.g. ``engine.tiling.fuse_tiled`` with
    ``labels_out``), the function is taken to return ``(fused, labels)``.
    """

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], Any], name: str | None = None, *, halo: int | None = None,
                 family: str | None = None):
        self.fn = fn
        self.name = name if name is not None else str(getattr(fn, "__name__", "function"))
        self.halo, self.family = halo, family

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.fn(a, b)

    @property
    def can_segment(self) -> bool:
        return False

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = self.fn(a, b)
        if not (isinstance(res, tuple) and len(res) == 2):
            raise TypeError(f"{self.name!r} does not segment: it gave one image where (fused, labels) were asked")
        return res


class _ObjectRunner(Runner):
    """A user's object with ``fuse`` (no Runner base class) seen as a Runner.

    Its optional attributes are read here, each time (they may change, e.g. ``preferred_tile``
    after a device move), with the Runner defaults where it has none; anything else (``to_bundle``,
    ``copy``, ``modules`` ...) is passed through to the object.
    """

    def __init__(self, obj: Any):
        self.__dict__["obj"] = obj

    def __getattr__(self, key: str) -> Any:  # only for what the class does not define
        if key.startswith("__") or key == "obj":
            raise AttributeError(key)
        return getattr(self.__dict__["obj"], key)

    @property
    def name(self) -> str:
        return str(getattr(self.obj, "name", None) or type(self.obj).__name__)

    @property
    def family(self) -> str | None:
        return getattr(self.obj, "family", None)

    @property
    def meta(self) -> dict:
        return getattr(self.obj, "meta", None) or {}

    @property
    def halo(self) -> int | None:
        h = getattr(self.obj, "halo", None)
        return None if h is None else int(h)

    @property
    def pad_multiple(self) -> int:
        return int(getattr(self.obj, "pad_multiple", 1) or 1)

    @property
    def preferred_tile(self) -> int | None:
        return getattr(self.obj, "preferred_tile", None)

    @property
    def tiles_exact(self) -> bool:
        return bool(getattr(self.obj, "tiles_exact", False))

    @property
    def classes(self) -> tuple:
        return tuple(getattr(self.obj, "classes", None) or ())

    @property
    def device(self) -> Any:
        return getattr(self.obj, "device", "cpu")

    @property
    def input_intensity(self) -> InputIntensity | None:
        spec = getattr(self.obj, "input_intensity", None)
        if spec is None:
            spec = self.meta.get("input_intensity")
        return spec if isinstance(spec, InputIntensity) else InputIntensity.from_meta(spec)

    @property
    def can_segment(self) -> bool:
        return hasattr(self.obj, "fuse_and_segment") or hasattr(self.obj, "segment")

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.obj.fuse(a, b)

    def segment(self, fused: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        if hasattr(self.obj, "segment"):
            return self.obj.segment(fused, a, b)
        if hasattr(self.obj, "fuse_and_segment"):
            return self.obj.fuse_and_segment(fused if a is None else a, fused if b is None else b)[1]
        raise TypeError(f"{self.name!r} does not segment (no fuse_and_segment or segment)")

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self.obj, "fuse_and_segment"):
            return self.obj.fuse_and_segment(a, b)
        return super().fuse_and_segment(a, b)

    def enhance(self, image: np.ndarray) -> np.ndarray:
        if hasattr(self.obj, "enhance"):
            return self.obj.enhance(image)
        return super().enhance(image)


def is_runner(obj: Any) -> bool:
    """Whether ``obj`` is a runner: a :class:`Runner` or an object with a ``fuse`` method."""
    return isinstance(obj, Runner) or callable(getattr(obj, "fuse", None))


def as_runner(obj: Any) -> Runner:
    """``obj`` as a :class:`Runner`: itself if it is one; an object with ``fuse`` or a function
    ``(a, b) -> fused`` adapted (their optional attributes read, the defaults elsewhere).

    Raises TypeError for anything else."""
    if isinstance(obj, Runner):
        return obj
    if is_runner(obj):
        return _ObjectRunner(obj)
    if callable(obj):
        return FunctionRunner(obj)
    raise TypeError(f"expected a runner with .fuse(a, b) or a function (a, b) -> fused, got {type(obj).__name__}")
