"""TDFusion driven by a detector: the filter-bank detector, the crop sampler, the meta step's signal."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_fusion.boxes import Box
from napari_fusion.training.data import shared_data_dir
from napari_fusion.training.det_head import FilterDetector, detection_loss
from napari_fusion.training.tdfusion_det import DetCropSampler, main

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")


def test_filter_detector_standardises_its_features_and_keeps_half_resolution():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 37, 50, generator=g)
    det = FilterDetector(3)
    f = det.features(x)
    assert f.shape == (2, 20, 19, 25)  # 1/2 resolution, odd sides rounded up
    det.fit([f])
    z = (f - det.mean) / det.std
    assert z.mean((0, 2, 3)).abs().max() < 1e-4 and (z.std((0, 2, 3)) - 1).abs().max() < 0.05
    heat, size = det(x)
    assert heat.shape == (2, 3, 19, 25) and size.shape == (2, 2, 19, 25)
    two = FilterDetector(3, channels=2)
    assert two.features(torch.rand(1, 2, 16, 16)).shape == (1, 40, 8, 8) and two.head.config["in_channels"] == 40


def test_det_crop_sampler_keeps_targets_on_their_objects():
    """Every object centre in a crop's targets (flipped or not) sits on the bright object in the crop."""
    a = np.zeros((120, 160), np.float32)
    a[40:60, 100:112] = 1.0  # one "person", centre (50, 106) in full-resolution pixels
    b = np.zeros_like(a)
    s = DetCropSampler([(a, b, [Box(0, 100, 40, 112, 60)])], crop=48, seed=0, object_fraction=1.0)
    ca, cb, heat, size, mask = s.batch(16)
    assert ca.shape == (16, 1, 48, 48) and heat.shape == (16, 3, 24, 24) and mask.shape == (16, 1, 24, 24)
    for k in range(16):
        ys, xs = np.nonzero(mask[k, 0].numpy())
        assert len(ys) == 1  # the object is in every crop
        y, x = int(ys[0]), int(xs[0])
        assert float(ca[k, 0, 2 * y, 2 * x]) == 1.0 and float(heat[k, 0, y, x]) == 1.0
        assert np.allclose(size[k, :, y, x].numpy(), np.log([6.0, 10.0]))  # half-width 6, half-height 10
    with pytest.raises(ValueError, match="even"):
        DetCropSampler([(a, b, [])], crop=47)


@needs_data
@pytest.mark.parametrize("grad_target", ["max", "weighted"])
def test_detector_driven_meta_step_reaches_the_loss_module_on_msrs(grad_target):
    """On a real MSRS night pair with its boxes, the meta step with the detector's loss as the task
    gives the loss module a gradient (none when the bi-level graph is cut), and a small step along it
    lowers that task loss after the inner step (a gradient of noise would not); with the paper's fixed
    texture target and with the learned (weighted) one."""
    from napari_fusion.boxes import read_yolo
    from napari_fusion.training.data import read_gray_unit
    from napari_fusion.training.tdfusion import meta_step, new_runner

    root = shared_data_dir() / "ivif" / "MSRS"
    ir, vi = read_gray_unit(root / "ir" / "00004N.png"), read_gray_unit(root / "vi" / "00004N.png")
    boxes = read_yolo(root / "boxes" / "fusion" / "00004N.txt", ir.shape, n_classes=3)
    assert boxes
    s = DetCropSampler([(ir, vi, boxes)], crop=64, seed=0, object_fraction=1.0)
    a, b, heat, size, mask = s.batch(2)
    r = new_runner("ivif", seed=0, labelled=False, fusion_config={"down": 2, "dec_blocks": 2},
                   loss_config={"dim": 8, "joint_blocks": 2, "centred": True})
    torch.manual_seed(0)
    det = FilterDetector(3)
    with torch.no_grad():
        det.fit([det.features(r.fusion(a, b))])
    for p in det.parameters():
        p.requires_grad_(False)

    def task(f):
        return detection_loss(*det(f), heat, size, mask)

    def step(graph=True):
        return meta_step(r.fusion, r.loss_net, None, a, b, None, None, mode="image", intensity="l1",
                         grad_target=grad_target, create_graph=graph, task_fn=task)

    assert step(False)["meta_grad_norm"] == 0.0
    tasks = []
    for _ in range(3):
        out = step()
        tasks.append(out["meta_task"])
        assert out["meta_grad_norm"] > 1e-5, out
        with torch.no_grad():
            g = torch.cat([p.grad.ravel() for p in r.loss_net.parameters()])
            for p in r.loss_net.parameters():
                p -= 0.1 * p.grad / g.norm()
    assert tasks[-1] < tasks[0], tasks


def test_refuses_to_write_over_the_starting_model(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not touched")
    with pytest.raises(SystemExit, match="refusing to write over"):
        main(["--model", str(model), "--out", str(model)])
    assert model.read_bytes() == b"not touched"
