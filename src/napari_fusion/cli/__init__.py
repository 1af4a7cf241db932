"""``napari-fusion`` command line: batch fusion, enhancement, segmentation, evaluation, the demo.

Every command walks the same pipeline as the API and the widgets. Examples::

    napari-fusion methods
    napari-fusion fuse ir/ vi/ --method laplacian --out fused/         # pairs by file name
    napari-fusion fuse RoadScene/ --out fused/ --workers 2              # a pair-layout folder, 2 local workers
    napari-fusion fuse-large pan.tif ms.tif fused.tif --tile 2048       # a huge scene, disk to disk
    napari-fusion evaluate ir/ vi/ fused/ --csv metrics.csv
    napari-fusion demo --out demo_out

Modules: :mod:`.parser` (the parser, :func:`main`), one module per group of subcommands
(:mod:`.fusing`, :mod:`.segmenting`, :mod:`.evaluating`) and :mod:`.common` (tables, progress, CSV).
``python -m napari_fusion.cli`` runs :func:`main`.
"""
from __future__ import annotations

from .common import format_table
from .evaluating import evaluate_folders  # noqa: F401 - importable from here too
from .parser import build_parser, main

__all__ = ["main", "build_parser", "format_table"]
