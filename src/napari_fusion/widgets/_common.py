"""Former home of the widgets' shared pieces, kept so that ``napari_fusion.widgets._common`` imports
go on working. The pieces live in modules named after what they do:

- :mod:`.job`: background jobs (:class:`Task`), the widgets' base :class:`JobWidget`, notifications
- :mod:`.progress`: the progress bar
- :mod:`.layers`: reading layers (arrays, grids, band groups, the engine's source keywords)
- :mod:`.results`: result layers (names, placement on source A's grid, class colours)
- :mod:`.pickers`: layer pickers and the automatic choice of a pair
- :mod:`.models`: the method picker and the viewer's tuned/loaded models
- :mod:`.options`: the device picker and the tile size box
"""
from __future__ import annotations

from .job import SYNC_ENV, JobWidget, Task, error_text, notify_error, notify_info, sync_mode
from .layers import (
    META_KEY,
    BandGroup,
    band_groups,
    grid_of,
    is_alive,
    layer_array,
    same_layer,
    source_kwargs,
    spatial_ndim,
    spatial_shape,
    unwrap,
)
from .models import MethodCombo, ModelEntry, ModelShelf, method_segments, missing_weights, shelf_for
from .options import DeviceCombo, TileSpinBox
from .pickers import FollowDefaults, LayerCombo, default_pair, pick_default_pair, source_combos
from .progress import ProgressBar, StillProgressBar, stage_text
from .results import (
    class_features,
    classes_of,
    fused_layer_name,
    fused_sources,
    is_result,
    labels_colormap,
    labels_layer_name,
    place_bands,
    place_image,
    place_labels,
    result_kind,
    transform_kwargs,
)

__all__ = [
    "SYNC_ENV", "JobWidget", "Task", "error_text", "notify_error", "notify_info", "sync_mode",
    "META_KEY", "BandGroup", "band_groups", "grid_of", "is_alive", "layer_array", "same_layer", "source_kwargs",
    "spatial_ndim", "spatial_shape", "unwrap",
    "MethodCombo", "ModelEntry", "ModelShelf", "method_segments", "missing_weights", "shelf_for",
    "DeviceCombo", "TileSpinBox",
    "FollowDefaults", "LayerCombo", "default_pair", "pick_default_pair", "source_combos",
    "ProgressBar", "StillProgressBar", "stage_text",
    "class_features", "classes_of", "fused_layer_name", "fused_sources", "is_result", "labels_colormap",
    "labels_layer_name", "place_bands", "place_image", "place_labels", "result_kind", "transform_kwargs",
]
