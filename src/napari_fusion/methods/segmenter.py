"""A compact U-Net segmenter for fused images (TDFusion's task network).

TDFusion's authors use SegFormer-b0; we need something that trains on a 2-core CPU in minutes and
runs on any image size, so this is a small 3-level U-Net on one input channel (the fused image).
Normalisation is a per-pixel LayerNorm over channels: it does not depend on the batch or on the
image extent, so a tile segments like the whole image and a batch of one trains like a batch of 16.

``extend_classes(n)`` grows the output head to ``n`` classes keeping the old classes' weights, so a
user who paints a class index the model does not know yet can fine-tune it in.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["ChannelNorm", "Segmenter", "segmenter_receptive_radius"]


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of (N, C, H, W), independently at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused layer_norm over the last axis of the channels-last view: one pass over the
        # activations instead of seven (on a channels-last tensor the permute copies nothing); the
        # result stays channels-last, as the next convolution wants it (0.10 s instead of 0.57 s
        # for 16 x 1.2 Mpx on one thread)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class _DoubleConv(nn.Sequential):
    """Two 3x3 conv + norm + GELU. ``first=True`` (on the raw image) skips the first norm.

    A channel norm right after a conv of a 1-channel image would divide the intensity out (in a flat
    region every channel is ``x * sum(w_c)``): the network could then only see edges, never how
    bright a region is. So the first conv has a bias and no norm.
    """

    def __init__(self, cin: int, cout: int, first: bool = False):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=True),
            nn.Identity() if first else ChannelNorm(cout),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=True),
            ChannelNorm(cout),
            nn.GELU(),
        )


class Segmenter(nn.Module):
    """Small U-Net: ``(N, in_ch, H, W)`` -> class logits ``(N, n_classes, H, W)``; H, W multiples of 8.

    ``width`` is the channel count of the first level (doubles per level, 3 down-samplings).
    """

    def __init__(self, n_classes: int, width: int = 16, in_channels: int = 1):
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"a segmenter needs at least one class, got n_classes={n_classes}")
        w = int(width)
        self.config = {"n_classes": int(n_classes), "width": w, "in_channels": int(in_channels)}
        self.enc0 = _DoubleConv(in_channels, w, first=True)
        self.enc1 = _DoubleConv(w, 2 * w)
        self.enc2 = _DoubleConv(2 * w, 4 * w)
        self.mid = _DoubleConv(4 * w, 4 * w)
        self.up2 = nn.Conv2d(4 * w, 4 * w, 1)
        self.dec2 = _DoubleConv(8 * w, 2 * w)
        self.up1 = nn.Conv2d(2 * w, 2 * w, 1)
        self.dec1 = _DoubleConv(4 * w, w)
        self.up0 = nn.Conv2d(w, w, 1)
        self.dec0 = _DoubleConv(2 * w, w)
        self.head = nn.Conv2d(w, n_classes, 1)

    pad_multiple = 8

    @property
    def n_classes(self) -> int:
        return int(self.head.out_channels)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self._up(self.up2(m), e2), e2], 1))
        d1 = self.dec1(torch.cat([self._up(self.up1(d2), e1), e1], 1))
        d0 = self.dec0(torch.cat([self._up(self.up0(d1), e0), e0], 1))
        return self.head(d0)

    @torch.no_grad()
    def extend_classes(self, new_n: int) -> "Segmenter":
        """Grow the head to ``new_n`` classes in place; old classes keep their weights exactly.

        New classes start with small random weights and a bias a little below the old classes'
        mean, so predictions do not change until fine-tuning teaches the new class.
        """
        old = self.head
        if new_n < old.out_channels:
            raise ValueError(f"cannot shrink a segmenter from {old.out_channels} to {new_n} classes")
        if new_n == old.out_channels:
            return self
        head = nn.Conv2d(old.in_channels, new_n, 1).to(device=old.weight.device, dtype=old.weight.dtype)
        head.weight[: old.out_channels] = old.weight
        head.bias[: old.out_channels] = old.bias
        head.weight[old.out_channels :].normal_(0.0, 0.01)
        head.bias[old.out_channels :] = old.bias.mean() - 1.0
        self.head = head
        self.config["n_classes"] = int(new_n)
        return self


def segmenter_receptive_radius(levels: int = 3) -> int:
    """Pixels of context on each side that one output pixel depends on (for tiling halos)."""
    # each 3x3 conv at stride s adds s; each 2x2 pool at stride s adds s
    r, s = 0, 1
    for _ in range(levels):
        r += 2 * s  # two 3x3 convs
        r += s  # pool
        s *= 2
    r += 2 * s  # bottleneck
    for _ in range(levels):
        s //= 2
        r += 2 * s
    return r
