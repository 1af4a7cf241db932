"""The one registry of fusion methods read by the API, the CLI and the widgets.

A method is a name (what the user types everywhere), a one-line description, a builder that
returns a ready *runner* on a device (loading the shipped weights), the weights file and the
outputs it gives.

Runner contract (what every builder returns; :class:`napari_fusion.methods.runner.Runner` writes it
down with its defaults, and every runner of the package subclasses it):
- ``runner.fuse(a, b) -> fused``: two 2-D float32 arrays in [0, 1] of the same shape -> 2-D float32
  in [0, 1] of that shape. Colour handling (Y of colour sources fused, CbCr kept), intensity
  scaling, resampling and tiling happen outside, in :mod:`napari_fusion.engine`, so a runner only
  ever sees single-channel unit images.
- Segmenting runners (``"labels" in method.outputs``) also have ``runner.classes`` (a tuple of
  :class:`ClassInfo`) and ``runner.segment(fused, a, b) -> int32 labels``; runners whose one pass
  gives both have ``runner.fuse_and_segment(a, b) -> (fused, labels)``.
- A builder may return any object with ``fuse`` (or the engine takes a plain function): the engine
  adapts it with :func:`~napari_fusion.methods.runner.as_runner`.
"""
from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "ClassInfo",
    "Method",
    "register",
    "get_method",
    "list_methods",
    "build_runner",
    "WEIGHTS_DIR",
    "weights_builder",
    "register_family",
    "runner_from_file",
    "default_method",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def weights_builder(
    load_runner: Callable[..., Any], default_file: str, method: str, family: str, train: str
) -> Callable[..., Any]:
    """A :class:`Method` builder that loads a model file (``weights``, else ``WEIGHTS_DIR/default_file``).

    ``load_runner(path, device=...)`` reads the file; the runner's ``meta["method"]`` defaults to
    ``method``. A missing file raises FileNotFoundError naming ``family`` and how to train it
    (``python -m {train} --out PATH``).
    """

    def build(device: str = "cpu", weights: str | Path | None = None) -> Any:
        path = Path(weights) if weights else WEIGHTS_DIR / default_file
        if not path.is_file():
            raise FileNotFoundError(
                f"{family} weights file {path} not found; train it with "
                f"`python -m {train} --out {path}` or pass weights=PATH"
            )
        runner = load_runner(path, device=device)
        runner.meta.setdefault("method", method)
        return runner

    return build

# Modules that register methods when imported, in the order they are listed to users.
_PROVIDERS = (
    "napari_fusion.methods.classical",
    "napari_fusion.methods.tdfusion",
    "napari_fusion.methods.gifnet",
    "napari_fusion.methods.multitask",
)


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class: its label value, name and display colour (#rrggbb)."""

    index: int
    name: str
    color: str


@dataclass(frozen=True)
class Method:
    """A registered fusion method."""

    name: str
    description: str
    family: str  # "classical", "TDFusion", "GIFNet", "MultiTaskVIF"
    build: Callable[..., Any]  # build(device: str = "cpu", weights: str | Path | None = None) -> runner
    weights: str | None = None  # file name inside napari_fusion/weights, or None
    outputs: tuple[str, ...] = ("fused",)
    halo: int = 0  # context pixels a tile needs on each side for tiled == untiled
    learned: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def weights_path(self) -> Path | None:
        return WEIGHTS_DIR / self.weights if self.weights else None

    @property
    def segments(self) -> bool:
        return "labels" in self.outputs


_METHODS: dict[str, Method] = {}
_LOADED = False
_LOCK = threading.RLock()
_RUNNERS: dict[tuple, Any] = {}
_FAMILIES: dict[str, Callable[..., Any]] = {}


def register(method: Method) -> Method:
    """Add a method; names are unique and lower-case."""
    if method.name != method.name.lower() or " " in method.name:
        raise ValueError(f"method name {method.name!r} must be lower-case without spaces")
    with _LOCK:
        _METHODS[method.name] = method
    return method


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        for mod in _PROVIDERS:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as err:  # a family not (yet) part of this build
                if err.name != mod:
                    raise
        _LOADED = True


def _ordered() -> list[Method]:
    """Classical baselines first, then learned methods, each in registration order; stable whatever
    module a user (or a test) happened to import first."""
    ms = list(_METHODS.values())
    return [m for m in ms if not m.learned] + [m for m in ms if m.learned]


def list_methods(segmenting_only: bool = False) -> list[Method]:
    """All registered methods in the order users see them."""
    _ensure_loaded()
    ms = _ordered()
    return [m for m in ms if m.segments] if segmenting_only else ms


def get_method(name: str | Method) -> Method:
    """Look a method up by name, with an error that lists the known names."""
    if isinstance(name, Method):
        return name
    _ensure_loaded()
    try:
        return _METHODS[str(name).lower()]
    except KeyError:
        known = ", ".join(m.name for m in _ordered()) or "none"
        raise KeyError(f"unknown fusion method {name!r}; known methods: {known}") from None


def build_runner(name: str | Method, device: str = "cpu", weights: str | Path | None = None, cache: bool = True):
    """A ready runner for a method on a device; cached so repeated calls reuse loaded weights."""
    m = get_method(name)
    key = (m.name, str(device), str(weights) if weights else None)
    with _LOCK:
        if cache and key in _RUNNERS:
            return _RUNNERS[key]
    runner = m.build(device=device, weights=weights)
    if cache:
        with _LOCK:
            _RUNNERS[key] = runner
    return runner


def clear_runner_cache() -> None:
    """Forget loaded runners (after weights on disk changed)."""
    with _LOCK:
        _RUNNERS.clear()


def register_family(family: str, from_bundle: Callable[..., Any]) -> None:
    """Say how a model family is rebuilt from a model file: ``from_bundle(tensors, meta, device)``.

    ``from_bundle`` is first dry-run on the ``meta`` device with shape-only tensors (to check a file's
    config and tensor shapes before allocating anything), so it must only build modules and load
    state dicts, never read tensor values.
    """
    with _LOCK:
        _FAMILIES[family] = from_bundle


def runner_from_file(path: str | Path, device: str = "cpu"):
    """Rebuild a runner from a napari-fusion model file (shipped or user-saved); runs no code from it.

    Every problem of the file (not safetensors, corrupt metadata, a config out of sane bounds,
    tensors that do not fit the config, NaN/inf weights) is a ``ModelFileError`` naming the file,
    raised before any real module is built (see :func:`napari_fusion.methods.store.rebuild_from_file`).
    """
    from .store import ModelFileError, read_metadata, rebuild_from_file

    _ensure_loaded()
    meta = read_metadata(path)
    family = meta.get("family")
    if family not in _FAMILIES:
        known = ", ".join(_FAMILIES) or "none"
        raise ModelFileError(f"{path} holds a {family!r:.80} model; this napari-fusion knows: {known}")
    return rebuild_from_file(path, family, _with_head(_FAMILIES[family]), device, meta=meta)


def _with_head(from_bundle: Callable[..., Any]) -> Callable[..., Any]:
    """``from_bundle`` of a family, for files that may also hold a task head (``head.*`` tensors)."""

    def build(tensors, meta, device):
        if not meta.get("head"):
            return from_bundle(tensors, meta, device)
        from ..task.tuned import attach_head, split_head_tensors

        base_tensors, head_tensors = split_head_tensors(tensors)
        return attach_head(from_bundle(base_tensors, meta, device), head_tensors, meta)

    return build


def default_method() -> str:
    """The method used when none is named: GIFNet (one model for every pair) when its weights are
    installed, else the next learned method with weights, else the Laplacian pyramid."""
    _ensure_loaded()
    for name in ("gifnet", "tdfusion", "laplacian"):
        m = _METHODS.get(name)
        if m is not None and (m.weights_path is None or m.weights_path.is_file()):
            return name
    return next(iter(_METHODS))
