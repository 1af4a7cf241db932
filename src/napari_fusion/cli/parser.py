"""The ``napari-fusion`` argument parser and :func:`main`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .evaluating import cmd_demo, cmd_evaluate, cmd_methods
from .fusing import cmd_enhance, cmd_fuse, cmd_fuse_large
from .segmenting import cmd_detect, cmd_segment

__all__ = ["build_parser", "main"]


def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {text}")
        return n

    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def _tile_size(text: str) -> int | None:
    """argparse type for --tile: ``auto`` (None: automatic), 0 (never tile) or a size in pixels."""
    if text.strip().lower() == "auto":
        return None
    return _count(text)


def _common(p: argparse.ArgumentParser, method_default: str | None = None, batch: bool = True) -> None:
    p.add_argument("--method", "-m", default=method_default, help="registered method name (see `napari-fusion methods`)" + ("" if method_default else "; default: the default method"))
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU; $NAPARI_FUSION_DEVICE overrides), cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=_tile_size, default=None, help="tile size in pixels; auto (default): above ~4 Mpx, or the method's preferred CPU tile; 0: never tile")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip them)")
    p.add_argument("--format", default=None, help="output extension, e.g. .tif (default: A's format; JPEG becomes PNG)")
    if batch:
        p.add_argument("--workers", type=_positive_int, default=0, help="run pairs on a local Dask cluster with N workers (default: in-process)")
        p.add_argument("--scheduler", default=None, help="run pairs on an existing Dask cluster, e.g. tcp://host:8786 (given up after 5 s)")
        p.add_argument("--retries", type=_count, default=0, help="retry a pair that failed for a transient reason (I/O, memory) N times")
        p.add_argument("--threads", action="store_true", help="local Dask workers as threads of this process instead of processes")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``napari-fusion`` (subcommands fuse, fuse-large, enhance, segment, detect, evaluate, methods, demo)."""
    ap = argparse.ArgumentParser(prog="napari-fusion", description="Fuse images from different sensors (infrared/visible, MRI/CT/PET, pan/MS, volumes).")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fuse", help="fuse folders of pairs (same file name in A_DIR and B_DIR, or one pair-layout folder)")
    p.add_argument("a_dir", help="folder of source A images (the reference grid), or a pair-layout folder (ir/+vi/, MRI/+CT/, NAME/pan.tif+ms.tif)")
    p.add_argument("b_dir", nargs="?", default=None, help="folder of source B images (omit for a pair-layout folder)")
    p.add_argument("--out", "-o", required=True, help="output folder")
    _common(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("fuse-large", help="fuse one huge scene disk to disk, tile by tile (zarr or tiled GeoTIFF out, with a pyramid)")
    p.add_argument("a_file")
    p.add_argument("b_file")
    p.add_argument("out_file", help="output .zarr folder or .tif file")
    p.add_argument("--method", "-m", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-pyramid", action="store_true", help="do not write the 2x multiscale levels")
    p.set_defaults(func=cmd_fuse_large)

    p = sub.add_parser("enhance", help="single-image enhancement of every image in a folder")
    p.add_argument("in_dir")
    p.add_argument("--out", "-o", required=True)
    _common(p, "gifnet")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("segment", help="labels of fused images (IN_DIR), or fuse+segment two source folders (IN_DIR B_DIR)")
    p.add_argument("in_dir")
    p.add_argument("b_dir", nargs="?", default=None)
    p.add_argument("--out", "-o", required=True)
    _common(p, "tdfusion-brats", batch=False)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("detect", help="objects as boxes: fuse+segment pairs, one YOLO text file of boxes per pair (optionally scored: mAP@0.5)")
    p.add_argument("a_dir", help="folder of source A images (the reference grid), or a pair-layout folder (ir/+vi/)")
    p.add_argument("b_dir", nargs="?", default=None, help="folder of source B images (omit for a pair-layout folder)")
    p.add_argument("--out", "-o", required=True, help="output folder: NAME.txt per pair (class cx cy w h, normalised) and classes.txt")
    p.add_argument("--method", "-m", default=None, help="a segmenting method (see `napari-fusion methods`); YOLO class k is its label k+1")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--tile", type=_tile_size, default=None, help="tile size in pixels; auto (default): automatic; 0: never tile")
    p.add_argument("--min-area", type=_count, default=16, help="drop objects smaller than this many pixels (default 16)")
    p.add_argument("--truth", default=None, help="folder of true YOLO boxes NAME.txt: print AP@0.5 per class and mAP@0.5")
    p.add_argument("--scores", action="store_true", help="write each box's score as a 6th column")
    p.add_argument("--overwrite", action="store_true", help="redo outputs that already exist (default: skip them, reading them back for --truth)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="fusion metrics of fused images against their pairs: A_DIR B_DIR FUSED_DIR (or PAIR_DIR FUSED_DIR)")
    p.add_argument("a_dir")
    p.add_argument("b_dir")
    p.add_argument("fused_dir", nargs="?", default=None)
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="fuse the shipped infrared/visible sample with the default method and the baselines; write PNGs + metrics.csv")
    p.add_argument("--out", "-o", default="demo_out")
    p.add_argument("--method", "-m", default=None, help="the learned method to show (default: the default method)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (1 if any pair/file failed)."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "device", None) is not None:  # a device that is not there: bad usage, before any work
            from ..engine.device import resolve_device

            resolve_device(args.device)
        return int(args.func(args) or 0)
    except (KeyError, ValueError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except OSError as err:  # unwritable output, unreachable scheduler: said plainly, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 1
