"""Quick Dice reports of a trained runner on whole training slices or pairs (the trainers' final record).

The test cases and pairs are for the benchmarks; these reports only show that a run learnt something.
"""
from __future__ import annotations

import numpy as np
import torch

from .losses import IGNORE_INDEX

__all__ = ["dice_on_slices", "dice_on_pairs"]


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


@torch.no_grad()
def dice_on_slices(runner, a: np.ndarray, b: np.ndarray, labels: np.ndarray, n_classes: int = 5) -> dict[str, float]:
    """Per-class Dice (pooled over slices) of the runner's one-pass labels; ``dice_mean_tumour`` over classes 1.. present."""
    dice, _ = _pooled_dice(runner, zip(a, b), labels, n_classes, IGNORE_INDEX)
    return _per_class(dice, "dice_mean_tumour")


@torch.no_grad()
def dice_on_pairs(runner, pairs, labels, n_classes: int, ignore_index: int = IGNORE_INDEX) -> dict[str, float]:
    """Per-class Dice (pooled over pairs) of the runner's one-pass labels on whole images of any sizes.

    Pixels whose label is ``ignore_index`` are left out. Also ``dice_mean_objects`` (classes 1..
    present in labels or predictions) and ``predicted_object_fraction`` (share of the scored pixels
    predicted as any class > 0).
    """
    dice, object_fraction = _pooled_dice(runner, pairs, labels, n_classes, ignore_index)
    return _per_class(dice, "dice_mean_objects") | {"predicted_object_fraction": object_fraction}


def _pooled_dice(runner, pairs, labels, n_classes: int, ignore_index: int) -> tuple[np.ndarray, float]:
    """Per-class Dice pooled over all pairs (NaN: class in neither) and the share of scored pixels predicted > 0."""
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
    return np.where(tot > 0, 2 * inter / np.maximum(tot, 1), np.nan), fg / max(scored, 1)


def _per_class(dice: np.ndarray, mean_key: str) -> dict[str, float]:
    out = {f"dice_{c}": float(d) for c, d in enumerate(dice)}
    fg = dice[1:][np.isfinite(dice[1:])]
    out[mean_key] = float(fg.mean()) if fg.size else float("nan")
    return out
