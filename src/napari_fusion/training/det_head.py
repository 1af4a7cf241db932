"""Train a MultiTaskVIF model's object detection head on MSRS boxes (the network itself frozen).

The head (:class:`~napari_fusion.methods.detection.DetHead`) reads the frozen network's 1/2-resolution
decoder features and pooled class probabilities of each MSRS train-split pair (computed once, as
``fuse`` prepares the files), and learns CenterNet targets from ``boxes/fusion``: per object class a
Gaussian heat map around each box centre (sigma = a sixth of the box side, at 1/2 resolution;
focal loss) and the box's log half-size at its centre (L1). Fused images and labels of the model do
not change. Run::

    python -m napari_fusion.training.det_head --model multitaskvif_ivif.safetensors \\
        --out multitaskvif_ivif.safetensors --steps 1500 --threads 1

(``--out`` may be the input file: it is read whole first and replaced atomically.)
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["centre_targets", "focal_loss", "detection_loss", "FilterDetector", "train_detector", "main"]


def centre_targets(boxes, shape: tuple[int, int], n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heat (K, h, w), log half-size (2, h, w), centre mask (h, w)) at 1/2 resolution of an image of
    ``shape`` for its boxes (YOLO class ``k`` -> heat channel ``k``)."""
    h, w = (int(shape[0]) + 1) // 2, (int(shape[1]) + 1) // 2
    heat = np.zeros((n_classes, h, w), np.float32)
    size = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    for bx in boxes:
        if not 0 <= bx.cls < n_classes:
            continue
        cx, cy = (bx.x0 + bx.x1) / 4, (bx.y0 + bx.y1) / 4
        hw, hh = max((bx.x1 - bx.x0) / 2, 1.0), max((bx.y1 - bx.y0) / 2, 1.0)  # half-size, full-res px
        sx, sy = max(hw / 6, 0.8), max(hh / 6, 0.8)
        g = np.exp(-((xx - cx) ** 2) / (2 * sx**2) - ((yy - cy) ** 2) / (2 * sy**2))
        heat[bx.cls] = np.maximum(heat[bx.cls], g)
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        heat[bx.cls, iy, ix] = 1.0
        size[:, iy, ix] = (math.log(hw), math.log(hh))
        mask[iy, ix] = 1.0
    return heat, size, mask


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss on heat maps (1 at centres, Gaussian around), per centre."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1)


def detection_loss(heat_logits: torch.Tensor, log_size: torch.Tensor, heat: torch.Tensor, size: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Focal loss on the heat maps plus L1 on the log half-sizes at object centres (``mask``
    ``(N, 1, h, w)``), CenterNet's weighting (sizes at half weight)."""
    l1 = ((log_size - size).abs() * mask).sum() / mask.sum().clamp_min(1)
    return focal_loss(heat_logits, heat) + 0.5 * l1


class FilterDetector(torch.nn.Module):
    """A detector that reads an image's filter bank: ``(N, 1, H, W)`` unit images -> the
    :class:`~napari_fusion.methods.detection.DetHead` maps at 1/2 resolution.

    Features: ``task.features.filter_bank`` (intensity, gradient magnitude, two Hessian eigenvalues at
    sigma 1..16), average-pooled to 1/2 resolution and standardised with fixed statistics (``fit``
    sets them from sample images). Differentiable end to end, so a task loss on its maps reaches the
    image (the detector task of :mod:`.tdfusion_det`); the claim benchmark trains one per input."""

    def __init__(self, n_classes: int = 3, width: int = 32, channels: int = 1):
        super().__init__()
        from ..methods.detection import DetHead
        from ..task.features import n_features

        n = n_features(1) * int(channels)
        self.register_buffer("mean", torch.zeros(1, n, 1, 1))
        self.register_buffer("std", torch.ones(1, n, 1, 1))
        self.head = DetHead(n, int(n_classes), int(width))

    @staticmethod
    def features(x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 20 C, ceil(H/2), ceil(W/2))`` pooled filter features (unstandardised)."""
        from ..task.features import filter_bank

        N, C, H, W = x.shape
        f = filter_bank(x.reshape(N * C, 1, H, W)).reshape(N, -1, H, W)
        return F.avg_pool2d(f, 2, ceil_mode=True)

    @torch.no_grad()
    def fit(self, feats: Sequence[torch.Tensor]) -> "FilterDetector":
        """Standardisation statistics from ``(n, h, w)`` or ``(N, n, h, w)`` feature maps (pooled)."""
        flat = [f.float().reshape(-1, *f.shape[-3:]).transpose(0, 1).reshape(f.shape[-3], -1) for f in feats]
        m = torch.stack([f.mean(1) for f in flat]).mean(0)
        m2 = torch.stack([f.pow(2).mean(1) for f in flat]).mean(0)
        self.mean.copy_(m.view(1, -1, 1, 1))
        self.std.copy_((m2 - m**2).clamp_min(1e-8).sqrt().view(1, -1, 1, 1))
        return self

    def from_features(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head((f.float() - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.features(x))


def crop_origin(rng: np.random.Generator, shape: tuple[int, int], size: int,
                centres: np.ndarray | None = None) -> tuple[int, int]:
    """Top-left corner of a ``size`` x ``size`` crop of an image of ``shape``: with ``centres`` ((N, 2)
    rows, cols), one of them drawn at random lies inside the crop at a random offset; without, anywhere.
    The crop stays inside the image. Shared by every detector-training crop sampler."""
    h, w = int(shape[0]), int(shape[1])
    if centres is not None and len(centres):
        cy, cx = centres[int(rng.integers(len(centres)))]
        return int(np.clip(cy - rng.integers(size), 0, h - size)), int(np.clip(cx - rng.integers(size), 0, w - size))
    return int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))


def msrs_box_root(data: str) -> Path:
    """The MSRS folder of a training CLI's ``--data`` (``auto``: the shared data's ivif/MSRS); exits
    with a message naming it when it has no ``boxes/fusion``."""
    from .data import shared_data_dir

    root = Path(data) if data != "auto" else (shared_data_dir() or Path("missing")) / "ivif" / "MSRS"
    if not (root / "boxes" / "fusion").is_dir():
        raise SystemExit(f"{root}: no MSRS folder with boxes/fusion (give --data)")
    return root


def msrs_split_names(root: Path, split: str) -> list[str]:
    from ..training.data import pair_split

    return sorted(n for n, s in pair_split(root / "ir").items() if s == split)


def train_detector(runner, root: Path, *, steps: int = 1500, crop: int = 96, batch: int = 8, lr: float = 2e-3,
                   width: int = 32, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Attach a detection head to ``runner`` (a MultiTaskVIF runner, frozen) and train it on the MSRS
    train split in ``root`` (``ir``, ``vi``, ``boxes/fusion``, ``split.csv``). Returns a record."""
    from ..boxes import read_yolo
    from ..engine.pipeline import input_intensity_of, prepare_pair
    from ..io import read_image

    net = runner.net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    n_obj = net.n_classes - 1
    torch.manual_seed(seed)
    net.attach_detector(width)
    head = net.det
    for p in head.parameters():
        p.requires_grad_(True)
    t0 = time.perf_counter()
    data = []
    for name in msrs_split_names(root, "train"):
        ir, vi = read_image(root / "ir" / name).data, read_image(root / "vi" / name).data
        pp = prepare_pair(ir, vi, input_intensity=input_intensity_of(runner))
        boxes = read_yolo(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), pp.a.shape, n_classes=n_obj)
        with torch.no_grad():
            a, b = (torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None] for x in (pp.a, pp.b))
            x = net.detection_inputs(a, b)[0].contiguous()
        data.append((x, *centre_targets(boxes, pp.a.shape, n_obj)))
    log(f"features of {len(data)} train pairs in {time.perf_counter() - t0:.0f} s")
    opt = torch.optim.Adam(head.parameters(), lr)
    rng = np.random.default_rng(seed)
    for step in range(int(steps)):
        xs, hs, ss, ms = [], [], [], []
        for _ in range(int(batch)):
            x, heat, size, mask = data[int(rng.integers(len(data)))]
            near = mask.any() and rng.random() < 0.7  # most crops around an object
            y0, x0 = crop_origin(rng, x.shape[1:], crop, np.argwhere(mask > 0) if near else None)
            r, c = slice(y0, y0 + crop), slice(x0, x0 + crop)
            xs.append(x[:, r, c])
            hs.append(torch.from_numpy(heat[:, r, c]))
            ss.append(torch.from_numpy(size[:, r, c]))
            ms.append(torch.from_numpy(mask[r, c]))
        x, heat, size, mask = torch.stack(xs), torch.stack(hs), torch.stack(ss), torch.stack(ms)[:, None]
        ph, ps = head(x)
        loss = detection_loss(ph, ps, heat, size, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:  # cosine decay to 0
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / int(steps)))
        if step % 250 == 0 or step == int(steps) - 1:
            log(f"step {step}: loss {float(loss.detach()):.3f} ({time.perf_counter() - t0:.0f} s)")
    head.eval()
    for p in head.parameters():
        p.requires_grad_(False)
    return {"steps": int(steps), "crop": int(crop), "batch": int(batch), "lr": float(lr), "width": int(width), "seed": int(seed),
            "train_pairs": len(data), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a MultiTaskVIF model file (its network stays as it is)")
    ap.add_argument("--out", required=True, help="the model file to write (the input plus the detection head)")
    ap.add_argument("--data", default="auto", help="the MSRS folder, or auto: the shared data's ivif/MSRS")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..methods.multitask import load_runner
    from ..methods.store import save_bundle

    root = msrs_box_root(args.data)
    runner = load_runner(args.model)
    record = train_detector(runner, root, steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr, width=args.width, seed=args.seed)
    runner.meta["detector_training"] = record
    tensors, meta = runner.to_bundle()
    save_bundle(Path(args.out), tensors, meta)
    print(f"wrote {args.out}: {record}")
    return record


if __name__ == "__main__":
    main()
