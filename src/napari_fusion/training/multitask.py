"""Train MultiTaskVIF: one network, fusion and segmentation learned jointly end to end.

Joint loss of one batch (weights are :class:`MultiTaskConfig` fields, CLI flags in brackets)::

    L = fusion_weight * (int_weight * L_int + grad_weight * L_grad) + seg_weight * (L_ce + dice_weight * L_dice)

- ``L_int = mean |F - max(A, B)|``: the fused image keeps the brighter source at every pixel (for
  FLAIR + T1c: oedema bright in FLAIR, enhancing rim bright in T1c) [--int-weight, default 1];
- ``L_grad = mean | |grad F| - max(|grad A|, |grad B|) |`` (Sobel, :func:`.losses.gradient_loss`): the
  fused image keeps the stronger edge of the two [--grad-weight, default 4: the normalised Sobel
  magnitudes are about a quarter of the intensities' scale];
- ``fusion_weight`` [--fusion-weight, default 5] balances the fusion terms (~0.05 after a few hundred
  steps) against the segmentation terms (~0.5) in the shared encoder and decoder;
- ``L_ce``: cross-entropy with inverse-square-root-frequency class weights (tumour classes are ~1 % of
  the pixels; :func:`.losses.class_weights_from_counts`) and an ``ignore_index`` (unlabelled /
  unpainted pixels contribute nothing);
- ``L_dice``: soft Dice loss averaged over the foreground classes 1..C-1 (labelled pixels only), which
  does not care how rare a class is [--dice-weight, default 1].

Command line (JSON-lines logs, atomic checkpoints via :mod:`napari_fusion.methods.store`, resume,
time budget, seeded and reproducible on CPU)::

    python -m napari_fusion.training.multitask --data auto --out multitaskvif_brats.safetensors \\
        --device auto --steps 20000 --time-budget 3600 --seed 0

Defaults: batch 32 of 160-pixel crops on a GPU, 4 of 96 on CPU; AdamW, lr 2e-3 with a 50-step
warm-up and a cosine decay to 5 % at ``--steps`` or at the end of ``--time-budget``, whichever comes
first (a budget-stopped run still ends with a small learning rate). A run whose budget does not bind
(``--time-budget 0``) is bitwise reproducible on CPU for a given seed and thread count, and
``--resume`` continues it exactly (optimiser, step and random states are in ``OUT.resume.pt``).

``--task brats`` (default, method ``multitaskvif``): ``--data auto`` reads the BraTS train + validation
cases from ``../shared/data`` (the test cases are held out for measurement); ``--data PACKED.npz`` reads
``a``, ``b`` (uint8 or float in [0, 1]) and ``labels`` as written by ``python -m napari_fusion.training.pack``.
The model records the BraTS ``input_intensity`` (how its training slices were scaled).

``--task ivif`` (method ``multitaskvif-ivif``, classes background / person / bicycle / car of
:data:`napari_fusion.methods.tdfusion.IVIF_CLASSES`; A = infrared, B = visible gray): ``--data auto``
reads the MSRS + RoadScene training split with the MSRS object boxes (``boxes/fusion``) as weak pixel
labels (inside a box its class, outside every box background, a 4-pixel ring around each box
ignored; RoadScene pairs have no labels and teach only the fusion path); ``--data PACKED.npz`` reads
``a_0, b_0, a_1, ...`` with optional ``l_0, l_1, ...`` label images. ``--object-fraction`` of the crops
are centred near an object. The crops are the 8-bit images / 255, which is the engine's default
mapping of 8-bit sources, so the model records no ``input_intensity``. Example (the shipped file)::

    python -m napari_fusion.training.multitask --task ivif --data auto --out multitaskvif_ivif.safetensors \
        --device cpu --threads 1 --batch 8 --crop 96 --steps 100000 --time-budget 2400 --ckpt-every 100

Fine-tuning from painted labels (:func:`finetune_multitask_steps`) uses the same joint loss with the
segmentation terms on painted pixels only; ``napari_fusion.training.finetune.finetune_steps`` hands
MultiTaskVIF models to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .losses import IGNORE_INDEX, class_weights_from_counts, gradient_loss

__all__ = [
    "MultiTaskConfig",
    "MultiTaskTrainer",
    "intensity_loss_max",
    "multitask_fusion_loss",
    "soft_dice_loss",
    "segmentation_loss",
    "joint_loss",
    "painted_loss",
    "finetune_multitask_steps",
    "dice_on_slices",
    "dice_on_pairs",
    "prior_adjustment",
    "apply_prior_adjustment",
    "train",
    "build_parser",
    "main",
]


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def intensity_loss_max(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean |F - max(A, B)|``: follow the brighter source at every pixel."""
    return (fused - torch.maximum(a, b)).abs().mean()


def multitask_fusion_loss(
    fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, int_weight: float = 1.0, grad_weight: float = 4.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``int_weight * L_int + grad_weight * L_grad`` and its parts ``{"int", "grad"}``."""
    li = intensity_loss_max(fused, a, b)
    lg = gradient_loss(fused, a, b)
    return int_weight * li + grad_weight * lg, {"int": li, "grad": lg}


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 1.0) -> torch.Tensor:
    """``1 - mean_c Dice_c`` over foreground classes 1..C-1 of softmax probabilities, labelled pixels only.

    Sums run over the whole batch; ``smooth`` keeps classes absent from the batch well defined (their
    loss then only asks for low probabilities). 0 (with a graph) when nothing is labelled or C == 1.
    """
    n = logits.shape[1]
    valid = labels != ignore_index
    if n < 2 or not bool(valid.any()):
        return logits.sum() * 0.0
    prob = torch.softmax(logits.float(), 1)[:, 1:]
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), n).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    m = valid[:, None].to(prob.dtype)
    prob, onehot = prob * m, onehot * m
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (denom + smooth)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted cross-entropy + ``dice_weight`` * soft Dice; ``ignore_index`` pixels contribute nothing.

    Raises ValueError for labels outside ``0..C-1`` (other than ``ignore_index``).
    """
    from .losses import task_loss

    ce = task_loss(logits.float(), labels, ignore_index, class_weights)
    dice = soft_dice_loss(logits, labels, ignore_index) if dice_weight else ce.new_zeros(())
    return ce + dice_weight * dice, {"ce": ce, "dice": dice}


@dataclass
class MultiTaskConfig:
    """Hyper-parameters of the joint training (CLI flags map onto these)."""

    lr: float = 2e-3
    weight_decay: float = 1e-4
    fusion_weight: float = 5.0
    int_weight: float = 1.0
    grad_weight: float = 4.0
    seg_weight: float = 1.0
    dice_weight: float = 1.0
    class_weights: list[float] | None = None
    ignore_index: int = IGNORE_INDEX
    amp: bool = False
    warmup: int = 50  # linear learning-rate warm-up steps
    trunk_lr_scale: float = 1.0  # learning-rate factor of the shared encoder/decoder (the two paths get 1)
    total_steps: int = 0  # > 0: cosine decay to 5 % over these steps

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def joint_loss(
    fused: torch.Tensor,
    logits: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None,
    config: MultiTaskConfig,
    class_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The joint loss of one batch and its parts as floats (``fusion``, ``int``, ``grad``, ``seg``, ``ce``, ``dice``)."""
    c = config
    lf, fparts = multitask_fusion_loss(fused.float(), a, b, c.int_weight, c.grad_weight)
    total = c.fusion_weight * lf
    parts = {"fusion": float(lf.detach()), "int": float(fparts["int"].detach()), "grad": float(fparts["grad"].detach())}
    if labels is not None:
        ls, sparts = segmentation_loss(
            logits, labels, class_weights=class_weights, dice_weight=c.dice_weight, ignore_index=c.ignore_index
        )
        total = total + c.seg_weight * ls
        parts |= {"seg": float(ls.detach()), "ce": float(sparts["ce"].detach()), "dice": float(sparts["dice"].detach())}
    parts["total"] = float(total.detach())
    return total, parts


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


class MultiTaskTrainer:
    """Joint optimisation of a :class:`~napari_fusion.methods.multitask.MultiTaskRunner`'s network, in place.

    AdamW with a linear warm-up (and a cosine decay when ``config.total_steps`` is set).
    """

    def __init__(self, runner, config: MultiTaskConfig | None = None, device: str | torch.device | None = None):
        from ..methods._torch import resolve_torch_device

        self.runner = runner
        self.config = config or MultiTaskConfig()
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        self.net = runner.net
        if self.device.type == "cpu":  # plain layout trains faster on CPU; channels-last on GPUs
            self.net.to(memory_format=torch.contiguous_format)
        heads = ("fuse_", "seg_")
        trunk = [p for n, p in self.net.named_parameters() if not n.startswith(heads)]
        paths = [p for n, p in self.net.named_parameters() if n.startswith(heads)]
        self.opt = torch.optim.AdamW(
            [{"params": trunk, "scale": float(self.config.trunk_lr_scale)}, {"params": paths, "scale": 1.0}],
            lr=self.config.lr, weight_decay=self.config.weight_decay,
        )
        cw = self.config.class_weights
        self.class_weights = torch.tensor(cw, dtype=torch.float32, device=self.device) if cw else None
        self.step = 0
        self.time_fraction = 0.0  # share of the run's time budget spent (set by the training loop)

    def lr_at(self, step: int, time_fraction: float = 0.0) -> float:
        """Learning rate of a step: linear warm-up, then constant or cosine-decayed to 5 %.

        The cosine runs over ``config.total_steps``, or faster when ``time_fraction`` (the share of
        a time budget already spent) is further along, so a run stopped by its budget still ends
        with a decayed learning rate.
        """
        c = self.config
        lr = c.lr * min(1.0, (step + 1) / max(c.warmup, 1))
        if c.total_steps > 0 and step >= c.warmup:
            t = min(1.0, max((step - c.warmup) / max(c.total_steps - c.warmup, 1), float(time_fraction)))
            lr *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t))
        return lr

    def train_step(self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """One joint step on a batch ``(N,1,h,w)`` x2 and ``(N,h,w)`` labels; returns the losses."""
        self.net.train()
        a = a.to(self.device, non_blocking=True)
        b = b.to(self.device, non_blocking=True)
        if labels is not None:
            labels = labels.to(self.device, non_blocking=True).long()
        if self.device.type == "cuda":
            a = a.contiguous(memory_format=torch.channels_last)
            b = b.contiguous(memory_format=torch.channels_last)
        lr = self.lr_at(self.step, self.time_fraction)
        for g in self.opt.param_groups:
            g["lr"] = lr * g["scale"]
        with _autocast(self.device, self.config.amp):
            fused, logits = self.net(a, b)
        loss, parts = joint_loss(fused, logits, a, b, labels, self.config, self.class_weights)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if labels is not None:
            with torch.no_grad():
                valid = labels != self.config.ignore_index
                parts["acc"] = float((logits.argmax(1)[valid] == labels[valid]).float().mean()) if bool(valid.any()) else float("nan")
        parts["step"] = self.step
        self.step += 1
        return parts

    def finish(self):
        """Back to inference mode and the runner's layout; returns the runner."""
        self.runner.to(self.device)
        self.net.eval()
        return self.runner

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.opt.load_state_dict(state["opt"])


# --------------------------------------------------------------------------------------------
# fine-tuning from painted labels
# --------------------------------------------------------------------------------------------
class _PaintedCrops:
    """Crops (side a multiple of 8) centred near painted pixels; a class is drawn uniformly first."""

    def __init__(self, a: np.ndarray, b: np.ndarray, targets: np.ndarray, crop: int, seed: int):
        H, W = a.shape
        crop = max(8, int(crop) // 8 * 8)
        self.ch, self.cw = min(crop, -(-H // 8) * 8), min(crop, -(-W // 8) * 8)
        ph, pw = max(0, self.ch - H), max(0, self.cw - W)
        if ph or pw:  # smaller than one crop: mirror the sources, leave the padding unpainted
            a = np.pad(a, ((0, ph), (0, pw)), mode="symmetric")
            b = np.pad(b, ((0, ph), (0, pw)), mode="symmetric")
            targets = np.pad(targets, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        self.a, self.b, self.t = a, b, targets
        self.rng = np.random.default_rng(seed)
        flat = targets.ravel()
        self.where = {int(c): np.flatnonzero(flat == c) for c in np.unique(targets) if c != IGNORE_INDEX}
        self.classes = sorted(self.where)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, W = self.a.shape
        ch, cw, rng = self.ch, self.cw, self.rng
        A = np.empty((n, 1, ch, cw), np.float32)
        B = np.empty((n, 1, ch, cw), np.float32)
        T = np.empty((n, ch, cw), np.int64)
        for i in range(n):
            c = self.classes[int(rng.integers(len(self.classes)))]
            y, x = divmod(int(self.where[c][int(rng.integers(len(self.where[c])))]), W)
            y0 = int(np.clip(y - ch // 2 + rng.integers(-ch // 4, ch // 4 + 1), 0, H - ch))
            x0 = int(np.clip(x - cw // 2 + rng.integers(-cw // 4, cw // 4 + 1), 0, W - cw))
            sl = (slice(y0, y0 + ch), slice(x0, x0 + cw))
            A[i, 0], B[i, 0], T[i] = self.a[sl], self.b[sl], self.t[sl]
            if rng.integers(2):
                A[i], B[i], T[i] = A[i][..., ::-1], B[i][..., ::-1], T[i][..., ::-1]
        return torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(T)


def _names_for(class_names, values) -> dict[int, str]:
    if class_names is None:
        return {}
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    names = list(class_names)
    return {int(v): str(names[int(v)]) for v in values if 0 <= int(v) < len(names)}


def _cover_classes(runner, present: Sequence[int], class_names, seed: int) -> list[str]:
    """Grow ``runner``'s (a copy's) head and class list to cover every painted class; returns notes."""
    from ..methods.registry import ClassInfo
    from ..methods.tdfusion import default_class_color

    names = _names_for(class_names, present)
    notes = []
    top = max(present)
    known = {c.index: c for c in runner.classes}
    if top >= runner.net.n_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            runner.net.extend_classes(top + 1)
        notes.append(f"segmentation head extended to {top + 1} outputs for new class(es) {[v for v in present if v not in known]}")
    for v in present:
        if v not in known:
            known[v] = ClassInfo(v, names.get(v, f"class {v}"), default_class_color(v))
        elif v in names:
            known[v] = ClassInfo(v, names[v], known[v].color)
    runner.classes = tuple(sorted(known.values(), key=lambda c: c.index))
    return notes


def finetune_multitask_steps(
    runner,
    a: np.ndarray,
    b: np.ndarray,
    sparse_labels: np.ndarray,
    steps: int = 60,
    lr: float = 1e-3,
    *,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    device: str | torch.device | None = None,
    background_value: int | None = None,
    crop: int = 64,
    batch: int = 4,
    fusion_weight: float = 5.0,
    head_lr_scale: float = 3.0,
    trunk_lr_scale: float = 0.1,
    warmup: int = 5,
    seed: int = 0,
) -> Generator[Any, None, Any]:
    """Fine-tune a copy of a MultiTaskVIF runner on painted labels; yields ``FinetuneProgress``, returns the new runner.

    Label convention of :mod:`napari_fusion.training.finetune`: 0 = unpainted (ignored), v > 0 trains
    class v, ``background_value`` (if given) trains class 0; at least two classes must be painted; a
    class the head does not have yet extends it (:meth:`MultiTaskNet.extend_classes`). The loss is the
    joint loss: segmentation terms (class-weighted cross-entropy + Dice) on painted pixels only, the
    fusion terms on the whole crop (they need no labels and keep the fused image from drifting).
    Each step trains on ``batch`` crops of ``crop`` pixels around painted pixels. Strokes are few, so
    what the model knows stays put: the shared trunk learns at ``trunk_lr_scale * lr`` while the
    fusion and segmentation paths adapt at ``head_lr_scale * lr`` (AdamW, ``warmup`` steps of linear
    warm-up). Measured with the defaults (60 steps, lr 1e-3; ``benchmarks/multitask_vs_cascade.py``):
    re-teaching the BraTS model two classes on an infrared/visible pair takes held-out stroke accuracy
    from 0 to above 0.9, while uniform lr 1e-3 on all weights only reached a constant label map. The input runner
    is never modified; stop iterating to cancel. Bad input raises here, before a generator is returned.
    """
    from ..methods._torch import check_pair
    from .finetune import check_sparse_labels, painted_targets

    if getattr(runner, "family", None) != "MultiTaskVIF" or not hasattr(runner, "net"):
        raise TypeError(f"finetune_multitask_steps needs a MultiTaskVIF runner, got {type(runner).__name__}")
    a, b = check_pair(a, b)
    labels = check_sparse_labels(sparse_labels, a.shape)
    steps, lr = int(steps), float(lr)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
    targets = painted_targets(labels, background_value)
    present = sorted(int(v) for v in np.unique(targets) if v != IGNORE_INDEX)
    if len(present) < 2:
        what = "background" if present == [0] else f"class {present[0]}"
        raise ValueError(
            f"only one class ({what}) is painted; paint at least two classes (for example the object and "
            "its surroundings) so the segmentation head learns to tell them apart"
        )
    return _finetune(
        runner, a, b, targets, present, steps=steps, lr=lr, class_names=class_names, device=device,
        background_value=background_value, crop=crop, batch=batch, fusion_weight=fusion_weight,
        head_lr_scale=head_lr_scale, trunk_lr_scale=trunk_lr_scale, warmup=warmup, seed=seed,
    )


def _finetune(
    runner, a, b, targets, present, *, steps, lr, class_names, device, background_value, crop, batch, fusion_weight,
    head_lr_scale, trunk_lr_scale, warmup, seed,
):
    from .finetune import FinetuneProgress

    t0 = time.time()
    new = runner.copy()
    notes = _cover_classes(new, present, class_names, seed)
    counts = np.bincount(targets[targets != IGNORE_INDEX], minlength=new.net.n_classes)
    cw = class_weights_from_counts(np.where(counts > 0, counts, counts[counts > 0].max())).tolist()
    cfg = MultiTaskConfig(
        lr=lr * head_lr_scale, weight_decay=0.0, fusion_weight=fusion_weight, class_weights=cw, warmup=warmup,
        trunk_lr_scale=trunk_lr_scale / head_lr_scale,
    )
    trainer = MultiTaskTrainer(new, cfg, device if device is not None else runner.device)
    sampler = _PaintedCrops(a, b, targets, crop, seed)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(steps):
            ta, tb, tt = sampler.batch(batch)
            row = trainer.train_step(ta, tb, tt)
            if not (math.isfinite(row["seg"]) and math.isfinite(row["fusion"])):
                raise FloatingPointError(f"fine-tuning diverged at step {i + 1} (losses {row}); try a smaller learning rate")
            for k, v in row.items():
                if k != "step":
                    first.setdefault(k, v)
                    last[k] = v
            yield FinetuneProgress(
                step=i + 1, steps=steps, task_loss=float(row["seg"]), fusion_loss=float(row["fusion"]),
                seconds=time.time() - t0, extra={k: v for k, v in row.items() if k not in ("step", "seg", "fusion")},
                model=new,
            )
    trainer.finish()
    base = new.meta.get("base") or runner.name
    new.meta["base"] = base
    new.meta["method"] = base if str(base).endswith("-finetuned") else f"{base}-finetuned"
    history = list(new.meta.get("finetune_history", []))
    history.append(
        {
            "steps": steps, "lr": lr, "crop": [int(sampler.ch), int(sampler.cw)], "batch": int(batch),
            "fusion_weight": fusion_weight, "head_lr_scale": head_lr_scale, "trunk_lr_scale": trunk_lr_scale,
            "warmup": warmup,
            "seed": int(seed), "background_value": background_value,
            "painted_pixels": {str(c): int(counts[c]) for c in present},
            "seconds": round(time.time() - t0, 2), "device": str(trainer.device), "notes": notes,
            "first_batch_losses": {k: round(float(v), 5) for k, v in first.items()},
            "last_batch_losses": {k: round(float(v), 5) for k, v in last.items()},
        }
    )
    new.meta["finetune_history"] = history
    return new


@torch.no_grad()
def painted_loss(runner, a: np.ndarray, b: np.ndarray, sparse_labels: np.ndarray, background_value: int | None = None) -> float:
    """Plain cross-entropy of the runner's one-pass logits over the painted pixels only (0 = unpainted).

    Painted values the model has no output for raise ValueError (fine-tune first: it extends the head).
    """
    from ..methods._torch import check_pair
    from .finetune import check_sparse_labels, painted_targets
    from .losses import task_loss

    a, b = check_pair(a, b)
    labels = check_sparse_labels(sparse_labels, a.shape)
    logits = torch.from_numpy(runner.logits(a, b))[None]
    t = torch.from_numpy(painted_targets(labels, background_value))[None]
    return float(task_loss(logits, t))


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


@torch.no_grad()
def dice_on_slices(runner, a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_classes: int = 5) -> dict[str, float]:
    """Per-class Dice (pooled over slices) of the runner's one-pass labels; ``dice_mean_tumour`` over classes 1.. present."""
    inter = np.zeros(n_classes)
    tot = np.zeros(n_classes)
    for i in range(len(a)):
        _, pred = runner.fuse_and_segment(_unit(a[i]), _unit(b[i]))
        for c in range(n_classes):
            p, t = pred == c, labels[i] == c
            inter[c] += np.logical_and(p, t).sum()
            tot[c] += p.sum() + t.sum()
    dice = np.where(tot > 0, 2 * inter / np.maximum(tot, 1), np.nan)
    out = {f"dice_{c}": float(dice[c]) for c in range(n_classes)}
    fg = dice[1:][np.isfinite(dice[1:])]
    out["dice_mean_tumour"] = float(fg.mean()) if fg.size else float("nan")
    return out


@torch.no_grad()
def dice_on_pairs(runner, pairs, labels, n_classes: int, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Per-class Dice (pooled over pairs) of the runner's one-pass labels on whole images of any sizes.

    Pixels whose label is ``ignore_index`` are left out. Also ``dice_mean_objects`` (classes 1..
    present in labels or predictions) and ``predicted_object_fraction`` (share of the scored pixels
    predicted as any class > 0).
    """
    inter = np.zeros(n_classes)
    tot = np.zeros(n_classes)
    fg = scored = 0
    for (a, b), lab in zip(pairs, labels):
        _, pred = runner.fuse_and_segment(_unit(a), _unit(b))
        keep = lab != ignore_index
        p, t = pred[keep], lab[keep]
        fg += int((p > 0).sum())
        scored += int(keep.sum())
        for c in range(n_classes):
            pc, tc = p == c, t == c
            inter[c] += np.logical_and(pc, tc).sum()
            tot[c] += pc.sum() + tc.sum()
    dice = np.where(tot > 0, 2 * inter / np.maximum(tot, 1), np.nan)
    out = {f"dice_{c}": float(dice[c]) for c in range(n_classes)}
    obj = dice[1:][np.isfinite(dice[1:])]
    out["dice_mean_objects"] = float(obj.mean()) if obj.size else float("nan")
    out["predicted_object_fraction"] = fg / max(scored, 1)
    return out


def prior_adjustment(image_counts, seen_counts, class_weights=None, strength: float = 1.0) -> np.ndarray:
    """Logit offsets that move a model trained on re-balanced crops to the class prior of whole images.

    A classifier trained with cross-entropy on crops whose labelled pixels have class frequencies
    ``seen`` and class weights ``w`` learns posteriors with the prior ``w * seen``; on whole images
    the prior is ``image`` (post-hoc logit adjustment, Menon et al. 2021). The offsets
    ``strength * (log image - log(w * seen))``, shifted so that class 0 gets 0, are added to the
    segmentation bias. ``strength`` 0: no change, 1: the full Bayes correction.
    """
    img = np.asarray(image_counts, np.float64).clip(min=1.0)
    seen = np.asarray(seen_counts, np.float64).clip(min=1.0)
    w = np.ones_like(img) if class_weights is None else np.asarray(class_weights, np.float64)
    if not (img.shape == seen.shape == w.shape):
        raise ValueError(f"class counts {img.shape}, {seen.shape} and weights {w.shape} differ in length")
    d = np.log(img / img.sum()) - np.log(w * seen / seen.sum())
    return float(strength) * (d - d[0])


@torch.no_grad()
def apply_prior_adjustment(runner, image_counts, seen_counts, class_weights=None, strength: float = 1.0) -> np.ndarray:
    """Add :func:`prior_adjustment` to the runner's segmentation bias (in place) and record it in
    ``runner.meta["prior_adjustment"]``; an earlier recorded adjustment is undone first. Returns the offsets."""
    net = runner.net
    prev = (runner.meta.get("prior_adjustment") or {}).get("offsets")
    if prev is not None:
        net.seg_out.bias -= torch.tensor(prev, dtype=net.seg_out.bias.dtype, device=net.seg_out.bias.device)
    d = prior_adjustment(image_counts, seen_counts, class_weights, strength)
    if len(d) != net.n_classes:
        raise ValueError(f"{len(d)} class counts for a model with {net.n_classes} classes")
    net.seg_out.bias += torch.tensor(d, dtype=net.seg_out.bias.dtype, device=net.seg_out.bias.device)
    runner.meta["prior_adjustment"] = {
        "strength": float(strength),
        "offsets": [round(float(x), 6) for x in d],
        "image_class_pixels": [int(x) for x in image_counts],
        "seen_class_pixels": [int(x) for x in seen_counts],
        "class_weights": None if class_weights is None else [float(x) for x in class_weights],
    }
    return d


# --------------------------------------------------------------------------------------------
# the training loop (CLI)
# --------------------------------------------------------------------------------------------
def _ivif_data(data: dict[str, Any], n_classes: int) -> tuple[list, list]:
    """Pairs and label images (None for unlabelled pairs) of ivif training data; checks label values."""
    pairs = list(data["pairs"])
    labels = data.get("labels")
    if labels is None or not any(lab is not None for lab in labels):
        raise ValueError(
            f"ivif training data {data['source']} holds no label images; MultiTaskVIF needs labels for its "
            "segmentation path (MSRS box files under boxes/fusion, or l_0, l_1, ... in a packed .npz)"
        )
    labels = [None if lab is None else np.asarray(lab).astype(np.int64) for lab in labels]
    for i, lab in enumerate(labels):
        if lab is None:
            continue
        v = lab[lab != IGNORE_INDEX]
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"ivif training pair {i}: labels hold values {v.min()}..{v.max()}; classes are 0..{n_classes - 1}")
    return pairs, labels


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".resume.pt")


def _rng_states(sampler) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(sampler.rng.bit_generator.state)}


def _save(runner, trainer: MultiTaskTrainer, out: Path, record: dict, rng: dict) -> None:
    from ..io.atomic import atomic_path
    from ..methods.store import save_bundle

    tensors, meta = runner.to_bundle()
    meta["training"] = record
    save_bundle(out, tensors, meta)
    state = trainer.state_dict() | {"rng": rng, "record": json.dumps(record)}
    with atomic_path(_resume_path(out)) as tmp:
        torch.save(state, tmp)


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record (also stored in the model file)."""
    from ..methods._torch import resolve_torch_device
    from ..methods.multitask import load_runner, new_runner
    from .data import BRATS_CLASSES, BRATS_INPUT_INTENSITY
    from ..methods.tdfusion import IVIF_CLASSES
    from .tdfusion import BratsSampler, PairSampler, load_training_data

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_torch_device(args.device)
    gpu = device.type in ("cuda", "mps")
    args.batch = args.batch or (32 if gpu else 4)
    args.crop = args.crop or (160 if gpu else 96)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    data = load_training_data(args.task, args.data)
    if args.task == "ivif":
        classes = IVIF_CLASSES
        n_classes = len(classes)
        pairs, labels = _ivif_data(data, n_classes)
        sampler = PairSampler(pairs, args.crop, seed=args.seed, labels=labels, object_fraction=args.object_fraction)
        method = "multitaskvif-ivif"
    else:
        classes = BRATS_CLASSES
        n_classes = len(classes)
        labels = data["labels"].astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"training labels hold values {labels.min()}..{labels.max()}; BraTS classes are 0..{n_classes - 1}")
        sampler = BratsSampler(data["a"], data["b"], labels, args.crop, seed=args.seed, tumour_fraction=args.tumour_fraction,
                               intensity_jitter=args.intensity_jitter)
        method = "multitaskvif"
    cw = class_weights_from_counts(sampler.class_counts(n_classes)).tolist() if args.class_weights else None
    cfg = MultiTaskConfig(
        lr=args.lr, weight_decay=args.weight_decay, fusion_weight=args.fusion_weight, int_weight=args.int_weight,
        grad_weight=args.grad_weight, seg_weight=args.seg_weight, dice_weight=args.dice_weight, class_weights=cw,
        amp=args.amp, warmup=args.warmup, total_steps=args.steps if args.cosine else 0,
    )
    out = Path(args.out)
    record: dict[str, Any] = {
        "command": "python -m napari_fusion.training.multitask " + " ".join(shlex.quote(x) for x in args.argv),
        "task": args.task,
        "data": data["source"],
        "seed": args.seed,
        "device": str(device),
        "batch": args.batch,
        "crop": args.crop,
        "config": cfg.to_dict(),
        "torch": torch.__version__,
    }
    if args.task == "ivif":
        record |= {"pairs": len(pairs), "labelled_pairs": sum(lab is not None for lab in labels),
                   "class_pixels": [int(x) for x in sampler.class_counts(n_classes)], "object_fraction": args.object_fraction}
    else:
        record["slices"] = int(len(labels))
    if args.resume:
        runner = load_runner(args.resume, device=device)
        prev_adj = (runner.meta.pop("prior_adjustment", None) or {}).get("offsets")
        if prev_adj is not None:  # train the plain logits; the adjustment is made again at the end
            with torch.no_grad():
                runner.net.seg_out.bias -= torch.tensor(prev_adj, dtype=runner.net.seg_out.bias.dtype)
        if runner.n_classes != n_classes:
            raise ValueError(f"{args.resume} has {runner.n_classes} classes; --task {args.task} trains {n_classes}")
        trainer = MultiTaskTrainer(runner, cfg, device)
        rp = _resume_path(Path(args.resume))
        if rp.is_file():
            state = torch.load(rp, map_location=device, weights_only=True)
            trainer.load_state_dict(state)
            torch.set_rng_state(state["rng"]["torch"].cpu())
            sampler.rng.bit_generator.state = json.loads(state["rng"]["numpy"])
            prev = json.loads(state.get("record", "{}"))
            record["resumed_from"] = {"file": str(args.resume), "step": trainer.step, "seconds": prev.get("seconds", 0.0)}
        else:
            log(json.dumps({"warning": f"no optimiser state {rp}; resuming weights only"}))
    else:
        runner = new_runner(classes, seed=args.seed, device=device)
        trainer = MultiTaskTrainer(runner, cfg, device)
    runner.meta["method"] = method
    if args.task == "brats":
        runner.meta["input_intensity"] = dict(BRATS_INPUT_INTENSITY)  # how the training slices were scaled
    else:  # 8-bit images / 255: the engine's default mapping of 8-bit sources, nothing to record
        runner.meta.pop("input_intensity", None)

    logf = open(args.log, "a") if args.log else None
    ema: dict[str, float] = {}
    first: dict[str, float] = {}
    seen = np.zeros(n_classes, np.int64)  # labelled pixels per class in the crops this run trained on
    t0 = time.time()
    prev_seconds = record.get("resumed_from", {}).get("seconds", 0.0)
    try:
        while trainer.step < args.steps:
            if args.time_budget and time.time() - t0 >= args.time_budget:
                log(json.dumps({"stop": "time budget", "step": trainer.step}))
                break
            a, b, lab = sampler.batch(args.batch)
            if lab is not None:
                v = lab[lab >= 0]
                seen += np.bincount(v.numpy(), minlength=n_classes)[:n_classes]
            if args.time_budget:
                trainer.time_fraction = (time.time() - t0) / args.time_budget
            row = trainer.train_step(a, b, lab)
            bad = {k: v for k, v in row.items() if k != "acc" and isinstance(v, float) and not math.isfinite(v)}
            if bad:
                raise FloatingPointError(f"non-finite loss at step {trainer.step}: {bad}")
            for k, v in row.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
                    first.setdefault(k, v)
            if trainer.step % args.log_every == 0 or trainer.step == args.steps:
                line = {"step": trainer.step, "seconds": round(time.time() - t0 + prev_seconds, 2), "lr": trainer.lr_at(trainer.step - 1, trainer.time_fraction)}
                line |= {k: round(v, 5) for k, v in ema.items()}
                s = json.dumps(line)
                log(s)
                if logf:
                    logf.write(s + "\n")
                    logf.flush()
            if args.ckpt_every and trainer.step % args.ckpt_every == 0 and trainer.step < args.steps:
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
    record["seen_class_pixels"] = [int(x) for x in seen]
    trainer.finish()
    if args.prior_adjust and seen.sum():
        image_counts = sampler.class_counts(n_classes)
        d = apply_prior_adjustment(runner, image_counts, seen, cw, args.prior_adjust)
        record["prior_adjustment"] = {"strength": args.prior_adjust, "offsets": [round(float(x), 4) for x in d]}
    if args.eval_slices and args.task == "ivif":
        # a quick report on whole labelled training pairs with objects (the test split is for measurement)
        idx = list(sampler.object_pairs)
        idx = [idx[int(j)] for j in np.linspace(0, len(idx) - 1, min(args.eval_slices, len(idx))).round().astype(int)] if idx else []
        if idx:
            record["train_pair_dice"] = {
                k: (round(v, 4) if math.isfinite(v) else None)
                for k, v in dice_on_pairs(runner, [pairs[i] for i in idx], [labels[i] for i in idx], n_classes).items()
            }
    elif args.eval_slices:
        # a quick report on full training slices with tumour (the test cases are for the benchmark)
        tum = np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1))
        pool = tum if len(tum) else np.arange(len(labels))
        idx = pool[np.linspace(0, len(pool) - 1, min(args.eval_slices, len(pool))).round().astype(int)]
        record["train_slice_dice"] = {
            k: (round(v, 4) if math.isfinite(v) else None)
            for k, v in dice_on_slices(runner, data["a"][idx], data["b"][idx], labels[idx], n_classes).items()
        }
    _save(runner, trainer, out, record, _rng_states(sampler))
    log(json.dumps({"final": record}))
    return record


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m napari_fusion.training.multitask",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--task", choices=("brats", "ivif"), default="brats",
                    help="brats: FLAIR + T1c tumour classes (method multitaskvif); ivif: infrared + visible with MSRS "
                         "object boxes as weak labels (method multitaskvif-ivif)")
    ap.add_argument("--data", default="auto",
                    help="'auto' (../shared/data: BraTS train+validation, or the MSRS+RoadScene training split for ivif), "
                         "a packed .npz or a folder")
    ap.add_argument("--out", required=True, help="model file to write (.safetensors); optimiser state goes beside it (.resume.pt)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--steps", type=int, default=4000, help="total optimiser steps (a resumed run continues up to this)")
    ap.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--batch", type=int, default=None, help="crops per step (default: 32 on a GPU, 4 on CPU)")
    ap.add_argument("--crop", type=int, default=None, help="crop side in pixels (default: 160 on a GPU, 96 on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", default=None, help="model file of an earlier run to continue (its .resume.pt beside it)")
    ap.add_argument("--log", default=None, help="append JSON-lines losses to this file")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    ap.add_argument(
        "--cosine", action=argparse.BooleanOptionalAction, default=True,
        help="cosine decay to 5%% at --steps, or at the end of --time-budget when that comes first",
    )
    ap.add_argument("--fusion-weight", type=float, default=5.0, help="weight of the fusion loss in the joint loss")
    ap.add_argument("--int-weight", type=float, default=1.0, help="weight of |F - max(A,B)| in the fusion loss")
    ap.add_argument("--grad-weight", type=float, default=4.0, help="weight of the max-gradient term in the fusion loss")
    ap.add_argument("--seg-weight", type=float, default=1.0, help="weight of the segmentation loss in the joint loss")
    ap.add_argument("--dice-weight", type=float, default=1.0, help="weight of soft Dice next to cross-entropy")
    ap.add_argument("--tumour-fraction", type=float, default=0.6, help="brats: share of crops centred on a tumour pixel")
    ap.add_argument("--object-fraction", type=float, default=0.5, help="ivif: share of crops centred near an object box")
    ap.add_argument("--intensity-jitter", type=float, default=0.0,
                    help="probability that a crop's source is remapped as a single slice scaled on its own is (0: never)")
    ap.add_argument("--no-class-weights", dest="class_weights", action="store_false")
    ap.add_argument("--prior-adjust", type=float, default=0.0,
                    help="after training, shift the segmentation logits by this share (0..1) of log(image class prior) "
                         "- log(class weights x class frequencies of the training crops): object-centred crops and "
                         "class weights otherwise make the model label far too many object pixels on whole images "
                         "(0: off)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--eval-slices", type=int, default=24,
                    help="training slices with tumour (ivif: whole training pairs with objects) for the final Dice report")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return train(args)


if __name__ == "__main__":
    main()
