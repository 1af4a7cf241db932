"""MultiTaskVIF for infrared/visible objects (``multitaskvif-ivif``): the ``--task ivif`` training CLI,
the losses on 4-class weak box labels, the registered method and the shipped model on a real MSRS pair.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_fusion as nf
from napari_fusion.boxes import read_yolo
from napari_fusion.methods import registry
from napari_fusion.methods.multitask import IVIF_WEIGHTS, multitask_receptive_radius
from napari_fusion.methods.classes import IVIF_CLASSES
from napari_fusion.training.data import pack_dataset, pair_split, shared_data_dir
from napari_fusion.training.losses import IGNORE_INDEX, class_weights_from_counts
from napari_fusion.training.multitask import apply_prior_adjustment, main, prior_adjustment, segmentation_loss

DATA = shared_data_dir()
MSRS = DATA / "ivif" / "MSRS" if DATA is not None else None
needs_msrs = pytest.mark.skipif(
    MSRS is None or not (MSRS / "boxes" / "fusion").is_dir(),
    reason="needs ../shared/data/ivif/MSRS with its boxes (the real MSRS pairs and box files)",
)
IVIF_NAMES = ["background", "person", "bicycle", "car"]

# A night test-split pair (split.csv): a woman in a long coat walking towards the camera on the right of
# a park path, bright and isolated in the infrared (ground-truth person box about 53x146 px at x 509,
# y 202), a dark silhouette against dark trees in the visible image. The shipped model's best person
# box overlaps it with IoU 0.91 (measured 2026-11-30).
NIGHT_PAIR = "00004N.png"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------- CLI
def _tiny_ivif_packed(tmp_path: Path, with_labels: bool = True) -> Path:
    """Three 48x64 pairs: two with weak box labels (a person, a car, an ignored ring), one unlabelled."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(3):
        a = rng.integers(0, 60, (48, 64), dtype=np.uint8)
        b = rng.integers(0, 200, (48, 64), dtype=np.uint8)
        a[10:30, 8:16] = 230  # a warm "person"
        b[30:40, 30:56] = 250  # a lit "car"
        arrays[f"a_{i}"], arrays[f"b_{i}"] = a, b
        if with_labels and i < 2:
            lab = np.zeros((48, 64), np.int64)
            lab[8:32, 6:18] = IGNORE_INDEX
            lab[10:30, 8:16] = 1
            lab[30:40, 30:56] = 3
            arrays[f"l_{i}"] = lab
    return pack_dataset(tmp_path / "ivif.npz", **arrays)


def test_cli_task_ivif_trains_two_steps_and_writes_a_four_class_model(tmp_path):
    data = _tiny_ivif_packed(tmp_path)
    out = tmp_path / "mt_ivif.safetensors"
    log = tmp_path / "log.jsonl"
    rec = main(["--task", "ivif", "--data", str(data), "--out", str(out), "--device", "cpu", "--threads", "1",
                "--batch", "2", "--crop", "32", "--steps", "2", "--log-every", "1", "--log", str(log),
                "--eval-slices", "1", "--warmup", "1", "--prior-adjust", "0.5"])
    assert rec["steps"] == 2 and rec["task"] == "ivif" and rec["pairs"] == 3 and rec["labelled_pairs"] == 2
    assert len(log.read_text().splitlines()) == 2
    runner = registry.runner_from_file(out)
    assert runner.n_classes == 4 and [c.name for c in runner.classes] == IVIF_NAMES
    assert [c.color for c in runner.classes] == [c[2] for c in IVIF_CLASSES]
    assert runner.name == "multitaskvif-ivif" and runner.meta["method"] == "multitaskvif-ivif"
    assert "input_intensity" not in runner.meta  # uint8 / 255: the engine's default mapping
    cfg = runner.meta["training"]["config"]
    assert len(cfg["class_weights"]) == 4 and cfg["class_weights"][1] > cfg["class_weights"][0]
    assert set(runner.meta["training"]["train_pair_dice"]) >= {"dice_0", "dice_1", "predicted_object_fraction"}
    seen = runner.meta["training"]["seen_class_pixels"]
    assert len(seen) == 4 and seen[1] > 0 and seen[3] > 0 and seen[2] == 0  # no bicycle in the tiny data
    adj = runner.meta["prior_adjustment"]
    assert adj["strength"] == 0.5 and adj["offsets"][0] == 0.0 and adj["seen_class_pixels"] == seen
    a, b = np.zeros((40, 56), np.float32), np.ones((40, 56), np.float32)
    fused, labels = runner.fuse_and_segment(a, b)
    assert fused.shape == labels.shape == (40, 56) and labels.min() >= 0 and labels.max() <= 3


def test_cli_task_ivif_needs_labels(tmp_path):
    data = _tiny_ivif_packed(tmp_path, with_labels=False)
    with pytest.raises(ValueError, match="holds no label images"):
        main(["--task", "ivif", "--data", str(data), "--out", str(tmp_path / "x.safetensors"), "--device", "cpu",
              "--threads", "1", "--batch", "2", "--crop", "32", "--steps", "1"])


def test_cli_task_ivif_data_from_shared_data_starts(tmp_path):
    """The real MSRS + RoadScene training split loads with box labels for --data auto (one step)."""
    if MSRS is None or not (MSRS / "boxes" / "fusion").is_dir():
        pytest.skip("needs ../shared/data/ivif/MSRS with its boxes")
    out = tmp_path / "real.safetensors"
    rec = main(["--task", "ivif", "--data", "auto", "--out", str(out), "--device", "cpu", "--threads", "1",
                "--batch", "2", "--crop", "32", "--steps", "1", "--eval-slices", "0"])
    assert rec["labelled_pairs"] >= 150 and rec["pairs"] > rec["labelled_pairs"]  # RoadScene: fusion only
    counts = rec["class_pixels"]
    assert len(counts) == 4 and all(c > 0 for c in counts) and counts[0] > 10 * counts[1]


# ---------------------------------------------------------------------------------- losses
def test_four_class_segmentation_loss_ignores_the_ring_and_weights_rare_classes():
    torch.manual_seed(0)
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[:, 4:10, 4:8] = 1
    labels[1, 12:14, 2:14] = 3
    ring = torch.zeros_like(labels, dtype=torch.bool)
    ring[:, 3:11, 3:9] = True
    ring[:, 4:10, 4:8] = False
    labels[ring] = IGNORE_INDEX
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    cw = class_weights_from_counts([1000, 30, 5, 80])
    assert cw[2] > cw[1] > cw[3] > cw[0]  # rarer classes count more
    loss, parts = segmentation_loss(logits, labels, class_weights=cw)
    loss.backward()
    # no gradient reaches an ignored pixel, through neither cross-entropy nor soft Dice
    assert float(logits.grad.abs().permute(0, 2, 3, 1)[ring].max()) == 0.0
    assert float(logits.grad.abs().permute(0, 2, 3, 1)[~ring].max()) > 0.0
    # whatever the logits on ignored pixels, the loss is the same
    other = logits.detach().clone()
    other.permute(0, 2, 3, 1)[ring] = torch.tensor([-50.0, 50.0, 50.0, 50.0])
    loss2, parts2 = segmentation_loss(other, labels, class_weights=cw)
    assert torch.allclose(loss.detach(), loss2) and torch.allclose(parts["dice"], parts2["dice"])
    # all-ignored crops (an unlabelled RoadScene pair) give a zero loss with a graph
    z, _ = segmentation_loss(logits, torch.full_like(labels, IGNORE_INDEX), class_weights=cw)
    assert float(z.detach()) == 0.0 and z.requires_grad


def test_prior_adjustment_moves_crop_priors_to_image_priors_without_stacking():
    from napari_fusion.methods.multitask import new_runner

    # crops saw objects 4x as often as whole images hold them: objects are pushed down, background stays
    d = prior_adjustment([900, 100], [600, 400])
    assert d[0] == 0.0 and d[1] < 0
    np.testing.assert_allclose(d[1], np.log(0.1 / 0.9) - np.log(0.4 / 0.6))
    np.testing.assert_allclose(prior_adjustment([900, 100], [900, 100]), [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(prior_adjustment([900, 100], [600, 400], strength=0.5), d / 2)
    # class weights count like a prior: weighting objects x2 pushes them down by log 2 more
    np.testing.assert_allclose(prior_adjustment([900, 100], [600, 400], [1.0, 2.0])[1], d[1] - np.log(2.0))
    r = new_runner(IVIF_CLASSES, seed=0)
    bias0 = r.net.seg_out.bias.detach().clone()
    apply_prior_adjustment(r, [90, 3, 2, 5], [60, 10, 10, 20], strength=1.0)
    once = r.net.seg_out.bias.detach().clone()
    apply_prior_adjustment(r, [90, 3, 2, 5], [60, 10, 10, 20], strength=1.0)  # again: replaces, not stacks
    torch.testing.assert_close(r.net.seg_out.bias.detach(), once)
    apply_prior_adjustment(r, [90, 3, 2, 5], [60, 10, 10, 20], strength=0.0)
    torch.testing.assert_close(r.net.seg_out.bias.detach(), bias0)


# ---------------------------------------------------------------------------------- registry
def test_registered_method_and_shipped_file():
    m = registry.get_method("multitaskvif-ivif")
    assert m.family == "MultiTaskVIF" and m.outputs == ("fused", "labels") and m.learned
    assert m.weights == IVIF_WEIGHTS and m.halo == multitask_receptive_radius()
    assert [c.name for c in m.extra["classes"]] == IVIF_NAMES
    assert "multitaskvif-ivif" in [x.name for x in registry.list_methods(segmenting_only=True)]
    path = registry.WEIGHTS_DIR / IVIF_WEIGHTS
    assert path.is_file() and path.stat().st_size < 4_000_000
    runner = registry.runner_from_file(path)
    assert runner.name == "multitaskvif-ivif" and [c.name for c in runner.classes] == IVIF_NAMES
    assert "input_intensity" not in runner.meta and runner.meta["training"]["task"] == "ivif"
    assert runner.meta["prior_adjustment"]["strength"] == 0.5


# ---------------------------------------------------------------------------------- real data
@needs_msrs
def test_shipped_model_finds_the_person_on_a_real_night_test_pair():
    assert pair_split(MSRS / "ir")[NIGHT_PAIR] == "test"  # held out of training
    ir, vi = MSRS / "ir" / NIGHT_PAIR, MSRS / "vi" / NIGHT_PAIR
    truth = read_yolo(MSRS / "boxes" / "fusion" / (Path(NIGHT_PAIR).stem + ".txt"), (480, 640), n_classes=3)
    people = [t for t in truth if t.name == "person" or t.cls == 0]
    assert people
    res = nf.fuse(str(ir), str(vi), "multitaskvif-ivif", full=True, device="cpu")
    assert res.fused.shape[:2] == (480, 640) and res.labels.shape == (480, 640)
    assert (res.labels > 0).any() and (res.labels == 0).mean() > 0.5
    found = nf.detect(str(ir), str(vi), "multitaskvif-ivif", device="cpu")
    persons = [b for b in found if b.cls == 0]
    assert persons and {b.name for b in persons} == {"person"}
    best = max(p.iou(t) for p in persons for t in people)
    assert best >= 0.5, f"best person-box IoU {best:.3f}; found {persons}"


GROUP_PAIR = "00790N.png"  # a night test-split pair: nine people, several walking side by side


@needs_msrs
def test_shipped_detection_head_keeps_people_in_a_group_apart():
    """The labels' connected components merge people walking together into one box; the shipped
    model's detection head (object centres and sizes) finds them one by one."""
    from napari_fusion.boxes import boxes_from_labels

    assert pair_split(MSRS / "ir")[GROUP_PAIR] == "test"
    ir, vi = str(MSRS / "ir" / GROUP_PAIR), str(MSRS / "vi" / GROUP_PAIR)
    truth = [t for t in read_yolo(MSRS / "boxes" / "fusion" / (Path(GROUP_PAIR).stem + ".txt"), (480, 640), n_classes=3) if t.cls == 0]
    assert len(truth) >= 8
    res = nf.fuse(ir, vi, "multitaskvif-ivif", full=True, segment=True, boxes=True, device="cpu")
    assert res.boxes is not None  # the shipped file has a detection head

    def found(boxes):
        return sum(any(b.cls == 0 and b.iou(t) >= 0.5 for b in boxes) for t in truth)

    components = boxes_from_labels(res.labels, res.classes)
    head = nf.detect(ir, vi, "multitaskvif-ivif", device="cpu")
    assert [(b.cls, b.x0, b.y0) for b in head] == [(b.cls, b.x0, b.y0) for b in res.boxes]  # detect gives the head's boxes
    assert found(components) <= 1
    assert found(head) >= 4, f"{found(head)} of {len(truth)} people found"
