"""A fusion model with a task head: the fused image is the model's, the labels the head's.

What :func:`napari_fusion.finetune` returns. It behaves like any segmenting runner (``fuse``,
``fuse_and_segment``, ``classes``; the engine tiles it with the halo of both parts) and is saved
into one model file: the base model's tensors and metadata, plus ``head.*`` tensors and a ``head``
entry (:meth:`PixelHead.meta`). Its class table is exactly the painted classes.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from ..methods.runner import Runner, as_runner
from .features import FEATURE_SIGMAS, feature_halo, n_features, pixel_features
from .head import PixelHead

__all__ = ["TunedRunner", "attach_head", "split_head_tensors", "HEAD_INPUTS"]

HEAD_INPUTS = ("a", "b", "fused")  # the images whose filter features the head reads, in order


def segments(model: Any) -> bool:
    """Whether a fusion model gives labels of its own (then the head also reads them)."""
    return as_runner(model).segments


def base_label_values(model: Any) -> tuple[int, ...]:
    r = as_runner(model)
    return tuple(int(c.index) for c in r.classes) if r.segments else ()


def fuse_with_base_labels(model: Any, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's fused image and, for a segmenting model, its labels (one pass where it can)."""
    r = as_runner(model)
    if not r.segments:
        return np.asarray(r.fuse(a, b), np.float32), None
    fused, lab = r.fuse_and_segment(a, b)
    return np.asarray(fused, np.float32), np.asarray(lab)


def head_features(a, b, fused, base_labels, values, device="cpu") -> np.ndarray:
    """What the head reads: filter features of A, B and the fused image (+ the base's labels, one-hot)."""
    feats = pixel_features(a, b, fused, device=device, extra=len(values))
    for j, v in enumerate(values):  # the base's labels, one-hot, in the channels left for them
        np.equal(base_labels, v, out=feats[..., n_features(len(HEAD_INPUTS)) + j], casting="unsafe")
    return feats


class TunedRunner(Runner):
    """``base`` (any fusion runner) + ``head`` (a :class:`PixelHead` on features of A, B and the fused image)."""

    tiles_exact = False  # the features' mirrored borders differ at tile edges (blended overlap hides it)

    def __init__(self, base: Any, head: PixelHead, meta: dict | None = None):
        base = as_runner(base)
        self.base_values = base_label_values(base)
        want = n_features(len(HEAD_INPUTS)) + len(self.base_values)
        if head.n_features != want:
            raise ValueError(f"the head reads {head.n_features} features; this model and build give {want}")
        self.base, self.head = base, head
        base_name = base.name or "model"
        self.meta = dict(meta or {})
        self.meta.setdefault("base", base.meta.get("base") or base_name.removesuffix("-tuned"))
        self.meta.setdefault("method", f"{self.meta['base']}-tuned")
        for key in ("input_intensity",):  # the base's input conventions hold for the whole
            if key in base.meta:
                self.meta.setdefault(key, base.meta[key])

    # --- what the engine and the widgets read --------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta["method"])

    @property
    def family(self) -> str | None:
        return self.base.family

    @property
    def classes(self) -> tuple:
        from ..methods.registry import ClassInfo

        return tuple(ClassInfo(v, n, c) for v, n, c in zip(self.head.values, self.head.names, self.head.colors))

    @property
    def halo(self) -> int:
        return int(self.base.halo or 0) + feature_halo()

    @property
    def pad_multiple(self) -> int:
        return int(self.base.pad_multiple or 1)

    @property
    def preferred_tile(self) -> int | None:
        return self.base.preferred_tile

    @property
    def device(self) -> torch.device:
        return torch.device(self.base.device)

    @property
    def modules(self) -> dict:
        return getattr(self.base, "modules", {})

    def to(self, device) -> "TunedRunner":
        if hasattr(self.base, "to"):
            self.base.to(device)
        return self

    # --- running -------------------------------------------------------------------------------
    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.base.fuse(a, b)

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fused, base_labels = fuse_with_base_labels(self.base, a, b)
        return fused, self.head.predict(head_features(a, b, fused, base_labels, self.base_values, self.device), base_labels)

    def segment(self, fused: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        a = fused if a is None else a
        b = fused if b is None else b
        base_labels = self.base.segment(fused, a, b) if self.base_values else None
        return self.head.predict(head_features(a, b, fused, base_labels, self.base_values, self.device), base_labels)

    def copy(self) -> "TunedRunner":
        base = self.base.copy() if hasattr(self.base, "copy") else self.base
        head = PixelHead.from_parts(self.head.tensors(), self.head.meta())
        return TunedRunner(base, head, copy.deepcopy(self.meta))

    # --- persistence ---------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not hasattr(self.base, "to_bundle"):
            raise TypeError(
                f"{self.name!r} is tuned from {self.meta['base']!r}, which has no learned weights to save; "
                "tune a learned model (gifnet, tdfusion, multitaskvif) to keep the result"
            )
        tensors, meta = self.base.to_bundle()
        tensors = {**tensors, **{f"head.{k}": v for k, v in self.head.tensors().items()}}
        meta = {**meta, **{k: v for k, v in self.meta.items() if k not in ("family", "config", "classes")}}
        meta["head"] = {**self.head.meta(), "inputs": list(HEAD_INPUTS), "sigmas": list(FEATURE_SIGMAS),
                        "base_labels": list(self.base_values)}
        meta["outputs"] = ["fused", "labels"]
        return tensors, meta


def split_head_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(base tensors, head tensors without their ``head.`` prefix)."""
    head = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    return {k: v for k, v in tensors.items() if not k.startswith("head.")}, head


def attach_head(base: Any, head_tensors: dict[str, torch.Tensor], meta: dict) -> TunedRunner:
    """The runner of a model file with a ``head`` entry (the base already rebuilt from the rest)."""
    spec = dict(meta["head"])
    if tuple(spec.get("inputs", HEAD_INPUTS)) != HEAD_INPUTS or tuple(float(s) for s in spec.get("sigmas", FEATURE_SIGMAS)) != FEATURE_SIGMAS:
        raise ValueError(f"the head reads {spec.get('inputs')} at sigmas {spec.get('sigmas')}; this build computes {HEAD_INPUTS} at {FEATURE_SIGMAS}")
    head = PixelHead.from_parts(head_tensors, spec)
    if hasattr(base, "meta"):
        base.meta = {k: v for k, v in base.meta.items() if k != "head"}
        base.meta["method"] = meta.get("base", base.meta.get("method"))
    keep = {k: meta[k] for k in ("method", "base", "finetune_history", "input_intensity") if k in meta}
    return TunedRunner(base, head, keep)
