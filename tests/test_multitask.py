"""MultiTaskVIF: both heads, joint training on BraTS, shipped weights, fine-tuning, model files, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_fusion.methods import registry
from napari_fusion.methods.torch_runner import count_parameters
from napari_fusion.methods.multitask import (
    WEIGHTS,
    MultiTaskNet,
    MultiTaskRunner,
    from_bundle,
    multitask_receptive_radius,
    new_runner,
)
from napari_fusion.methods.store import ModelFileError, save_bundle
from napari_fusion.methods.classes import BRATS_CLASSES
from napari_fusion.training.data import pack_dataset, shared_data_dir
from napari_fusion.training.losses import IGNORE_INDEX
from napari_fusion.training.evaluate import dice_on_slices
from napari_fusion.training.finetune_multitask import finetune_multitask_steps, painted_loss
from napari_fusion.training.multitask import (
    MultiTaskConfig,
    MultiTaskTrainer,
    joint_loss,
    main,
    segmentation_loss,
    soft_dice_loss,
)

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
needs_weights = pytest.mark.skipif(
    not (registry.WEIGHTS_DIR / WEIGHTS).is_file(), reason=f"shipped weights {WEIGHTS} not trained yet"
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32)


@pytest.fixture(scope="module")
def runner() -> MultiTaskRunner:
    return new_runner(seed=0)


@pytest.fixture(scope="module")
def brats_train_case() -> dict:
    from napari_fusion.training.data import load_brats_case

    root = shared_data_dir() / "labeled" / "BraTS2015_deepmedic" / "train"
    return load_brats_case(sorted(p for p in root.iterdir() if p.is_dir())[0])


@pytest.fixture(scope="module")
def brats_test_slices() -> dict:
    """The 12 BraTS test slices with the most tumour (both test cases)."""
    from napari_fusion.training.data import load_brats_split

    d = load_brats_split("test")
    tumour = (d["labels"] > 0).reshape(len(d["labels"]), -1).sum(1)
    idx = np.sort(np.argsort(-tumour, kind="stable")[:12])
    return {k: d[k][idx] for k in ("a", "b", "labels")}


# ---------------------------------------------------------------------------------- contracts
@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (8, 3)])
def test_both_heads_any_size(runner, shape):
    a, b = _pair(*shape)
    fused, labels = runner.fuse_and_segment(a, b)
    assert fused.shape == labels.shape == shape
    assert fused.dtype == np.float32 and labels.dtype == np.int32
    assert np.all(fused >= 0) and np.all(fused <= 1)
    assert set(np.unique(labels)) <= {c.index for c in runner.classes}
    np.testing.assert_array_equal(fused, runner.fuse(a, b))  # fuse skips the segmentation path, same image
    np.testing.assert_array_equal(labels, runner.segment(fused, a, b))
    assert runner.logits(a, b).shape == (5, *shape)


def test_network_outputs_and_classes():
    net = MultiTaskNet(n_classes=7).eval()
    fused, logits = net(torch.rand(2, 1, 40, 56), torch.rand(2, 1, 40, 56))
    assert fused.shape == (2, 1, 40, 56) and logits.shape == (2, 7, 40, 56)
    r = new_runner(seed=0)
    assert r.family == "MultiTaskVIF" and r.n_classes == 5
    assert [(c.index, c.name, c.color) for c in r.classes] == [tuple(c) for c in BRATS_CLASSES]


def test_segment_needs_the_sources(runner):
    with pytest.raises(ValueError, match="segments from the two sources"):
        runner.segment(np.zeros((8, 8), np.float32))


def test_registered_method():
    m = registry.get_method("multitaskvif")
    assert m.family == "MultiTaskVIF" and m.outputs == ("fused", "labels") and m.learned
    assert m.weights == WEIGHTS and m.halo == multitask_receptive_radius()
    assert [c.name for c in m.extra["classes"]] == [c[1] for c in BRATS_CLASSES]
    assert "multitaskvif" in [x.name for x in registry.list_methods(segmenting_only=True)]


def test_fewer_parameters_than_the_tdfusion_cascade():
    from napari_fusion.methods.segmenter import Segmenter
    from napari_fusion.methods.tdfusion import FusionNet

    ours = count_parameters(MultiTaskNet())
    cascade = count_parameters(FusionNet()) + count_parameters(Segmenter(5))
    assert ours < 0.55 * cascade, (ours, cascade)


def test_halo_covers_the_receptive_field():
    torch.manual_seed(0)
    net = MultiTaskNet().eval()
    s, c = 128, (67, 69)  # an off-centre pixel: the pooling phase matters
    xa = torch.rand(1, 1, s, s, requires_grad=True)
    xb = torch.rand(1, 1, s, s, requires_grad=True)
    fused, logits = net(xa, xb)
    (fused[0, 0, c[0], c[1]] + logits[0, :, c[0], c[1]].sum()).backward()
    ys, xs = torch.nonzero((xa.grad.abs() + xb.grad.abs())[0, 0] > 0, as_tuple=True)
    radius = max(c[0] - int(ys.min()), int(ys.max()) - c[0], c[1] - int(xs.min()), int(xs.max()) - c[1])
    assert 30 < radius <= multitask_receptive_radius()


def test_tiled_equals_untiled(runner):
    from napari_fusion.engine.pipeline import _align
    from napari_fusion.engine.tiling import count_tiles, fuse_tiled, run_aligned

    a, b = _pair(100, 120, seed=4)
    ref_f, ref_l = run_aligned(runner.fuse_and_segment, a, b, _align(runner))
    lab = np.zeros(a.shape, np.int32)
    out = fuse_tiled(runner, a, b, tile=64, overlap=16, halo=runner.halo, align=_align(runner), labels_out=lab)
    assert count_tiles(a.shape, 64, 16) >= 4
    assert np.abs(out - ref_f).max() * 255 <= 1.0
    assert (lab != ref_l).mean() < 1e-3


def test_engine_tiles_large_cpu_images_with_blended_overlap(runner, monkeypatch):
    """Automatic CPU tiles of a runner whose tiles are not exact keep the caller's overlap."""
    from napari_fusion.engine import pipeline
    from napari_fusion.engine.tiling import run_aligned

    assert runner.preferred_tile == 512 and not runner.tiles_exact
    monkeypatch.setattr(MultiTaskRunner, "cpu_tile", 48)  # small tiles keep the test fast; same code path
    a, b = _pair(100, 120, seed=6)
    overlaps, real = [], pipeline.fuse_tiled_steps
    monkeypatch.setattr(pipeline, "fuse_tiled_steps", lambda *a_, **k: overlaps.append(a_[4]) or real(*a_, **k))
    fused, labels = pipeline._drain(pipeline.run_unit_steps(runner, a, b, labels=True), None)
    ref_f, ref_l = run_aligned(runner.fuse_and_segment, a, b, pipeline._align(runner))
    assert overlaps == [24]  # the default 32, capped at half a 48-pixel tile
    assert np.abs(fused - ref_f).max() * 255 <= 1.0
    assert (labels != ref_l).mean() < 1e-3


def test_pipeline_gives_image_and_labels_from_one_runner(runner):
    from napari_fusion.engine.pipeline import fuse_arrays

    a, b = _pair(64, 72, seed=5)
    res = fuse_arrays((a * 255).astype(np.uint8), (b * 255).astype(np.uint8), runner, device="cpu", tile=0)
    assert res.fused.shape == (64, 72) and res.labels is not None and res.labels.shape == (64, 72)
    assert [c.name for c in res.classes] == [c[1] for c in BRATS_CLASSES]


def test_extend_classes_keeps_old_outputs():
    torch.manual_seed(0)
    net = MultiTaskNet(n_classes=3).eval()
    a, b = torch.rand(1, 1, 24, 32), torch.rand(1, 1, 24, 32)
    f0, l0 = net(a, b)
    net.extend_classes(6)
    f1, l1 = net(a, b)
    assert net.n_classes == 6 and net.config["n_classes"] == 6 and l1.shape[1] == 6
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    torch.testing.assert_close(l1[:, :3], l0, rtol=0, atol=1e-5)  # same weights; another conv kernel may round differently
    assert torch.equal(l1.argmax(1), l0.argmax(1))  # new classes start below the old ones
    with pytest.raises(ValueError, match="cannot shrink"):
        net.extend_classes(2)


# ---------------------------------------------------------------------------------- losses
def test_dice_loss_is_zero_for_perfect_and_one_for_wrong_predictions():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    perfect = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float() * 50
    wrong = torch.nn.functional.one_hot(1 - labels, 2).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, labels, smooth=1e-6)) == pytest.approx(0.0, abs=1e-5)
    assert float(soft_dice_loss(wrong, labels, smooth=1e-6)) == pytest.approx(1.0, abs=1e-5)


def test_segmentation_loss_ignores_unlabelled_pixels():
    """Logits that differ only where labels are ignored give the same loss and zero gradient there."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 16, 16), generator=g)
    labels[:, :, 8:] = IGNORE_INDEX
    x = torch.randn(2, 5, 16, 16, generator=g)
    y = x.clone()
    y[:, :, :, 8:] = torch.randn(2, 5, 16, 8, generator=g) * 10
    w = torch.tensor([0.2, 1.0, 1.5, 2.0, 1.0])
    lx = segmentation_loss(x, labels, class_weights=w)[0]
    ly = segmentation_loss(y, labels, class_weights=w)[0]
    assert float(lx) == pytest.approx(float(ly), rel=1e-6)
    x.requires_grad_(True)
    segmentation_loss(x, labels, class_weights=w)[0].backward()
    assert float(x.grad[..., 8:].abs().max()) == 0.0 and float(x.grad[..., :8].abs().max()) > 0


def test_fusion_loss_minimum_is_the_brighter_source_with_its_edges():
    a = torch.zeros(1, 1, 16, 16)
    a[..., 4:12, 4:12] = 0.9
    b = torch.zeros(1, 1, 16, 16)  # no edges, never brighter: the optimum is A itself
    target = torch.maximum(a, b)
    cfg = MultiTaskConfig()
    at_max = joint_loss(target, torch.zeros(1, 5, 16, 16), a, b, None, cfg)[1]
    assert at_max["int"] == 0 and at_max["grad"] == 0
    blend = joint_loss(0.5 * (a + b), torch.zeros(1, 5, 16, 16), a, b, None, cfg)[1]
    assert blend["int"] > 0.1 and blend["grad"] > 0 and "seg" not in blend


def test_learning_rate_warms_up_and_decays_by_steps_or_by_the_time_budget(runner):
    tr = MultiTaskTrainer(runner.copy(), MultiTaskConfig(lr=1e-3, warmup=10, total_steps=110), "cpu")
    assert tr.lr_at(0) == pytest.approx(1e-4) and tr.lr_at(9) == pytest.approx(1e-3)
    assert tr.lr_at(60) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5)) and tr.lr_at(110) == pytest.approx(5e-5)
    assert tr.lr_at(20, time_fraction=1.0) == pytest.approx(5e-5)  # the budget is spent: fully decayed
    assert tr.lr_at(60, time_fraction=0.1) == pytest.approx(tr.lr_at(60))  # steps are further along


# ---------------------------------------------------------------------------------- training on BraTS
@needs_data
def test_a_joint_training_step_lowers_both_losses_on_real_brats_slices(brats_train_case):
    from napari_fusion.training.samplers import BratsSampler

    d = brats_train_case
    a, b, lab = BratsSampler(d["a"], d["b"], d["labels"], crop=64, seed=0, tumour_fraction=1.0).batch(4)
    assert int((lab > 0).sum()) > 200  # tumour in the batch
    r = new_runner(seed=0)
    cfg = MultiTaskConfig(lr=2e-3, warmup=1, class_weights=[0.1, 1.5, 0.7, 1.5, 1.3])
    tr = MultiTaskTrainer(r, cfg, "cpu")

    def losses() -> dict:
        r.net.eval()
        with torch.no_grad():
            f, lg = r.net(a, b)
        return joint_loss(f, lg, a, b, lab, cfg, tr.class_weights)[1]

    before = losses()
    for _ in range(6):
        tr.train_step(a, b, lab)
    after = losses()
    assert after["fusion"] < 0.9 * before["fusion"], (before, after)
    assert after["seg"] < 0.9 * before["seg"], (before, after)


@needs_data
@needs_weights
def test_shipped_weights_segment_brats_test_slices_far_better_than_untrained(brats_test_slices):
    d = brats_test_slices
    shipped = registry.build_runner("multitaskvif", device="cpu", cache=False)
    assert shipped.meta["training"]["command"].startswith("python -m napari_fusion.training.multitask")
    untrained = new_runner(seed=0)
    ds = dice_on_slices(shipped, d["a"], d["b"], d["labels"])
    du = dice_on_slices(untrained, d["a"], d["b"], d["labels"])
    # measured with the CPU-trained weights: 0.50 (necrosis 0.68, oedema 0.48, enhancing 0.85);
    # untrained (seeds 0-2): 0.02-0.05
    assert ds["dice_mean_tumour"] >= 0.35, ds
    assert ds["dice_mean_tumour"] >= du["dice_mean_tumour"] + 0.25, (ds, du)


# ---------------------------------------------------------------------------------- fine-tuning
def _drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _strokes(truth: np.ndarray, rng: np.random.Generator, per_class: int = 4, length: int = 10, bg_value: int = 6) -> np.ndarray:
    out = np.zeros_like(truth, dtype=np.int32)
    for c in np.unique(truth):
        ys, xs = np.nonzero(truth == c)
        for _ in range(per_class):
            j = rng.integers(len(ys))
            seg = slice(max(0, xs[j] - length // 2), xs[j] + length // 2)
            row = truth[ys[j], seg] == c
            out[ys[j], seg][row] = c if c > 0 else bg_value
    return out


@needs_data
def test_finetuning_lowers_the_painted_pixel_loss_on_a_real_slice(brats_train_case):
    d = brats_train_case
    i = int(np.argmax((d["labels"] > 0).reshape(len(d["labels"]), -1).sum(1)))
    a, b, truth = d["a"][i], d["b"][i], d["labels"][i]
    strokes = _strokes(truth, np.random.default_rng(0))
    base = new_runner(seed=1)
    before_state = {k: v.clone() for k, v in base.net.state_dict().items()}
    loss0 = painted_loss(base, a, b, strokes, background_value=6)
    gen = finetune_multitask_steps(base, a, b, strokes, steps=12, lr=1e-3, background_value=6, crop=64, batch=2)
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            tuned = stop.value
            break
    assert [p.step for p in progress] == list(range(1, 13)) and progress[-1].steps == 12
    loss1 = painted_loss(tuned, a, b, strokes, background_value=6)
    assert loss1 < 0.85 * loss0, (loss0, loss1)  # from an untrained model: 1.59 -> 1.19 measured
    assert tuned.n_classes == 5  # value 6 trained class 0 (background), no new output
    assert tuned.meta["method"] == "multitaskvif-finetuned"
    assert tuned.meta["finetune_history"][-1]["painted_pixels"]["0"] > 0
    for k, v in base.net.state_dict().items():  # the input runner is unchanged
        assert torch.equal(v, before_state[k]), k


def test_finetuning_a_new_class_extends_the_head_and_ignores_unpainted_pixels():
    rng = np.random.default_rng(0)
    a = (0.2 * rng.random((48, 64))).astype(np.float32)
    a[:, :32] += 0.7
    b = (0.3 + 0.2 * rng.random((48, 64))).astype(np.float32)
    lab = np.zeros((48, 64), np.int32)
    lab[5:43, 6:9] = 2
    lab[5:43, 55:58] = 7
    base = new_runner(seed=0)

    from napari_fusion.training.finetune import finetune  # the shared entry point dispatches to MultiTaskVIF

    tuned = finetune_multitask_steps(base, a, b, lab, 3, 1e-3, class_names={7: "car"}, crop=32, batch=2)
    tuned = _drain(tuned)
    assert base.n_classes == 5 and tuned.n_classes == 8
    assert {c.index: c.name for c in tuned.classes}[7] == "car"
    via_api = finetune(base, a, b, lab, steps=2, lr=1e-3, class_names={7: "truck"}, device="cpu")
    assert isinstance(via_api, MultiTaskRunner) and via_api.n_classes == 8
    assert {c.index: c.name for c in via_api.classes}[7] == "truck"  # names pass through the dispatch
    # on the tuned model: predictions that differ only at unpainted pixels give the same loss
    lg = torch.from_numpy(tuned.logits(a, b))[None]
    t = torch.from_numpy(np.where(lab > 0, lab, IGNORE_INDEX))[None]
    unpainted = torch.from_numpy(lab == 0)[None, None].expand_as(lg)
    lg2 = torch.where(unpainted, torch.randn_like(lg) * 5, lg)
    assert float(segmentation_loss(lg, t)[0]) == pytest.approx(float(segmentation_loss(lg2, t)[0]), rel=1e-6)
    with pytest.raises(ValueError, match="only one class"):
        finetune_multitask_steps(base, a, b, np.where(lab == 2, 2, 0), steps=2)
    with pytest.raises(ValueError, match="nothing is painted"):
        finetune_multitask_steps(base, a, b, np.zeros_like(lab), steps=2)


# ---------------------------------------------------------------------------------- model files
def test_bundle_round_trip(tmp_path, runner):
    a, b = _pair(33, 41, seed=7)
    tensors, meta = runner.to_bundle()
    assert meta["family"] == "MultiTaskVIF" and meta["outputs"] == ["fused", "labels"]
    assert meta["n_parameters"] == runner.n_parameters
    path = save_bundle(tmp_path / "m.safetensors", tensors, meta)
    back = registry.runner_from_file(path, device="cpu")
    assert isinstance(back, MultiTaskRunner) and back.classes == runner.classes
    f0, l0 = runner.fuse_and_segment(a, b)
    f1, l1 = back.fuse_and_segment(a, b)
    np.testing.assert_array_equal(f0, f1)
    np.testing.assert_array_equal(l0, l1)
    bad = dict(tensors)
    bad.pop("net.seg_out.bias")
    save_bundle(tmp_path / "bad.safetensors", bad, meta)
    with pytest.raises(ModelFileError, match="does not match the MultiTaskVIF architecture"):
        registry.runner_from_file(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="outside the model's 5"):
        from_bundle(tensors, dict(meta, classes=[[0, "bg", "#000000"], [9, "x", "#ffffff"]]))


# ---------------------------------------------------------------------------------- CLI
def _tiny_packed(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (6, 40, 40), dtype=np.uint8)
    b = rng.integers(0, 255, (6, 40, 40), dtype=np.uint8)
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[:, 10:20, 12:22] = 2
    labels[:, 14:17, 15:18] = 4
    return pack_dataset(tmp_path / "brats.npz", a=a, b=b, labels=labels)


def test_cli_trains_logs_and_resumes_reproducibly(tmp_path):
    data = _tiny_packed(tmp_path)
    common = ["--data", str(data), "--device", "cpu", "--batch", "2", "--crop", "32", "--seed", "3",
              "--eval-slices", "0", "--log-every", "1", "--threads", "1", "--warmup", "2"]
    straight = tmp_path / "straight.safetensors"
    main(common + ["--out", str(straight), "--steps", "4", "--log", str(tmp_path / "log.jsonl")])
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("seg" in r and "fusion" in r for r in rows)
    half = tmp_path / "half.safetensors"
    main(common + ["--out", str(half), "--steps", "2", "--no-cosine"])
    resumed = tmp_path / "resumed.safetensors"
    # the cosine schedule depends on --steps: the first half ran without it, so compare like with like
    main(common + ["--out", str(tmp_path / "s2.safetensors"), "--steps", "4", "--no-cosine"])
    main(common + ["--out", str(resumed), "--steps", "4", "--no-cosine", "--resume", str(half)])
    r1 = registry.runner_from_file(tmp_path / "s2.safetensors")
    r2 = registry.runner_from_file(resumed)
    for k, v in r1.net.state_dict().items():
        assert torch.equal(v, r2.net.state_dict()[k]), k
    meta = r2.meta["training"]
    assert meta["command"].startswith("python -m napari_fusion.training.multitask") and meta["steps"] == 4
    assert meta["resumed_from"]["step"] == 2
    assert registry.runner_from_file(straight).meta["training"]["config"]["fusion_weight"] == 5.0
