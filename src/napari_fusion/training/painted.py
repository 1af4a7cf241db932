"""What both fine-tuning paths share: painted labels, their checks, and the progress they yield.

The label convention is the one of :mod:`.finetune`: 0 = unpainted (ignored), a painted value
``v > 0`` trains class ``v``, ``background_value`` (if given) trains class 0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Generator, Mapping

import numpy as np
import torch

from .losses import IGNORE_INDEX

__all__ = ["FinetuneProgress", "check_sparse_labels", "painted_targets", "class_names_for", "cover_classes", "StrokeCrops", "tuning_steps", "note_tuning"]


@dataclass
class FinetuneProgress:
    """Yielded after every fine-tuning step (for progress bars and a live loss readout)."""

    step: int
    steps: int
    task_loss: float
    fusion_loss: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    model: Any = None  # the copy being trained (between steps: show its fused image and labels so far)


def check_sparse_labels(sparse_labels, shape: tuple[int, ...], name: str = "painted labels") -> np.ndarray:
    """Validate painted labels against the sources' shape; returns them as int64.

    Errors: other shape, NaN/inf, non-integer or negative values, nothing painted.
    """
    lab = np.asarray(sparse_labels)
    if lab.shape != tuple(shape):
        raise ValueError(
            f"{name} are {'x'.join(map(str, lab.shape)) or 'scalar'} but the sources are "
            f"{'x'.join(map(str, shape))}; paint the labels on the fused image's grid"
        )
    if lab.dtype == np.bool_:
        lab = lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            raise ValueError(f"{name} contain NaN/inf values; labels must be whole numbers (0 = unpainted)")
        if not np.all(lab == np.round(lab)):
            raise ValueError(f"{name} contain non-integer values; labels must be whole numbers (0 = unpainted)")
    elif not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"{name} have unsupported dtype {lab.dtype}; expected integer labels")
    lab = lab.astype(np.int64)
    if lab.min() < 0:
        raise ValueError(f"{name} contain negative values (min {lab.min()}); 0 = unpainted, 1.. = classes")
    if not np.any(lab):
        raise ValueError(f"{name} are empty: nothing is painted (all 0); paint a few strokes of at least two classes")
    return lab


def painted_targets(labels: np.ndarray, background_value: int | None = None) -> np.ndarray:
    """Painted values -> training targets: 0 -> ignored, ``background_value`` -> class 0, v -> v."""
    t = labels.astype(np.int64).copy()
    t[labels == 0] = IGNORE_INDEX
    if background_value is not None:
        if int(background_value) <= 0:
            raise ValueError(f"background_value must be a painted value > 0, got {background_value}")
        t[labels == int(background_value)] = 0
    return t


def class_names_for(class_names, values) -> dict[int, str]:
    """``{value: name}`` for the painted ``values`` from a ``{value: name}`` mapping or a list indexed by value."""
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    names = list(class_names)
    return {int(v): str(names[int(v)]) for v in values if 0 <= int(v) < len(names)}


def cover_classes(head, classes, present, class_names, seed: int, what: str) -> tuple[tuple, list[str]]:
    """Extend ``head`` (a segmentation head with ``n_classes`` and ``extend_classes``; the new outputs
    seeded) to every painted class in ``present``; returns the class list (``classes`` with the new
    and newly named painted classes) and notes of what changed (``what``: the head's name in them)."""
    from ..methods.registry import ClassInfo
    from ..methods.tdfusion import default_class_color

    names = class_names_for(class_names, present)
    known = {c.index: c for c in classes}
    notes = []
    top = max(present)
    if top >= head.n_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head.extend_classes(top + 1)
        notes.append(f"{what} extended to {top + 1} outputs for new class(es) {[v for v in present if v not in known]}")
    for v in present:
        if v not in known:
            known[v] = ClassInfo(v, names.get(v, f"class {v}"), default_class_color(v))
        elif v in names:
            known[v] = ClassInfo(v, names[v], known[v].color)
    return tuple(sorted(known.values(), key=lambda c: c.index)), notes


class StrokeCrops:
    """Crops (sides a multiple of 8) centred near painted pixels (``IGNORE_INDEX`` = unpainted), randomly
    flipped left-right; an image smaller than a crop is mirrored, its padding left unpainted.

    ``balanced``: every painted class in every batch, in a shuffled order (a batch of one class only
    would just push a segmenter's bias towards that class, and the next batch back); else each crop's
    class is drawn uniformly.
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, targets: np.ndarray, crop: int, seed: int, balanced: bool = False):
        H, W = a.shape
        crop = max(8, int(crop) // 8 * 8)
        self.ch, self.cw = min(crop, -(-H // 8) * 8), min(crop, -(-W // 8) * 8)
        ph, pw = max(0, self.ch - H), max(0, self.cw - W)
        if ph or pw:
            a = np.pad(a, ((0, ph), (0, pw)), mode="symmetric")
            b = np.pad(b, ((0, ph), (0, pw)), mode="symmetric")
            targets = np.pad(targets, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        self.a, self.b, self.t = a, b, targets
        self.rng = np.random.default_rng(seed)
        self.balanced = balanced
        self.where = {int(c): np.flatnonzero(targets.ravel() == c) for c in np.unique(targets) if c != IGNORE_INDEX}
        self.classes = sorted(self.where)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, W = self.a.shape
        ch, cw, rng = self.ch, self.cw, self.rng
        A = np.empty((n, 1, ch, cw), np.float32)
        B = np.empty((n, 1, ch, cw), np.float32)
        T = np.empty((n, ch, cw), np.int64)
        order = [self.classes[int(k)] for k in rng.permutation(len(self.classes))] if self.balanced else None
        for i in range(n):
            c = order[i % len(order)] if order else self.classes[int(rng.integers(len(self.classes)))]
            y, x = divmod(int(self.where[c][int(rng.integers(len(self.where[c])))]), W)
            y0 = int(np.clip(y - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, H - ch))
            x0 = int(np.clip(x - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, W - cw))
            sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            ca, cb, ct = self.a[sl], self.b[sl], self.t[sl]
            if rng.integers(2):
                ca, cb, ct = ca[:, ::-1], cb[:, ::-1], ct[:, ::-1]
            A[i, 0], B[i, 0], T[i] = ca, cb, ct
        return torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(T)


def tuning_steps(trainer, sampler, *, steps: int, batch: int, seed: int, task_key: str, model, t0: float
                 ) -> Generator[FinetuneProgress, None, tuple[dict[str, float], dict[str, float]]]:
    """The fine-tuning loop of both families: ``steps`` trainer steps on ``sampler.batch(batch)``, torch
    seeded with ``seed`` (the caller's random state is left alone); yields progress (``task_key``: the
    row's task loss), returns the losses of the first and the last batch."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(steps):
            row = trainer.train_step(*sampler.batch(batch))
            if not (math.isfinite(row.get(task_key, 0.0)) and math.isfinite(row.get("fusion", 0.0))):
                raise FloatingPointError(f"fine-tuning diverged at step {i + 1} (losses {row}); try a smaller learning rate")
            for k, v in row.items():
                if k != "step":
                    first.setdefault(k, v)
                    last[k] = v
            yield FinetuneProgress(
                step=i + 1, steps=steps, task_loss=float(row.get(task_key, float("nan"))),
                fusion_loss=float(row.get("fusion", float("nan"))), seconds=time.time() - t0,
                extra={k: v for k, v in row.items() if k not in ("step", task_key, "fusion")}, model=model,
            )
    return first, last


def note_tuning(new, runner, entry: dict[str, Any], first: dict[str, float], last: dict[str, float]) -> None:
    """Name the tuned copy ``<base>-finetuned`` and add ``entry`` with the first and last batch losses to
    its ``finetune_history``."""
    base = new.meta.get("base") or runner.name
    new.meta["base"] = base
    new.meta["method"] = base if str(base).endswith("-finetuned") else f"{base}-finetuned"
    entry = entry | {
        "first_batch_losses": {k: round(float(v), 5) for k, v in first.items()},
        "last_batch_losses": {k: round(float(v), 5) for k, v in last.items()},
    }
    new.meta["finetune_history"] = [*new.meta.get("finetune_history", []), entry]
