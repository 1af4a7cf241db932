"""Objects as boxes (issue 14, part 3): YOLO box files, weak labels, boxes from segmentations, mAP,
``detect`` (API, CLI, viewer, Segment widget).

The shipped segmenting models today label BraTS tumour classes only; an infrared/visible
person/bicycle/car model does not exist yet, so ``detect`` is tested with toy runners whose labels
are known, and the box-file side with the real MSRS boxes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_fusion as nf
from napari_fusion.boxes import (
    Box,
    box_map,
    boxes_from_labels,
    read_class_names,
    read_yolo,
    weak_labels,
    write_yolo,
)
from napari_fusion.methods.registry import ClassInfo
from napari_fusion.training.data import shared_data_dir

DATA = shared_data_dir()
MSRS = DATA / "ivif" / "MSRS" if DATA is not None else None
needs_msrs = pytest.mark.skipif(
    MSRS is None or not (MSRS / "boxes" / "fusion").is_dir(), reason="needs ../shared/data/ivif/MSRS/boxes (the real MSRS box files)"
)
MSRS_SHAPE = (480, 640)

CLASSES = (
    ClassInfo(0, "background", "#000000"),
    ClassInfo(1, "person", "#ff0000"),
    ClassInfo(2, "bicycle", "#00ff00"),
    ClassInfo(3, "car", "#0000ff"),
)


class BlobRunner:
    """Fuses by maximum; person (1) where A > 0.5, car (3) where only B > 0.5 (known objects)."""

    name = "blobs"
    halo = 0
    classes = CLASSES

    def fuse(self, a, b):
        return np.maximum(a, b)

    def fuse_and_segment(self, a, b):
        lab = np.zeros(a.shape, np.int32)
        lab[b > 0.5] = 3
        lab[a > 0.5] = 1
        return np.maximum(a, b), lab


def _blob_pair(shape=(96, 128)):
    """A: a bright 30x10 'person' at rows 20..49, cols 30..39 and a 2x2 speck; B: a 12x40 'car'."""
    a = np.full(shape, 20, np.uint8)
    b = np.full(shape, 30, np.uint8)
    a[20:50, 30:40] = 230
    a[80:82, 5:7] = 230  # 4 px: under the default min_area
    b[60:72, 70:110] = 220
    return a, b


# ------------------------------------------------------------------------------------------------
# box files -> weak labels (real MSRS file)
# ------------------------------------------------------------------------------------------------
def _smallest_covering(boxes, r, c):
    """The class label of the smallest box whose pixel-centre test covers (r, c); 0 if none."""
    y, x = r + 0.5, c + 0.5
    cover = [b for b in boxes if b.x0 <= x < b.x1 and b.y0 <= y < b.y1]
    return min(cover, key=lambda b: b.area).label if cover else 0


@needs_msrs
def test_real_msrs_box_file_becomes_weak_labels():
    names = read_class_names(MSRS / "boxes" / "classes.txt")
    assert names == ["person", "bicycle", "car"]
    path = MSRS / "boxes" / "fusion" / "01250N.txt"  # night: person on a bicycle next to a car, overlapping
    boxes = read_yolo(path, MSRS_SHAPE, names=names)
    assert [b.name for b in boxes] and {b.name for b in boxes} == {"person", "bicycle", "car"}
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    assert len(boxes) == len(lines)
    b0, l0 = boxes[0], [float(v) for v in lines[0]]
    assert b0.cls == int(l0[0])
    assert (b0.x0 + b0.x1) / 2 == pytest.approx(l0[1] * 640) and b0.height == pytest.approx(l0[4] * 480)

    lab = weak_labels(boxes, MSRS_SHAPE)
    assert lab.shape == MSRS_SHAPE and set(np.unique(lab)) == {0, 1, 2, 3}
    # every pixel: the smallest box covering its centre, else background (checked on a grid of pixels
    # and on every pixel of the boxes' overlaps)
    rr, cc = np.meshgrid(np.arange(0, 480, 7), np.arange(0, 640, 7), indexing="ij")
    pts = list(zip(rr.ravel(), cc.ravel()))
    for a in boxes:
        for b in boxes:
            if a is not b and a.iou(b) > 0:
                r0, r1 = int(max(a.y0, b.y0)), int(min(a.y1, b.y1))
                c0, c1 = int(max(a.x0, b.x0)), int(min(a.x1, b.x1))
                pts += [(r, c) for r in range(r0, r1) for c in range(c0, c1)]
    overlapping = 0
    for r, c in pts:
        assert lab[r, c] == _smallest_covering(boxes, r, c), (r, c)
        overlapping += sum(1 for b in boxes if b.x0 <= c + 0.5 < b.x1 and b.y0 <= r + 0.5 < b.y1) > 1
    assert overlapping > 50  # the file really has overlapping boxes of different classes

    ring = weak_labels(boxes, MSRS_SHAPE, ignore_ring=2, ignore_value=255)
    np.testing.assert_array_equal(ring[ring != 255], lab[ring != 255])  # the ring only adds ignored pixels
    assert (lab[ring == 255] == 0).all() and (ring == 255).sum() > 0
    for b in boxes:  # pixels just outside a box's left edge are ignored unless another box covers them
        r, c = int((b.y0 + b.y1) / 2), int(np.ceil(b.x0 - 0.5)) - 1
        if c >= 0 and _smallest_covering(boxes, r, c) == 0:
            assert ring[r, c] == 255


@needs_msrs
def test_every_real_msrs_box_file_reads_and_boxes_come_back_from_their_labels():
    names = read_class_names(MSRS / "boxes" / "classes.txt")
    files = sorted((MSRS / "boxes" / "fusion").glob("*.txt"))
    assert len(files) == 241
    n = 0
    for f in files:
        n += len(read_yolo(f, MSRS_SHAPE, names=names))
    assert n == 1000
    # a file without overlaps: its weak labels give its boxes back (to the pixel)
    truth = read_yolo(MSRS / "boxes" / "fusion" / "00004N.txt", MSRS_SHAPE, names=names)
    assert all(a.iou(b) == 0 for a in truth for b in truth if a is not b)
    found = boxes_from_labels(weak_labels(truth, MSRS_SHAPE), ("background", *names), min_area=1)
    assert len(found) == len(truth)
    for t in truth:
        best = max(found, key=t.iou)
        assert best.cls == t.cls and t.iou(best) > 0.9
    assert box_map([found], [truth]).mean == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------
# bad box files: the file and the line are named
# ------------------------------------------------------------------------------------------------
GOOD = "0 0.5 0.5 0.2 0.3\n2 0.25 0.75 0.1 0.1\n"


@pytest.mark.parametrize(
    "line, what",
    [
        ("3 0.5 0.5 0.1 0.1", "class 3 out of range 0..2"),
        ("-1 0.5 0.5 0.1 0.1", "class -1 out of range 0..2"),
        ("1 1.2 0.5 0.1 0.1", "cx = 1.2 is outside 0..1"),
        ("1 0.5 -0.01 0.1 0.1", "cy = -0.01 is outside 0..1"),
        ("1 0.5 0.5 1.5 0.1", "w = 1.5 is outside 0..1"),
        ("1 0.5 0.5 0.1", "4 columns, expected 5"),
        ("1 0.5 0.5 0.1 0.1 0.9", "6 columns, expected 5"),
        ("1 0.5 0.5 0.1 0.1 0.9 7", "7 columns, expected 5"),
        ("1 0.5 abc 0.1 0.1", "not a number"),
        ("1.5 0.5 0.5 0.1 0.1", "is not an integer"),
        ("1 0.5 0.5 0 0.1", "zero size"),
        ("1 nan 0.5 0.1 0.1", "not a finite number"),
    ],
)
def test_bad_box_file_names_file_and_line(tmp_path, line, what):
    path = tmp_path / "bad_boxes.txt"
    path.write_text(GOOD + "\n" + line + "\n")  # the blank line still counts: the bad line is line 4
    with pytest.raises(ValueError) as err:
        read_yolo(path, MSRS_SHAPE, n_classes=3)
    msg = str(err.value)
    assert str(path) in msg and "line 4" in msg and what in msg, msg


def test_score_column_and_class_count_from_names(tmp_path):
    path = tmp_path / "scored.txt"
    path.write_text("1 0.5 0.5 0.1 0.1 0.75\n")
    (b,) = read_yolo(path, (100, 200), with_score=True, names=["person", "bicycle"])
    assert b.score == 0.75 and b.name == "bicycle" and (b.x0, b.y0, b.x1, b.y1) == pytest.approx((90, 45, 110, 55))
    path.write_text("2 0.5 0.5 0.1 0.1\n")
    with pytest.raises(ValueError, match=r"scored\.txt, line 1: class 2 out of range 0\.\.1"):
        read_yolo(path, (100, 200), names=["person", "bicycle"])


def test_yolo_round_trip_is_atomic(tmp_path):
    boxes = [Box(0, 10, 20, 30, 60, 0.9, "person"), Box(2, 0, 0, 640, 480, 0.5, "car")]
    out = write_yolo(tmp_path / "sub" / "p.txt", boxes, MSRS_SHAPE, with_score=True)
    assert out.read_text().splitlines()[0] == "0 0.031250 0.083333 0.031250 0.083333 0.9000"
    back = read_yolo(out, MSRS_SHAPE, with_score=True, n_classes=3)
    for a, b in zip(boxes, back):
        assert (a.cls, a.score) == (b.cls, b.score)
        assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((a.x0, a.y0, a.x1, a.y1), abs=1e-3)
    plain = write_yolo(tmp_path / "q.txt", boxes, MSRS_SHAPE)
    assert all(len(ln.split()) == 5 for ln in plain.read_text().splitlines())
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


# ------------------------------------------------------------------------------------------------
# segmentation -> boxes
# ------------------------------------------------------------------------------------------------
def test_boxes_from_labels_components_min_area_and_scores():
    lab = np.zeros((40, 50), np.int32)
    lab[5:15, 5:10] = 1  # 50 px person
    lab[20:22, 30:32] = 1  # 4 px person: dropped at min_area 16
    lab[25:35, 20:45] = 3  # car
    lab[25:30, 20:25] = 1  # person overlapping the car's corner: the car stays one component
    boxes = boxes_from_labels(lab, CLASSES, min_area=16)
    got = {(b.name, b.x0, b.y0, b.x1, b.y1) for b in boxes}
    assert got == {("person", 5, 5, 10, 15), ("car", 20, 25, 45, 35), ("person", 20, 25, 25, 30)}
    assert all(0 < b.score <= 1 for b in boxes)
    assert [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    assert len(boxes_from_labels(lab, CLASSES, min_area=1)) == 4
    # with class probabilities the score is their mean over the component
    probs = np.zeros((4, 40, 50), np.float32)
    probs[1] = 0.8
    probs[1, 5:10, 5:10] = 0.6
    probs[3] = 0.3
    scored = {b.name + str(b.x0): b.score for b in boxes_from_labels(lab, CLASSES, probs=probs)}
    assert scored["person5.0"] == pytest.approx(0.7) and scored["car20.0"] == pytest.approx(0.3)
    # rectangles in napari data coordinates: pixel centres at integers
    np.testing.assert_allclose(Box(0, 5, 5, 10, 15).rectangle(), [[4.5, 4.5], [4.5, 9.5], [14.5, 9.5], [14.5, 4.5]])
    with pytest.raises(ValueError, match="2-D"):
        boxes_from_labels(np.zeros((2, 4, 4), int))


# ------------------------------------------------------------------------------------------------
# mAP (pycocotools' COCOeval)
# ------------------------------------------------------------------------------------------------
def _truth_sets():
    if MSRS is not None and (MSRS / "boxes" / "fusion").is_dir():
        names = read_class_names(MSRS / "boxes" / "classes.txt")
        from napari_fusion.training.data import pair_split

        test = [n for n, part in pair_split(MSRS / "ir").items() if part == "test"]
        files = [MSRS / "boxes" / "fusion" / (Path(n).stem + ".txt") for n in test]
        assert len(files) == 49
        return [read_yolo(f, MSRS_SHAPE, names=names) for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(10):
        boxes = []
        for k in range(4):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(20, 120), rng.uniform(20, 120)
            boxes.append(Box(k % 3, x, y, x + w, y + h, 1.0, ("person", "bicycle", "car")[k % 3]))
        out.append(boxes)
    return out


def test_map_of_perfect_predictions_is_one_and_of_shifted_boxes_lower():
    truth = _truth_sets()
    perfect = box_map(truth, truth)
    assert perfect.mean == pytest.approx(1.0)
    assert set(perfect.per_class) == {"person", "bicycle", "car"} and all(v == pytest.approx(1.0) for v in perfect.per_class.values())

    def shifted(frac):
        return [[Box(b.cls, b.x0 + frac * b.width, b.y0, b.x1 + frac * b.width, b.y1, 0.9, b.name) for b in bs] for bs in truth]

    half = box_map(shifted(0.5), truth)  # IoU 1/3 with its own box (a neighbour in a crowd may match)
    assert half.mean < 0.05
    slight = box_map(shifted(0.2), truth)  # IoU 2/3: matches at 0.5
    assert slight.mean > 0.95
    mixed = [s if i % 2 else t for i, (s, t) in enumerate(zip(shifted(0.5), truth))]
    part = box_map(mixed, truth)
    assert 0.2 < part.mean < perfect.mean
    # a class without predictions scores 0; one without truth is left out of the mean
    no_cars = [[b for b in bs if b.name != "car"] for bs in truth]
    s = box_map(no_cars, truth)
    assert s.per_class["car"] == 0.0 and s.mean == pytest.approx(2 / 3)
    extra = box_map([bs + [Box(5, 0, 0, 10, 10, 0.99, "dog")] for bs in truth], truth)
    assert "dog" not in extra.per_class and extra.mean == pytest.approx(1.0)
    assert [r["class"] for r in perfect.rows()][-1] == "mean"


# ------------------------------------------------------------------------------------------------
# detect (API)
# ------------------------------------------------------------------------------------------------
def test_detect_finds_a_synthetic_blob_box():
    a, b = _blob_pair()
    boxes = nf.detect(a, b, BlobRunner())
    by_name = {bx.name: bx for bx in boxes}
    assert set(by_name) == {"person", "car"}  # the 4-px speck is under the default min_area
    assert (by_name["person"].x0, by_name["person"].y0, by_name["person"].x1, by_name["person"].y1) == (30, 20, 40, 50)
    assert (by_name["car"].x0, by_name["car"].y0, by_name["car"].x1, by_name["car"].y1) == (70, 60, 110, 72)
    assert by_name["person"].cls == 0 and by_name["car"].cls == 2  # YOLO class = label - 1
    assert len(nf.detect(a, b, BlobRunner(), min_area=1)) == 3
    truth = [Box(0, 30, 20, 40, 50, 1.0, "person"), Box(2, 70, 60, 110, 72, 1.0, "car")]
    assert box_map([boxes], [truth]).mean == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not segment"):
        nf.detect(a, b, "average")


def test_detect_follows_the_public_fuse_path_with_geometry():
    """B at half resolution: detect's boxes are on A's grid, as fuse's labels are."""
    a, b = _blob_pair()
    res = nf.fuse(a, b[::2, ::2], BlobRunner(), full=True, segment=True, grid_b=None)
    boxes = nf.detect(a, b[::2, ::2], BlobRunner())
    assert boxes == boxes_from_labels(res.labels, res.classes)
    assert all(0 <= bx.x0 < bx.x1 <= a.shape[1] and 0 <= bx.y0 < bx.y1 <= a.shape[0] for bx in boxes)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def blob_method():
    """``blobs`` registered as a method for the CLI (removed afterwards)."""
    from napari_fusion.methods import registry
    from napari_fusion.methods.registry import Method

    registry.list_methods()
    m = Method("blobs", "toy person/car segmenter", "test", lambda device="cpu", weights=None: BlobRunner(),
               outputs=("fused", "labels"), extra={"classes": CLASSES})
    registry.register(m)
    yield m.name
    registry._METHODS.pop(m.name, None)
    for k in [k for k in registry._RUNNERS if k[0] == m.name]:
        registry._RUNNERS.pop(k, None)


def test_cli_detect_writes_yolo_files_and_scores(tmp_path, blob_method, capsys):
    import imageio.v3 as iio

    from napari_fusion.cli import main

    root = tmp_path / "pairs"
    ir, vi, truth = root / "ir", root / "vi", tmp_path / "truth"
    for d in (ir, vi, truth):
        d.mkdir(parents=True)
    for i in range(3):
        a, b = _blob_pair()
        a, b = np.roll(a, 7 * i, axis=1), np.roll(b, -5 * i, axis=0)
        iio.imwrite(ir / f"p{i}.png", a)
        iio.imwrite(vi / f"p{i}.png", np.stack([b] * 3, -1))  # colour visible, as MSRS has it
        write_yolo(truth / f"p{i}.txt", [Box(0, 30 + 7 * i, 20, 40 + 7 * i, 50), Box(2, 70, 60 - 5 * i, 110, 72 - 5 * i)], a.shape)
    (truth / "classes.txt").write_text("0 person\n1 bicycle\n2 car\n")
    out = tmp_path / "found"
    rc = main(["detect", str(ir), str(vi), "--method", blob_method, "--out", str(out), "--truth", str(truth)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "p0.txt", "p1.txt", "p2.txt"]
    assert read_class_names(out / "classes.txt") == ["person", "bicycle", "car"]
    got = read_yolo(out / "p1.txt", (96, 128), n_classes=3)
    np.testing.assert_allclose(sorted((b.cls, b.x0, b.y0, b.x1, b.y1) for b in got), [(0, 37, 20, 47, 50), (2, 70, 55, 110, 67)], atol=1e-3)
    assert "mAP@0.5 = 1.0000" in text and "person" in text and "car" in text
    assert "6 boxes in 3 images" in text

    # a second run skips the files (and scores what they hold); a pair-layout folder works too
    rc = main(["detect", str(root), "--method", blob_method, "--out", str(out), "--truth", str(truth)])
    text = capsys.readouterr().out
    assert rc == 0 and "3 skipped" in text and "mAP@0.5 = 1.0000" in text
    # scores as a 6th column
    rc = main(["detect", str(root), "-m", blob_method, "-o", str(tmp_path / "scored"), "--scores", "--min-area", "1"])
    assert rc == 0
    rows = [ln.split() for ln in (tmp_path / "scored" / "p0.txt").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r) == 6 for r in rows)

    # a bad truth file is reported with its file and line; the detections are still written
    (truth / "p2.txt").write_text("0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n")
    rc = main(["detect", str(root), "-m", blob_method, "-o", str(out), "--truth", str(truth)])
    cap = capsys.readouterr()
    assert rc == 1
    assert f"{truth / 'p2.txt'}, line 2: class 7 out of range 0..2" in cap.err


def test_cli_detect_refuses_a_method_that_does_not_segment(tmp_path, capsys):
    from napari_fusion.cli import main

    (tmp_path / "ir").mkdir()
    rc = main(["detect", str(tmp_path), "--method", "average", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not segment" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# napari: a Shapes layer next to the Labels layer
# ------------------------------------------------------------------------------------------------
@pytest.mark.gui
def test_detect_with_viewer_adds_shapes_layer(make_napari_viewer):
    napari = pytest.importorskip("napari")
    viewer = make_napari_viewer()
    a, b = _blob_pair()
    la = viewer.add_image(a, name="ir", scale=(2.0, 2.0), translate=(10.0, 5.0))
    lb = viewer.add_image(b, name="vi", scale=(2.0, 2.0), translate=(10.0, 5.0))
    boxes = nf.detect(la, lb, BlobRunner(), viewer=viewer)
    names = [layer.name for layer in viewer.layers]
    assert names == ["ir", "vi", "blobs (ir + vi)", "blobs labels (ir + vi)", "blobs boxes (ir + vi)"]
    shapes = viewer.layers["blobs boxes (ir + vi)"]
    assert isinstance(shapes, napari.layers.Shapes)
    assert len(shapes.data) == len(boxes) == 2 and set(shapes.shape_type) == {"rectangle"}
    np.testing.assert_allclose(shapes.scale, (2.0, 2.0))
    np.testing.assert_allclose(shapes.translate, (10.0, 5.0))
    person = list(shapes.features["name"]).index("person")
    np.testing.assert_allclose(shapes.data[person].min(axis=0), [19.5, 29.5])
    np.testing.assert_allclose(shapes.data[person].max(axis=0), [49.5, 39.5])
    np.testing.assert_allclose(shapes.edge_color[person], [1, 0, 0, 1])  # the class colour
    assert shapes.face_color[:, 3].max() == 0  # transparent faces
    assert shapes.text.string.format == "{name}"
    # again: the layer is replaced, not piled up; a new viewer-only layer order is kept
    viewer.layers.move(viewer.layers.index("blobs boxes (ir + vi)"), 0)
    nf.detect(la, lb, BlobRunner(), viewer=viewer, min_area=1)
    assert len(viewer.layers) == 5 and viewer.layers.index("blobs boxes (ir + vi)") == 0
    assert len(viewer.layers["blobs boxes (ir + vi)"].data) == 3


@pytest.mark.gui
def test_segment_widget_boxes_checkbox(make_napari_viewer, qtbot):
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_fusion.widgets._common import ModelEntry, shelf_for

    viewer = make_napari_viewer()
    a, b = _blob_pair()
    viewer.add_image(a, name="ir")
    viewer.add_image(b, name="vi")
    shelf_for(viewer).add(ModelEntry(label="blobs", runner=BlobRunner(), base=None, info="toy person/car"))
    _, w = viewer.window.add_plugin_dock_widget("napari-fusion", "Segment")
    assert w.method.select("blobs")
    w.source_a.set_layer("ir")
    w.source_b.set_layer("vi")
    w.segment()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    assert "blobs boxes (ir + vi)" not in viewer.layers  # off by default
    w.boxes.setChecked(True)
    w.segment()
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    shapes = viewer.layers["blobs boxes (ir + vi)"]  # named after the job's inputs (napari_fusion.naming)
    assert isinstance(shapes, napari.layers.Shapes) and len(shapes.data) == 2
    names = [layer.name for layer in viewer.layers]
    assert names.index("blobs boxes (ir + vi)") == names.index("blobs labels (ir + vi)") + 1
    assert sorted(shapes.features["name"]) == ["car", "person"]


# --------------------------------------------------------------------------- detection head
def test_centre_targets_decode_back_to_their_boxes():
    """The training targets of a set of boxes (touching people among them), read back by the decoder
    as a perfect head would give them, are the boxes again: centres and sizes survive the 1/2 grid."""
    import torch

    from napari_fusion.methods.detection import decode_boxes
    from napari_fusion.training.det_head import centre_targets

    truth = [Box(0, 100, 50, 130, 120), Box(0, 128, 52, 160, 124), Box(2, 300, 200, 420, 260), Box(1, 20, 300, 60, 330)]
    heat, size, mask = centre_targets(truth, (480, 640), 3)
    assert heat.shape == (3, 240, 320) and size.shape == (2, 240, 320) and mask.sum() == 4
    assert heat.max() == 1.0 and (heat == 1.0).sum() == 4  # one centre per box
    logits = torch.logit(torch.from_numpy(heat).clamp(1e-4, 1 - 1e-4))
    found = decode_boxes(logits, torch.from_numpy(size), (480, 640), {0: "person", 1: "bicycle", 2: "car"}, min_score=0.5)
    assert len(found) == 4
    for t in truth:  # the two touching people stay two boxes
        best = max((f for f in found if f.cls == t.cls), key=lambda f: f.iou(t))
        assert best.iou(t) > 0.85, (t, best)
    assert {f.name for f in found} == {"person", "bicycle", "car"}


def test_detection_loss_is_least_at_the_targets_and_sees_both_heat_and_size():
    """The loss the shipped head and the claim benchmark's detector train on: the perfect maps score
    lower than the untrained prior, and a wrong size (at the centres only) or a missed centre costs."""
    import torch

    from napari_fusion.methods.detection import HEAT_PRIOR
    from napari_fusion.training.det_head import centre_targets, detection_loss

    truth = [Box(0, 100, 50, 130, 120), Box(2, 300, 200, 420, 260)]
    heat, size, mask = (torch.from_numpy(t)[None] for t in centre_targets(truth, (480, 640), 3))
    mask = mask[:, None]
    perfect = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    prior = torch.full_like(heat, float(np.log(HEAT_PRIOR / (1 - HEAT_PRIOR))))
    best = float(detection_loss(perfect, size, heat, size, mask))
    assert best < 0.1 * float(detection_loss(prior, size, heat, size, mask))
    assert float(detection_loss(perfect, size + np.log(2.0), heat, size, mask)) > best + 0.3  # 0.5 * |log 2|
    assert float(detection_loss(perfect, size + (1 - mask) * 5.0, heat, size, mask)) == pytest.approx(best)  # sizes count at centres only
    missed = perfect.clone()
    missed[0, 2] = perfect[0, 0]  # the car's centre is not seen
    assert float(detection_loss(missed, size, heat, size, mask)) > best + 1.0


def test_decode_refuses_maps_of_different_shapes():
    import torch

    from napari_fusion.methods.detection import decode_boxes

    with pytest.raises(ValueError, match="heat"):
        decode_boxes(torch.zeros(3, 10, 10), torch.zeros(2, 10, 12), (20, 20))


def test_a_detection_head_is_saved_loaded_and_used_by_detect(tmp_path):
    import torch

    from napari_fusion.methods.multitask import ivif_classes, new_runner

    runner = new_runner(ivif_classes(), seed=0)
    assert runner.detect_boxes(np.zeros((40, 48)), np.zeros((40, 48))) is None  # no head: detect uses components
    torch.manual_seed(0)
    runner.net.attach_detector(8)
    with torch.no_grad():  # a head that sees a "car" centre wherever source A is bright
        for m in runner.net.det.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
        runner.net.det.heat.bias.fill_(-8.0)
        runner.net.det.size.bias.fill_(np.log(6.0))
    a = np.zeros((64, 80), np.float32)
    b = np.zeros_like(a)
    path = nf.save_model(runner, tmp_path / "det.safetensors")
    back = nf.load_model(path, device="cpu")
    assert back.net.det is not None and back.net.config["det_width"] == 8
    for name, t in runner.net.det.state_dict().items():
        assert torch.equal(t, back.net.det.state_dict()[name])
    assert back.detect_boxes(a, b) == []  # everything below the score floor
    with torch.no_grad():
        back.net.det.heat.bias[2] = 8.0  # "car" everywhere: peaks on the plateau
    boxes = nf.detect(a, b, back, device="cpu")
    assert boxes and {x.name for x in boxes} == {"car"} and all(x.score > 0.99 for x in boxes)
    assert all(abs((x.x1 - x.x0) - 12.0) < 1e-3 or x.x0 == 0.0 or x.x1 == 80.0 for x in boxes)


def test_a_viewer_shows_only_confident_head_boxes_and_detect_returns_all():
    from types import SimpleNamespace

    from napari_fusion.boxes import SHOW_MIN_SCORE, result_boxes

    head = [Box(0, 0, 0, 5, 5, 0.9, "person"), Box(2, 10, 10, 20, 20, SHOW_MIN_SCORE - 0.01, "car")]
    res = SimpleNamespace(boxes=head, labels=np.zeros((30, 30), np.int32), classes=None)
    assert result_boxes(res) == head
    assert result_boxes(res, shown=True) == head[:1]
    lab = np.zeros((30, 30), np.int32)
    lab[2:12, 2:12] = 1  # no head: the components, shown or not
    comp = SimpleNamespace(boxes=None, labels=lab, classes=((1, "person"),))
    assert len(result_boxes(comp)) == len(result_boxes(comp, shown=True)) == 1
