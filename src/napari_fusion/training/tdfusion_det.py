"""TDFusion driven by a detector: the bi-level loop with object boxes as the task.

The shipped ``tdfusion`` learned its loss module from a *segmenter* on weak box labels, and the claim
benchmark (docs/results/ivif_task.md) finds its fused image worse for a *detector* than the infrared
alone. Here the task network of the loop is the detector itself
(:class:`~napari_fusion.training.det_head.FilterDetector`: the shipped detection head's architecture on
the fused image's filter bank, CenterNet targets from ``boxes/fusion``), so the loss module learns the
per-pixel source weights whose fusion that detector finds most useful. Each step, on a batch of MSRS
train-split crops (half around an object):

(iii) the detector takes a step on the detached fused image;
(i)   from ``--meta-start``, the loss module takes the image-space meta step
      (:func:`~napari_fusion.training.tdfusion.meta_step` with the detector's loss as the outer task);
(ii)  the fusion net takes a step on the learned fusion loss (plus the fixed term towards max(A, B)).

It starts from a TDFusion file (fusion net, loss module, segmenter) and writes one with the new fusion
net and loss module; its segmenter is kept as it is (retrain it with ``training.tdfusion
--freeze-fusion`` on the new fused images). Run::

    python -m napari_fusion.training.tdfusion_det --model tdfusion_ivif.safetensors --out tdfusion_det.safetensors \\
        --steps 600 --time-budget 1800 --threads 1

What it learns (docs/results/tdfusion_det_tradeoff.md): with ``--max-weight`` 0 to 1 the loss module
leans to the infrared and the fused image becomes the infrared's (the detector then matches the
infrared alone; EN/SD fall to the infrared's); with 1.5 to 2 the fused image follows max(A, B) and
the detector falls back to the shipped model's level. ``--grad-target weighted`` lets the learned
weights set the texture target too (:func:`~napari_fusion.training.losses.gradient_loss`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .det_head import centre_targets, crop_origin
from .losses import GRAD_TARGETS

__all__ = ["DetCropSampler", "train_det_driven", "main"]


class DetCropSampler:
    """Crops of prepared pairs (``a``, ``b`` unit (H, W)) with their half-resolution CenterNet targets;
    ``object_fraction`` of the crops around an object centre; horizontal flips. ``crop`` is even."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray, list]], crop: int, n_classes: int = 3, seed: int = 0,
                 object_fraction: float = 0.5):
        if crop % 2:
            raise ValueError(f"crop must be even, got {crop}")
        self.crop, self.rng, self.object_fraction = int(crop), np.random.default_rng(seed), float(object_fraction)
        self.items = []
        for a, b, boxes in pairs:
            heat, size, mask = centre_targets(boxes, a.shape, n_classes)
            self.items.append((a.astype(np.float32), b.astype(np.float32), heat, size, mask, np.argwhere(mask > 0)))
        self.with_obj = [i for i, it in enumerate(self.items) if len(it[5])]

    def batch(self, n: int) -> tuple[torch.Tensor, ...]:
        half, rng = self.crop // 2, self.rng
        out: list[list[np.ndarray]] = [[], [], [], [], []]
        for _ in range(int(n)):
            if self.with_obj and rng.random() < self.object_fraction:
                a, b, heat, size, mask, centres = self.items[self.with_obj[int(rng.integers(len(self.with_obj)))]]
            else:
                (a, b, heat, size, mask, _), centres = self.items[int(rng.integers(len(self.items)))], None
            y0, x0 = crop_origin(rng, mask.shape, half, centres)
            full = (slice(2 * y0, 2 * y0 + self.crop), slice(2 * x0, 2 * x0 + self.crop))
            part = (slice(y0, y0 + half), slice(x0, x0 + half))
            crops = [a[full][None], b[full][None], heat[(slice(None), *part)], size[(slice(None), *part)], mask[part][None]]
            if rng.random() < 0.5:  # horizontal flips only: street scenes have an up
                crops = [c[..., ::-1] for c in crops]
            for o, c in zip(out, crops):
                o.append(c)
        return tuple(torch.from_numpy(np.ascontiguousarray(np.stack(o))) for o in out)


def _msrs_pairs(root: Path, runner) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """The MSRS train-split pairs as the runner's ``fuse`` prepares them, with their boxes."""
    from ..boxes import read_yolo
    from ..engine.pipeline import input_intensity_of, prepare_pair
    from ..io import read_image
    from .det_head import msrs_split_names

    out = []
    for name in msrs_split_names(root, "train"):
        pp = prepare_pair(read_image(root / "ir" / name).data, read_image(root / "vi" / name).data,
                          input_intensity=input_intensity_of(runner))
        out.append((pp.a, pp.b, read_yolo(root / "boxes" / "fusion" / (Path(name).stem + ".txt"), pp.a.shape, n_classes=3)))
    return out


def train_det_driven(runner, pairs, *, steps: int = 600, meta_start: int = 150, batch: int = 8, crop: int = 96,
                     lr_fusion: float = 5e-4, lr_loss: float = 1e-3, lr_det: float = 2e-3, max_weight: float = 2.0,
                     grad_target: str = "max", image_step: float = 0.05, seed: int = 0, time_budget: float = 0.0,
                     log: Callable[[str], None] = print) -> dict:
    """Train ``runner``'s fusion net and loss module in place with the detector as the task; returns a record."""
    from .det_head import FilterDetector, detection_loss
    from .tdfusion import fusion_step, meta_step

    torch.manual_seed(seed)
    fusion, loss_net = runner.fusion, runner.loss_net
    for m in (fusion, loss_net):
        m.to(memory_format=torch.contiguous_format).train()
    sampler = DetCropSampler(pairs, crop, seed=seed)
    det = FilterDetector(3)
    with torch.no_grad():  # standardise the detector's features on the starting fused images
        sample = [sampler.batch(batch) for _ in range(4)]
        det.fit([det.features(fusion(a, b).float()) for a, b, *_ in sample])
    opts = {"fusion": torch.optim.Adam(fusion.parameters(), lr_fusion), "loss": torch.optim.Adam(loss_net.parameters(), lr_loss),
            "det": torch.optim.Adam(det.parameters(), lr_det)}
    t0, history = time.perf_counter(), []
    for step in range(int(steps)):
        a, b, heat, size, mask = sampler.batch(batch)
        with torch.no_grad():
            fused = fusion(a, b).float()
        ld = detection_loss(*det(fused), heat, size, mask)  # (iii) the detector
        opts["det"].zero_grad(set_to_none=True)
        ld.backward()
        opts["det"].step()
        rec = {"step": step, "det": float(ld.detach())}
        if step >= meta_start:  # (i) the loss module, (ii) the fusion net
            for p in det.parameters():
                p.requires_grad_(False)
            rec |= meta_step(fusion, loss_net, None, a, b, None, opts["loss"], mode="image", image_step=image_step,
                             intensity="l1", max_weight=max_weight, grad_target=grad_target,
                             task_fn=lambda f: detection_loss(*det(f), heat, size, mask))
            for p in det.parameters():
                p.requires_grad_(True)
            rec |= fusion_step(fusion, loss_net, a, b, opts["fusion"], intensity="l1", max_weight=max_weight,
                               grad_target=grad_target)
        history.append(rec)
        if step % 50 == 0 or step == int(steps) - 1:
            recent = history[-50:]
            log(json.dumps({k: round(float(np.mean([r[k] for r in recent if k in r])), 4) for k in recent[-1]}
                           | {"step": step, "seconds": round(time.perf_counter() - t0, 1)}))
        if time_budget and time.perf_counter() - t0 > time_budget:
            log(f"time budget reached at step {step}")
            break
    for m in (fusion, loss_net):
        m.eval()
    last = history[-50:]
    return {"steps": len(history), "meta_start": int(meta_start), "batch": int(batch), "crop": int(crop),
            "lr_fusion": lr_fusion, "lr_loss": lr_loss, "lr_det": lr_det, "max_weight": max_weight, "grad_target": grad_target, "seed": int(seed),
            "seconds": round(time.perf_counter() - t0, 1),
            "final": {k: round(float(np.mean([r[k] for r in last if k in r])), 4) for k in last[-1] if k != "step"}}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a TDFusion infrared/visible model file to start from")
    ap.add_argument("--out", required=True, help="the model file to write (refused if it is --model)")
    ap.add_argument("--data", default="auto", help="the MSRS folder, or auto: the shared data's ivif/MSRS")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--meta-start", type=int, default=150, help="detector-only steps before the loop starts")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--lr-fusion", type=float, default=5e-4)
    ap.add_argument("--lr-loss", type=float, default=1e-3)
    ap.add_argument("--max-weight", type=float, default=2.0)
    ap.add_argument("--grad-target", choices=GRAD_TARGETS, default="max",
                    help="texture term: max of the sources' gradients (the paper's), or weighted by the learned weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-budget", type=float, default=0.0, help="seconds (0: none)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..methods.store import save_bundle
    from ..methods.tdfusion import load_runner
    from .det_head import msrs_box_root

    if Path(args.out).resolve() == Path(args.model).resolve():
        raise SystemExit(f"{args.out}: refusing to write over the starting model (its segmenter no longer matches)")
    root = msrs_box_root(args.data)
    runner = load_runner(args.model)
    record = train_det_driven(runner, _msrs_pairs(root, runner), steps=args.steps, meta_start=args.meta_start,
                              batch=args.batch, crop=args.crop, lr_fusion=args.lr_fusion, lr_loss=args.lr_loss,
                              max_weight=args.max_weight, grad_target=args.grad_target, seed=args.seed, time_budget=args.time_budget)
    runner.meta.setdefault("phases", []).append({"detector_driven": record})
    tensors, meta = runner.to_bundle()
    save_bundle(Path(args.out), tensors, meta)
    print(f"wrote {args.out}: {record}")
    return record


if __name__ == "__main__":
    main()
