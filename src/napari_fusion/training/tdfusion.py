"""Train TDFusion: bi-level meta-learning of the fusion loss from a segmentation task.

One training step alternates three updates (Bai et al., CVPR 2025):

(i)  meta step (loss generation module): a functional copy of the fusion net's parameters takes one
     SGD step on the *learned* fusion loss with the graph kept (``create_graph=True``); the segmenter's
     task loss on images fused by that updated copy is back-propagated through the inner step into the
     loss module only (``torch.func.functional_call``). The loss module thus learns the per-pixel
     source weights whose fusion the segmenter finds most useful.
(ii) fusion step: the real fusion net takes an optimiser step on the learned fusion loss.
(iii) task step: the segmenter takes an optimiser step on the task loss of the (detached) fused image.

Without labels (infrared/visible) only (ii) runs, with the loss module at its neutral start (equal
weights): the fusion net that painted labels later make task-driven (:mod:`.finetune`).

Command line (logs JSON lines, atomic checkpoints, resume, time budget, seeded)::

    python -m napari_fusion.training.tdfusion --task brats --data auto --out tdfusion_brats.safetensors \\
        --device auto --steps 4000 --time-budget 3600 --batch 8 --crop 128 --seed 0
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.func import functional_call

from .losses import IGNORE_INDEX, class_weights_from_counts, fusion_loss, task_loss

__all__ = [
    "TrainConfig",
    "TDFusionTrainer",
    "meta_step",
    "fusion_step",
    "segmenter_step",
    "BratsSampler",
    "PairSampler",
    "load_training_data",
    "new_runner",
    "train",
    "main",
]


# --------------------------------------------------------------------------------------------
# the three updates
# --------------------------------------------------------------------------------------------
def _f32(x: torch.Tensor) -> torch.Tensor:
    """Half-precision autocast outputs -> float32 for the losses; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


META_MODES = ("image", "params")


def meta_step(
    fusion: torch.nn.Module,
    loss_net: torch.nn.Module,
    segmenter: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    opt_loss: torch.optim.Optimizer | None,
    *,
    mode: str = "params",
    inner_lr: float = 1e-2,
    image_step: float = 0.05,
    grad_weight: float = 1.0,
    intensity: str = "l2",
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
    create_graph: bool = True,
    amp: bool = False,
) -> dict[str, float]:
    """(i) One bi-level update of the loss generation module; fusion net and segmenter are unchanged.

    ``mode="params"`` (the paper's form): ``theta' = theta - inner_lr * dL_fus(theta, w(phi)) / dtheta``
    with the graph kept; the outer task loss ``T(seg(F_theta'(a, b)), labels)`` is differentiated
    w.r.t. the loss module's ``phi`` (a second-order pass through the fusion net: 3-4x the cost of
    the image step on a CPU; its signal is measured in ``benchmarks/meta_gradient.py``).

    ``mode="image"``: the inner step is taken on the fused image itself,
    ``F' = F - image_step * g / mean|g|`` with ``g = dL_fus(F, w(phi)) / dF`` (graph kept), i.e. the
    update a fusion net with a free output per pixel would make; then ``T(seg(F'))`` is differentiated
    w.r.t. ``phi``. Each pixel's weight gets the task's verdict on moving *that* pixel towards A or B
    (``-sign(F - A) * dT/dF'`` for the l1 loss): a strong, local, readable signal at the cost of one
    segmenter pass (no second-order pass through the fusion net).

    Leaves ``.grad`` of the loss module's parameters set (so callers/tests can inspect it) and steps
    ``opt_loss`` when given. ``create_graph=False`` cuts the bi-level graph (then the loss module gets
    no gradient).
    """
    if mode not in META_MODES:
        raise ValueError(f"meta mode must be one of {META_MODES}, got {mode!r}")
    phi = [p for p in loss_net.parameters() if p.requires_grad]
    if mode == "image":
        with torch.no_grad(), _autocast(a.device, amp):
            fused = _f32(fusion(a, b))
        fused = fused.detach().requires_grad_(True)
        w = _f32(loss_net(a, b))
        lf, _ = fusion_loss(fused, a, b, w, grad_weight, intensity)
        (g,) = torch.autograd.grad(lf, fused, create_graph=create_graph)
        scale = g.detach().abs().mean().clamp_min(1e-12)
        fused2 = (fused.detach() - image_step * g / scale).clamp(0.0, 1.0)
    else:
        params = {k: p for k, p in fusion.named_parameters()}
        with _autocast(a.device, amp):
            fused = functional_call(fusion, params, (a, b))
            w = loss_net(a, b)
            lf, _ = fusion_loss(_f32(fused), a, b, _f32(w), grad_weight, intensity)
        grads = torch.autograd.grad(lf, list(params.values()), create_graph=create_graph, allow_unused=True)
        updated = {
            k: (p - inner_lr * g) if g is not None else p for (k, p), g in zip(params.items(), grads)
        }
        with _autocast(a.device, amp):
            fused2 = functional_call(fusion, updated, (a, b))
    with _autocast(a.device, amp):
        logits = segmenter(fused2)
    lt = task_loss(_f32(logits), labels, ignore_index, class_weights)
    if opt_loss is not None:
        opt_loss.zero_grad(set_to_none=True)
    if lt.requires_grad:
        g_phi = torch.autograd.grad(lt, phi, allow_unused=True)
    else:
        g_phi = [None] * len(phi)
    norm = 0.0
    for p, g in zip(phi, g_phi):
        p.grad = torch.zeros_like(p) if g is None else g.detach()
        norm += float(p.grad.pow(2).sum())
    if opt_loss is not None:
        opt_loss.step()
    return {"meta_task": float(lt.detach()), "meta_fusion": float(lf.detach()), "meta_grad_norm": math.sqrt(norm)}


def fusion_step(
    fusion: torch.nn.Module,
    loss_net: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    opt_fusion: torch.optim.Optimizer,
    *,
    grad_weight: float = 1.0,
    intensity: str = "l2",
    amp: bool = False,
) -> dict[str, float]:
    """(ii) One optimiser step of the fusion net on the learned fusion loss (loss module frozen)."""
    with torch.no_grad(), _autocast(a.device, amp):
        w = _f32(loss_net(a, b))
    with _autocast(a.device, amp):
        fused = fusion(a, b)
    lf, parts = fusion_loss(_f32(fused), a, b, w, grad_weight, intensity)
    opt_fusion.zero_grad(set_to_none=True)
    lf.backward()
    opt_fusion.step()
    return {
        "fusion": float(lf.detach()),
        "int": float(parts["int"].detach()),
        "grad": float(parts["grad"].detach()),
        "w_a": float(w[:, 0].mean()),
    }


def segmenter_step(
    fusion: torch.nn.Module,
    segmenter: torch.nn.Module,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    opt_seg: torch.optim.Optimizer,
    *,
    ignore_index: int = IGNORE_INDEX,
    class_weights: torch.Tensor | None = None,
    amp: bool = False,
    fused: torch.Tensor | None = None,
    clip: float | None = None,
) -> dict[str, float]:
    """(iii) One optimiser step of the segmenter on the task loss of the detached fused image.

    ``fused`` may be given directly (e.g. a single source, for the benchmark's baselines); ``clip``
    caps the gradient norm (fine-tuning: a few noisy painted pixels must not throw the head into
    predicting one class everywhere).
    """
    if fused is None:
        with torch.no_grad(), _autocast(a.device, amp):
            fused = _f32(fusion(a, b))
    with _autocast(fused.device, amp):
        logits = segmenter(fused)
    lt = task_loss(_f32(logits), labels, ignore_index, class_weights)
    opt_seg.zero_grad(set_to_none=True)
    lt.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(segmenter.parameters(), clip)
    opt_seg.step()
    with torch.no_grad():
        valid = labels != ignore_index
        acc = float((logits.argmax(1)[valid] == labels[valid]).float().mean()) if bool(valid.any()) else float("nan")
    return {"task": float(lt.detach()), "acc": acc}


# --------------------------------------------------------------------------------------------
# a trainer holding the models and optimisers (used by the CLI and by fine-tuning)
# --------------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Hyper-parameters of one TDFusion training (CLI flags map onto these)."""

    lr_fusion: float = 1e-3
    lr_seg: float = 1e-3
    lr_loss: float = 1e-3
    inner_lr: float = 1e-2
    grad_weight: float = 1.0
    meta_every: int = 1  # meta step every k-th train step (0: never)
    meta_start: int = 0  # no meta step before this step (let the segmenter learn first)
    amp: bool = False
    ignore_index: int = IGNORE_INDEX
    class_weights: list[float] | None = None
    train_fusion: bool = True
    train_seg: bool = True
    seg_repeats: int = 1  # segmenter updates per step on the same fused batch (cheap; helps a fresh head)
    seg_clip: float | None = None  # gradient-norm cap of the segmenter updates (None: no cap)
    intensity: str = "l2"  # intensity term of the fusion loss: "l1" (weighted median) or "l2" (blend)
    meta_mode: str = "params"  # "params" (inner step on the fusion net) or "image" (on the fused image)
    image_step: float = 0.05  # mean intensity change of the image-space inner step

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TDFusionTrainer:
    """The three updates of TDFusion on a :class:`~napari_fusion.methods.tdfusion.TDFusionRunner`'s modules.

    The runner's modules are trained in place; make a copy first to keep the original.
    """

    def __init__(self, runner, config: TrainConfig | None = None, device: str | torch.device | None = None):
        from ..methods._torch import resolve_torch_device

        self.runner = runner
        self.config = config or TrainConfig()
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        # channels-last speeds up inference but makes the double backward of the meta step several
        # times slower on CPU: train in the default layout (finish() restores the runner's layout)
        for m in runner.modules.values():
            m.to(memory_format=torch.contiguous_format)
        self.fusion = runner.fusion
        self.loss_net = runner.loss_net
        self.segmenter = runner.segmenter
        c = self.config
        self.opt_fusion = torch.optim.Adam(self.fusion.parameters(), lr=c.lr_fusion)
        self.opt_loss = torch.optim.Adam(self.loss_net.parameters(), lr=c.lr_loss)
        self.opt_seg = torch.optim.Adam(self.segmenter.parameters(), lr=c.lr_seg) if self.segmenter is not None else None
        self.class_weights = (
            torch.tensor(c.class_weights, dtype=torch.float32, device=self.device) if c.class_weights else None
        )
        self.step = 0

    def finish(self):
        """Put the runner back in inference mode and layout; returns it."""
        self.runner.to(self.device)
        for m in self.runner.modules.values():
            m.eval()
        return self.runner

    def rebuild_segmenter_optimizer(self) -> None:
        """After the segmenter was replaced or its head extended."""
        self.segmenter = self.runner.segmenter
        self.opt_seg = torch.optim.Adam(self.segmenter.parameters(), lr=self.config.lr_seg)

    def _train_mode(self) -> None:
        for m in (self.fusion, self.loss_net, self.segmenter):
            if m is not None:
                m.train()

    def train_step(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """One alternation (i) meta, (ii) fusion, (iii) task on a batch; returns the losses."""
        self._train_mode()
        c = self.config
        a = a.to(self.device, non_blocking=True)
        b = b.to(self.device, non_blocking=True)
        out: dict[str, float] = {"step": self.step}
        has_task = labels is not None and self.segmenter is not None
        if has_task:
            labels = labels.to(self.device, non_blocking=True)
        if has_task and c.meta_every and self.step >= c.meta_start and self.step % c.meta_every == 0:
            out |= meta_step(
                self.fusion, self.loss_net, self.segmenter, a, b, labels, self.opt_loss,
                mode=c.meta_mode, inner_lr=c.inner_lr, image_step=c.image_step, grad_weight=c.grad_weight,
                intensity=c.intensity, ignore_index=c.ignore_index,
                class_weights=self.class_weights, amp=c.amp,
            )
            # the meta pass leaves grads on the fusion net / segmenter only via autograd.grad (none)
        if c.train_fusion:
            out |= fusion_step(
                self.fusion, self.loss_net, a, b, self.opt_fusion, grad_weight=c.grad_weight, intensity=c.intensity, amp=c.amp
            )
        if has_task and c.train_seg:
            with torch.no_grad(), _autocast(a.device, c.amp):
                fused = _f32(self.fusion(a, b))
            for _ in range(max(1, c.seg_repeats)):
                out |= segmenter_step(
                    self.fusion, self.segmenter, a, b, labels, self.opt_seg,
                    ignore_index=c.ignore_index, class_weights=self.class_weights, amp=c.amp, fused=fused, clip=c.seg_clip,
                )
        self.step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        """Optimiser states and the step (for resuming)."""
        return {
            "step": self.step,
            "opt_fusion": self.opt_fusion.state_dict(),
            "opt_loss": self.opt_loss.state_dict(),
            "opt_seg": self.opt_seg.state_dict() if self.opt_seg is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Optimiser moments and the step of an earlier run; the learning rates stay this run's own
        (a resumed phase may use another rate than the run it continues)."""
        self.step = int(state["step"])
        c = self.config
        for opt, key, lr in ((self.opt_fusion, "opt_fusion", c.lr_fusion), (self.opt_loss, "opt_loss", c.lr_loss),
                             (self.opt_seg, "opt_seg", c.lr_seg)):
            if opt is not None and state.get(key) is not None:
                opt.load_state_dict(state[key])
                for g in opt.param_groups:
                    g["lr"] = lr


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _to_unit(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if x.size and (x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"training images must be uint8 or float in [0, 1], got values {x.min():.3g}..{x.max():.3g}")
    return x


def _augment(rng: np.random.Generator, *arrs: np.ndarray) -> list[np.ndarray]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for x in arrs:
        x = np.rot90(x, k, axes=(-2, -1))
        if flip:
            x = x[..., ::-1]
        out.append(np.ascontiguousarray(x))
    return out


def remap_foreground(x: np.ndarray, rng: np.random.Generator, lo=(0.0, 0.1), hi=(0.55, 1.05)) -> np.ndarray:
    """``(x - l) / (h - l)`` inside the foreground (``x > 0``), clipped to [0, 1]; 0 stays 0.

    A slice scaled by its own in-brain percentiles is this remap of the volume-scaled slice, with
    ``l`` of 0..0.08 and ``h`` of 0.58..1.0 on the BraTS training slices; ``l``, ``h`` are drawn
    uniformly from ``lo`` and ``hi`` to cover them (and slightly darker images).
    """
    l, h = float(rng.uniform(*lo)), float(rng.uniform(*hi))
    out = np.clip((x - l) / max(h - l, 1e-3), 0.0, 1.0).astype(np.float32)
    out[x <= 0] = 0.0
    return out


class BratsSampler:
    """Random (crop x crop) batches of BraTS slices: ``a`` FLAIR, ``b`` T1c, ``labels`` 0..4.

    Half of the crops are centred on a tumour pixel (slices without tumour are mostly background, so
    uniform sampling would rarely show the rare classes). Flips and 90-degree rotations augment.
    ``intensity_jitter``: the probability that each source of a crop is remapped in the brain as a
    user's single slice is (its own percentiles instead of the volume's; :func:`remap_foreground`).
    """

    def __init__(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray, crop: int, seed: int = 0, tumour_fraction: float = 0.5,
                 intensity_jitter: float = 0.0):
        if a.shape != b.shape or a.shape != labels.shape or a.ndim != 3:
            raise ValueError(f"BraTS arrays must be (N, H, W) of one shape, got a {a.shape}, b {b.shape}, labels {labels.shape}")
        if len(a) == 0:
            raise ValueError("no BraTS slices to train on (empty training data)")
        self.a, self.b, self.labels = a, b, labels
        self.crop = min(int(crop), a.shape[1], a.shape[2])
        self.rng = np.random.default_rng(seed)
        self.tumour_fraction = tumour_fraction
        self.intensity_jitter = float(intensity_jitter)
        self.tumour_slices = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))

    def class_counts(self, n_classes: int = 5) -> np.ndarray:
        return np.bincount(self.labels.ravel().astype(np.int64), minlength=n_classes)[:n_classes]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c, rng = self.crop, self.rng
        H, W = self.a.shape[1:]
        A = np.empty((n, 1, c, c), np.float32)
        B = np.empty((n, 1, c, c), np.float32)
        L = np.empty((n, c, c), np.int64)
        for i in range(n):
            if len(self.tumour_slices) and rng.random() < self.tumour_fraction:
                s = int(rng.choice(self.tumour_slices))
                ys, xs = np.nonzero(self.labels[s] > 0)
                j = int(rng.integers(len(ys)))
                y0 = int(np.clip(ys[j] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, H - c))
                x0 = int(np.clip(xs[j] - c // 2 + rng.integers(-c // 4, c // 4 + 1), 0, W - c))
            else:
                s = int(rng.integers(len(self.a)))
                y0, x0 = int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))
            sl = (s, slice(y0, y0 + c), slice(x0, x0 + c))
            ca, cb, cl = _augment(rng, _to_unit(self.a[sl]), _to_unit(self.b[sl]), self.labels[sl])
            if self.intensity_jitter:
                ca, cb = (remap_foreground(x, rng) if rng.random() < self.intensity_jitter else x for x in (ca, cb))
            A[i, 0], B[i, 0], L[i] = ca, cb, cl
        return torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(L)


class PairSampler:
    """Random (crop x crop) batches from a list of registered (a, b) pairs of any sizes.

    ``labels`` (optional): one int label image per pair (or None for an unlabelled pair, whose crops
    get only ``IGNORE_INDEX``); then ``object_fraction`` of the crops are centred near a labelled
    object pixel (label > 0) so that the rare classes are seen. Without labels ``batch`` returns None
    for them.
    """

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], crop: int, seed: int = 0,
                 labels: Sequence[np.ndarray | None] | None = None, object_fraction: float = 0.5):
        if not pairs:
            raise ValueError("no image pairs to train on (empty training data)")
        for i, (a, b) in enumerate(pairs):
            if a.shape != b.shape or a.ndim != 2:
                raise ValueError(f"training pair {i}: sources of shapes {a.shape} and {b.shape}; need two 2-D images of one shape")
        if labels is not None:
            if len(labels) != len(pairs):
                raise ValueError(f"{len(labels)} label images for {len(pairs)} training pairs")
            for i, (lab, (a, _)) in enumerate(zip(labels, pairs)):
                if lab is not None and lab.shape != a.shape:
                    raise ValueError(f"training pair {i}: labels of shape {lab.shape} for images of shape {a.shape}")
        self.pairs = list(pairs)
        self.labels = list(labels) if labels is not None else None
        self.object_fraction = float(object_fraction)
        self.objects = [
            np.flatnonzero(lab.ravel() > 0) if lab is not None and lab.dtype.kind in "iu" else np.zeros(0, np.int64)
            for lab in (self.labels or [])
        ]
        self.object_pairs = [i for i, o in enumerate(self.objects) if len(o)]
        self.crop = int(crop)
        self.rng = np.random.default_rng(seed)

    def class_counts(self, n_classes: int) -> np.ndarray:
        counts = np.zeros(n_classes, np.int64)
        for lab in self.labels or []:
            if lab is not None:
                v = lab[(lab >= 0) & (lab < n_classes)]
                counts += np.bincount(v.ravel().astype(np.int64), minlength=n_classes)[:n_classes]
        return counts

    def _window(self, i: int, shape: tuple[int, int]) -> tuple[int, int]:
        c, rng = self.crop, self.rng
        H, W = shape
        if self.labels is not None and len(self.objects[i]) and rng.random() < self.object_fraction:
            y, x = divmod(int(self.objects[i][int(rng.integers(len(self.objects[i])))]), W)
            jitter = lambda: int(rng.integers(-(c // 4), c // 4 + 1))  # noqa: E731
            return int(np.clip(y - c // 2 + jitter(), 0, H - c)), int(np.clip(x - c // 2 + jitter(), 0, W - c))
        return int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        c, rng = self.crop, self.rng
        A = np.empty((n, 1, c, c), np.float32)
        B = np.empty((n, 1, c, c), np.float32)
        L = np.full((n, c, c), IGNORE_INDEX, np.int64) if self.labels is not None else None
        for k in range(n):
            if self.object_pairs and rng.random() < self.object_fraction:
                i = int(self.object_pairs[int(rng.integers(len(self.object_pairs)))])
            else:
                i = int(rng.integers(len(self.pairs)))
            a, b = self.pairs[i]
            lab = self.labels[i] if self.labels is not None else None
            if min(a.shape) < c:
                pad = [(0, max(0, c - a.shape[0])), (0, max(0, c - a.shape[1]))]
                a, b = np.pad(a, pad, mode="reflect"), np.pad(b, pad, mode="reflect")
                if lab is not None:
                    lab = np.pad(lab, pad, mode="constant", constant_values=IGNORE_INDEX)
            y0, x0 = self._window(i, a.shape)
            win = (slice(y0, y0 + c), slice(x0, x0 + c))
            if lab is not None:
                ca, cb, cl = _augment(rng, _to_unit(a[win]), _to_unit(b[win]), lab[win].astype(np.int64))
                L[k] = cl
            else:
                ca, cb = _augment(rng, _to_unit(a[win]), _to_unit(b[win]))
            A[k, 0], B[k, 0] = ca, cb
        return torch.from_numpy(A), torch.from_numpy(B), (torch.from_numpy(L) if L is not None else None)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def load_training_data(task: str, data: str | Path = "auto") -> dict[str, Any]:
    """Training arrays for ``task`` ('brats' | 'ivif') from ``../shared/data`` (``auto``) or a packed npz.

    brats: ``{"a", "b", "labels"}`` (N, H, W), train + validation cases (the test cases are held out).
    ivif: ``{"pairs": [(a, b), ...]}`` uint8, MSRS + RoadScene training files (``data.pair_split``).
    ``data`` may also be a folder: for brats a BraTS root with ``train/`` and ``validation/`` cases, for
    ivif a pair folder (``ir/`` + ``vi/``, or any two sub-folders with files of the same names), all used.
    """
    from .data import load_packed, shared_data_dir

    if task not in ("brats", "ivif"):
        raise ValueError(f"unknown task {task!r}; expected 'brats' or 'ivif'")
    if str(data) != "auto" and Path(data).is_dir():
        return _load_folder(task, Path(data))
    if str(data) != "auto":
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"training data {path} does not exist (expected 'auto', a packed .npz or a folder)")
        z = load_packed(path)
        if task == "brats":
            missing = {"a", "b", "labels"} - set(z)
            if missing:
                raise ValueError(f"{path} lacks BraTS arrays {sorted(missing)} (has {sorted(z)})")
            return {"a": z["a"], "b": z["b"], "labels": z["labels"].astype(np.int64), "source": str(path)}
        n = sum(1 for k in z if k.startswith("a_"))
        if n == 0:
            raise ValueError(f"{path} holds no image pairs (expected keys a_0, b_0, a_1, ...; has {sorted(z)[:6]})")
        out = {"pairs": [(z[f"a_{i}"], z[f"b_{i}"]) for i in range(n)], "source": str(path)}
        if any(f"l_{i}" in z for i in range(n)):  # box labels packed beside some pairs
            out["labels"] = [z[f"l_{i}"].astype(np.int64) if f"l_{i}" in z else None for i in range(n)]
        return out
    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("no ../shared/data found for --data auto; set NAPARI_FUSION_DATA or pass a packed .npz")
    if task == "brats":
        from .data import load_brats_split

        tr, va = load_brats_split("train"), load_brats_split("validation")
        return {
            "a": _u8(np.concatenate([tr["a"], va["a"]])),
            "b": _u8(np.concatenate([tr["b"], va["b"]])),
            "labels": np.concatenate([tr["labels"], va["labels"]]).astype(np.int64),
            "source": f"{root}/labeled/BraTS2015_deepmedic train+validation",
        }
    from .data import _read_gray_unit
    from .pack import training_names

    pairs, labels = [], []
    for sub in ("MSRS", "RoadScene"):
        fa, fb = root / "ivif" / sub / "ir", root / "ivif" / sub / "vi"
        if not fa.is_dir():
            raise FileNotFoundError(f"training folder {fa} does not exist")
        names = [n for n in training_names(fa) if (fb / n).exists()]
        if not names:
            raise FileNotFoundError(f"no training pairs in {fa} and {fb}")
        for n in names:
            a, b = _u8(_read_gray_unit(fa / n)), _u8(_read_gray_unit(fb / n))
            pairs.append((a, b))
            labels.append(box_labels(fa.parent / "boxes" / "fusion" / (Path(n).stem + ".txt"), a.shape))
    n_lab = sum(x is not None for x in labels)
    out = {"pairs": pairs, "source": f"{root}/ivif MSRS+RoadScene training split ({len(pairs)} pairs, {n_lab} with MSRS boxes)"}
    if n_lab:
        out["labels"] = labels
    return out


#: pixels just outside a box that the task loss skips (box edges are where a box label is least sure)
BOX_IGNORE_RING = 4


def box_labels(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """Weak int64 labels from a YOLO box file (0 background, 1 person, 2 bicycle, 3 car; a ring of
    ``BOX_IGNORE_RING`` pixels around each box ``IGNORE_INDEX``); None when the file does not exist."""
    from ..boxes import read_yolo, weak_labels
    from ..methods.tdfusion import IVIF_CLASSES

    if not path.is_file():
        return None
    boxes = read_yolo(path, shape, n_classes=len(IVIF_CLASSES) - 1)
    return weak_labels(boxes, shape, ignore_ring=BOX_IGNORE_RING, ignore_value=IGNORE_INDEX, dtype=np.int64)


def _load_folder(task: str, folder: Path) -> dict[str, Any]:
    """Training data from a folder given on the command line (clear errors when it is empty)."""
    if task == "brats":
        from .data import load_brats_split

        tr, va = load_brats_split("train", root=folder), load_brats_split("validation", root=folder)
        return {
            "a": _u8(np.concatenate([tr["a"], va["a"]])),
            "b": _u8(np.concatenate([tr["b"], va["b"]])),
            "labels": np.concatenate([tr["labels"], va["labels"]]).astype(np.int64),
            "source": str(folder),
        }
    from .data import load_pair_folder

    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    named = {p.name.lower(): p for p in subs}
    if "ir" in named and "vi" in named:
        fa, fb = named["ir"], named["vi"]
    elif len(subs) == 2:
        fa, fb = subs
    else:
        raise FileNotFoundError(
            f"training folder {folder} holds no pair sub-folders (expected ir/ and vi/, or two folders of same-named images)"
        )
    pairs = load_pair_folder(fa, fb)  # FileNotFoundError naming both folders when empty
    return {"pairs": [(_u8(x), _u8(y)) for x, y in pairs], "source": f"{folder} ({len(pairs)} pairs)"}


# --------------------------------------------------------------------------------------------
# the training loop (CLI)
# --------------------------------------------------------------------------------------------
def new_runner(task: str, seed: int = 0, device: str | torch.device = "cpu", labelled: bool = False,
               fusion_config: dict | None = None, loss_config: dict | None = None):
    """A freshly initialised TDFusion runner for ``task`` (seeded); ``labelled`` ivif: with the
    object segmenter (background, person, bicycle, car). ``fusion_config`` / ``loss_config``:
    FusionNet / LossNet arguments."""
    from ..methods.segmenter import Segmenter
    from ..methods.tdfusion import FusionNet, LossNet, TDFusionRunner, make_classes

    torch.manual_seed(seed)
    fusion, loss_net = FusionNet(**(fusion_config or {})), LossNet(**(loss_config or {}))
    if task == "brats":
        from .data import BRATS_CLASSES, BRATS_INPUT_INTENSITY

        seg = Segmenter(len(BRATS_CLASSES))
        meta = {"method": "tdfusion-brats", "input_intensity": dict(BRATS_INPUT_INTENSITY)}
        return TDFusionRunner(fusion, loss_net, seg, classes=make_classes(BRATS_CLASSES), device=device, meta=meta)
    if labelled:
        from ..methods.tdfusion import IVIF_CLASSES

        seg = Segmenter(len(IVIF_CLASSES))
        return TDFusionRunner(fusion, loss_net, seg, classes=make_classes(IVIF_CLASSES), device=device, meta={"method": "tdfusion"})
    return TDFusionRunner(fusion, loss_net, None, device=device, meta={"method": "tdfusion"})


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".resume.pt")


def _save(runner, trainer: TDFusionTrainer, out: Path, record: dict, rng_states: dict) -> None:
    from ..io.atomic import atomic_path
    from ..methods.store import save_bundle

    tensors, meta = runner.to_bundle()
    meta["training"] = record
    save_bundle(out, tensors, meta)
    state = trainer.state_dict() | {"rng": rng_states, "record": json.dumps(record)}
    with atomic_path(_resume_path(out)) as tmp:
        torch.save(state, tmp)


@torch.no_grad()
def _dice_on_slices(runner, a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Per-class Dice of the runner's fuse+segment on full slices (a quick training report)."""
    inter = np.zeros(n_classes)
    tot = np.zeros(n_classes)
    for i in range(len(a)):
        _, pred = runner.fuse_and_segment(_to_unit(a[i]), _to_unit(b[i]))
        for c in range(n_classes):
            p, t = pred == c, labels[i] == c
            inter[c] += np.logical_and(p, t).sum()
            tot[c] += p.sum() + t.sum()
    dice = np.where(tot > 0, 2 * inter / np.maximum(tot, 1), np.nan)
    out = {f"dice_{c}": float(dice[c]) for c in range(n_classes)}
    out["dice_mean_tumour"] = float(np.nanmean(dice[1:]))
    return out


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record."""
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads())
    try:
        return _train(args, log)
    finally:  # process-wide torch settings go back to what they were (train() is also called in-process)
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
        torch.set_num_threads(prev[2])


def _train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    from ..methods._torch import resolve_torch_device
    from ..methods.tdfusion import load_runner

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_torch_device(args.device)
    gpu = device.type in ("cuda", "mps")
    args.batch = args.batch or (16 if gpu else 4)
    args.crop = args.crop or (192 if gpu else 96)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = load_training_data(args.task, args.data)
    out = Path(args.out)
    if args.task == "brats":
        sampler = BratsSampler(data["a"], data["b"], data["labels"], args.crop, seed=args.seed)
        cw = class_weights_from_counts(sampler.class_counts(5)).tolist() if args.class_weights else None
    else:
        labels = data.get("labels") if args.labels else None
        sampler = PairSampler(data["pairs"], args.crop, seed=args.seed, labels=labels, object_fraction=args.object_fraction)
        from ..methods.tdfusion import IVIF_CLASSES

        cw = class_weights_from_counts(sampler.class_counts(len(IVIF_CLASSES))).tolist() if labels and args.class_weights else None
    labelled = args.task == "brats" or sampler.labels is not None
    cfg = TrainConfig(
        lr_fusion=args.lr, lr_seg=args.lr, lr_loss=args.lr_loss, inner_lr=args.inner_lr,
        grad_weight=args.grad_weight, meta_every=args.meta_every if labelled else 0,
        meta_start=args.meta_start, amp=args.amp, class_weights=cw, intensity=args.intensity,
        meta_mode=args.meta_mode, image_step=args.image_step, seg_repeats=args.seg_repeats,
        train_fusion=not args.freeze_fusion,
    )
    record: dict[str, Any] = {
        "command": "python -m napari_fusion.training.tdfusion " + " ".join(shlex.quote(x) for x in args.argv),
        "task": args.task,
        "data": data["source"],
        "seed": args.seed,
        "device": str(device),
        "batch": args.batch,
        "crop": args.crop,
        "config": cfg.to_dict(),
        "torch": torch.__version__,
    }
    if args.resume:
        runner = load_runner(args.resume, device=device)
        trainer = TDFusionTrainer(runner, cfg, device)
        rp = _resume_path(Path(args.resume))
        if rp.is_file():
            state = torch.load(rp, map_location=device, weights_only=True)
            trainer.load_state_dict(state)
            torch.set_rng_state(state["rng"]["torch"])
            sampler.rng.bit_generator.state = json.loads(state["rng"]["numpy"])
            prev = json.loads(state.get("record", "{}"))
            record["resumed_from"] = {"file": str(args.resume), "step": trainer.step, "seconds": prev.get("seconds", 0.0)}
            # the runs this one continues, oldest first (each with its own command): the whole recipe
            record["phases"] = [*prev.get("phases", []),
                                {k: prev.get(k) for k in ("command", "steps", "seconds", "final_losses")}]
        else:
            log(json.dumps({"warning": f"no optimiser state {rp}; resuming weights only"}))
    else:
        runner = new_runner(
            args.task, args.seed, device, labelled=labelled,
            fusion_config=_parse_config(args.fusion_config), loss_config=_parse_config(args.loss_config),
        )
        trainer = TDFusionTrainer(runner, cfg, device)

    logf = open(args.log, "a") if args.log else None
    ema: dict[str, float] = {}
    t0 = time.time()
    prev_seconds = record.get("resumed_from", {}).get("seconds", 0.0)
    first: dict[str, float] = {}
    try:
        while trainer.step < args.steps:
            if args.time_budget and time.time() - t0 >= args.time_budget:
                log(json.dumps({"stop": "time budget", "step": trainer.step}))
                break
            a, b, lab = sampler.batch(args.batch)
            row = trainer.train_step(a, b, lab)
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
                    first.setdefault(k, v)
            if any(isinstance(v, float) and not math.isfinite(v) and k != "acc" for k, v in row.items()):
                raise FloatingPointError(f"non-finite loss at step {trainer.step}: {row}")
            if trainer.step % args.log_every == 0 or trainer.step == args.steps:
                line = {"step": trainer.step, "seconds": round(time.time() - t0 + prev_seconds, 2)}
                line |= {k: round(v, 5) for k, v in ema.items()}
                s = json.dumps(line)
                log(s)
                if logf:
                    logf.write(s + "\n")
                    logf.flush()
            if args.ckpt_every and trainer.step % args.ckpt_every == 0:
                record |= {"steps": trainer.step, "seconds": round(time.time() - t0 + prev_seconds, 1), "final_losses": dict(ema)}
                _save(runner, trainer, out, record, _rng_states(sampler))
    finally:
        if logf:
            logf.close()
    record |= {
        "steps": trainer.step,
        "seconds": round(time.time() - t0 + prev_seconds, 1),
        "first_losses": {k: round(v, 5) for k, v in first.items()},
        "final_losses": {k: round(v, 5) for k, v in ema.items()},
    }
    trainer.finish()
    if args.task == "brats" and args.eval_slices:
        # a quick report on full training slices (the test cases are for benchmarks/tdfusion_brats.py)
        idx = np.linspace(0, len(data["a"]) - 1, args.eval_slices).round().astype(int)
        record["train_slice_dice"] = {
            k: (round(v, 4) if math.isfinite(v) else None)  # None: class absent from these slices
            for k, v in _dice_on_slices(runner, data["a"][idx], data["b"][idx], data["labels"][idx], 5).items()
        }
    _save(runner, trainer, out, record, _rng_states(sampler))
    log(json.dumps({"final": record}))
    return record


def _parse_config(text: str | None) -> dict[str, Any]:
    """``"down=2,dec_blocks=2"`` -> ``{"down": 2, "dec_blocks": 2}`` (ints, floats)."""
    out: dict[str, Any] = {}
    for part in filter(None, (text or "").split(",")):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"--fusion-config: {part!r} is not KEY=VALUE")
        out[key.strip()] = float(val) if "." in val else int(val)
    return out


def _rng_states(sampler) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(sampler.rng.bit_generator.state)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m napari_fusion.training.tdfusion",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--task", choices=("brats", "ivif"), required=True)
    ap.add_argument("--data", default="auto", help="'auto' (../shared/data) or a packed .npz")
    ap.add_argument("--out", required=True, help="model file to write (.safetensors); optimiser state goes beside it")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--batch", type=int, default=None, help="crops per step (default: 16 on a GPU, 4 on CPU)")
    ap.add_argument("--crop", type=int, default=None, help="crop side in pixels (default: 192 on a GPU, 96 on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", default=None, help="model file of an earlier run to continue")
    ap.add_argument("--log", default=None, help="append JSON-lines losses to this file")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr of the fusion net and the segmenter")
    ap.add_argument("--lr-loss", type=float, default=1e-3, help="Adam lr of the loss generation module")
    ap.add_argument("--inner-lr", type=float, default=1e-2, help="SGD lr of the inner (virtual) fusion step")
    ap.add_argument("--grad-weight", type=float, default=1.0)
    ap.add_argument("--meta-every", type=int, default=1)
    ap.add_argument("--meta-start", type=int, default=100, help="first step with a meta update")
    ap.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--intensity", choices=("l1", "l2"), default="l1",
                    help="intensity term: l1 (weighted median: keeps each source's contrast) or l2 (blend; older files)")
    ap.add_argument("--meta-mode", choices=("image", "params"), default="image",
                    help="inner step of the meta update on the fused image (image) or on the fusion net (params)")
    ap.add_argument("--image-step", type=float, default=0.05, help="mean intensity change of the image-space inner step")
    ap.add_argument("--seg-repeats", type=int, default=1, help="segmenter updates per step on the same fused batch")
    ap.add_argument("--fusion-config", default="down=2,dec_blocks=2",
                    help="FusionNet arguments for a new model, KEY=VALUE,... ('' = the older full-resolution net)")
    ap.add_argument("--loss-config", default="",
                    help="LossNet arguments for a new model, KEY=VALUE,... ('' = dim 16, 1 + 3 blocks)")
    ap.add_argument("--object-fraction", type=float, default=0.5,
                    help="ivif with boxes: share of crops centred near an object (the rest uniform)")
    ap.add_argument("--freeze-fusion", action="store_true",
                    help="train only the task network (e.g. a last phase on the final fused images; use with --meta-every 0)")
    ap.add_argument("--no-labels", dest="labels", action="store_false",
                    help="ivif: ignore the MSRS boxes (fusion loss only, loss module neutral)")
    ap.add_argument("--eval-slices", type=int, default=24, help="full training slices for the final Dice report (brats)")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return train(args)


if __name__ == "__main__":
    torch.set_flush_denormal(True)  # tiny second-order terms of the meta step must not hit slow denormal paths
    main()
