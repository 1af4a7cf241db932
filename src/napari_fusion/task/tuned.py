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

from .features import FEATURE_SIGMAS, feature_halo, pixel_features
from .head import PixelHead

__all__ = ["TunedRunner", "attach_head", "split_head_tensors", "HEAD_INPUTS"]

HEAD_INPUTS = ("a", "b", "fused")  # the images whose filter features the head reads, in order


class TunedRunner:
    """``base`` (any fusion runner) + ``head`` (a :class:`PixelHead` on features of A, B and the fused image)."""

    tiles_exact = False  # the features' mirrored borders differ at tile edges (blended overlap hides it)

    def __init__(self, base: Any, head: PixelHead, meta: dict | None = None):
        if head.n_features != len(HEAD_INPUTS) * len(FEATURE_SIGMAS) * 4:
            raise ValueError(f"the head reads {head.n_features} features; this build computes {len(HEAD_INPUTS) * len(FEATURE_SIGMAS) * 4}")
        self.base, self.head = base, head
        base_name = str(getattr(base, "name", "model"))
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.setdefault("base", (getattr(base, "meta", None) or {}).get("base") or base_name.removesuffix("-tuned"))
        self.meta.setdefault("method", f"{self.meta['base']}-tuned")
        for key in ("input_intensity", "input_orientation"):  # the base's input conventions hold for the whole
            if key in (getattr(base, "meta", None) or {}):
                self.meta.setdefault(key, base.meta[key])

    # --- what the engine and the widgets read --------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta["method"])

    @property
    def family(self) -> str | None:
        return getattr(self.base, "family", None)

    @property
    def classes(self) -> tuple:
        from ..methods.registry import ClassInfo

        return tuple(ClassInfo(v, n, c) for v, n, c in zip(self.head.values, self.head.names, self.head.colors))

    @property
    def halo(self) -> int:
        return int(getattr(self.base, "halo", 0) or 0) + feature_halo()

    @property
    def pad_multiple(self) -> int:
        return int(getattr(self.base, "pad_multiple", 1) or 1)

    @property
    def preferred_tile(self) -> int | None:
        return getattr(self.base, "preferred_tile", None)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.base, "device", "cpu"))

    @property
    def modules(self) -> dict:
        return getattr(self.base, "modules", {})

    def to(self, device) -> "TunedRunner":
        if hasattr(self.base, "to"):
            self.base.to(device)
        self.head.to("cpu")
        return self

    # --- running -------------------------------------------------------------------------------
    def features(self, a: np.ndarray, b: np.ndarray, fused: np.ndarray) -> np.ndarray:
        return pixel_features(a, b, fused, device=self.device)

    def fuse(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.base.fuse(a, b)

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fused = np.asarray(self.base.fuse(a, b), np.float32)
        return fused, self.head.predict(self.features(a, b, fused))

    def segment(self, fused: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        a = fused if a is None else a
        b = fused if b is None else b
        return self.head.predict(self.features(a, b, fused))

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
        meta["head"] = {**self.head.meta(), "inputs": list(HEAD_INPUTS), "sigmas": list(FEATURE_SIGMAS)}
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
    keep = {k: meta[k] for k in ("method", "base", "finetune_history", "input_intensity", "input_orientation") if k in meta}
    return TunedRunner(base, head, keep)
