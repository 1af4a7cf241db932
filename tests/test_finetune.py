"""Fine-tuning from painted labels: label convention, bi-level loop, bad input, saving tuned models."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from napari_fusion.methods import registry
from napari_fusion.methods.segmenter import Segmenter
from napari_fusion.methods.store import save_bundle
from napari_fusion.methods.tdfusion import BRATS_WEIGHTS, IVIF_WEIGHTS
from napari_fusion.training.data import shared_data_dir
from napari_fusion.training.finetune import (
    FinetuneProgress,
    finetune,
    finetune_steps,
    painted_targets,
    painted_task_loss,
)
from napari_fusion.training.losses import IGNORE_INDEX, task_loss
from napari_fusion.training.tdfusion import new_runner

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(name: str):
    path = registry.WEIGHTS_DIR / name
    return pytest.mark.skipif(not path.is_file(), reason=f"shipped weights {name} not trained yet")


def _state(runner) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": t.clone() for k, m in runner.modules.items() for n, t in m.state_dict().items()}


def _two_region_pair(h: int = 48, w: int = 64, seed: int = 0):
    """A pair whose left half is bright in A: class 1 left, class 2 right (a few strokes each)."""
    rng = np.random.default_rng(seed)
    a = (0.2 * rng.random((h, w))).astype(np.float32)
    a[:, : w // 2] += 0.7
    b = (0.3 + 0.2 * rng.random((h, w))).astype(np.float32)
    lab = np.zeros((h, w), np.int32)
    lab[5 : h - 5, 6:9] = 1
    lab[5 : h - 5, w - 9 : w - 6] = 2
    return a, b, lab


# ---------------------------------------------------------------------------------- label convention
def test_task_loss_ignores_unpainted_pixels():
    labels = np.zeros((1, 6, 7), np.int64)
    labels[0, 1, 1:4] = 1
    labels[0, 4, 2:5] = 2
    t = torch.from_numpy(painted_targets(labels))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 3, 6, 7, generator=g)
    other = logits.clone()
    unpainted = torch.from_numpy(labels == 0)[:, None].expand_as(other)
    other[unpainted] = torch.randn(int(unpainted.sum()), generator=g) * 10  # differs only where unpainted
    assert float(task_loss(logits, t)) == float(task_loss(other, t))
    changed = logits.clone()
    changed[0, :, 1, 2] += torch.tensor([5.0, -5.0, 0.0])  # differs at a painted pixel
    assert float(task_loss(changed, t)) != float(task_loss(logits, t))


def test_painted_values_map_to_classes_with_background_value():
    lab = np.array([[0, 1, 5], [2, 0, 5]])
    np.testing.assert_array_equal(painted_targets(lab), [[IGNORE_INDEX, 1, 5], [2, IGNORE_INDEX, 5]])
    np.testing.assert_array_equal(painted_targets(lab, background_value=5), [[IGNORE_INDEX, 1, 0], [2, IGNORE_INDEX, 0]])


# ---------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def base():
    return new_runner("ivif", seed=0)


def test_bad_labels_and_models_give_clear_errors(base):
    a, b, lab = _two_region_pair()
    with pytest.raises(ValueError, match="empty: nothing is painted"):
        finetune_steps(base, a, b, np.zeros_like(lab))
    with pytest.raises(ValueError, match="painted labels are 48x65 but the sources are 48x64"):
        finetune_steps(base, a, b, np.zeros((48, 65), np.int32))
    nan = lab.astype(np.float32)
    nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        finetune_steps(base, a, b, nan)
    with pytest.raises(ValueError, match="negative"):
        finetune_steps(base, a, b, -lab)
    with pytest.raises(ValueError, match=r"only one class \(class 1\) is painted"):
        finetune_steps(base, a, b, (lab == 1).astype(np.int32))
    with pytest.raises(ValueError, match="source B is 48x63 but source A is 48x64"):
        finetune_steps(base, a, b[:, :63], lab)
    bad = a.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="source A contains 1 NaN/inf"):
        finetune_steps(base, bad, b, lab)
    with pytest.raises(TypeError, match="classical methods have nothing to train"):
        finetune_steps(registry.build_runner("average"), a, b, lab)


# ---------------------------------------------------------------------------------- the loop
def test_finetune_from_base_creates_segmenter_and_leaves_input_unchanged(base):
    a, b, lab = _two_region_pair()
    before = _state(base)
    gen = finetune_steps(base, a, b, lab, steps=20, crop=32, batch=2, meta_every=2, lr=3e-3,
                         class_names={1: "bright", 2: "dark"})
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            tuned = stop.value
            break
    assert [p.step for p in progress] == list(range(1, 21)) and all(isinstance(p, FinetuneProgress) for p in progress)
    assert np.mean([p.task_loss for p in progress[-5:]]) < np.mean([p.task_loss for p in progress[:5]])
    assert any("meta_task" in p.extra for p in progress)  # the loss module was meta-learned
    # the input is untouched and still has no segmenter; the new runner has the painted classes
    assert not base.has_segmenter
    after = _state(base)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert [(c.index, c.name) for c in tuned.classes] == [(1, "bright"), (2, "dark")]
    assert float(tuned.loss_net.head1.weight.detach().abs().sum()) > 0  # no longer at the neutral start
    pred = tuned.segment(tuned.fuse(a, b))
    assert set(np.unique(pred)) <= {1, 2}  # class 0 was never painted: never predicted
    acc = ((pred[:, :32] == 1).mean() + (pred[:, 32:] == 2).mean()) / 2
    assert acc > 0.8, acc
    rec = tuned.meta["finetune_history"][-1]
    assert rec["steps"] == 20 and rec["painted_pixels"] == {"1": int((lab == 1).sum()), "2": int((lab == 2).sum())}
    assert tuned.meta["method"] == "tdfusion-finetuned" and tuned.meta["base"] == "tdfusion"


def test_cancelling_keeps_the_input_model(base):
    a, b, lab = _two_region_pair(seed=1)
    before = _state(base)
    gen = finetune_steps(base, a, b, lab, steps=50, crop=32, batch=1)
    next(gen)
    next(gen)
    gen.close()  # what a widget's Cancel does
    after = _state(base)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_new_class_index_extends_the_head_keeping_old_classes():
    seg = Segmenter(3).eval()
    x = torch.rand(1, 1, 16, 24)
    old = seg(x).detach()
    old_w, old_b = seg.head.weight.detach().clone(), seg.head.bias.detach().clone()
    seg.extend_classes(6)
    new = seg(x)
    assert new.shape[1] == 6
    assert torch.equal(seg.head.weight[:3], old_w) and torch.equal(seg.head.bias[:3], old_b)
    torch.testing.assert_close(new[:, :3], old, rtol=0, atol=1e-5)  # same weights; conv blocking may differ
    with pytest.raises(ValueError, match="cannot shrink"):
        seg.extend_classes(2)

    r = new_runner("brats", seed=0)
    a, b, lab = _two_region_pair(32, 40)
    lab[lab == 2] = 7  # a class the 5-class model does not have
    tuned = finetune(r, a, b, lab, steps=2, crop=32, batch=1, class_names={7: "lesion"})
    assert tuned.segmenter.n_classes == 8 and r.segmenter.n_classes == 5
    assert [c.index for c in tuned.classes] == [0, 1, 2, 3, 4, 7]
    assert tuned.classes[-1].name == "lesion" and tuned.classes[1].name == r.classes[1].name
    w_old, w_new = r.segmenter.head.weight, tuned.segmenter.head.weight
    assert w_new.shape[0] == 8 and not torch.equal(w_old, w_new[:5])  # trained on, but from the old head


def test_finetuned_model_saves_and_reloads_exactly(tmp_path, base):
    a, b, lab = _two_region_pair(seed=2)
    tuned = finetune(base, a, b, lab, steps=3, crop=32, batch=1)
    tensors, meta = tuned.to_bundle()
    path = save_bundle(tmp_path / "tuned.safetensors", tensors, meta)
    back = registry.runner_from_file(path, device="cpu")
    assert back.classes == tuned.classes and back.meta["finetune_history"] == tuned.meta["finetune_history"]
    fa, la = tuned.fuse_and_segment(a, b)
    fb, lb = back.fuse_and_segment(a, b)
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(la, lb)


def test_multitaskvif_runners_are_dispatched(monkeypatch):
    calls = []

    def fake_steps(runner, a, b, labels, steps, lr):
        calls.append((runner, a.shape, labels.dtype, steps, lr))
        yield FinetuneProgress(1, steps, 0.5, 0.1)
        return "tuned"

    mod = types.ModuleType("napari_fusion.training.finetune_multitask")
    mod.finetune_multitask_steps = fake_steps
    monkeypatch.setitem(sys.modules, "napari_fusion.training.finetune_multitask", mod)
    runner = types.SimpleNamespace(family="MultiTaskVIF")
    a, b, lab = _two_region_pair()
    assert finetune(runner, a, b, lab, steps=7, lr=5e-4) == "tuned"
    assert calls == [(runner, (48, 64), np.dtype(np.int64), 7, 5e-4)]


# ---------------------------------------------------------------------------------- real pairs
def _strokes_from_truth(truth: np.ndarray, rng: np.random.Generator, per_class: int = 3, length: int = 12) -> np.ndarray:
    """Short horizontal strokes inside each class region (a scripted 'user')."""
    out = np.zeros_like(truth, dtype=np.int32)
    for c in np.unique(truth):
        ys, xs = np.nonzero(truth == c)
        for _ in range(per_class):
            j = rng.integers(len(ys))
            y, x = ys[j], xs[j]
            seg = slice(max(0, x - length // 2), x + length // 2)
            row = truth[y, seg] == c
            out[y, seg][row] = c if c > 0 else 5  # background is painted with value 5
    return out


@needs_data
@_weights(BRATS_WEIGHTS)
def test_finetuning_lowers_the_painted_task_loss_on_a_real_brats_slice():
    from napari_fusion.training.data import load_brats_split

    d = load_brats_split("test")
    z = int(np.argmax((d["labels"] > 0).reshape(len(d["labels"]), -1).sum(1)))
    a, b, truth = d["a"][z], d["b"][z], d["labels"][z]
    strokes = _strokes_from_truth(truth, np.random.default_rng(0))
    r = registry.build_runner("tdfusion-brats", device="cpu", cache=False)
    before = painted_task_loss(r, a, b, strokes, background_value=5)
    tuned = finetune(r, a, b, strokes, steps=20, crop=64, batch=2, background_value=5, lr=1e-3)
    after = painted_task_loss(tuned, a, b, strokes, background_value=5)
    assert after < 0.8 * before, (before, after)
    assert painted_task_loss(r, a, b, strokes, background_value=5) == before  # input model unchanged


@needs_data
@_weights(IVIF_WEIGHTS)
def test_finetuning_the_ivif_base_on_a_real_msrs_pair_predicts_held_out_strokes():
    from napari_fusion.training.data import load_pair_folder

    root = shared_data_dir() / "ivif" / "MSRS"
    ir, vi = load_pair_folder(root / "ir", root / "vi", limit=1)[0]
    ir, vi = ir[200:328, 160:416], vi[200:328, 160:416]  # a 128x256 window keeps the test fast
    # classes by a documented intensity rule: 1 = hot in IR, 2 = cold in IR and dark in visible,
    # 3 = cold in IR and bright in visible
    hot = ir > np.percentile(ir, 90)
    cold = ir < np.percentile(ir, 50)
    truth = np.where(hot, 1, np.where(cold & (vi < np.median(vi)), 2, np.where(cold, 3, 0)))
    rng = np.random.default_rng(0)
    painted = np.zeros_like(truth)
    for c in (1, 2, 3):
        ys, xs = np.nonzero(truth == c)
        pick = rng.choice(len(ys), size=min(150, len(ys)), replace=False)
        painted[ys[pick], xs[pick]] = c
    held = np.zeros(painted.shape, bool)
    ys, xs = np.nonzero(painted)
    h = rng.choice(len(ys), size=len(ys) // 5, replace=False)
    held[ys[h], xs[h]] = True
    train = np.where(held, 0, painted)
    base = registry.build_runner("tdfusion", device="cpu", cache=False)
    tuned = finetune(base, ir, vi, train, steps=30, crop=64, batch=2, lr=1e-3)
    # the tuned model's own pair path: its head reads filter features of IR, visible and the fused
    # image (segment(fused) alone would feed it the fused image in place of both sources)
    pred = tuned.fuse_and_segment(ir, vi)[1]
    acc = float((pred[held] == painted[held]).mean())
    # three classes (chance 0.33); the instant head alone reaches 0.73 here, 30 task-driven steps from
    # the box-trained base 0.67 (the base's fused image is near max(A, B), tuned for objects)
    assert acc > 0.6, f"held-out stroke accuracy {acc:.3f}"


# ---------------------------------------------------------------------------------- automatic rate
def test_auto_rate_new_task_for_a_fresh_segmenter_corrections_with_replay_for_a_trained_one(base):
    from napari_fusion.training.finetune import LR_CORRECTIONS, LR_NEW_TASK, auto_lr

    a, b, lab = _two_region_pair()
    targets = painted_targets(lab)
    lr, why = auto_lr(base, a, b, targets)
    assert lr == LR_NEW_TASK["TDFusion"] and "new segmenter" in why
    tuned = finetune(base, a, b, lab, steps=20, crop=32, batch=2, meta_every=2, lr=1e-3)
    lr, why = auto_lr(tuned, a, b, targets)  # it now labels the strokes right: corrections
    assert lr == LR_CORRECTIONS and "corrections" in why
    again = finetune(tuned, a, b, lab, steps=2, crop=32, batch=2)  # lr=None: auto
    record = again.meta["finetune_history"][-1]
    assert record["lr"] == LR_CORRECTIONS and "replayed" in record["lr_choice"]
    # swapped strokes contradict the model: a new task, at the larger rate, without replay
    swapped = np.where(lab == 1, 2, np.where(lab == 2, 1, 0))
    lr, why = auto_lr(tuned, a, b, painted_targets(swapped))
    assert lr == LR_NEW_TASK["TDFusion"] and "new task" in why


def test_replay_adds_the_models_labels_on_a_sparse_sample_of_unpainted_pixels_only():
    from napari_fusion.training.finetune import REPLAY_FRACTION, with_replay

    lab = np.zeros((100, 100), np.int64)
    lab[10:20, 10:20] = 2
    pred = np.zeros((100, 100), np.int64)
    pred[50:, :] = 1
    out, bg = with_replay(lab, pred, None, seed=0)
    assert bg == 3  # class 0 needs a value: one above every painted value and class
    assert np.array_equal(out[10:20, 10:20], lab[10:20, 10:20])  # strokes win
    added = (out != 0) & (lab == 0)
    assert abs(added.mean() - REPLAY_FRACTION) < 0.01
    assert set(np.unique(out[added & (pred == 0)])) == {3} and set(np.unique(out[added & (pred == 1)])) == {1}
    t = painted_targets(out, bg)
    assert set(np.unique(t[added])) == {0, 1}
    out2, bg2 = with_replay(lab, pred, 7, seed=0)  # a given background value is kept
    assert bg2 == 7 and set(np.unique(out2[added & (pred == 0)])) == {7}
