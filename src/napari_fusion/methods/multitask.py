"""MultiTaskVIF (after Zhao, Howes and Zhang 2025): one network, fused image and segmentation in one pass.

The paper ("Segmentation-oriented visible and infrared image fusion via multi-task learning") has no
public code; this is our reading of its idea: a *shared encoder* sees both sources, a *multi-task
head* (MTH) decoder shares its coarse stages between the two tasks and splits into two paths at full
resolution, one giving the fused image and one the segmentation logits. Both are trained jointly end
to end (fusion loss + segmentation loss, :mod:`napari_fusion.training.multitask`), so no separate
segmentation model runs at inference.

:class:`MultiTaskNet` (~120k parameters with the defaults, against ~270k for TDFusion's fusion net +
U-Net segmenter cascade at inference):

- encoder: a 3x3 stem per source (modality-specific), merged by a 3x3 conv at full resolution
  (``e0``), then three stages of (2x2 max-pool, two 3x3 convs) at 1/2, 1/4 and 1/8 resolution;
- shared decoder: two stages (nearest up-sampling, skip concatenation, two 3x3 convs) back to 1/2;
- fusion path: up to full resolution, concatenated with ``e0`` and the two sources, two 3x3 convs,
  a 3x3 conv to one channel and a sigmoid;
- segmentation path: up to full resolution, concatenated with ``e0``, two 3x3 convs, a 1x1 conv to
  ``n_classes`` logits.

Every normalisation is per pixel (:class:`~napari_fusion.methods.segmenter.ChannelNorm`) and every
operation local, so the net is fully convolutional with a finite receptive field: any size works
(the runner pads to a multiple of 8) and tiles give the untiled result (``halo``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .torch_runner import (SingleNetRunner, check_pair, count_parameters, pad_to_multiple, resolve_torch_device, sub_state,
                           tensor_to_unit, to_tensor)
from .registry import ClassInfo, Method, register, register_family, weights_builder
from .segmenter import ChannelNorm

__all__ = [
    "FAMILY",
    "WEIGHTS",
    "IVIF_WEIGHTS",
    "MultiTaskNet",
    "MultiTaskRunner",
    "from_bundle",
    "load_runner",
    "new_runner",
    "multitask_receptive_radius",
]

FAMILY = "MultiTaskVIF"
WEIGHTS = "multitaskvif_brats.safetensors"
IVIF_WEIGHTS = "multitaskvif_ivif.safetensors"


class _ConvNormAct(nn.Sequential):
    """3x3 conv (no bias) -> per-pixel channel norm -> GELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), ChannelNorm(cout), nn.GELU())


class _Stage(nn.Module):
    """Two conv-norm-act layers with a residual (1x1-projected when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.c1 = _ConvNormAct(cin, cout)
        self.c2 = _ConvNormAct(cout, cout)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.c2(self.c1(x))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class MultiTaskNet(nn.Module):
    """Two single-channel sources ``(N,1,H,W)`` -> fused ``(N,1,H,W)`` in (0,1) and logits ``(N,C,H,W)``.

    ``widths`` are the channel counts at full, 1/2, 1/4 and 1/8 resolution; H and W must be
    multiples of 8 (:attr:`pad_multiple`; the runner pads).
    """

    pad_multiple = 8

    def __init__(self, n_classes: int = 5, widths: Sequence[int] = (16, 24, 32, 48), stem: int = 8, det_width: int = 0):
        super().__init__()
        if int(n_classes) < 1:
            raise ValueError(f"MultiTaskNet needs at least one class, got n_classes={n_classes}")
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.config = {"n_classes": int(n_classes), "widths": [w0, w1, w2, w3], "stem": int(stem)}
        # shared encoder
        self.stem_a = nn.Conv2d(1, stem, 3, padding=1, bias=True)
        self.stem_b = nn.Conv2d(1, stem, 3, padding=1, bias=True)
        self.enc0 = _Stage(2 * stem, w0)
        self.enc1 = _Stage(w0, w1)
        self.enc2 = _Stage(w1, w2)
        self.enc3 = _Stage(w2, w3)
        # multi-task head decoder: shared coarse stages ...
        self.up3 = nn.Conv2d(w3, w2, 1, bias=False)
        self.dec2 = _Stage(2 * w2, w2)
        self.up2 = nn.Conv2d(w2, w1, 1, bias=False)
        self.dec1 = _Stage(2 * w1, w1)
        # ... then a fusion path and a segmentation path at full resolution
        self.fuse_up = nn.Conv2d(w1, w0, 1, bias=False)
        self.fuse_body = nn.Sequential(_ConvNormAct(2 * w0 + 2, w0), _ConvNormAct(w0, w0))
        self.fuse_out = nn.Conv2d(w0, 1, 3, padding=1, bias=True)
        self.seg_up = nn.Conv2d(w1, w0, 1, bias=False)
        self.seg_body = nn.Sequential(_ConvNormAct(2 * w0, w0), _ConvNormAct(w0, w0))
        self.seg_out = nn.Conv2d(w0, int(n_classes), 1, bias=True)
        self.det = None  # an object detection head (centres + sizes), see attach_detector
        if int(det_width) > 0:
            self.attach_detector(int(det_width))

    @property
    def n_classes(self) -> int:
        return int(self.seg_out.out_channels)

    @property
    def receptive_radius(self) -> int:
        return multitask_receptive_radius()

    def features(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared part: full-resolution encoder features ``e0`` and the decoder's 1/2-resolution ``d1``."""
        x = torch.cat([F.gelu(self.stem_a(a)), F.gelu(self.stem_b(b))], 1)
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([_up(self.up3(e3), e2), e2], 1))
        d1 = self.dec1(torch.cat([_up(self.up2(d2), e1), e1], 1))
        return e0, d1

    def fusion_path(self, e0: torch.Tensor, d1: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_up(self.fuse_up(d1), e0), e0, a, b], 1)
        return torch.sigmoid(self.fuse_out(self.fuse_body(x)))

    def segmentation_path(self, e0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
        x = torch.cat([_up(self.seg_up(d1), e0), e0], 1)
        return self.seg_out(self.seg_body(x))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``(fused, logits)``."""
        e0, d1 = self.features(a, b)
        return self.fusion_path(e0, d1, a, b), self.segmentation_path(e0, d1)

    def attach_detector(self, width: int = 32) -> "MultiTaskNet":
        """Add a :class:`~napari_fusion.methods.detection.DetHead` (one heat map per object class, i.e.
        every class but 0) on the decoder's 1/2-resolution features and the pooled class probabilities."""
        from .detection import DetHead

        w1 = self.dec1.c2[0].out_channels
        self.det = DetHead(w1 + self.n_classes, self.n_classes - 1, int(width))
        self.config["det_width"] = int(width)
        return self

    def detection_inputs(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """What the detection head reads: ``d1`` and the class probabilities pooled to 1/2 resolution."""
        e0, d1 = self.features(a, b)
        probs = self.segmentation_path(e0, d1).softmax(1)
        return torch.cat([d1, F.avg_pool2d(probs, 2)], 1)

    def detection_maps(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat logits and log half-sizes at 1/2 resolution (needs :meth:`attach_detector`)."""
        if self.det is None:
            raise RuntimeError("this network has no detection head")
        return self.det(self.detection_inputs(a, b))

    def fuse_only(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The fused image alone (skips the segmentation path's compute)."""
        e0, d1 = self.features(a, b)
        return self.fusion_path(e0, d1, a, b)

    @torch.no_grad()
    def extend_classes(self, new_n: int) -> "MultiTaskNet":
        """Grow the segmentation head to ``new_n`` classes in place; old classes keep their weights.

        New classes start with small random weights and a bias below the old classes' mean, so the
        predictions do not change until fine-tuning teaches them.
        """
        old = self.seg_out
        new_n = int(new_n)
        if new_n < old.out_channels:
            raise ValueError(f"cannot shrink the segmentation head from {old.out_channels} to {new_n} classes")
        if new_n == old.out_channels:
            return self
        head = nn.Conv2d(old.in_channels, new_n, 1, bias=True).to(device=old.weight.device, dtype=old.weight.dtype)
        head.weight[: old.out_channels] = old.weight
        head.bias[: old.out_channels] = old.bias
        head.weight[old.out_channels :].normal_(0.0, 0.01)
        head.bias[old.out_channels :] = old.bias.mean() - 1.0
        self.seg_out = head
        self.config["n_classes"] = new_n
        return self


def multitask_receptive_radius(levels: int = 3) -> int:
    """Pixels of context on each side one output pixel depends on (an upper bound; the tiling halo).

    Stem and ``enc0``: 3 convs at stride 1; each level: a pool and two convs at its stride; the
    decoder: nearest up-sampling (counted like a pool) and two convs per level back to 1/2; the
    heads: a 1x1 and two or three 3x3 convs at full resolution.
    """
    r, s = 3, 1
    for _ in range(levels):
        r += s  # 2x2 pool
        s *= 2
        r += 2 * s  # two 3x3 convs
    for _ in range(levels - 1):  # shared decoder down to 1/2
        r += s  # up-sampling
        s //= 2
        r += 2 * s
    r += s  # up to full resolution
    return r + 3  # fusion path: three 3x3 convs (segmentation path: two)


# --------------------------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------------------------
def _make_classes(spec) -> tuple[ClassInfo, ...]:
    from .tdfusion import make_classes

    return make_classes(spec)


def _default_color(index: int) -> str:
    from .tdfusion import default_class_color

    return default_class_color(index)


def brats_classes() -> tuple[ClassInfo, ...]:
    """BraTS tumour classes (0 background, 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing)."""
    from .classes import BRATS_CLASSES

    return _make_classes(BRATS_CLASSES)


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
class MultiTaskRunner(SingleNetRunner):
    """Runner of a :class:`MultiTaskNet`: ``fuse``, ``segment`` and ``fuse_and_segment`` (one pass).

    ``classes`` are the label values the model predicts (label value = output index; outputs
    without a ClassInfo are never predicted); ``meta`` carries the model's record.
    """

    family = FAMILY
    channels_last = True
    # Image + labels in one pass cost more per pixel as the image grows (one CPU thread: 4.9 s/Mpx at
    # 960x1280, 6.4 at 1920x2560); in 512-pixel tiles (blended overlap: tiles match the whole image
    # within one grey level, not exactly) 3.4-3.7 at both sizes; 768-pixel tiles 4.6-4.7.
    cpu_tile = 512
    default_method = "multitaskvif"

    def __init__(
        self,
        net: MultiTaskNet,
        classes: Sequence | None = None,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
    ):
        super().__init__(net, device=device, meta=meta, pad_multiple=MultiTaskNet.pad_multiple)
        cls = _make_classes(classes) if classes else ()
        if not cls:
            cls = tuple(ClassInfo(i, f"class {i}", _default_color(i)) for i in range(net.n_classes))
        top = max(c.index for c in cls)
        if top >= net.n_classes:
            raise ValueError(f"class index {top} is outside the model's {net.n_classes} segmentation outputs")
        self.classes: tuple[ClassInfo, ...] = cls

    # --- parts ---------------------------------------------------------------------------------
    @property
    def n_classes(self) -> int:
        return self.net.n_classes

    # --- inference -----------------------------------------------------------------------------
    def forward_fused(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net.fuse_only(a, b)

    def _eval(self) -> None:
        self.net.eval()

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass: fused unit image (float32) and its int32 labels."""
        a, b = check_pair(a, b)
        self._eval()
        fused, logits = self.run_padded(self.net, a, b)
        return tensor_to_unit(fused), self.labels_from_logits(logits)

    def segment(self, fused: np.ndarray | None = None, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        """int32 labels; the net segments from the *sources* (one pass on ``a``, ``b``), not from ``fused``."""
        if a is None or b is None:
            raise ValueError(
                "MultiTaskVIF segments from the two sources in its single pass; call segment(fused, a, b) "
                "or fuse_and_segment(a, b) with both sources"
            )
        return self.fuse_and_segment(a, b)[1]

    def logits(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Class logits ``(n_classes, H, W)`` float32 of a source pair (for losses and confidence maps)."""
        a, b = check_pair(a, b)
        self._eval()
        _, lg = self.run_padded(self.net, a, b)
        return lg[0].float().to("cpu").numpy()

    def detect_boxes(self, a: np.ndarray, b: np.ndarray) -> list | None:
        """Object boxes of a unit source pair from the detection head (None: the model has none)."""
        if getattr(self.net, "det", None) is None:
            return None
        from .detection import decode_boxes

        a, b = check_pair(a, b)
        self._eval()
        with torch.inference_mode():
            ta, hw = pad_to_multiple(to_tensor(a, self.device), self.pad_multiple)
            tb, _ = pad_to_multiple(to_tensor(b, self.device), self.pad_multiple)
            heat, size = self.net.detection_maps(ta, tb)
            h2, w2 = (hw[0] + 1) // 2, (hw[1] + 1) // 2
            names = {c.index - 1: c.name for c in self.classes if c.index > 0}
            return decode_boxes(heat[0, :, :h2, :w2].cpu(), size[0, :, :h2, :w2].cpu(), hw, names)

    # --- persistence ---------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata for :func:`napari_fusion.methods.store.save_bundle`."""
        config = {"net": copy.deepcopy(self.net.config)}
        return self.make_bundle(config, ["fused", "labels"], count_parameters(self.net), classes=self.classes)


def from_bundle(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: str | torch.device = "cpu") -> MultiTaskRunner:
    """Rebuild a runner from a model file's tensors and metadata (strict: every tensor must fit)."""
    cfg = dict((meta.get("config") or {}).get("net") or {})
    net = MultiTaskNet(**cfg)
    net.load_state_dict(sub_state(tensors, "net"), strict=True)
    return MultiTaskRunner(net, classes=meta.get("classes"), device=resolve_torch_device(device), meta=meta)


def load_runner(path: str | Path, device: str | torch.device = "cpu") -> MultiTaskRunner:
    """A runner from a MultiTaskVIF model file (errors from :mod:`store` for bad files)."""
    from .store import load_family_runner

    return load_family_runner(path, FAMILY, from_bundle, device)


def new_runner(
    classes: Sequence | None = None, seed: int = 0, device: str | torch.device = "cpu", **net_kw: Any
) -> MultiTaskRunner:
    """A freshly initialised (seeded) runner; ``classes`` default to the BraTS tumour classes."""
    cls = _make_classes(classes) if classes else brats_classes()
    n = max(c.index for c in cls) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MultiTaskNet(n_classes=n, **net_kw)
    return MultiTaskRunner(net, cls, device=device, meta={"method": "multitaskvif"})


def ivif_classes() -> tuple[ClassInfo, ...]:
    """Infrared/visible object classes (0 background, 1 person, 2 bicycle, 3 car; TDFusion's table)."""
    from .classes import IVIF_CLASSES

    return _make_classes(IVIF_CLASSES)


def _builder(default_file: str, method: str, task: str):
    train = f"napari_fusion.training.multitask --task {task} --data auto"
    return weights_builder(load_runner, default_file, method, "MultiTaskVIF", train)


_build = _builder(WEIGHTS, "multitaskvif", "brats")


register_family(FAMILY, from_bundle)

register(
    Method(
        "multitaskvif",
        "MultiTaskVIF (2025): shared encoder, multi-task head: fused image and segmentation in one pass "
        "(trained on BraTS FLAIR + T1c; fine-tune on painted labels for other pairs)",
        FAMILY,
        _build,
        weights=WEIGHTS,
        outputs=("fused", "labels"),
        halo=multitask_receptive_radius(),
        learned=True,
        extra={"classes": brats_classes()},
    )
)

register(
    Method(
        "multitaskvif-ivif",
        "MultiTaskVIF (2025) for infrared (A) + visible (B): fused image and person / bicycle / car labels in one "
        "pass (trained on the MSRS training split with its object boxes as weak pixel labels; a detection head gives the object boxes)",
        FAMILY,
        _builder(IVIF_WEIGHTS, "multitaskvif-ivif", "ivif"),
        weights=IVIF_WEIGHTS,
        outputs=("fused", "labels"),
        halo=multitask_receptive_radius(),
        learned=True,
        extra={"classes": ivif_classes()},
    )
)
