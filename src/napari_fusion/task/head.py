"""A pixel classifier fitted in about a second on painted strokes: the instant result of fine-tuning.

The head is a small MLP on the filter features of the sources and of the fused image
(:mod:`.features`), standardised with the painted pixels' statistics and trained full-batch with
class-balanced cross-entropy, so that a class painted with a few pixels counts as much as one painted
with many. After fitting, a painted class that the head would still lose on most of its own strokes
gets its bias raised until it wins there: no painted class can vanish from the result.

Label values are the painted values themselves (painting class 10000 costs what class 2 costs: the
head has one output per *painted* class), except ``background_value``, which means class 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PixelHead", "fit_head", "HEAD_HIDDEN"]

HEAD_HIDDEN = 32
MAX_PIXELS_PER_CLASS = 20_000  # painted pixels used per class (a random subset beyond it)
MIN_STROKE_RECALL = 0.5  # a painted class must win on at least this share of its own strokes


@dataclass
class PixelHead:
    """Weights of the head and what its outputs mean (``values[k]`` is output ``k``'s label value)."""

    values: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[str, ...]
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    w1: torch.Tensor  # (hidden, C)
    b1: torch.Tensor  # (hidden,)
    w2: torch.Tensor  # (K, hidden)
    b2: torch.Tensor  # (K,)
    smooth: float = 1.0  # Gaussian sigma on the class probabilities before the decision (0: none)
    info: dict = field(default_factory=dict)
    last_decision: list = field(default_factory=list, repr=False)  # labels of the images it was fitted on

    @property
    def n_features(self) -> int:
        return int(self.mean.numel())

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) features -> (N, K, H, W) logits (differentiable)."""
        x = (feats - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        h = F.gelu(F.conv2d(x, self.w1[:, :, None, None], self.b1))
        return F.conv2d(h, self.w2[:, :, None, None], self.b2)

    @torch.no_grad()
    def raw_logits(self, feats: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(H, W, C) features -> (1, K, H, W) logits."""
        t = torch.as_tensor(np.asarray(feats, np.float32)) if not isinstance(feats, torch.Tensor) else feats
        if t.ndim != 3 or t.shape[-1] != self.n_features:
            raise ValueError(f"the head takes (H, W, {self.n_features}) features, got {tuple(t.shape)}")
        return self.logits(t.permute(2, 0, 1)[None].to(self.mean.device))

    def decide(self, logits: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(1, K, H, W) logits (+ a bias change) -> (H, W) output indices, probabilities smoothed."""
        p = torch.softmax(logits if bias is None else logits + bias.view(1, -1, 1, 1), 1)
        if self.smooth > 0:
            from .features import _blur

            p = _blur(p, self.smooth)
        return p.argmax(1)[0]

    def predict(self, feats: np.ndarray | torch.Tensor) -> np.ndarray:
        """(H, W, C) features -> (H, W) int32 label values."""
        k = self.decide(self.raw_logits(feats)).cpu().numpy()
        return np.asarray(self.values, np.int32)[k]

    def to(self, device) -> "PixelHead":
        for k in ("mean", "std", "w1", "b1", "w2", "b2"):
            setattr(self, k, getattr(self, k).to(device))
        return self

    # --- persistence (tensors + JSON-able metadata; no code) ----------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).detach().cpu().contiguous().clone() for k in ("mean", "std", "w1", "b1", "w2", "b2")}

    def meta(self) -> dict[str, Any]:
        return {"values": list(self.values), "names": list(self.names), "colors": list(self.colors), "smooth": self.smooth,
                "hidden": int(self.w1.shape[0]), "n_features": self.n_features, "info": self.info}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "PixelHead":
        values = tuple(int(v) for v in meta["values"])
        k, c, h = len(values), int(meta["n_features"]), int(meta["hidden"])
        want = {"mean": (c,), "std": (c,), "w1": (h, c), "b1": (h,), "w2": (k, h), "b2": (k,)}
        for name, shape in want.items():
            if name not in tensors:
                raise KeyError(f"head tensor {name!r} is missing")
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"head tensor {name!r} is {tuple(tensors[name].shape)}, expected {shape}")
        names, colors = tuple(str(x) for x in meta["names"]), tuple(str(x) for x in meta["colors"])
        if len(names) != k or len(colors) != k or len(set(values)) != k:
            raise ValueError("head metadata: values, names and colors must be lists of one length with unique values")
        return cls(values, names, colors, *(tensors[n].float() for n in want), smooth=float(meta.get("smooth", 1.0)),
                   info=dict(meta.get("info") or {}))


def _default_color(value: int) -> str:
    from ..methods.tdfusion import default_class_color

    return default_class_color(int(value))


def fit_head(
    feats: np.ndarray | Sequence[np.ndarray],
    strokes: np.ndarray | Sequence[np.ndarray],
    *,
    background_value: int | None = None,
    class_names: Mapping[int, str] | None = None,
    class_colors: Mapping[int, str] | None = None,
    hidden: int = HEAD_HIDDEN,
    steps: int = 150,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    smooth: float = 1.0,
    seed: int = 0,
) -> PixelHead:
    """Fit a head on the painted pixels (``strokes > 0``) of one or several images.

    ``feats``: (H, W, C) features of each image (:func:`.features.pixel_features`); ``strokes``: the
    painted labels on the same grid (0 = unpainted). At least two classes must be painted.
    """
    feats = [feats] if isinstance(feats, np.ndarray) else list(feats)
    strokes = [strokes] if isinstance(strokes, np.ndarray) else list(strokes)
    if len(feats) != len(strokes):
        raise ValueError(f"{len(feats)} feature images but {len(strokes)} stroke images")
    xs, ys = [], []
    for i, (f, s) in enumerate(zip(feats, strokes)):
        s = np.asarray(s)
        if f.shape[:2] != s.shape:
            raise ValueError(f"strokes {i} are {s.shape} but their features are {f.shape[:2]}")
        m = s > 0
        xs.append(np.asarray(f[m], np.float32))
        ys.append(s[m].astype(np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if background_value is not None:
        y = np.where(y == int(background_value), 0, y)
    values = tuple(int(v) for v in np.unique(y))
    if len(values) < 2:
        what = "nothing is painted" if not values else f"only class {values[0]} is painted"
        raise ValueError(f"{what}; paint at least two classes (for example the object and its surroundings)")
    painted = {str(v): int(c) for v, c in zip(values, np.bincount(np.searchsorted(values, y), minlength=len(values)))}
    rng = np.random.default_rng(seed)
    keep = []
    for v in values:  # at most MAX_PIXELS_PER_CLASS pixels of each class
        idx = np.flatnonzero(y == v)
        keep.append(idx if len(idx) <= MAX_PIXELS_PER_CLASS else rng.choice(idx, MAX_PIXELS_PER_CLASS, replace=False))
    keep = np.concatenate(keep)
    x, y = x[keep], np.searchsorted(values, y[keep])
    counts = np.bincount(y, minlength=len(values)).astype(np.float32)
    weight = torch.from_numpy(counts.sum() / (len(values) * counts))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    xn = (xt - mean) / std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        l1, l2 = torch.nn.Linear(x.shape[1], hidden), torch.nn.Linear(hidden, len(values))
    opt = torch.optim.Adam([*l1.parameters(), *l2.parameters()], lr=lr, weight_decay=weight_decay)
    for _ in range(int(steps)):
        opt.zero_grad()
        loss = F.cross_entropy(l2(F.gelu(l1(xn))), yt, weight=weight)
        loss.backward()
        opt.step()
    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    colors = {int(k): str(v) for k, v in (class_colors or {}).items()}
    name_of = lambda v: names.get(v, "background" if v == 0 else f"class {v}")  # noqa: E731
    head = PixelHead(
        values, tuple(name_of(v) for v in values), tuple(colors.get(v, _default_color(v)) for v in values),
        mean, std, l1.weight.detach().clone(), l1.bias.detach().clone(), l2.weight.detach().clone(), l2.bias.detach().clone(),
        smooth=float(smooth),
    )
    # every painted class must win on at least half of its own strokes, as the head decides on whole
    # images (smoothed probabilities): raise the bias of any class that does not, until it does
    logits = [head.raw_logits(f) for f in feats]
    index = [np.searchsorted(values, np.where(s == background_value, 0, s) if background_value is not None else s) for s in strokes]
    painted_masks = [np.asarray(s) > 0 for s in strokes]
    bias = torch.zeros(len(values))
    raised: set[int] = set()
    for attempt in range(12):
        hit, total = np.zeros(len(values)), np.zeros(len(values))
        decided = []
        for lg, idx, m in zip(logits, index, painted_masks):
            k = head.decide(lg, bias).cpu().numpy()
            decided.append(k)
            np.add.at(total, idx[m], 1)
            np.add.at(hit, idx[m][k[m] == idx[m]], 1)
        losing = [k for k in range(len(values)) if total[k] and hit[k] / total[k] < MIN_STROKE_RECALL]
        if not losing:
            break
        for k in losing:
            bias[k] += 0.5 * 2 ** min(attempt, 6)
            raised.add(values[k])
    head.b2 = head.b2 + bias
    head.info = {"painted_pixels": painted, "stroke_accuracy": round(float(hit.sum() / max(total.sum(), 1)), 4),
                 "loss": round(float(loss.detach()), 5), "bias_raised_for": sorted(raised), "steps": int(steps)}
    head.last_decision = [np.asarray(values, np.int32)[k] for k in decided]  # the labels of the images fitted on
    return head
