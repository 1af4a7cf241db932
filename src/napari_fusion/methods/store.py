"""One-file model bundles: weights + metadata in a safetensors file, written atomically.

Loading never executes code from the file (safetensors holds tensors and strings only), so a
shared model is safe to open. The metadata says which method family rebuilds the model, its
classes, its configuration and how it was trained.

Opening a model (:func:`rebuild_from_file`) checks, in this order and each as a
:class:`ModelFileError` naming the file: what the file really is (a pickle / torch.save file is named
as such, other bytes are "not a safetensors model file"), the metadata (a JSON object, a whole-number
``format_version``, a family name), the config (numbers only, each within :data:`CONFIG_BOUNDS`),
the header's tensor shapes against what that config builds (a dry run on the ``meta`` device,
which allocates nothing), and last the weights themselves (no NaN / inf).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from ..io.atomic import atomic_path

__all__ = [
    "FORMAT",
    "ModelFileError",
    "save_bundle",
    "load_bundle",
    "read_metadata",
    "tensor_specs",
    "check_config",
    "rebuild_from_file",
    "load_family_runner",
]

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


# safetensors caps its JSON header at 100 MB; a real model's header is a few kB
_MAX_HEADER_BYTES = 100 * 1024 * 1024
# the first pickle of a legacy (non-zip) torch.save file: protocol 2, the magic number 0x1950a86a20f9469cfc6c
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
_UNPICKLE_NOTE = "napari-fusion only opens safetensors model files, because unpickling can run arbitrary code"


def _foreign_kind(path: Path, head: bytes, size: int) -> str | None:
    """What a file that is not safetensors really is, when its first/last bytes say so for sure.

    Only looks at bytes (and a zip's table of contents); nothing in the file is executed.
    """
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return f"a legacy torch.save file (a sequence of pickles); {_UNPICKLE_NOTE}"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        # a pickle starts with PROTO (0x80, protocol 2..5) and ends with STOP (b'.')
        try:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                last = fh.read(1)
        except OSError:
            last = b""
        if last == b".":
            return f"a Python pickle file (protocol {head[1]}); {_UNPICKLE_NOTE}"
        return None
    if head[:4] == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except Exception:  # a damaged zip: still not a safetensors file
            names = []
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return f"a torch.save file (a zip archive holding a pickle); {_UNPICKLE_NOTE}"
        return "a zip archive, not a safetensors model file"
    return None


def _check_header(path: Path) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(16)
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err}") from err
    if len(raw) == 0:
        raise ModelFileError(f"model file {path} is empty")
    kind = _foreign_kind(path, raw, size)
    if kind is not None:
        raise ModelFileError(f"{path} is {kind}")
    if len(raw) < 8:
        raise ModelFileError(f"model file {path} is truncated ({len(raw)} bytes)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER_BYTES and 8 + n <= size:
        raise ModelFileError(
            f"{path} is not a safetensors model file: its first 8 bytes give a header of {n} bytes, "
            f"more than the {_MAX_HEADER_BYTES} bytes safetensors allows"
        )
    if n <= 1 or 8 + n > size:
        raise ModelFileError(
            f"{path} is not a safetensors model file: its first 8 bytes give a header of {n} bytes "
            f"but the file has {size} bytes in all (wrong kind of file, or truncated)"
        )
    if raw[8:9] != b"{":
        raise ModelFileError(f"{path} is not a safetensors model file (its header is not a JSON object)")


# safetensors dtype names -> torch dtypes (those this torch knows)
_ST_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def tensor_specs(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor a model file declares, read from its header only."""
    path = Path(path)
    _check_header(path)
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        text = fh.read(n)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path} is not a safetensors model file (corrupt header: {err})") from err
    if not isinstance(header, dict):
        raise ModelFileError(f"{path} is not a safetensors model file (its header is not a JSON object)")
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        shape = spec.get("shape") if isinstance(spec, dict) else None
        dt = getattr(torch, _ST_DTYPES.get(spec.get("dtype"), "?"), None) if isinstance(spec, dict) else None
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape)
            or not isinstance(dt, torch.dtype)
        ):
            raise ModelFileError(f"{path} has a malformed entry for tensor {name!r} in its header: {spec!r:.200}")
        out[name] = (tuple(shape), dt)
    return out


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
        raise ModelFileError(f"{path} is not a readable safetensors model file (corrupt or truncated: {err})") from err
    if raw is None:
        raise ModelFileError(f"{path} is a safetensors file but not a napari-fusion model (no metadata)")
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path} has corrupt napari-fusion metadata: {err}") from err
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{path} has corrupt napari-fusion metadata: a JSON {type(meta).__name__}, not an object of keys"
        )
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-fusion model (format {meta.get('format')!r:.80})")
    version = meta.get("format_version")
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(
            f"{path} has corrupt napari-fusion metadata: format_version {version!r:.80} is not a "
            "whole number >= 1"
        )
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{path} was written by a newer napari-fusion (format {version}); please upgrade")
    if not isinstance(meta.get("family"), str):
        raise ModelFileError(
            f"{path} has corrupt napari-fusion metadata: 'family' is {meta.get('family')!r:.80}, "
            "not the name of a model family"
        )
    return meta


def _non_finite(tensors: dict[str, torch.Tensor]) -> list[tuple[str, int]]:
    """(name, count) of the floating-point tensors holding NaN or inf values."""
    floats = [t.reshape(-1) for t in tensors.values() if t.is_floating_point() and t.numel()]
    if floats and bool(torch.isfinite(torch.cat([f.to(torch.float32) for f in floats])).all()):
        return []  # one check over all weights (per-tensor calls cost ~1 ms each)
    bad = []
    for k, t in tensors.items():
        if t.is_floating_point() or t.is_complex():
            n = int(t.numel() - torch.isfinite(t).sum())
            if n:
                bad.append((k, n))
    return bad


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (on ``device``) and metadata of a model file; clear errors for bad files.

    Weights holding NaN or inf are refused: such a model fuses every pair to a black (or NaN) image.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise ModelFileError(f"{path} is corrupt or truncated: {err}") from err
    bad = _non_finite(tensors)
    if bad:
        total = sum(n for _, n in bad)
        listed = ", ".join(f"{k} ({n})" for k, n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ModelFileError(
            f"{path} has {total} non-finite (NaN/inf) weight value(s) in {len(bad)} tensor(s): {listed}; "
            "such a model gives a black or NaN image (its training diverged?): retrain it or use another file"
        )
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


# ------------------------------------------------------------------------------------------------
# the configuration a model file asks for, checked before anything is built
# ------------------------------------------------------------------------------------------------
#: sane ranges of the architecture numbers in a model file's ``config`` (per key name, any family);
#: the shipped models use a few dozen channels and a handful of blocks
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "dim": (1, 1024), "growth": (1, 1024), "up_dim": (1, 1024), "dec_dim": (1, 1024),
    "width": (1, 1024), "widths": (1, 1024), "stem": (1, 1024),
    "enc_layers": (0, 64), "enc_blocks": (0, 64), "dec_blocks": (0, 64), "joint_blocks": (0, 64),
    "kernel": (1, 31), "dilations": (1, 64), "expansion": (0.0625, 16), "n_classes": (1, 1024),
    "in_channels": (1, 64),
}
_DEFAULT_BOUND = (0, 4096)  # any other number
_MAX_LIST = 64
_MAX_DEPTH = 3
_MAX_CLASSES = 1024


def _check_config_value(path: Path, where: str, key: str, value: Any, depth: int) -> None:
    lo, hi = CONFIG_BOUNDS.get(key, _DEFAULT_BOUND)
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            raise ModelFileError(f"{path} has a malformed model config: {where} is nested too deeply")
        for k, v in value.items():
            _check_config_value(path, f"{where}.{k}", str(k), v, depth + 1)
        return
    if isinstance(value, list):
        if len(value) > _MAX_LIST:
            raise ModelFileError(
                f"{path} has an implausible model config: {where} lists {len(value)} values (at most {_MAX_LIST})"
            )
        for i, v in enumerate(value):
            if isinstance(v, (list, dict)):
                raise ModelFileError(f"{path} has a malformed model config: {where}[{i}] is not a number")
            _check_config_value(path, f"{where}[{i}]", key, v, depth + 1)
        return
    if isinstance(value, str):
        raise ModelFileError(
            f"{path} has a malformed model config: {where} is the text {value!r:.40}, where a number is expected"
        )
    if not isinstance(value, (int, float)):
        raise ModelFileError(f"{path} has a malformed model config: {where} is {value!r:.40}")
    if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
        raise ModelFileError(f"{path} has a malformed model config: {where} is {value}")
    if not lo <= value <= hi:
        raise ModelFileError(
            f"{path} has an implausible model config: {where} = {value} is outside the sane range "
            f"{lo:g}..{hi:g}; refusing to build it"
        )


def check_config(path: str | Path, meta: dict[str, Any]) -> None:
    """Refuse a model file whose ``config`` / ``classes`` are malformed or ask for absurd sizes.

    Cheap (metadata only): runs before any module is built, so a small file that asks for a
    5,000,000-wide layer is refused at once instead of allocating gigabytes.
    """
    path = Path(path)
    cfg = meta.get("config")
    if cfg is not None and not isinstance(cfg, dict):
        raise ModelFileError(
            f"{path} has a malformed model config: a JSON {type(cfg).__name__}, not an object of keys"
        )
    for k, v in (cfg or {}).items():
        _check_config_value(path, f"config.{k}", str(k), v, 1)
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or len(classes) > _MAX_CLASSES:
            raise ModelFileError(
                f"{path} has malformed metadata: 'classes' must be a list of at most {_MAX_CLASSES} "
                f"[index, name, colour] entries, got {classes!r:.80}"
            )


def _first_lines(err: BaseException, n: int = 4) -> str:
    lines = str(err).strip().splitlines()
    return "\n".join(lines[:n]) + (f"\n  ... ({len(lines) - n} more lines)" if len(lines) > n else "")


def _dry_run(path: Path, family: str, from_bundle, meta: dict[str, Any]) -> None:
    """Build the model on the ``meta`` device (no memory) from the header's tensor shapes.

    Checks, before any weight is read or any real module allocated, that the config's keys and
    types fit the family's constructors and that every declared tensor has the shape that config
    builds (``load_state_dict(strict=True)`` on shape-only tensors).
    """
    specs = tensor_specs(path)
    try:
        with torch.device("meta"):
            fake = {k: torch.empty(shape, dtype=dt) for k, (shape, dt) in specs.items()}
            from_bundle(fake, meta, "meta")
    except ModelFileError:
        raise
    except Exception as err:  # our own constructors on shape-only tensors: any failure is the file's
        raise ModelFileError(
            f"{path} does not match the {family} architecture: {type(err).__name__}: {_first_lines(err)}"
        ) from err


def rebuild_from_file(path: str | Path, family: str, from_bundle, device: str | torch.device = "cpu", meta: dict | None = None):
    """A runner from a model file, checked step by step; every problem is a :class:`ModelFileError`.

    Metadata (format, version, family) -> config bounds -> shapes of the header's tensors against
    what the config builds (meta device) -> weights read and checked finite -> the real build.
    """
    path = Path(path)
    if meta is None:
        meta = read_metadata(path)
    if meta.get("family") != family:
        raise ModelFileError(f"{path} holds a {meta.get('family')!r:.80} model, not a {family} one")
    check_config(path, meta)
    _dry_run(path, family, from_bundle, meta)
    tensors, meta = load_bundle(path, device="cpu")
    try:
        return from_bundle(tensors, meta, device)
    except (KeyError, TypeError, ValueError) as err:  # not caught by the dry run (should not happen)
        raise ModelFileError(f"{path} does not match the {family} architecture: {_first_lines(err)}") from err


def load_family_runner(path: str | Path, family: str, from_bundle, device: str | torch.device = "cpu"):
    """A runner from a model file of one ``family``, rebuilt by ``from_bundle(tensors, meta, device)``.

    A file of another family, or whose tensors do not fit the family's architecture, is a
    :class:`ModelFileError` that names the file and the problem.
    """
    return rebuild_from_file(path, family, from_bundle, device)
