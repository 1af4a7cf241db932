"""Record in the shipped BraTS model files how their training slices were made (run once, 2026-11-30).

The files were trained before the metadata carried it: percentiles (0.5, 99.5) inside the brain of
each volume, 0 outside (``training.data.BRATS_INPUT_INTENSITY``), rows posterior-first
(``input_orientation: rows-reversed``; the loader has since switched to the reader's display order).
The tensors are unchanged; only the metadata gains the two keys. Usage::

    python scripts/record_brats_input.py
"""
from __future__ import annotations

from napari_fusion.methods.registry import WEIGHTS_DIR
from napari_fusion.methods.store import load_bundle, save_bundle
from napari_fusion.training.data import BRATS_INPUT_INTENSITY

for name in ("multitaskvif_brats.safetensors", "tdfusion_brats.safetensors"):
    path = WEIGHTS_DIR / name
    tensors, meta = load_bundle(path)
    meta["input_intensity"] = dict(BRATS_INPUT_INTENSITY)
    meta["input_orientation"] = "rows-reversed"
    for k in ("format", "format_version", "package_version"):
        meta.pop(k, None)
    save_bundle(path, tensors, meta)
    print(f"{path}: input_intensity and input_orientation recorded")
