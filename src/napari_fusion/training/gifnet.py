"""Train GIFNet: multi-modal fusion learnt together with synthesised low-level tasks.

Every step trains all four tasks of one batch each, in one forward pass of the shared encoder:

- **fusion** (fusion branch, unsupervised): real registered pairs, infrared/visible (MSRS, RoadScene)
  and medical (MRI/CT, MRI/PET-Y); loss = L1 to the per-pixel maximum intensity + L1 between gradient
  magnitudes and the larger source gradient + an SSIM term to both sources.
- **focus** (focus branch, supervised): multi-focus pairs synthesised from sharp real images
  (:func:`~napari_fusion.training.synth.multi_focus`); loss = L1 + gradient L1 + SSIM to the sharp image.
- **exposure** (focus branch, supervised): multi-exposure pairs from well-exposed real images
  (:func:`~napari_fusion.training.synth.multi_exposure`), same loss to the original.
- **rec** (reconstruction branch): an image given to both inputs must come back; every other batch
  also asks the reconstruction branch for its own two inputs, so the shared encoder keeps both.

Only training pairs / images are used (`training.data.pair_split`: MSRS split.csv, elsewhere sorted index % 5 != 0).

Command line (JSON-lines logs, atomic checkpoints, resume, time budget, seeded)::

    python -m napari_fusion.training.gifnet --data auto --out gifnet.safetensors --device auto \\
        --steps 20000 --time-budget 3600 --batch 16 --crop 192 --seed 0

``--data`` is ``auto`` (read ``../shared/data``) or a packed ``.npz`` with ``ivif_a_i``/``ivif_b_i``,
``med_a_i``/``med_b_i`` (uint8 Y pairs) and ``gray_i`` (single sharp images); see
``python -m napari_fusion.training.pack``. Without ``--time-budget`` a run is bit-reproducible on CPU
for a given seed; with it, the learning-rate schedule follows the elapsed time as well as the step
(so that a budget-limited run still anneals), which makes the result depend on the machine's speed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import synth

__all__ = [
    "TASKS",
    "GIFNetData",
    "load_gifnet_data",
    "TaskSampler",
    "LossWeights",
    "ssim",
    "fusion_task_loss",
    "supervised_loss",
    "reconstruction_loss",
    "GIFNetTrainer",
    "new_runner",
    "train",
    "build_parser",
    "main",
]

TASKS = ("fusion", "focus", "exposure", "rec")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
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
    if x.dtype == np.uint8:
        return x
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)


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
    from .data import _read_gray_unit, load_packed, shared_data_dir

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
    from .pack import training_names

    def pairs(folder: Path, sa: str, sb: str) -> list[tuple[np.ndarray, np.ndarray]]:
        fa, fb = folder / sa, folder / sb
        if not fa.is_dir():
            raise FileNotFoundError(f"training folder {fa} does not exist")
        names = [n for n in training_names(fa) if (fb / n).exists()]
        if limit and len(names) > limit:
            names = [names[i] for i in np.linspace(0, len(names) - 1, limit).round().astype(int)]
        return [(_u8(_read_gray_unit(fa / n)), _u8(_read_gray_unit(fb / n))) for n in names]

    ivif = pairs(root / "ivif" / "MSRS", "ir", "vi") + pairs(root / "ivif" / "RoadScene", "ir", "vi")
    med = pairs(root / "medical" / "MRI_CT", "MRI", "CT") + pairs(root / "medical" / "MRI_PET", "MRI", "PET")
    gray = [b for _, b in ivif] + [a for a, _ in med]
    remote = root / "remote"
    if pan and remote.is_dir():
        scenes = sorted(p.name for p in remote.iterdir() if (p / "pan.tif").is_file())
        gray += [_u8(_pan_unit(remote / s / "pan.tif")) for i, s in enumerate(scenes) if i % 5 != 0]
    d = GIFNetData(ivif, med, gray, f"{root} (training split)")
    return d.check()


def _augment(rng: np.random.Generator, *arrs: np.ndarray) -> list[np.ndarray]:
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for x in arrs:
        x = np.rot90(x, k)
        out.append(np.ascontiguousarray(x[:, ::-1] if flip else x))
    return out


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
        return tuple(_augment(rng, ca, cb))  # type: ignore[return-value]

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
        return _augment(rng, best)[0]

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


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------
def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two ``(N, C, H, W)`` batches in [0, 1] (Gaussian window, reflection padded)."""
    c = x.shape[1]
    g = _gauss_window(size, sigma, x.device, x.dtype)
    kx = g.reshape(1, 1, 1, -1).expand(c, 1, 1, size)
    ky = g.reshape(1, 1, -1, 1).expand(c, 1, size, 1)
    r = size // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (r, r, r, r), mode="reflect")
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean()


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .losses import sobel

    return sobel(x)


def _grad_mag(x: torch.Tensor) -> torch.Tensor:
    gx, gy = _sobel(x)
    return gx.abs() + gy.abs()


@dataclass
class LossWeights:
    """Weights of the loss terms and of the tasks in the total loss."""

    intensity: float = 1.0
    gradient: float = 2.0
    ssim: float = 0.5
    task_fusion: float = 1.0
    task_focus: float = 1.0
    task_exposure: float = 1.0
    task_rec: float = 0.5
    rec_aux: float = 0.25  # reconstruction of each task's own inputs

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def fusion_task_loss(fused: torch.Tensor, a: torch.Tensor, b: torch.Tensor, w: LossWeights | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Unsupervised multi-modal fusion loss: intensity max + gradient max + SSIM to both sources."""
    w = w or LossWeights()
    l_int = (fused - torch.maximum(a, b)).abs().mean()
    l_grad = (_grad_mag(fused) - torch.maximum(_grad_mag(a), _grad_mag(b))).abs().mean()
    l_ssim = 1.0 - 0.5 * (ssim(fused, a) + ssim(fused, b))
    total = w.intensity * l_int + w.gradient * l_grad + w.ssim * l_ssim
    return total, {"int": float(l_int.detach()), "grad": float(l_grad.detach()), "ssim": float(l_ssim.detach())}


def supervised_loss(out: torch.Tensor, target: torch.Tensor, w: LossWeights | None = None) -> torch.Tensor:
    """Loss to a known target: L1 + L1 of the Sobel derivatives + SSIM."""
    w = w or LossWeights()
    ox, oy = _sobel(out)
    tx, ty = _sobel(target)
    l_grad = (ox - tx).abs().mean() + (oy - ty).abs().mean()
    return w.intensity * (out - target).abs().mean() + w.gradient * l_grad + w.ssim * (1.0 - ssim(out, target))


def reconstruction_loss(rec: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reconstruction branch's two channels against the two inputs: L1 + (1 - SSIM)."""
    t = torch.cat([a, b], 1)
    return (rec - t).abs().mean() + 0.5 * (1.0 - ssim(rec, t))


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


class GIFNetTrainer:
    """One optimiser over the whole GIFNet; :meth:`train_step` trains all four tasks on one batch each.

    The runner's net is trained in place (copy the runner first to keep the original).
    """

    def __init__(self, runner, lr: float = 2e-3, weights: LossWeights | None = None, device: str | torch.device | None = None,
                 amp: bool = False, seed: int = 0, weight_decay: float = 1e-4):
        from ..methods._torch import resolve_torch_device

        self.runner = runner
        self.device = resolve_torch_device(device if device is not None else runner.device)
        runner.to(self.device)
        self.net = runner.net
        self.weights = weights or LossWeights()
        self.amp = amp
        self.lr = lr
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.gen = torch.Generator().manual_seed(seed + 7919)  # synthesis randomness (CPU: same on every device)
        self.step = 0

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = lr

    def make_inputs(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Device tensors ``(a, b, target)`` per task from the sampler's crops (synthesis happens here)."""
        dev = self.device
        out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for task, t in batches.items():
            t = tuple(x.to(dev, non_blocking=True) for x in t)
            if task == "fusion":
                out[task] = (t[0], t[1], None)
            elif task == "focus":
                out[task] = synth.multi_focus(t[0], self.gen)
            elif task == "exposure":
                out[task] = synth.multi_exposure(t[0], self.gen)
            elif task == "rec":
                out[task] = synth.reconstruction(t[0])
            else:
                raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        return out

    def losses(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and per-task values for one set of task batches (one shared forward pass)."""
        w = self.weights
        tasks = list(inputs)
        sizes = [inputs[k][0].shape[0] for k in tasks]
        a = torch.cat([inputs[k][0] for k in tasks])
        b = torch.cat([inputs[k][1] for k in tasks])
        with _autocast(self.device, self.amp):
            shared, f, m = self.net.features(a, b)
            rec = self.net.reconstruct(shared).float()
        parts: dict[str, float] = {}
        total = a.new_zeros(())
        start = 0
        for k, n in zip(tasks, sizes):
            sl = slice(start, start + n)
            start += n
            ak, bk, tk = inputs[k]
            if k == "fusion":
                with _autocast(self.device, self.amp):
                    out = self.net.decode(shared[sl], f[sl]).float()
                lk, sub = fusion_task_loss(out, ak, bk, w)
                parts |= {f"fusion_{s}": v for s, v in sub.items()}
                total = total + w.task_fusion * lk
            elif k in ("focus", "exposure"):
                with _autocast(self.device, self.amp):
                    out = self.net.decode(shared[sl], m[sl]).float()
                lk = supervised_loss(out, tk, w)
                total = total + (w.task_focus if k == "focus" else w.task_exposure) * lk
            else:  # rec: the image given twice must come back from the reconstruction branch
                lk = reconstruction_loss(rec[sl], ak, bk)
                total = total + w.task_rec * lk
            parts[k] = float(lk.detach())
        if w.rec_aux > 0:
            others = [i for i, k in enumerate(tasks) if k != "rec"]
            if others:
                idx = torch.cat([torch.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in others]).to(a.device)
                la = reconstruction_loss(rec[idx], a[idx], b[idx])
                parts["rec_aux"] = float(la.detach())
                total = total + w.rec_aux * la
        parts["total"] = float(total.detach())
        return total, parts

    def train_step(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """One optimiser step on one batch per task; returns the losses (before the step)."""
        self.net.train()
        inputs = self.make_inputs(batches)
        total, parts = self.losses(inputs)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return parts

    @torch.no_grad()
    def evaluate(self, batches: dict[str, tuple[torch.Tensor, ...]]) -> dict[str, float]:
        """The losses of fixed batches without training (e.g. before/after a few steps)."""
        self.net.eval()
        state = self.gen.get_state()
        self.gen.manual_seed(12345)  # the same synthesised pairs every time
        try:
            _, parts = self.losses(self.make_inputs(batches))
        finally:
            self.gen.set_state(state)
        return parts

    def finish(self):
        """Back to inference mode; returns the runner."""
        self.net.eval()
        return self.runner

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])


# --------------------------------------------------------------------------------------------
# the training loop (CLI)
# --------------------------------------------------------------------------------------------
def new_runner(seed: int = 0, device: str | torch.device = "cpu", **config: Any):
    """A freshly initialised (seeded) GIFNet runner."""
    from ..methods.gifnet import GIFNet, GIFNetRunner

    torch.manual_seed(seed)
    return GIFNetRunner(GIFNet(**config), device=device, meta={"method": "gifnet"})


def _resume_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".safetensors") + ".resume.pt")


def _save(runner, trainer: GIFNetTrainer, sampler: TaskSampler, out: Path, record: dict) -> None:
    from ..io.atomic import atomic_path
    from ..methods.store import save_bundle

    tensors, meta = runner.to_bundle()
    meta["training"] = record
    save_bundle(out, tensors, meta)
    state = trainer.state_dict() | {"sampler": sampler.state(), "torch_rng": torch.get_rng_state(), "record": json.dumps(record)}
    with atomic_path(_resume_path(out)) as tmp:
        torch.save(state, tmp)


def lr_at(progress: float, base: float, warmup: float = 0.02, floor: float = 0.05) -> float:
    """Learning rate at a training progress in [0, 1]: linear warm-up, then cosine down to ``floor * base``."""
    p = min(max(progress, 0.0), 1.0)
    if p < warmup:
        return base * max(p / warmup, 0.05)
    q = (p - warmup) / max(1.0 - warmup, 1e-9)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * q)))


def train(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a training from parsed CLI arguments; returns the final record (also in the model file)."""
    from ..methods._torch import resolve_torch_device
    from ..methods.gifnet import load_runner

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = resolve_torch_device(args.device)
    gpu = device.type in ("cuda", "mps")
    args.batch = args.batch or (24 if gpu else 4)
    args.crop = args.crop or (192 if gpu else 96)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    data = load_gifnet_data(args.data)
    sampler = TaskSampler(data, args.crop, seed=args.seed)
    weights = LossWeights(task_rec=args.rec_weight)
    out = Path(args.out)
    record: dict[str, Any] = {
        "command": "python -m napari_fusion.training.gifnet " + " ".join(shlex.quote(x) for x in args.argv),
        "data": f"{data.source}: {data.summary()}",
        "seed": args.seed,
        "device": str(device),
        "batch_per_task": args.batch,
        "crop": args.crop,
        "lr": args.lr,
        "schedule_steps": args.schedule_steps or args.steps,
        "loss_weights": weights.to_dict(),
        "torch": torch.__version__,
    }
    prev_seconds = 0.0
    if args.resume:
        runner = load_runner(args.resume, device=device)
        trainer = GIFNetTrainer(runner, args.lr, weights, device, amp=args.amp, seed=args.seed)
        rp = _resume_path(Path(args.resume))
        if rp.is_file():
            state = torch.load(rp, map_location="cpu", weights_only=True)
            trainer.load_state_dict(state)
            sampler.set_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            prev = json.loads(state.get("record", "{}"))
            prev_seconds = float(prev.get("seconds", 0.0))
            record["resumed_from"] = {"file": str(args.resume), "step": trainer.step, "seconds": prev_seconds}
        else:
            log(json.dumps({"warning": f"no optimiser state {rp}; resuming from the weights only"}))
    else:
        runner = new_runner(args.seed, device)
        trainer = GIFNetTrainer(runner, args.lr, weights, device, amp=args.amp, seed=args.seed)
    record["n_parameters"] = runner.n_parameters

    logf = open(args.log, "a") if args.log else None
    ema: dict[str, float] = {}
    first: dict[str, float] = {}
    t0 = time.time()
    budget = float(args.time_budget or 0.0)
    try:
        while trainer.step < args.steps:
            elapsed = time.time() - t0 + prev_seconds
            if budget and elapsed >= budget:
                log(json.dumps({"stop": "time budget", "step": trainer.step, "seconds": round(elapsed, 1)}))
                break
            progress = trainer.step / (args.schedule_steps or args.steps)
            if budget:
                progress = max(progress, elapsed / budget)
            trainer.set_lr(lr_at(progress, args.lr))
            batches = {k: sampler.batch(k, args.batch) for k in TASKS}
            row = trainer.train_step(batches)
            if not all(math.isfinite(v) for v in row.values()):
                raise FloatingPointError(f"non-finite loss at step {trainer.step}: {row}")
            for k, v in row.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
                first.setdefault(k, v)
            if trainer.step % args.log_every == 0 or trainer.step == args.steps:
                line = {"step": trainer.step, "seconds": round(time.time() - t0 + prev_seconds, 2), "lr": round(trainer.opt.param_groups[0]["lr"], 6)}
                line |= {k: round(v, 5) for k, v in ema.items()}
                s = json.dumps(line)
                log(s)
                if logf:
                    logf.write(s + "\n")
                    logf.flush()
            if args.ckpt_every and trainer.step % args.ckpt_every == 0:
                record |= {"steps": trainer.step, "seconds": round(time.time() - t0 + prev_seconds, 1),
                           "final_losses": {k: round(v, 5) for k, v in ema.items()}}
                trainer.finish()
                _save(runner, trainer, sampler, out, record)
    finally:
        if logf:
            logf.close()
    record |= {
        "steps": trainer.step,
        "seconds": round(time.time() - t0 + prev_seconds, 1),
        "first_losses": {k: round(v, 5) for k, v in first.items()},
        "final_losses": {k: round(v, 5) for k, v in ema.items()},
    }
    trainer.finish()
    _save(runner, trainer, sampler, out, record)
    log(json.dumps({"final": record}))
    return record


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m napari_fusion.training.gifnet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--data", default="auto", help="'auto' (../shared/data) or a packed .npz (ivif_*, med_*, gray_*)")
    ap.add_argument("--out", required=True, help="model file to write (.safetensors); optimiser state goes beside it")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--time-budget", type=float, default=0.0, help="stop after this many seconds (0: no limit)")
    ap.add_argument("--schedule-steps", type=int, default=0,
                    help="length of the learning-rate schedule in steps (default: --steps); set it to stop a run "
                         "early and --resume it later exactly as if it had not stopped")
    ap.add_argument("--batch", type=int, default=None, help="crops per task and step (default: 24 on a GPU, 4 on CPU)")
    ap.add_argument("--crop", type=int, default=None, help="crop side in pixels, even (default: 192 on a GPU, 96 on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", default=None, help="model file of an earlier run to continue (its .resume.pt beside it)")
    ap.add_argument("--log", default=None, help="append JSON-lines losses to this file")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (warm-up, then cosine)")
    ap.add_argument("--rec-weight", type=float, default=0.5, help="weight of the reconstruction task")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return ap


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return train(args)


if __name__ == "__main__":
    main()
