"""Fine-tune a task-driven fusion model from labels a user painted (napari Labels layer).

Label convention (what a napari user sees):

- value ``0`` is "unpainted": those pixels are ignored by the task loss (napari's "no label");
- a painted value ``v > 0`` trains class ``v`` of the segmenter (label value = class index, the same
  numbers ``runner.segment`` returns, so painting corrections on a predicted Labels layer works);
- models whose class 0 is "background" (``tdfusion-brats``) cannot have class 0 painted with 0:
  pass ``background_value=v`` and pixels painted ``v`` train class 0 instead (``v`` is then not a class
  of its own). Without it, background is simply not trained;
- a painted value the segmenter does not have yet extends its head (:meth:`Segmenter.extend_classes`);
  a model without a segmenter (the ``tdfusion`` infrared/visible base) gets a fresh one whose classes
  are the painted values;
- at least two different classes must be painted: with a single class the task loss is minimised by
  calling every pixel that class, which would silently ruin a model, so it is refused with an error.

The loop is TDFusion's bi-level training on crops around the painted pixels (see
:mod:`.tdfusion`): the loss generation module is meta-learned from the painted-pixel cross-entropy,
the fusion net follows the learned loss, the segmenter learns the painted pixels. The model given is
never modified: a new runner is returned. MultiTaskVIF models are handed to
``napari_fusion.training.finetune_multitask.finetune_multitask_steps``.
"""
from __future__ import annotations

import time
from typing import Any, Generator, Mapping, Sequence

import numpy as np
import torch

from .losses import IGNORE_INDEX, class_weights_from_counts, task_loss
from .painted import FinetuneProgress, StrokeCrops, check_sparse_labels, class_names_for, cover_classes, note_tuning, painted_targets, tuning_steps

SEGMENTER_MAX_LR = 1e-3  # fine-tuning never moves the segmenter faster than this (see _finetune_tdfusion)
# Learning rates chosen when none is given (docs/results/finetune.md): a model that already labels
# most painted pixels right gets corrections at a small rate (at 1e-3, strokes from a few BraTS slices
# made both shipped models worse on the other slices; multitaskvif at 1e-4 kept its Dice); a new task
# (a fresh segmenter, or classes the model gets wrong) needs a larger one (tdfusion on MSRS strokes:
# 3e-4 steadiest; multitaskvif re-taught on MSRS: 1e-4 barely moved in 30 steps, 1e-3 reached 0.71).
LR_CORRECTIONS = 1e-4
LR_NEW_TASK = {"TDFusion": 3e-4, "MultiTaskVIF": 1e-3}
CORRECTIONS_ACCURACY = 0.5  # painted-pixel accuracy of the model before tuning above which it is "corrections"
# Corrections also replay the model's own labels on a random sample of the unpainted pixels: strokes
# carry no class balance (a few background strokes next to many tumour strokes), and without replay
# the segmenter learned their balance and over-predicted the painted classes everywhere else
# (tdfusion-brats on BraTS, whole-tumour Dice after 30 steps at 1e-4: no replay 0.11, 2% 0.34, 10% 0.50).
REPLAY_FRACTION = 0.10

__all__ = [
    "FinetuneProgress",
    "auto_lr",
    "with_replay",
    "finetune_steps",
    "finetune",
    "painted_targets",
    "painted_task_loss",
    "check_sparse_labels",
]


def _prepare_segmenter(runner, present: Sequence[int], class_names, seed: int, background: bool) -> list[str]:
    """Give ``runner`` (a copy) a segmenter covering every present class; returns what changed."""
    from ..methods.registry import ClassInfo
    from ..methods.segmenter import Segmenter
    from ..methods.tdfusion import default_class_color

    if not runner.has_segmenter:
        names = class_names_for(class_names, present)
        top = max(present)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            seg = Segmenter(top + 1)
        classes = [
            ClassInfo(v, names.get(v, "background" if (v == 0 and background) else f"class {v}"), default_class_color(v))
            for v in sorted(present)
        ]
        runner.set_segmenter(seg, classes)
        return [f"new segmenter for classes {sorted(present)}"]
    runner.classes, notes = cover_classes(runner.segmenter, runner.classes, present, class_names, seed, "segmenter head")
    return notes


def finetune_steps(
    runner,
    a: np.ndarray,
    b: np.ndarray,
    sparse_labels: np.ndarray,
    *,
    steps: int = 60,
    lr: float | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    device: str | torch.device | None = None,
    background_value: int | None = None,
    crop: int = 64,
    batch: int = 4,
    meta_every: int = 3,
    inner_lr: float = 1e-2,
    seg_repeats: int = 8,
    seed: int = 0,
) -> Generator[FinetuneProgress, None, Any]:
    """Fine-tune a copy of ``runner`` on painted labels; yields progress, returns the new runner.

    ``a``, ``b``: unit 2-D sources of one shape (as :func:`napari_fusion.engine.pipeline.prepare_pair`
    gives them); ``sparse_labels``: same shape, 0 = unpainted, v > 0 = class v (see the module
    docstring for ``background_value`` and the two-class rule). ``class_names`` names new classes
    (``{value: name}`` or a list indexed by value). Stop iterating to cancel: the input runner is
    never modified. Each step trains on ``batch`` crops of ``crop`` pixels centred on painted pixels;
    the meta step (loss module) runs every ``meta_every`` steps, the segmenter takes ``seg_repeats``
    updates per step (it is cheap next to the fusion net). ``lr=None`` picks the rate with
    :func:`auto_lr` (small for corrections to a model that already labels the strokes mostly right,
    larger for a new task).

    Bad input (sources or labels of other shapes, NaN, nothing painted, a single class, a model that
    cannot be fine-tuned) raises here, when called, before any generator is returned.
    """
    from ..methods.torch_runner import check_pair

    a, b = check_pair(a, b)
    labels = check_sparse_labels(sparse_labels, a.shape)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if lr is not None and not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
    from ..methods.runner import Runner

    family = runner.family if isinstance(runner, Runner) else getattr(runner, "family", None)
    if family not in LR_NEW_TASK:
        raise TypeError(
            f"fine-tuning needs a TDFusion or MultiTaskVIF model, got {type(runner).__name__}"
            f"{f' ({family})' if family else ''}; classical methods have nothing to train"
        )
    targets = painted_targets(labels, background_value)
    present = sorted(int(v) for v in np.unique(targets) if v != IGNORE_INDEX)
    lr_choice = None
    if lr is None and len(present) >= 2:  # (one class: the error below says so, no pass needed)
        lr, lr_choice, base_pred = _auto_lr(runner, a, b, targets)
        if base_pred is not None and lr == LR_CORRECTIONS:
            labels, background_value = with_replay(labels, base_pred, background_value, seed)
            lr_choice += f"; the model's own labels replayed on {REPLAY_FRACTION:.0%} of the unpainted pixels"
            targets = painted_targets(labels, background_value)
            present = sorted(int(v) for v in np.unique(targets) if v != IGNORE_INDEX)
    if family == "MultiTaskVIF":
        from .finetune_multitask import finetune_multitask_steps

        # class names, device and the background value reach MultiTaskVIF too (only those given)
        given = {"class_names": class_names, "device": device, "background_value": background_value}
        gen = finetune_multitask_steps(runner, a, b, labels, int(steps), float(lr or LR_CORRECTIONS), **{k: v for k, v in given.items() if v is not None})
        return _noting_lr_choice(gen, lr_choice) if lr_choice else gen
    if len(present) < 2:
        what = "background" if present == [0] else f"class {present[0]}"
        raise ValueError(
            f"only one class ({what}) is painted; paint at least two classes (for example the object and "
            "its surroundings) so the segmenter learns to tell them apart"
        )
    gen = _finetune_tdfusion(
        runner, a, b, targets, present, steps=int(steps), lr=float(lr), class_names=class_names, device=device,
        background_value=background_value, crop=crop, batch=batch, meta_every=meta_every, inner_lr=inner_lr,
        seg_repeats=seg_repeats, seed=seed,
    )
    return _noting_lr_choice(gen, lr_choice) if lr_choice else gen


def auto_lr(runner, a: np.ndarray, b: np.ndarray, targets: np.ndarray) -> tuple[float, str]:
    """The learning rate used when none is given, and a line saying why.

    Corrections (the model labels at least half of the painted pixels right already): a small rate, so
    a few strokes fix mistakes without unlearning what the strokes do not show. A new task (no
    segmenter yet, or mostly wrong on the strokes): the family's larger rate. Costs one fuse + segment
    pass when the model has a segmenter.
    """
    lr, why, _ = _auto_lr(runner, a, b, targets)
    return lr, why


@torch.no_grad()
def _auto_lr(runner, a, b, targets) -> tuple[float, str, np.ndarray | None]:
    family = runner.family
    if family == "TDFusion" and not runner.has_segmenter:
        return LR_NEW_TASK[family], f"lr {LR_NEW_TASK[family]:g}: new task (a new segmenter)", None
    _, pred = runner.fuse_and_segment(a, b)
    pred = np.asarray(pred)
    valid = targets != IGNORE_INDEX
    acc = float((pred[valid] == targets[valid]).mean()) if valid.any() else 0.0
    if acc >= CORRECTIONS_ACCURACY:
        return LR_CORRECTIONS, f"lr {LR_CORRECTIONS:g}: corrections (the model already labels {acc:.0%} of the painted pixels right)", pred
    return LR_NEW_TASK[family], f"lr {LR_NEW_TASK[family]:g}: new task (the model labels {acc:.0%} of the painted pixels right)", pred


def with_replay(labels: np.ndarray, base_pred: np.ndarray, background_value: int | None, seed: int = 0) -> tuple[np.ndarray, int | None]:
    """Painted labels plus the model's own labels on a random :data:`REPLAY_FRACTION` of the unpainted pixels.

    Returns (labels, background_value): predicted class 0 needs a painted value that stands for it;
    when none was given, one above every painted value and class is chosen.
    """
    rng = np.random.default_rng(seed)
    pick = (labels == 0) & (rng.random(labels.shape) < REPLAY_FRACTION)
    if background_value is None and np.any(pick & (base_pred == 0)):
        background_value = int(max(labels.max(), base_pred.max())) + 1
    values = np.where(base_pred == 0, background_value if background_value is not None else 0, base_pred)
    out = labels.copy()
    out[pick] = values[pick]
    return out, background_value


def _noting_lr_choice(gen: Generator[FinetuneProgress, None, Any], note: str) -> Generator[FinetuneProgress, None, Any]:
    """Pass ``gen`` through; the tuned model's last history entry records how its rate was chosen."""
    new = yield from gen
    history = new.meta.get("finetune_history") or []
    if history:
        history[-1]["lr_choice"] = note
    return new


def _finetune_tdfusion(
    runner, a, b, targets, present, *, steps, lr, class_names, device, background_value, crop, batch, meta_every, inner_lr,
    seg_repeats, seed,
) -> Generator[FinetuneProgress, None, Any]:
    from .tdfusion import TDFusionTrainer, TrainConfig

    t0 = time.time()
    new = runner.copy()
    notes = _prepare_segmenter(new, present, class_names, seed, background_value is not None)
    counts = np.bincount(targets[targets != IGNORE_INDEX], minlength=new.segmenter.n_classes)
    weights = class_weights_from_counts(np.where(counts > 0, counts, counts[counts > 0].max())).tolist()
    trained = ((runner.meta.get("training") or {}).get("config") or {}) if isinstance(runner.meta, dict) else {}
    cfg = TrainConfig(
        # the fusion loss and meta step the model was trained with (files from before record neither)
        intensity=str(trained.get("intensity", "l2")), meta_mode=str(trained.get("meta_mode", "params")),
        image_step=float(trained.get("image_step", 0.05)),
        # the segmenter's rate is capped at 1e-3: above it (Adam + per-pixel LayerNorm) a few painted
        # pixels threw it into one class everywhere on real pairs; it gets more updates per step
        # instead (seg_repeats, cheap next to the fusion net)
        lr_fusion=lr, lr_seg=min(lr, SEGMENTER_MAX_LR), lr_loss=lr, inner_lr=inner_lr,
        meta_every=meta_every, meta_start=0, class_weights=weights, seg_repeats=seg_repeats, seg_clip=1.0,
    )
    trainer = TDFusionTrainer(new, cfg, device if device is not None else runner.device)
    sampler = StrokeCrops(a, b, targets, crop, seed, balanced=True)
    first, last = yield from tuning_steps(trainer, sampler, steps=steps, batch=batch, seed=seed, task_key="task", model=new, t0=t0)
    trainer.finish()
    note_tuning(new, runner, {
        "steps": steps, "lr": lr, "crop": [int(sampler.ch), int(sampler.cw)], "batch": int(batch),
        "meta_every": int(meta_every), "seg_repeats": int(seg_repeats), "seed": int(seed), "background_value": background_value,
        "painted_pixels": {str(c): int(counts[c]) for c in present},
        "seconds": round(time.time() - t0, 2), "device": str(trainer.device), "notes": notes,
    }, first, last)
    return new


def finetune(runner, a: np.ndarray, b: np.ndarray, sparse_labels: np.ndarray, **kw) -> Any:
    """Run :func:`finetune_steps` to the end and return the fine-tuned (new) runner."""
    gen = finetune_steps(runner, a, b, sparse_labels, **kw)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


@torch.no_grad()
def painted_task_loss(runner, a: np.ndarray, b: np.ndarray, sparse_labels: np.ndarray, background_value: int | None = None) -> float:
    """Cross-entropy of ``runner``'s segmentation of its fused image over the painted pixels only.

    Classes the segmenter does not have yet count as 'impossible' (loss = log of a tiny probability
    is not defined), so this needs a runner that covers every painted class.
    """
    from ..methods.torch_runner import check_pair

    a, b = check_pair(a, b)
    labels = check_sparse_labels(sparse_labels, a.shape)
    fused = runner.fuse(a, b)
    logits = torch.from_numpy(runner.logits(fused))[None]
    t = torch.from_numpy(painted_targets(labels, background_value))[None]
    return float(task_loss(logits, t))
