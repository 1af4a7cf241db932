"""Which compute device a method runs on: CUDA, then Apple MPS, then CPU, with a user override.

``NAPARI_FUSION_DEVICE`` (e.g. ``cpu`` in CI, ``cuda:1`` on a multi-GPU box) replaces the automatic
choice, so tests and shared machines can pin a device without touching code.
"""
from __future__ import annotations

import os

__all__ = ["resolve_device", "available_devices", "ENV_VAR"]

ENV_VAR = "NAPARI_FUSION_DEVICE"
_KNOWN = ("auto", "cpu", "cuda", "mps")


def _torch():
    try:
        import torch
    except ImportError:  # classical methods still run without torch
        return None
    return torch


def _cuda_ok(torch, index: int | None = None) -> bool:
    if torch is None or not torch.cuda.is_available():
        return False
    return index is None or index < torch.cuda.device_count()


def _mps_ok(torch) -> bool:
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Devices usable here, best first (always ends with ``"cpu"``)."""
    torch = _torch()
    out = []
    if _cuda_ok(torch):
        out += [f"cuda:{i}" if i else "cuda" for i in range(torch.cuda.device_count())]
    if torch is not None and _mps_ok(torch):
        out.append("mps")
    return out + ["cpu"]


def resolve_device(pref: str | None = "auto") -> str:
    """A concrete device name for ``pref`` ("auto", "cpu", "cuda", "cuda:N", "mps").

    "auto" (or None) honours ``$NAPARI_FUSION_DEVICE``, otherwise picks CUDA, then MPS, then CPU.
    Asking for a device that is not there is an error rather than a silent fall-back to CPU,
    because a user who typed "cuda" wants to know their GPU is not being used.
    """
    name = "auto" if pref is None else str(pref).strip().lower()
    from_env = False
    if name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env and env != "auto":
            name, from_env = env, True
    base, _, idx = name.partition(":")
    if base not in _KNOWN or (idx and not idx.isdigit()) or (idx and base != "cuda"):
        where = f" (from ${ENV_VAR})" if from_env else ""
        raise ValueError(f"unknown device {name!r}{where}; use one of auto, cpu, cuda, cuda:N, mps")
    torch = _torch()
    if base == "auto":
        if _cuda_ok(torch):
            return "cuda"
        if torch is not None and _mps_ok(torch):
            return "mps"
        return "cpu"
    if base == "cpu":
        return "cpu"
    where = f" (set by ${ENV_VAR})" if from_env else ""
    if base == "cuda":
        index = int(idx) if idx else None
        if not _cuda_ok(torch, index):
            n = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
            have = f"{n} CUDA device(s)" if n else "no CUDA device (or a CPU-only torch build)"
            raise RuntimeError(f"device {name!r} was requested{where} but this machine has {have}; use --device cpu or auto")
        return name
    if torch is None or not _mps_ok(torch):
        raise RuntimeError(f"device 'mps' was requested{where} but Apple MPS is not available here; use cpu or auto")
    return "mps"
