"""GIFNet's training material and its task sampler.

Registered pairs (infrared/visible, medical) for the fusion task and single sharp images from which
the multi-focus, multi-exposure and reconstruction tasks are synthesised on the device
(:mod:`.synth`); only training pairs / images (:func:`.data.pair_split`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import synth
from .data import index_split, read_gray_unit, load_packed, shared_data_dir, training_names, unit_to_u8
from .samplers import augment

__all__ = ["TASKS", "GIFNetData", "load_gifnet_data", "TaskSampler"]

TASKS = ("fusion", "focus", "exposure", "rec")


@dataclass
class GIFNetData:
    """Training material: registered pairs (uint8 gray/Y) and single sharp images (uint8)."""

    ivif: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    med: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    gray: list[np.ndarray] = field(default_factory=list)
    source: str = ""

    def check(self) -> "GIFNetData":
        """Raise a clear error for empty or malformed material; returns self."""
        if not (self.ivif or self.med):
            raise ValueError(f"GIFNet training data {self.source!r} holds no registered pairs (ivif_* or med_*)")
        if not self.gray:
            raise ValueError(f"GIFNet training data {self.source!r} holds no single images (gray_*) to synthesise tasks from")
        for kind, pairs in (("ivif", self.ivif), ("med", self.med)):
            for i, (a, b) in enumerate(pairs):
                if a.ndim != 2 or a.shape != b.shape:
                    raise ValueError(f"{kind} pair {i}: sources of shapes {a.shape} and {b.shape}; need two 2-D images of one shape")
        for i, g in enumerate(self.gray):
            if g.ndim != 2:
                raise ValueError(f"gray image {i} must be 2-D, got shape {g.shape}")
        return self

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The packed layout (``ivif_a_i`` ... ``gray_i``) for :func:`~napari_fusion.training.data.pack_dataset`."""
        out: dict[str, np.ndarray] = {}
        for kind, pairs in (("ivif", self.ivif), ("med", self.med)):
            for i, (a, b) in enumerate(pairs):
                out[f"{kind}_a_{i}"], out[f"{kind}_b_{i}"] = a, b
        for i, g in enumerate(self.gray):
            out[f"gray_{i}"] = g
        return out

    def summary(self) -> str:
        return f"{len(self.ivif)} IR/visible pairs, {len(self.med)} medical pairs, {len(self.gray)} single images"


def _u8(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.uint8 else unit_to_u8(np.asarray(x, np.float32))


def _from_arrays(z: dict[str, np.ndarray], source: str) -> GIFNetData:
    def count(prefix: str) -> int:
        n = 0
        while f"{prefix}{n}" in z:
            n += 1
        return n

    ivif = [(_u8(z[f"ivif_a_{i}"]), _u8(z[f"ivif_b_{i}"])) for i in range(count("ivif_a_"))]
    med = [(_u8(z[f"med_a_{i}"]), _u8(z[f"med_b_{i}"])) for i in range(count("med_a_"))]
    gray = [_u8(z[f"gray_{i}"]) for i in range(count("gray_"))]
    return GIFNetData(ivif, med, gray, source)


def _pan_unit(path: Path) -> np.ndarray:
    """A panchromatic band as a unit image (0.5-99.5 percentile stretch of its valid pixels)."""
    from ..io import read_image

    x = np.asarray(read_image(path).data, dtype=np.float32)
    if x.ndim == 3:  # bands first
        x = x[0]
    valid = np.isfinite(x) & (x > 0)
    lo, hi = np.percentile(x[valid], (0.5, 99.5)) if valid.any() else (0.0, 1.0)
    return np.clip((np.nan_to_num(x) - lo) / max(hi - lo, 1e-6), 0, 1)


def load_gifnet_data(data: str | Path = "auto", limit: int | None = None, pan: bool = True) -> GIFNetData:
    """Training material from ``../shared/data`` (``"auto"``) or a packed ``.npz``.

    ``auto``: IR/visible pairs of MSRS and RoadScene, MRI/CT and MRI/PET pairs (visible and PET as
    BT.601 Y), and single images: the visible Y and MRI of those pairs and (``pan``) the panchromatic
    band of the pan/MS scenes; in every folder only the training pairs (``data.pair_split``; pan/MS
    scenes: sorted index % 5 != 0).
    ``limit`` keeps at most that many training pairs per folder, evenly spread (quick runs, tests).
    """
    if str(data) != "auto":
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"GIFNet training data {path} does not exist (expected 'auto' or a packed .npz)")
        z = load_packed(path)
        d = _from_arrays(z, str(path))
        if not (d.ivif or d.med or d.gray):
            raise ValueError(f"{path} holds no GIFNet arrays (expected ivif_a_0, med_a_0, gray_0, ...; has {sorted(z)[:6]})")
        return d.check()
    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("no ../shared/data found for --data auto; set NAPARI_FUSION_DATA or pass a packed .npz")

    def pairs(folder: Path, sa: str, sb: str) -> list[tuple[np.ndarray, np.ndarray]]:
        fa, fb = folder / sa, folder / sb
        if not fa.is_dir():
            raise FileNotFoundError(f"training folder {fa} does not exist")
        names = [n for n in training_names(fa) if (fb / n).exists()]
        if limit and len(names) > limit:
            names = [names[i] for i in np.linspace(0, len(names) - 1, limit).round().astype(int)]
        return [(_u8(read_gray_unit(fa / n)), _u8(read_gray_unit(fb / n))) for n in names]

    ivif = pairs(root / "ivif" / "MSRS", "ir", "vi") + pairs(root / "ivif" / "RoadScene", "ir", "vi")
    med = pairs(root / "medical" / "MRI_CT", "MRI", "CT") + pairs(root / "medical" / "MRI_PET", "MRI", "PET")
    gray = [b for _, b in ivif] + [a for a, _ in med]
    remote = root / "remote"
    if pan and remote.is_dir():
        scenes = index_split(p.name for p in remote.iterdir() if (p / "pan.tif").is_file())
        gray += [_u8(_pan_unit(remote / s / "pan.tif")) for s, part in scenes.items() if part == "train"]
    d = GIFNetData(ivif, med, gray, f"{root} (training split)")
    return d.check()


def _crop(rng: np.random.Generator, c: int, *arrs: np.ndarray) -> list[np.ndarray]:
    h, w = arrs[0].shape
    if h < c or w < c:
        pad = ((0, max(0, c - h)), (0, max(0, c - w)))
        arrs = tuple(np.pad(x, pad, mode="reflect") for x in arrs)
        h, w = arrs[0].shape
    y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
    return [a[y : y + c, x : x + c] for a in arrs]


class TaskSampler:
    """Random crops for each task, seeded (NumPy); the low-level pairs are made later, on the device.

    ``fusion``: (a, b) crops of registered pairs, IR/visible with probability ``ivif_fraction``, else
    medical; sources swapped at random (the model must not care which input is which).
    ``focus``/``rec``: crops of single images (mostly textured ones). ``exposure``: crops of single
    images that are well exposed (:func:`synth.is_well_exposed`).
    """

    def __init__(self, data: GIFNetData, crop: int, seed: int = 0, ivif_fraction: float = 0.6):
        self.data = data.check()
        self.crop = int(crop)
        if self.crop < 8 or self.crop % 2:
            raise ValueError(f"crop must be an even number of pixels >= 8, got {crop}")
        self.rng = np.random.default_rng(seed)
        self.ivif_fraction = ivif_fraction if data.ivif and data.med else (1.0 if data.ivif else 0.0)

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        pool = self.data.ivif if rng.random() < self.ivif_fraction else self.data.med
        a, b = pool[int(rng.integers(len(pool)))]
        for _ in range(4):  # avoid crops that are black in both sources (medical background)
            ca, cb = _crop(rng, self.crop, a, b)
            if max(int(ca.max()), int(cb.max())) > 20:
                break
        if rng.random() < 0.5:
            ca, cb = cb, ca
        return tuple(augment(rng, ca, cb))  # type: ignore[return-value]

    def _single(self, well_exposed: bool = False) -> np.ndarray:
        rng = self.rng
        best = None
        for _ in range(6):
            g = self.data.gray[int(rng.integers(len(self.data.gray)))]
            (c,) = _crop(rng, self.crop, g)
            ok = synth.is_well_exposed(c) if well_exposed else float(c.std()) > 12.0
            if ok:
                best = c
                break
            best = c if best is None else best
        return augment(rng, best)[0]

    def batch(self, task: str, n: int) -> tuple[torch.Tensor, ...]:
        """``(a, b)`` float tensors (N, 1, C, C) for ``fusion``, ``(x,)`` for the others."""
        if task == "fusion":
            ab = [self._pair() for _ in range(n)]
            a = np.stack([p[0] for p in ab])[:, None].astype(np.float32) / 255.0
            b = np.stack([p[1] for p in ab])[:, None].astype(np.float32) / 255.0
            return torch.from_numpy(a), torch.from_numpy(b)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        x = np.stack([self._single(task == "exposure") for _ in range(n)])[:, None].astype(np.float32) / 255.0
        return (torch.from_numpy(x),)

    def state(self) -> str:
        return json.dumps(self.rng.bit_generator.state)

    def set_state(self, state: str) -> None:
        self.rng.bit_generator.state = json.loads(state)
