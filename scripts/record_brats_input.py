"""Record in the shipped BraTS model files how their training slices were made (run once, 2026-11-30).

The files were trained before the metadata carried it: percentiles (0.5, 99.5) inside the brain of
each volume, 0 outside (``methods.classes.BRATS_INPUT_INTENSITY``). No orientation is recorded: the
loader then put the posterior at the top (it now uses the reader's display order), but both models
were trained with flips and 90-degree rotations, and reversing the rows changed multitaskvif's
whole-tumour Dice on the test slices by less than 0.01 (0.883 vs 0.875). An earlier version of this
script recorded ``input_orientation: rows-reversed`` and the runner flipped rows at inference, but
fine-tuning trains on unflipped crops, so the two disagreed; it was removed. The tensors are
unchanged; only the metadata gains the key. Usage::

    python scripts/record_brats_input.py
"""
from __future__ import annotations

from napari_fusion.methods.registry import WEIGHTS_DIR
from napari_fusion.methods.store import load_bundle, save_bundle
from napari_fusion.methods.classes import BRATS_INPUT_INTENSITY

for name in ("multitaskvif_brats.safetensors", "tdfusion_brats.safetensors"):
    path = WEIGHTS_DIR / name
    tensors, meta = load_bundle(path)
    meta["input_intensity"] = dict(BRATS_INPUT_INTENSITY)
    meta.pop("input_orientation", None)
    for k in ("format", "format_version", "package_version"):
        meta.pop(k, None)
    save_bundle(path, tensors, meta)
    print(f"{path}: input_intensity recorded")
