"""Pair folders: which files of a folder form registered (A, B) pairs, and reading one pair.

Known layouts (folder names case-insensitive; files pair up by name without extension):

- ``ir/`` + ``vi/``  (also ``infrared|thermal`` + ``visible|vis|rgb``): A = ir, B = vi;
- ``MRI/`` + ``CT/`` | ``PET/`` | ``SPECT/``: A = MRI, B = each partner modality present;
- ``NAME/pan.tif`` + ``NAME/ms.tif`` subfolders, or a folder that itself holds ``pan.tif`` + ``ms.tif``:
  A = pan, B = ms.

A is the reference: its grid, intensity range and dtype are those of the fused result.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..geometry import implied_grid, resolution_ratio
from .common import LoadedImage, Pair

__all__ = ["find_pairs", "read_pair", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
_IR = ("ir", "infrared", "thermal", "lwir")
_VI = ("vi", "vis", "visible", "rgb")
_MRI = ("mri", "mr")
_MED_B = {"ct": "CT", "pet": "PET", "spect": "SPECT"}


def _stem(p: Path) -> str:
    n = p.name
    return n[: -len(".nii.gz")] if n.lower().endswith(".nii.gz") else p.stem


def _images(folder: Path, missing: str = "warn") -> dict[str, Path]:
    """Image files by name without extension; two files with one name (``x.png`` + ``x.tif``) are
    ambiguous: that name is left out and reported as ``missing`` says (warn / raise ValueError / ignore)."""
    seen: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES):
            seen.setdefault(_stem(p), []).append(p)
    out: dict[str, Path] = {}
    for stem, paths in seen.items():
        if len(paths) == 1:
            out[stem] = paths[0]
            continue
        msg = f"{paths[0]} and {' and '.join(q.name for q in paths[1:])} share the name {stem!r}: rename or remove all but one"
        if missing == "raise":
            raise ValueError(msg)
        if missing == "warn":
            warnings.warn(msg + " (skipped)", stacklevel=4)
    return out


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _pan_ms(folder: Path, missing: str = "warn") -> tuple[Path | None, Path | None]:
    imgs = {k.lower(): v for k, v in _images(folder, missing).items()}
    if {c.lower() for c in _clashing(folder)} & {"pan", "ms"}:
        return None, None  # reported by _images; not a missing partner as well
    return imgs.get("pan"), imgs.get("ms")


def _match(dir_a: Path, dir_b: Path, mod_a: str, mod_b: str, suffix: str, missing: str) -> list[Pair]:
    a, b = _images(dir_a, missing), _images(dir_b, missing)
    clashing = _clashing(dir_a) | _clashing(dir_b)
    pairs = []
    for stem, pa in a.items():
        if stem in b:
            pairs.append(Pair(stem + suffix, pa, b[stem], mod_a, mod_b))
        elif stem not in clashing:
            _missing(f"{pa} has no partner named {stem}.* in {dir_b}", missing)
    for stem, pb in b.items():
        if stem not in a and stem not in clashing:
            _missing(f"{pb} has no partner named {stem}.* in {dir_a}", missing)
    return pairs


def _clashing(folder: Path) -> set[str]:
    """Names held by more than one image file of ``folder`` (already reported by :func:`_images`)."""
    from collections import Counter

    stems = Counter(
        _stem(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    )
    return {s for s, n in stems.items() if n > 1}


def _missing(msg: str, missing: str) -> None:
    if missing == "raise":
        raise FileNotFoundError(msg)
    if missing == "warn":
        warnings.warn(msg + " (skipped)", stacklevel=4)


def find_pairs(folder: str | os.PathLike, *, missing: str = "warn") -> list[Pair]:
    """All registered pairs in a folder with a known layout (empty list if it has none).

    A file without its partner is reported with a warning and skipped (``missing="raise"``
    raises FileNotFoundError instead, ``"ignore"`` skips silently); so are two files with one name
    (``x.png`` and ``x.tif``: ValueError under ``"raise"``).
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    subs = _subdirs(root)
    pairs: list[Pair] = []
    ir = next((subs[n] for n in _IR if n in subs), None)
    vi = next((subs[n] for n in _VI if n in subs), None)
    if ir is not None and vi is not None:
        pairs += _match(ir, vi, "ir", "vi", "", missing)
    elif (ir is None) != (vi is None):
        have = ir or vi
        _missing(f"{have} has no partner folder ({'vi/' if vi is None else 'ir/'}) in {root}", missing)
    mri = next((subs[n] for n in _MRI if n in subs), None)
    partners = [(subs[k], v) for k, v in _MED_B.items() if k in subs]
    if mri is not None and partners:
        several = len(partners) > 1
        for d, mod in partners:
            pairs += _match(mri, d, "MRI", mod, f"_{mod}" if several else "", missing)
    elif mri is not None:
        _missing(f"{mri} has no partner folder (CT/, PET/ or SPECT/) in {root}", missing)
    pan, ms = _pan_ms(root, missing)
    if pan and ms:
        pairs.append(Pair(root.name, pan, ms, "pan", "ms"))
    elif pan or ms:
        _missing(f"{pan or ms} has no partner ({'ms' if ms is None else 'pan'}.tif) in {root}", missing)
    for name, sub in subs.items():
        if name in _IR + _VI + _MRI + tuple(_MED_B):
            continue
        pan, ms = _pan_ms(sub, missing)
        if pan and ms:
            pairs.append(Pair(sub.name, pan, ms, "pan", "ms"))
        elif pan or ms:
            _missing(f"{pan or ms} has no partner ({'ms' if ms is None else 'pan'}.tif) in {sub}", missing)
    return pairs


def read_pair(
    source: str | os.PathLike | Pair,
    path_b: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> tuple[LoadedImage, LoadedImage]:
    """Read one pair: a :class:`Pair`, two paths, or a pair folder (its first pair, or ``name``).

    Images are named by modality. When neither source carries geometry and B is an integer factor
    coarser (or finer) than A, B gets the implied grid (MS scale 4 over its PAN), so the two
    overlay in napari and :func:`~napari_fusion.geometry.bring_onto` needs no guessing.
    Raises FileNotFoundError when the folder has no such pair or a partner is missing.
    """
    from . import read_image

    if isinstance(source, Pair):
        pair = source
    elif path_b is not None:
        pa, pb = Path(source), Path(path_b)
        pair = Pair(_stem(pa), pa, pb, _guess_modality(pa), _guess_modality(pb))
    else:
        folder = Path(source)
        if name is not None:
            pairs = find_pairs(folder, missing="ignore")
            hits = [p for p in pairs if p.name == name]
            if not hits:
                # a named file without partner gets a clear message
                find_pairs(folder, missing="raise")
                names = ", ".join(p.name for p in pairs[:10]) or "none"
                raise FileNotFoundError(f"{folder}: no pair named {name!r} (pairs: {names})")
            pair = hits[0]
        else:
            pairs = find_pairs(folder, missing="warn")
            if not pairs:
                raise FileNotFoundError(
                    f"{folder}: no image pairs found (layouts: ir/+vi/, MRI/+CT|PET|SPECT/, NAME/pan.tif+ms.tif)"
                )
            pair = pairs[0]
    a = read_image(pair.path_a)
    b = read_image(pair.path_b)
    a.name, a.modality = pair.modality_a, pair.modality_a
    b.name, b.modality = pair.modality_b, pair.modality_b
    a.meta["pair"] = b.meta["pair"] = pair.name
    if a.grid.is_identity and b.grid.is_identity and a.grid.ndim == b.grid.ndim == 2:
        r = resolution_ratio(b.grid.shape, a.grid.shape)
        if r is not None and r != 1.0:
            b.grid = implied_grid(b.grid.shape, a.grid, r)
            b.meta["ratio"] = r
    return a, b


def _guess_modality(p: Path) -> str:
    """Modality from a file's parent folder or stem (``ir``, ``vi``, ``MRI``, ``CT``, ``pan``...)."""
    for cand in (p.parent.name.lower(), _stem(p).lower()):
        if cand in _IR:
            return "ir"
        if cand in _VI:
            return "vi"
        if cand in _MRI:
            return "MRI"
        if cand in _MED_B:
            return _MED_B[cand]
        if cand in ("pan", "ms"):
            return cand
    return _stem(p)
