"""The claim benchmark's third task model: a detector trained on one input's filter features.

Connected components of a segmentation merge touching people (docs/results/box_errors.md), so a
segmenting task model scores boxes poorly whatever it sees. This task model learns boxes directly:
``training.det_head.FilterDetector``: the shipped detection head's architecture
(``methods.detection.DetHead``: four dilated convolutions, CenterNet heat map per object class + log
box half-size at 1/2 resolution) reading the interactive head's filter bank of the input
(``task.features.filter_bank``: intensity, gradient magnitude and two Hessian eigenvalues at sigma
1..16, per input channel; average-pooled to 1/2 resolution and standardised on the train split). The
same detector is the task network of the detection-driven TDFusion loop (``training.tdfusion_det``). Targets, loss and decoding are the shipped head's
(``training.det_head.centre_targets`` / ``detection_loss``, ``methods.detection.decode_boxes``): the only
thing that changes between runs is the input image.

(A first try, the small U-Net of ``tdfusion`` with the same five outputs learned from the raw input,
reached mAP@0.5 0.007 on ``stack`` and 0.000 on ``tdfusion`` after 1,500 steps of 8 crops of 96 px
(500 s on one thread): at a CPU budget it learns no detector from scratch, so every input scores ~0.)
"""
from __future__ import annotations

import math

import numpy as np
import torch

OBJECT_NAMES = {0: "person", 1: "bicycle", 2: "car"}


def targets(boxes_per_pair: list[list], shapes: list) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """CenterNet targets (heat, log size, centre mask) at half resolution of every pair's boxes."""
    from napari_fusion.training.det_head import centre_targets

    return [tuple(torch.from_numpy(t) for t in centre_targets(b, s, len(OBJECT_NAMES))) for b, s in zip(boxes_per_pair, shapes)]


@torch.no_grad()
def filter_features(image: np.ndarray) -> torch.Tensor:
    """(C, H, W) unit image -> (20 C, ceil(H/2), ceil(W/2)) float16 filter features at 1/2 resolution."""
    from napari_fusion.training.det_head import FilterDetector

    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]
    return FilterDetector.features(x)[0].half()


def train(feats: list[torch.Tensor], tgts: list, steps: int, crop: int, batch: int, seed: int, lr: float = 2e-3):
    """A ``training.det_head.FilterDetector`` on precomputed features (``filter_features``; its
    standardisation fitted on them) and their half-resolution targets; half the crops (``crop`` px at
    full resolution) around an object centre, horizontal flips, Adam with cosine decay."""
    from napari_fusion.training.det_head import FilterDetector, crop_origin, detection_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    det = FilterDetector(len(OBJECT_NAMES), channels=feats[0].shape[0] // 20).fit(feats)
    opt = torch.optim.Adam(det.head.parameters(), lr=lr)
    half = crop // 2
    centres = [torch.nonzero(m > 0).numpy() for _, _, m in tgts]
    with_obj = [i for i, c in enumerate(centres) if len(c)]
    det.train()
    for step in range(int(steps)):
        xs, hs, ss, ms = [], [], [], []
        for _ in range(int(batch)):
            if with_obj and rng.random() < 0.5:
                i = with_obj[int(rng.integers(len(with_obj)))]
                y0, x0 = crop_origin(rng, tgts[i][2].shape, half, centres[i])
            else:
                i = int(rng.integers(len(feats)))
                y0, x0 = crop_origin(rng, tgts[i][2].shape, half)
            win = (slice(y0, y0 + half), slice(x0, x0 + half))
            x = feats[i][(slice(None), *win)].float()
            heat, size, mask = tgts[i][0][(slice(None), *win)], tgts[i][1][(slice(None), *win)], tgts[i][2][win]
            if rng.random() < 0.5:  # horizontal flips only: street scenes have an up
                x, heat, size, mask = (t.flip(-1) for t in (x, heat, size, mask))
            xs.append(x)
            hs.append(heat)
            ss.append(size)
            ms.append(mask)
        ph, ps = det.from_features(torch.stack(xs))
        loss = detection_loss(ph, ps, torch.stack(hs), torch.stack(ss), torch.stack(ms)[:, None])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / int(steps)))
    det.eval()
    return det


@torch.no_grad()
def predict(det, feats: torch.Tensor, shape) -> list:
    """Boxes of one image (its ``filter_features``; ``shape`` its full-resolution rows, cols)."""
    from napari_fusion.methods.detection import decode_boxes

    heat, size = det.from_features(feats[None])
    return decode_boxes(heat[0], size[0], tuple(shape), OBJECT_NAMES)
