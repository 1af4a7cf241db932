"""TDFusion (Bai et al., CVPR 2025): task-driven fusion with a learnable fusion loss.

Three networks, all fully convolutional with a finite receptive field (so tiles fuse like the whole
image and any size works):

- :class:`FusionNet` (~55k parameters): a 3x3 stem per source, two transformer-style blocks per
  stream (per-pixel channel norm, gated depthwise "local attention", gated depthwise feed-forward),
  a gated cross-stream fusion where each stream takes in the other's features where a learned gate
  opens, three blocks on the joint features and a sigmoid head. The authors use global
  channel-attention blocks; we keep every operation local so that tiling is exact.
- :class:`LossNet` (~45k parameters): looks at both sources and outputs per-pixel softmax weights
  over the two sources for the intensity term of the fusion loss. Its last layer starts at zero,
  i.e. equal weights (the "neutral start").
- an optional :class:`~napari_fusion.methods.segmenter.Segmenter` on the fused image (the task network).

Registered methods: ``tdfusion`` (IR/visible fusion net, loss module at its neutral start, no
segmenter yet: the base that painted labels make task-driven) and ``tdfusion-brats`` (fusion net,
meta-learned loss module and tumour segmenter trained on BraTS FLAIR + T1c).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .torch_runner import TorchRunner, check_pair, count_parameters, resolve_torch_device, sub_state
from .classes import BRATS_CLASSES, IVIF_CLASSES
from .registry import ClassInfo, Method, register, register_family, weights_builder
from .segmenter import ChannelNorm, Segmenter, segmenter_receptive_radius

__all__ = [
    "FAMILY",
    "FusionNet",
    "LossNet",
    "TDFusionRunner",
    "from_bundle",
    "load_runner",
    "fusion_receptive_radius",
    "default_class_color",
    "make_classes",
]

FAMILY = "TDFusion"
IVIF_WEIGHTS = "tdfusion_ivif.safetensors"
BRATS_WEIGHTS = "tdfusion_brats.safetensors"


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------
class GatedLocalAttention(nn.Module):
    """Local stand-in for self-attention: values mixed by a depthwise 3x3 and gated per pixel."""

    def __init__(self, dim: int):
        super().__init__()
        self.qv = nn.Conv2d(dim, 2 * dim, 1, bias=False)
        self.dw = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, v = self.dw(self.qv(x)).chunk(2, dim=1)
        return self.proj(torch.sigmoid(q) * v)


class GatedFeedForward(nn.Module):
    """Gated depthwise feed-forward: GELU(x1) * x2 after a 1x1 expansion and a depthwise 3x3."""

    def __init__(self, dim: int, expansion: float = 2.0):
        super().__init__()
        hidden = int(dim * expansion)
        self.inp = nn.Conv2d(dim, 2 * hidden, 1, bias=False)
        self.dw = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dw(self.inp(x)).chunk(2, dim=1)
        return self.out(F.gelu(x1) * x2)


class Block(nn.Module):
    """Pre-norm residual block: local attention then feed-forward (receptive radius +2)."""

    def __init__(self, dim: int, expansion: float = 2.0):
        super().__init__()
        self.n1 = ChannelNorm(dim)
        self.attn = GatedLocalAttention(dim)
        self.n2 = ChannelNorm(dim)
        self.ffn = GatedFeedForward(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.ffn(self.n2(x))


class CrossGate(nn.Module):
    """Gated fusion of two streams: each takes the other's features where its gate opens."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Conv2d(2 * dim, 2 * dim, 1, bias=True)
        self.gate_dw = nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim, bias=True)
        self.v_a = nn.Conv2d(dim, dim, 1, bias=False)
        self.v_b = nn.Conv2d(dim, dim, 1, bias=False)
        self.proj = nn.Conv2d(2 * dim, 2 * dim, 1, bias=False)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        ga, gb = torch.sigmoid(self.gate_dw(self.gate(torch.cat([fa, fb], 1)))).chunk(2, dim=1)
        fa2 = fa + ga * self.v_b(fb)  # A's stream picks up B's features where ga opens
        fb2 = fb + gb * self.v_a(fa)
        x = torch.cat([fa2, fb2], 1)
        return x + self.proj(x)


# --------------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------------
class FusionNet(nn.Module):
    """Two single-channel sources ``(N,1,H,W)`` -> fused ``(N,1,H,W)`` in (0, 1); any H, W.

    ``down=2`` runs the blocks at half resolution (a 2x2 stride-2 conv after each full-resolution stem,
    a pixel-shuffle back up, the stems' full-resolution features joined again before the head): the
    same receptive field in a quarter of the memory traffic, ~4x faster on a CPU. ``down=1`` is the
    earlier all-full-resolution net (files without ``down`` in their config). With ``down=2`` the input
    sides must be even (the runner pads to ``pad_multiple``; tiles are aligned to 32 pixels).
    """

    def __init__(self, dim: int = 16, enc_blocks: int = 2, dec_blocks: int = 3, expansion: float = 2.0, down: int = 1):
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"FusionNet down must be 1 or 2, got {down}")
        self.config = {"dim": dim, "enc_blocks": enc_blocks, "dec_blocks": dec_blocks, "expansion": expansion}
        if down != 1:
            self.config["down"] = down
        self.down = down
        self.stem_a = nn.Conv2d(1, dim, 3, padding=1, bias=True)
        self.stem_b = nn.Conv2d(1, dim, 3, padding=1, bias=True)
        if down == 2:
            self.down_a = nn.Conv2d(dim, dim, 2, stride=2, bias=True)
            self.down_b = nn.Conv2d(dim, dim, 2, stride=2, bias=True)
            self.up = nn.Sequential(nn.Conv2d(2 * dim, 8 * dim, 1, bias=True), nn.PixelShuffle(2))
        self.enc_a = nn.Sequential(*[Block(dim, expansion) for _ in range(enc_blocks)])
        self.enc_b = nn.Sequential(*[Block(dim, expansion) for _ in range(enc_blocks)])
        self.cross = CrossGate(dim)
        self.dec = nn.Sequential(*[Block(2 * dim, expansion) for _ in range(dec_blocks)])
        self.head0 = nn.Conv2d(2 * dim, dim, 3, padding=1, bias=True)
        self.head1 = nn.Conv2d(dim, 1, 3, padding=1, bias=True)

    @property
    def pad_multiple(self) -> int:
        return self.down

    @property
    def receptive_radius(self) -> int:
        c = self.config
        return fusion_receptive_radius(c["enc_blocks"], c["dec_blocks"], self.down)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sa, sb = self.stem_a(a), self.stem_b(b)
        if self.down == 2:
            fa, fb = self.enc_a(self.down_a(sa)), self.enc_b(self.down_b(sb))
            # full-resolution stem features + the upsampled joint features (2*dim channels each)
            x = torch.cat([sa, sb], 1) + self.up(self.dec(self.cross(fa, fb)))
        else:
            x = self.dec(self.cross(self.enc_a(sa), self.enc_b(sb)))
        x = F.leaky_relu(self.head0(x), 0.1)
        return torch.sigmoid(self.head1(x))


class LossNet(nn.Module):
    """Loss generation module: sources -> ``(N, 2, H, W)`` per-pixel softmax weights over (A, B).

    The last conv is initialised to zero, so an untrained module gives (0.5, 0.5) everywhere.
    ``centred=True``: the weight logit (A's minus B's) has its mean over each image subtracted, so the
    module says *where* to follow which source relative to the image's own balance and cannot drift
    to one source everywhere (the global degree of freedom that a co-adapting task network rewards:
    ``docs/results/meta_gradient.md``). Files without ``centred`` in their config are uncentred.
    """

    def __init__(self, dim: int = 16, enc_blocks: int = 1, joint_blocks: int = 3, expansion: float = 2.0, centred: bool = False):
        super().__init__()
        self.config = {"dim": dim, "enc_blocks": enc_blocks, "joint_blocks": joint_blocks, "expansion": expansion}
        if centred:
            self.config["centred"] = True
        self.centred = bool(centred)
        self.stem_a = nn.Conv2d(1, dim, 3, padding=1, bias=True)
        self.stem_b = nn.Conv2d(1, dim, 3, padding=1, bias=True)
        self.enc_a = nn.Sequential(*[Block(dim, expansion) for _ in range(enc_blocks)])
        self.enc_b = nn.Sequential(*[Block(dim, expansion) for _ in range(enc_blocks)])
        self.joint = nn.Sequential(*[Block(2 * dim, expansion) for _ in range(joint_blocks)])
        self.head0 = nn.Conv2d(2 * dim, dim, 3, padding=1, bias=True)
        self.head1 = nn.Conv2d(dim, 2, 3, padding=1, bias=True)
        self.reset_neutral()

    @torch.no_grad()
    def reset_neutral(self) -> None:
        """Zero the last layer: equal weights for both sources at every pixel."""
        self.head1.weight.zero_()
        self.head1.bias.zero_()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = self.enc_a(self.stem_a(a))
        fb = self.enc_b(self.stem_b(b))
        x = self.joint(torch.cat([fa, fb], 1))
        x = F.gelu(self.head0(x))
        logits = self.head1(x)
        if self.centred:
            d = logits[:, :1] - logits[:, 1:2]
            d = d - d.mean(dim=(-2, -1), keepdim=True)
            w_a = torch.sigmoid(d)
            return torch.cat([w_a, 1.0 - w_a], 1)
        return torch.softmax(logits, dim=1)


def fusion_receptive_radius(enc_blocks: int = 2, dec_blocks: int = 3, down: int = 1) -> int:
    """Context radius of :class:`FusionNet`: stem 1 + 2 per block + cross-gate 1 + head 2 at full
    resolution; with ``down=2`` the blocks and the gate count twice, plus 2 for the stride phase."""
    if down == 2:
        return 1 + 2 + 2 * (2 * enc_blocks + 1 + 2 * dec_blocks) + 2
    return 1 + 2 * enc_blocks + 1 + 2 * dec_blocks + 2


# --------------------------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------------------------
_PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3",
)


def default_class_color(index: int) -> str:
    """A distinct display colour for a class index (index 0 is black: background / no label)."""
    return "#000000" if index == 0 else _PALETTE[(index - 1) % len(_PALETTE)]


def make_classes(spec) -> tuple[ClassInfo, ...]:
    """ClassInfo tuple from ClassInfo objects, (index, name, colour) triples or dicts; sorted by index."""
    out = []
    for c in spec or ():
        if isinstance(c, ClassInfo):
            out.append(c)
        elif isinstance(c, dict):
            out.append(ClassInfo(int(c["index"]), str(c["name"]), str(c.get("color", default_class_color(int(c["index"]))))))
        else:
            i, name, *col = c
            out.append(ClassInfo(int(i), str(name), str(col[0]) if col else default_class_color(int(i))))
    idx = [c.index for c in out]
    if len(set(idx)) != len(idx):
        raise ValueError(f"class indices must be unique, got {idx}")
    return tuple(sorted(out, key=lambda c: c.index))


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
class TDFusionRunner(TorchRunner):
    """Runner for a TDFusion model: ``fuse``, and with a segmenter ``segment``/``fuse_and_segment``.

    ``meta`` carries the model's record (method name, base, training); ``classes`` the segmenter's
    classes (label value = class index; indices without a ClassInfo are never predicted).
    """

    family = FAMILY
    channels_last = True
    #: halo'd tiles give the untiled fused image and labels exactly (``tests/test_tdfusion.py``)
    tiles_exact = True
    # One pass costs more per pixel as the image grows (one CPU thread, ``tdfusion``: 7 s per
    # megapixel at 256x256, 12 at 480x640, 23 at 960x1280); in 512-pixel tiles 13.5 at 960x1280
    # (256-pixel tiles: 11.4, but their halos make images of 0.1-0.3 Mpx slower than one pass).
    # ``tdfusion-brats`` (65-pixel halo with its segmenter): 22 instead of 24 at 960x1280.
    cpu_tile = 512

    def __init__(
        self,
        fusion: FusionNet,
        loss_net: LossNet | None = None,
        segmenter: Segmenter | None = None,
        classes: Sequence | None = None,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
    ):
        modules: dict[str, nn.Module] = {"fusion": fusion, "loss": loss_net if loss_net is not None else LossNet()}
        if segmenter is not None:
            modules["seg"] = segmenter
        # the fusion net is fully convolutional (no padding needed); the segmenter pads to its own factor
        super().__init__(modules, device=device, pad_multiple=fusion.pad_multiple)
        self.meta: dict[str, Any] = dict(meta or {})
        self.classes: tuple[ClassInfo, ...] = make_classes(classes) if segmenter is not None else ()
        if segmenter is not None:
            if not self.classes:
                self.classes = tuple(ClassInfo(i, f"class {i}", default_class_color(i)) for i in range(segmenter.n_classes))
            top = max(c.index for c in self.classes)
            if top >= segmenter.n_classes:
                raise ValueError(f"class index {top} is outside the segmenter's {segmenter.n_classes} outputs")

    # --- parts ---------------------------------------------------------------------------------
    @property
    def fusion(self) -> FusionNet:
        return self.modules["fusion"]

    @property
    def loss_net(self) -> LossNet:
        return self.modules["loss"]

    @property
    def segmenter(self) -> Segmenter | None:
        return self.modules.get("seg")

    @property
    def has_segmenter(self) -> bool:
        return "seg" in self.modules

    @property
    def name(self) -> str:
        return str(self.meta.get("method", "tdfusion"))

    @property
    def halo(self) -> int:
        r = self.fusion.receptive_radius
        return r + (segmenter_receptive_radius() if self.has_segmenter else 0)

    def set_segmenter(self, segmenter: Segmenter, classes: Sequence) -> None:
        """Attach (or replace) the task network and its classes."""
        self.modules["seg"] = segmenter.to(self.device, memory_format=torch.channels_last)
        self.classes = make_classes(classes)

    # --- inference -----------------------------------------------------------------------------
    def forward_fused(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fusion(a, b)

    def _require_segmenter(self) -> Segmenter:
        if not self.has_segmenter:
            raise ValueError(
                f"the {self.name!r} model has no segmenter; paint a few labels and fine-tune it "
                "(napari_fusion.finetune) or use 'tdfusion-brats' / 'multitaskvif'"
            )
        return self.segmenter

    def logits(self, fused: np.ndarray) -> np.ndarray:
        """Class logits ``(n_classes, H, W)`` float32 of a unit fused image."""
        seg = self._require_segmenter()
        fused = np.asarray(fused, dtype=np.float32)
        check_pair(fused, fused, ("fused image", "fused image"))
        seg.eval()
        out = self.run_padded(seg, fused, multiple=Segmenter.pad_multiple)
        return out[0].float().to("cpu").numpy()

    def segment(self, fused: np.ndarray, a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
        """int32 labels of a unit fused image (the sources are not needed: the task net sees F)."""
        seg = self._require_segmenter()
        fused = np.asarray(fused, dtype=np.float32)
        check_pair(fused, fused, ("fused image", "fused image"))
        seg.eval()
        return self.labels_from_logits(self.run_padded(seg, fused, multiple=Segmenter.pad_multiple))

    def fuse_and_segment(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One pass: fused unit image and its int32 labels."""
        self._require_segmenter()
        fused = self.fuse(a, b)
        return fused, self.segment(fused)

    def intensity_weights(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The loss module's per-pixel weights ``(2, H, W)`` for (A, B): where the loss says to follow which."""
        a, b = check_pair(a, b)
        self.loss_net.eval()
        return self.run_padded(self.loss_net, a, b)[0].float().to("cpu").numpy()

    # --- persistence ---------------------------------------------------------------------------
    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata for :func:`napari_fusion.methods.store.save_bundle`."""
        config = {
            "fusion": dict(self.fusion.config),
            "loss": dict(self.loss_net.config),
            "segmenter": dict(self.segmenter.config) if self.has_segmenter else None,
        }
        return self.make_bundle(
            config,
            ["fused", "labels"] if self.has_segmenter else ["fused"],
            {k: count_parameters(m) for k, m in self.modules.items()},
            classes=self.classes,
        )


def _with_stem_biases(sub: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Files from before the stems had biases: a zero bias is the same network."""
    for stem in ("stem_a", "stem_b"):
        w = sub.get(f"{stem}.weight")
        if w is not None and f"{stem}.bias" not in sub:
            sub[f"{stem}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    return sub


def from_bundle(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: str | torch.device = "cpu") -> TDFusionRunner:
    """Rebuild a runner from a model file's tensors and metadata (strict: every tensor must fit)."""
    cfg = meta.get("config") or {}
    fusion = FusionNet(**(cfg.get("fusion") or {}))
    fusion.load_state_dict(_with_stem_biases(sub_state(tensors, "fusion")), strict=True)
    loss_net = LossNet(**(cfg.get("loss") or {}))
    lt = _with_stem_biases(sub_state(tensors, "loss"))
    if lt:
        loss_net.load_state_dict(lt, strict=True)
    seg = None
    if cfg.get("segmenter"):
        seg = Segmenter(**cfg["segmenter"])
        seg.load_state_dict(sub_state(tensors, "seg"), strict=True)
    return TDFusionRunner(fusion, loss_net, seg, classes=meta.get("classes"), device=resolve_torch_device(device), meta=meta)


def load_runner(path: str | Path, device: str | torch.device = "cpu") -> TDFusionRunner:
    """A runner from a TDFusion model file (errors from :mod:`store` for bad files)."""
    from .store import load_family_runner

    return load_family_runner(path, FAMILY, from_bundle, device)


def _builder(default_file: str, method: str):
    train = f"napari_fusion.training.tdfusion --task {'brats' if 'brats' in default_file else 'ivif'}"
    return weights_builder(load_runner, default_file, method, "TDFusion", train)


register_family(FAMILY, from_bundle)

_FUSION_HALO = fusion_receptive_radius()
#: the shipped ``tdfusion`` file's nets (half-resolution fusion net, 2 joint blocks) and its segmenter
_IVIF_HALO = fusion_receptive_radius(2, 2, 2) + segmenter_receptive_radius()
register(
    Method(
        "tdfusion",
        "TDFusion (CVPR 2025) infrared/visible fusion, task-driven on MSRS object boxes (person, bicycle, car)",
        FAMILY,
        _builder(IVIF_WEIGHTS, "tdfusion"),
        weights=IVIF_WEIGHTS,
        outputs=("fused", "labels"),
        halo=_IVIF_HALO,
        learned=True,
        extra={"classes": make_classes(IVIF_CLASSES)},
    )
)


register(
    Method(
        "tdfusion-brats",
        "TDFusion task-driven medical model (FLAIR + T1c), meta-learned loss and tumour segmenter trained on BraTS",
        FAMILY,
        _builder(BRATS_WEIGHTS, "tdfusion-brats"),
        weights=BRATS_WEIGHTS,
        outputs=("fused", "labels"),
        halo=_FUSION_HALO + segmenter_receptive_radius(),
        learned=True,
        extra={"classes": make_classes(BRATS_CLASSES)},
    )
)
