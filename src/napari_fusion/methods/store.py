"""One-file model bundles: weights + metadata in a safetensors file, written atomically.

Loading never executes code from the file (safetensors holds tensors and strings only), so a
shared model is safe to open. The metadata says which method family rebuilds the model, its
classes, its configuration and how it was trained.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_path

__all__ = ["FORMAT", "ModelFileError", "save_bundle", "load_bundle", "read_metadata"]

FORMAT = "napari-fusion-model"
FORMAT_VERSION = 1
_META_KEY = "napari_fusion"


class ModelFileError(ValueError):
    """A file that is not a readable napari-fusion model (corrupt, truncated, foreign, pickle)."""


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-fusion")
    except Exception:  # running from a source tree
        return "0+unknown"


def save_bundle(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write tensors (moved to CPU, contiguous) and JSON metadata to ``path`` atomically."""
    from safetensors.torch import save_file

    if "family" not in meta:
        raise ValueError("model metadata needs a 'family' (the method family that rebuilds it)")
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": _package_version(), **meta}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={_META_KEY: json.dumps(full)})
    return path


def _check_header(path: Path) -> None:
    try:
        raw = path.read_bytes()[:16]
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err}") from err
    if len(raw) == 0:
        raise ModelFileError(f"model file {path} is empty")
    if raw[:2] == b"\x80\x02" or raw[:2] == b"PK" or raw[:1] == b"\x80":
        raise ModelFileError(
            f"{path} is a pickle/torch.save file; napari-fusion only opens safetensors model files "
            "because unpickling can run arbitrary code"
        )
    if len(raw) < 8:
        raise ModelFileError(f"model file {path} is truncated ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    size = path.stat().st_size
    if n <= 0 or 8 + n > size:
        raise ModelFileError(f"{path} is not a safetensors model file (bad or truncated header)")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except Exception as err:
        raise ModelFileError(f"{path} is not a readable safetensors model file: {err}") from err
    if raw is None:
        raise ModelFileError(f"{path} is a safetensors file but not a napari-fusion model (no metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ModelFileError(f"{path} has corrupt napari-fusion metadata: {err}") from err
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-fusion model (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer napari-fusion (format {meta['format_version']}); please upgrade"
        )
    return meta


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on ``device``) and metadata of a model file; clear errors for bad files."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as err:
        raise ModelFileError(f"{path} is corrupt or truncated: {err}") from err
    return tensors, meta


def load_family_runner(path: str | Path, family: str, from_bundle, device: str | torch.device = "cpu"):
    """A runner from a model file of one ``family``, rebuilt by ``from_bundle(tensors, meta, device)``.

    A file of another family, or whose tensors do not fit the family's architecture, is a
    :class:`ModelFileError` that names the file and the problem.
    """
    tensors, meta = load_bundle(path, device="cpu")
    if meta.get("family") != family:
        raise ModelFileError(f"{path} holds a {meta.get('family')!r} model, not a {family} one")
    try:
        return from_bundle(tensors, meta, device)
    except (KeyError, RuntimeError, TypeError) as err:
        raise ModelFileError(f"{path} does not match the {family} architecture: {err}") from err

