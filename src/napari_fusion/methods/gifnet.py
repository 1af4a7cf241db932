"""GIFNet (Cheng et al., CVPR 2025): one task-agnostic fusion model, plus single-image enhancement.

The paper's idea: train a multi-modal fusion task (infrared/visible, no ground truth) *together* with
low-level digital-photography tasks that have pixel-level targets (multi-focus, multi-exposure) and a
reconstruction task, in three branches that share an encoder and exchange features through a
cross-fusion gate. The supervised tasks pull the shared features towards task-agnostic image content,
so one model serves every modality pair, and feeding one image to both inputs enhances it.

Our network keeps that layout but is built for speed and exact tiling: every operation is a local
convolution (no attention, no global pooling or normalisation), so its cost is linear in the pixel
count, its receptive field is finite (:attr:`GIFNet.receptive_radius`, the method's ``halo``) and any
input size works without padding.

- **shared encoder** (the paper's S-Enc): a dense block of 3x3 convolutions on the stacked sources;
  its output keeps the raw sources beside the features.
- **two task branches**: the *fusion* branch (multi-modal fusion, unsupervised loss) and the *focus*
  branch (multi-focus and multi-exposure fusion, supervised). Each is a stack of depthwise-separable
  residual blocks with growing dilation (wide context at low cost).
- **cross-fusion gating** after every block: each branch takes in the other's features where a
  per-pixel, per-channel gate computed from both branches opens (the paper gates with one learned
  scalar per block; a spatial gate lets the focus branch's sharpness cues enter the fusion branch
  only where they help).
- **shared decoder** (G-Dec): shared features + one branch's features -> fused image (sigmoid).
- **reconstruction branch** (harmonisation, REC): shared features -> both sources back; trained on
  every task so that the encoder keeps all the information of both inputs.

``fuse`` decodes the fusion branch (trained on real IR/visible and medical pairs); ``enhance`` feeds
the image to both inputs and decodes the focus branch (trained to restore sharp, well-exposed images
from degraded pairs), as the paper does for single-modality enhancement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .torch_runner import SingleNetRunner, check_pair, count_parameters, resolve_torch_device, sub_state, tensor_to_unit
from .registry import Method, register, register_family, weights_builder

__all__ = [
    "FAMILY",
    "WEIGHTS",
    "BRANCHES",
    "GIFNet",
    "GIFNetRunner",
    "from_bundle",
    "load_runner",
    "receptive_radius",
]

FAMILY = "GIFNet"
WEIGHTS = "gifnet.safetensors"
BRANCHES = ("fusion", "focus")  # decoder inputs: multi-modal fusion branch, digital-photography branch


# --------------------------------------------------------------------------------------------
# building blocks (all local: receptive radius noted on each)
# --------------------------------------------------------------------------------------------
class DenseEncoder(nn.Module):
    """Shared encoder: dense 3x3 conv layers on the stacked sources (radius = ``layers``).

    Output channels: the ``inputs`` raw channels followed by ``layers * growth`` features, so the
    decoder always sees the sources themselves.
    """

    def __init__(self, inputs: int = 2, growth: int = 12, layers: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(inputs + i * growth, growth, 3, padding=1) for i in range(layers)
        )
        self.out_channels = inputs + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in self.convs:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.1))
        return torch.cat(feats, 1)


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> an (N, C, H, W) view in channels-last layout (no copy)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W, C); a contiguous view when ``x`` is channels-last."""
    return x.permute(0, 2, 3, 1)


class LocalBlock(nn.Module):
    """Residual block on ``(N, H, W, C)`` features: a depthwise conv mixes space, a gated MLP channels.

    Receptive radius ``dilation * (kernel // 2)`` (keep it <= 4: larger depthwise paddings leave
    oneDNN's fast CPU path). Per-pixel layers are ``nn.Linear`` on channels-last data: one GEMM each,
    where 1x1 convolutions on channels-last tensors take a much slower CPU path. The output
    projection starts at zero, so a fresh block is the identity (stable without normalisation).
    """

    def __init__(self, dim: int, kernel: int = 5, dilation: int = 1, expansion: float = 2.0):
        super().__init__()
        hidden = max(int(dim * expansion), 1)
        pad = dilation * (kernel // 2)
        self.dw = nn.Conv2d(dim, dim, kernel, padding=pad, dilation=dilation, groups=dim)
        self.inp = nn.Linear(dim, 2 * hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.radius = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _nhwc(self.dw(_nchw(x)))
        h, g = self.inp(y).chunk(2, dim=-1)
        return x + self.out(h * F.gelu(g, approximate="tanh"))


class CrossFusionGate(nn.Module):
    """Cross-fusion gating between the two task branches (radius 0: per-pixel layers only).

    ``f += g_f * V_f(m)`` and ``m += g_m * V_m(f)`` with gates ``(g_f, g_m) = sigmoid(W [f, m])``:
    each branch takes in the other's features where its gate opens. Gate biases start negative
    (mostly closed) so that each branch first learns its own task. Features are ``(N, H, W, C)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, 2 * dim)
        self.v_f = nn.Linear(dim, dim, bias=False)  # focus -> fusion
        self.v_m = nn.Linear(dim, dim, bias=False)  # fusion -> focus
        nn.init.constant_(self.gate.bias, -2.0)

    def forward(self, f: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g_f, g_m = torch.sigmoid(self.gate(torch.cat([f, m], -1))).chunk(2, dim=-1)
        return f + g_f * self.v_f(m), m + g_m * self.v_m(f)


class Decoder(nn.Module):
    """Decoder (radius 2): features -> ``out_channels`` in (0, 1) through two 3x3 convs."""

    def __init__(self, in_channels: int, dim: int, out_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 3, padding=1)
        self.head = nn.Conv2d(dim, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(F.leaky_relu(self.conv(x), 0.1)))


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------
def receptive_radius(enc_layers: int = 2, kernel: int = 5, dilations: Sequence[int] = (1, 2, 2)) -> int:
    """Context radius of :class:`GIFNet` in full-resolution pixels (an upper bound).

    Encoder ``enc_layers``; the stride-2 embedding reaches 2 more; the branches run at half
    resolution (``2 * sum(d * (kernel // 2))``); the 2x up-projection may look 1 pixel further; the
    decoder adds 2.
    """
    return int(enc_layers + 2 + 2 * sum(d * (kernel // 2) for d in dilations) + 1 + 2)


class GIFNet(nn.Module):
    """Two single-channel sources ``(N,1,H,W)`` -> fused ``(N,1,H,W)`` in (0, 1); H, W even.

    The task branches work at half resolution (4x fewer pixels, twice the context per layer); the
    shared full-resolution features skip past them to the decoder, so detail is kept. The runner pads
    odd sizes by reflection (``pad_multiple = 2``).

    ``forward(a, b, branch="fusion")`` decodes one branch; :meth:`run` returns several outputs of one
    pass (what training needs); :meth:`reconstruct` gives the reconstruction branch's (A, B).
    """

    pad_multiple = 2

    def __init__(
        self,
        growth: int = 8,
        enc_layers: int = 2,
        dim: int = 24,
        kernel: int = 5,
        dilations: Sequence[int] = (1, 2, 2),
        expansion: float = 2.0,
        up_dim: int = 12,
        dec_dim: int = 12,
    ):
        super().__init__()
        dilations = tuple(int(d) for d in dilations)
        self.config = {
            "growth": growth, "enc_layers": enc_layers, "dim": dim, "kernel": kernel,
            "dilations": list(dilations), "expansion": expansion, "up_dim": up_dim, "dec_dim": dec_dim,
        }
        self.encoder = DenseEncoder(2, growth, enc_layers)
        c = self.encoder.out_channels
        # per-branch embedding of the shared features at half resolution (stride-2 3x3)
        self.embed_fusion = nn.Conv2d(c, dim, 3, stride=2, padding=1)
        self.embed_focus = nn.Conv2d(c, dim, 3, stride=2, padding=1)
        self.fusion_blocks = nn.ModuleList(LocalBlock(dim, kernel, d, expansion) for d in dilations)
        self.focus_blocks = nn.ModuleList(LocalBlock(dim, kernel, d, expansion) for d in dilations)
        self.gates = nn.ModuleList(CrossFusionGate(dim) for _ in dilations)
        self.up = nn.Linear(dim, 4 * up_dim)  # shared by both branches, then a 2x pixel shuffle
        self.up_dim = up_dim
        self.decoder = Decoder(c + up_dim, dec_dim, 1)
        self.rec = Decoder(c, dec_dim, 2)

    @property
    def receptive_radius(self) -> int:
        c = self.config
        return receptive_radius(c["enc_layers"], c["kernel"], c["dilations"])

    def features(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared full-resolution features (N, C, H, W) and the two branches' (N, H/2, W/2, C) ones."""
        if a.shape[-2] % 2 or a.shape[-1] % 2:
            raise ValueError(f"GIFNet needs even height and width, got {tuple(a.shape[-2:])} (pad first)")
        # channels-last all the way: CPU depthwise convolutions are ~10-30x faster in that layout
        x = torch.cat([a, b], 1).contiguous(memory_format=torch.channels_last)
        shared = self.encoder(x)
        f = _nhwc(self.embed_fusion(shared))
        m = _nhwc(self.embed_focus(shared))
        for blk_f, blk_m, gate in zip(self.fusion_blocks, self.focus_blocks, self.gates):
            f, m = gate(blk_f(f), blk_m(m))
        return shared, f, m

    def decode(self, shared: torch.Tensor, branch_features: torch.Tensor) -> torch.Tensor:
        """Fused image from shared features and one branch's (half-resolution) features."""
        n, h, w, _ = branch_features.shape
        up = F.leaky_relu(self.up(branch_features), 0.1)  # (N, h, w, 4u) -> (N, 2h, 2w, u)
        up = up.reshape(n, h, w, 2, 2, self.up_dim).permute(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.up_dim)
        return self.decoder(torch.cat([shared, _nchw(up)], 1))

    def reconstruct(self, shared: torch.Tensor) -> torch.Tensor:
        """The reconstruction branch: ``(N, 2, H, W)`` estimates of (A, B) from the shared features."""
        return self.rec(shared)

    def run(self, a: torch.Tensor, b: torch.Tensor, outputs: Sequence[str] = BRANCHES) -> dict[str, torch.Tensor]:
        """One pass, several outputs: any of ``"fusion"``, ``"focus"``, ``"rec"``."""
        shared, f, m = self.features(a, b)
        out: dict[str, torch.Tensor] = {}
        for name in outputs:
            if name == "fusion":
                out[name] = self.decode(shared, f)
            elif name == "focus":
                out[name] = self.decode(shared, m)
            elif name == "rec":
                out[name] = self.reconstruct(shared)
            else:
                raise ValueError(f"unknown GIFNet output {name!r}; expected 'fusion', 'focus' or 'rec'")
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor, branch: str = "fusion") -> torch.Tensor:
        if branch not in BRANCHES:
            raise ValueError(f"unknown GIFNet branch {branch!r}; expected one of {BRANCHES}")
        shared, f, m = self.features(a, b)
        return self.decode(shared, f if branch == "fusion" else m)


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
class GIFNetRunner(SingleNetRunner):
    """Runner of a GIFNet model: ``fuse(a, b)``, ``enhance(image)``, ``to_bundle()``, ``n_parameters``."""

    family = FAMILY
    channels_last = True  # depthwise convs are ~10-50x faster in channels-last layout on CPU
    # One pass costs more per pixel as the plane grows (its activations leave the cache: 1.3 s/Mpx at
    # 480x640, 2.0 at 960x1280, 4.2 at 1920x2560 on one CPU thread); in 512-pixel tiles with the halo
    # 1.6-1.7 s/Mpx at every larger size (docs/results/gifnet.md).
    cpu_tile = 512
    tiles_exact = True

    default_method = "gifnet"

    def __init__(self, net: GIFNet, device: str | torch.device = "cpu", meta: dict | None = None):
        super().__init__(net, device=device, meta=meta, pad_multiple=net.pad_multiple)

    def forward_fused(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.net(a, b, "fusion")

    def enhance(self, image: np.ndarray) -> np.ndarray:
        """Single-image enhancement: the image fed to both inputs, decoded by the focus branch.

        2-D unit image in, same-shape float32 in [0, 1] out.
        """
        image = np.asarray(image)
        image, _ = check_pair(image, image, ("image", "image"))
        self.net.eval()
        out = self.run_padded(lambda x: self.net(x, x, "focus"), image)
        return tensor_to_unit(out)

    def fuse_branch(self, a: np.ndarray, b: np.ndarray, branch: str = "fusion") -> np.ndarray:
        """Fused unit image decoded from one branch (``"fusion"`` is what :meth:`fuse` returns)."""
        a, b = check_pair(a, b)
        self.net.eval()
        return tensor_to_unit(self.run_padded(lambda x, y: self.net(x, y, branch), a, b))

    def to_bundle(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata for :func:`napari_fusion.methods.store.save_bundle`."""
        return self.make_bundle(dict(self.net.config), ["fused"], count_parameters(self.net))


def from_bundle(tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: str | torch.device = "cpu") -> GIFNetRunner:
    """Rebuild a runner from a model file's tensors and metadata (strict: every tensor must fit)."""
    net = GIFNet(**(meta.get("config") or {}))
    net.load_state_dict(sub_state(tensors, "net"), strict=True)
    return GIFNetRunner(net, device=resolve_torch_device(device), meta=meta)


def load_runner(path: str | Path, device: str | torch.device = "cpu") -> GIFNetRunner:
    """A runner from a GIFNet model file (clear errors from :mod:`store` for bad files)."""
    from .store import load_family_runner

    return load_family_runner(path, FAMILY, from_bundle, device)


_build = weights_builder(load_runner, WEIGHTS, "gifnet", "GIFNet", "napari_fusion.training.gifnet --data auto")


register_family(FAMILY, from_bundle)

register(
    Method(
        "gifnet",
        "GIFNet (CVPR 2025): one task-agnostic model for every modality pair (IR/visible, MRI/CT, MRI/PET, "
        "pan/MS), trained with multi-focus/exposure tasks; also enhances single images",
        FAMILY,
        _build,
        weights=WEIGHTS,
        outputs=("fused",),
        halo=receptive_radius(),
        learned=True,
    )
)
