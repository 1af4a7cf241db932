"""Types shared by the readers and writers, and the checks every loaded image goes through."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry import Grid

__all__ = ["LoadedImage", "Pair", "ImageReadError", "LAZY_BYTES", "check_pixels", "detect_format", "central_window"]

# Files larger than this are returned memory-mapped / dask-backed instead of read into memory.
# ``NAPARI_FUSION_LAZY_BYTES`` overrides it (tests use a tiny value).
LAZY_BYTES = int(os.environ.get("NAPARI_FUSION_LAZY_BYTES", 1 << 30))


class ImageReadError(ValueError):
    """A file could not be turned into an image; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class LoadedImage:
    """One image as read from disk, with where its samples lie.

    ``data`` layouts: gray ``(H, W)``, RGB ``(H, W, 3)`` (``rgb=True``), bands ``(C, H, W)``
    (``channel_axis=0``), volume ``(Z, Y, X)``, 4-D volume series ``(T, Z, Y, X)``
    (``channel_axis=0``). ``grid`` describes the spatial axes only.
    """

    data: np.ndarray
    grid: Grid
    name: str
    rgb: bool = False
    channel_axis: int | None = None
    modality: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.grid.shape)

    @property
    def path(self) -> Path | None:
        p = self.meta.get("path")
        return Path(p) if p else None


@dataclass(frozen=True)
class Pair:
    """Two registered files of one scene: A is the reference grid (ir, MRI, pan), B the partner."""

    name: str
    path_a: Path
    path_b: Path
    modality_a: str
    modality_b: str


_SUPPORTED_KINDS = "ui f"  # unsigned, signed integers and floats


def check_pixels(data: np.ndarray, path: str | os.PathLike, *, full_check_bytes: int | None = None) -> None:
    """Raise :class:`ImageReadError` for empty arrays, unsupported dtypes, and NaN/inf values.

    Arrays larger than ``full_check_bytes`` (default :data:`LAZY_BYTES`) are only checked in a
    central window, so that a memory-mapped / dask scene is not decoded entirely just to be opened
    (the fusion engine checks each tile it reads again).
    """
    dt = np.dtype(data.dtype)
    if dt.kind not in _SUPPORTED_KINDS or dt.kind == "b":
        raise ImageReadError(
            path, f"unsupported pixel type {dt} (expected unsigned/signed integers or floats, not bool/complex/text)"
        )
    if int(np.prod(data.shape)) == 0:
        raise ImageReadError(path, f"image has no pixels (shape {tuple(data.shape)})")
    if dt.kind == "f":
        limit = LAZY_BYTES if full_check_bytes is None else full_check_bytes
        nbytes = int(np.prod(data.shape)) * dt.itemsize
        if nbytes <= limit:
            arr = np.asarray(data)
            bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
            where = ""
        else:
            sample = np.asarray(data[central_window(data.shape)])
            bad = int(sample.size - np.count_nonzero(np.isfinite(sample)))
            where = f" in the central {'x'.join(str(n) for n in sample.shape)} window checked"
        if bad:
            raise ImageReadError(path, f"contains {bad} NaN/inf value(s){where}; fusion needs finite intensities")


def central_window(shape: tuple[int, ...], size: int = 2048) -> tuple[slice, ...]:
    """Slices of a window of at most ``size`` samples per axis around the centre of an array.

    Used to look at a huge lazy scene (NaN check, display range) without decoding all of it.
    """
    out = []
    for n in shape:
        w = min(int(n), size)
        start = (int(n) - w) // 2
        out.append(slice(start, start + w))
    return tuple(out)


def detect_format(path: str | os.PathLike) -> str:
    """``'png'``, ``'jpeg'``, ``'tiff'`` or ``'nifti'`` from the file's first bytes (and name).

    Raises :class:`ImageReadError` for a missing, empty or unrecognised file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, "no such file")
    if p.is_dir():
        raise ImageReadError(p, "is a folder, not an image file (use read_pair / find_pairs for pair folders)")
    size = p.stat().st_size
    if size == 0:
        raise ImageReadError(p, "file is empty (0 bytes)")
    with open(p, "rb") as fh:
        head = fh.read(352)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x1f\x8b"):
        name = p.name.lower()
        if name.endswith((".nii.gz", ".nii")):
            return "nifti"
        raise ImageReadError(p, "gzip-compressed file that is not named .nii.gz; cannot tell what it holds")
    if len(head) >= 348:
        le = int.from_bytes(head[:4], "little")
        be = int.from_bytes(head[:4], "big")
        if (le == 348 or be == 348) and head[344:347] in (b"n+1", b"ni1"):
            return "nifti"
        if (le == 540 or be == 540) and head[4:7] in (b"n+2", b"ni2"):
            return "nifti"
    suffix = "".join(p.suffixes[-2:]).lower() or "(none)"
    raise ImageReadError(
        p, f"unrecognised or corrupt image file (extension {suffix}); readable: PNG, JPEG, TIFF/GeoTIFF, NIfTI"
    )
