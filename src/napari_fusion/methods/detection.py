"""Objects as centres and sizes: a detection head on a segmenting network's features.

Connected components of a semantic segmentation merge touching objects (a group of people is one
component: docs/results/box_errors.md), so boxes come from a head of their own, as in CenterNet:
at half resolution, one heat map per object class whose peaks are object centres, and two maps of
the box's log half-width and half-height (in full-resolution pixels) read at each peak. Dilated
convolutions (1, 2, 4, 8) give it the context of a person-sized object.

:class:`DetHead` is the network; :func:`decode_boxes` turns its maps into
:class:`~napari_fusion.boxes.Box` es (3x3 peak picking, score = the peak's probability). Training:
:mod:`napari_fusion.training.det_head`.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DetHead", "decode_boxes", "HEAT_PRIOR", "MIN_SCORE", "MAX_BOXES"]

HEAT_PRIOR = 0.1  # initial centre probability everywhere (the heat maps' bias)
MIN_SCORE = 0.05  # peaks below this probability are not objects
MAX_BOXES = 100  # per image


class DetHead(nn.Module):
    """``(N, in_channels, h, w)`` features at half resolution -> heat logits ``(N, n_classes, h, w)``
    and log half-sizes ``(N, 2, h, w)`` (x, y; full-resolution pixels)."""

    def __init__(self, in_channels: int, n_classes: int, width: int = 32):
        super().__init__()
        self.config = {"in_channels": int(in_channels), "n_classes": int(n_classes), "width": int(width)}
        layers, c = [], int(in_channels)
        for d in (1, 2, 4, 8):
            layers += [nn.Conv2d(c, int(width), 3, padding=d, dilation=d), nn.GELU()]
            c = int(width)
        self.body = nn.Sequential(*layers)
        self.heat = nn.Conv2d(c, int(n_classes), 1)
        self.size = nn.Conv2d(c, 2, 1)
        nn.init.constant_(self.heat.bias, math.log(HEAT_PRIOR / (1 - HEAT_PRIOR)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        return self.heat(y), self.size(y)


@torch.no_grad()
def decode_boxes(
    heat_logits: torch.Tensor,
    log_size: torch.Tensor,
    shape: tuple[int, int],
    names: Mapping[int, str] | None = None,
    *,
    min_score: float = MIN_SCORE,
    max_boxes: int = MAX_BOXES,
) -> list:
    """Boxes of one image from its ``(K, h, w)`` heat logits and ``(2, h, w)`` log half-sizes at half
    resolution; ``shape``: the full-resolution (rows, cols) the boxes are clipped to. Heat channel
    ``k`` is YOLO class ``k`` (label value ``k + 1``), named by ``names[k]``. Highest score first."""
    from ..boxes.box import Box

    if heat_logits.ndim != 3 or log_size.ndim != 3 or log_size.shape[0] != 2 or heat_logits.shape[1:] != log_size.shape[1:]:
        raise ValueError(f"decode_boxes takes (K, h, w) heat and (2, h, w) sizes, got {tuple(heat_logits.shape)} and {tuple(log_size.shape)}")
    p = heat_logits.float().sigmoid()
    peaks = (p == F.max_pool2d(p[None], 3, 1, 1)[0]) & (p > float(min_score))
    k, y, x = torch.nonzero(peaks, as_tuple=True)
    score = p[k, y, x]
    order = score.argsort(descending=True)[: int(max_boxes)]
    rows, cols = int(shape[0]), int(shape[1])
    half = log_size.float().clamp(-4.0, 8.0).exp()
    out = []
    for j in order.tolist():
        c, yy, xx = int(k[j]), int(y[j]), int(x[j])
        cx, cy = (xx + 0.5) * 2.0, (yy + 0.5) * 2.0
        hw, hh = float(half[0, yy, xx]), float(half[1, yy, xx])
        x0, y0, x1, y1 = max(cx - hw, 0.0), max(cy - hh, 0.0), min(cx + hw, float(cols)), min(cy + hh, float(rows))
        if x1 > x0 and y1 > y0:
            out.append(Box(c, x0, y0, x1, y1, float(score[j]), (names or {}).get(c, f"class {c}")))
    return out
