"""Class tables of the shipped task models, and how the BraTS models' inputs were scaled.

Rows are ``(label value, name, colour)``; :func:`napari_fusion.methods.tdfusion.make_classes` turns
them into :class:`~napari_fusion.methods.registry.ClassInfo`. The trainers (:mod:`napari_fusion.training`)
read them from here, so a model and the code that trained it agree on the classes.
"""
from __future__ import annotations

__all__ = ["BRATS_CLASSES", "BRATS_INPUT_INTENSITY", "IVIF_CLASSES"]

#: BraTS tumour classes (``tdfusion-brats``, ``multitaskvif``): the label values of the BraTS ``seg`` files
BRATS_CLASSES = (
    (0, "background", "#000000"),
    (1, "necrosis", "#e6194b"),
    (2, "oedema", "#3cb44b"),
    (3, "non-enhancing tumour", "#4363d8"),
    (4, "enhancing tumour", "#ffe119"),
)

#: How the BraTS training slices reach a model, recorded in every BraTS model's metadata and applied
#: by the engine to a user's data: percentiles (0.5, 99.5) inside the brain of each volume, 0 outside
#: (the brain = every voxel but the constant background of these skull-stripped volumes).
BRATS_INPUT_INTENSITY = {"percentiles": [0.5, 99.5], "foreground": "not-background", "min_background": 0.05}

#: infrared/visible object classes (``tdfusion``, ``multitaskvif-ivif``; MSRS boxes: person, bicycle,
#: car; label = box class id + 1)
IVIF_CLASSES = ((0, "background", "#000000"), (1, "person", "#e6194b"), (2, "bicycle", "#ffe119"), (3, "car", "#4363d8"))
