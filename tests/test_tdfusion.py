"""TDFusion: network contracts, the bi-level meta step, training, shipped weights, model files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_fusion.methods import registry
from napari_fusion.methods.segmenter import Segmenter, segmenter_receptive_radius
from napari_fusion.methods.store import ModelFileError, save_bundle
from napari_fusion.methods.tdfusion import (
    BRATS_WEIGHTS,
    IVIF_WEIGHTS,
    FusionNet,
    LossNet,
    TDFusionRunner,
    fusion_receptive_radius,
    make_classes,
)
from napari_fusion.methods.classes import BRATS_CLASSES
from napari_fusion.training.data import load_training_data, shared_data_dir
from napari_fusion.training.losses import IGNORE_INDEX, fusion_loss, gradient_loss, task_loss
from napari_fusion.training.samplers import BratsSampler, PairSampler
from napari_fusion.training.tdfusion import (
    TDFusionTrainer,
    TrainConfig,
    main,
    meta_step,
    new_runner,
)

needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(name: str):
    path = registry.WEIGHTS_DIR / name
    return pytest.mark.skipif(not path.is_file(), reason=f"shipped weights {name} not trained yet")


@pytest.fixture(scope="module")
def brats_runner() -> TDFusionRunner:
    """A freshly initialised (seeded) fusion net + loss module + 5-class segmenter."""
    return new_runner("brats", seed=0)


def _pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((h, w), dtype=np.float32), rng.random((h, w), dtype=np.float32)


# ---------------------------------------------------------------------------------- contracts
def test_parameter_counts_match_the_paper_scale():
    from napari_fusion.methods.torch_runner import count_parameters

    assert 45_000 <= count_parameters(FusionNet()) <= 70_000
    assert 35_000 <= count_parameters(LossNet()) <= 55_000


@pytest.mark.parametrize("shape", [(37, 53), (1, 1), (8, 3)])
def test_fuse_any_size_shape_dtype_range(brats_runner, shape):
    a, b = _pair(*shape)
    out = brats_runner.fuse(a, b)
    assert out.shape == shape and out.dtype == np.float32
    assert np.all(out >= 0) and np.all(out <= 1)


def test_fuse_and_segment_contract(brats_runner):
    a, b = _pair(37, 53, seed=1)
    fused, labels = brats_runner.fuse_and_segment(a, b)
    assert fused.shape == labels.shape == (37, 53)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) <= {c.index for c in brats_runner.classes}
    np.testing.assert_array_equal(fused, brats_runner.fuse(a, b))
    np.testing.assert_array_equal(labels, brats_runner.segment(fused, a, b))
    assert [c.name for c in brats_runner.classes] == [c[1] for c in BRATS_CLASSES]


def test_loss_module_neutral_start_gives_equal_weights():
    a, b = _pair(20, 30)
    w = LossNet()(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    assert w.shape == (1, 2, 20, 30)
    torch.testing.assert_close(w, torch.full_like(w, 0.5))


def test_halo_covers_the_receptive_field():
    """Tiled == untiled needs the halo to cover every pixel an output depends on."""
    torch.manual_seed(0)
    net = FusionNet().eval()
    s = 61
    xa = torch.rand(1, 1, s, s, requires_grad=True)
    xb = torch.rand(1, 1, s, s, requires_grad=True)
    net(xa, xb)[0, 0, s // 2, s // 2].backward()
    ys, xs = torch.nonzero((xa.grad.abs() + xb.grad.abs())[0, 0] > 0, as_tuple=True)
    radius = max(s // 2 - int(ys.min()), int(ys.max()) - s // 2, s // 2 - int(xs.min()), int(xs.max()) - s // 2)
    assert radius == fusion_receptive_radius()
    assert registry.get_method("tdfusion").halo >= fusion_receptive_radius(2, 2, 2) + segmenter_receptive_radius()
    seg = Segmenter(5).eval()
    x = torch.rand(1, 1, 160, 160, requires_grad=True)
    seg(x)[0, :, 83, 85].sum().backward()
    ys, xs = torch.nonzero(x.grad[0, 0].abs() > 0, as_tuple=True)
    r2 = max(83 - int(ys.min()), int(ys.max()) - 83, 85 - int(xs.min()), int(xs.max()) - 85)
    assert r2 <= segmenter_receptive_radius()
    assert registry.get_method("tdfusion-brats").halo >= radius + r2


def test_crop_with_halo_fuses_like_the_whole_image(brats_runner):
    a, b = _pair(90, 100, seed=3)
    full = brats_runner.fuse(a, b)
    h = fusion_receptive_radius()
    y0, y1, x0, x1 = 30, 60, 40, 70
    part = brats_runner.fuse(a[y0 - h : y1 + h, x0 - h : x1 + h], b[y0 - h : y1 + h, x0 - h : x1 + h])
    np.testing.assert_allclose(part[h:-h, h:-h], full[y0:y1, x0:x1], atol=1e-5)


def test_engine_tiles_give_the_untiled_image_and_labels(monkeypatch):
    """Automatic CPU tiles (no overlap: ``tiles_exact``) reproduce the one-pass image and labels."""
    from napari_fusion.engine import pipeline
    from napari_fusion.engine.tiling import run_aligned

    r = registry.build_runner("tdfusion-brats", device="cpu", cache=False)
    assert r.tiles_exact and r.preferred_tile == 512 and r.halo == 65
    monkeypatch.setattr(TDFusionRunner, "cpu_tile", 48)  # small tiles keep the test fast; same code path
    h, w = 120, 150
    yy, xx = np.mgrid[:h, :w]
    a = (0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.float32)  # structure, so labels vary
    b = np.clip(np.hypot(yy - 60.0, xx - 80.0) < 25, 0, 1).astype(np.float32) * 0.8 + 0.1
    stages = []
    fused, labels = pipeline._drain(pipeline.run_unit_steps(r, a, b, labels=True), lambda p: stages.append(p.stage))
    ref_f, ref_l = run_aligned(r.fuse_and_segment, a, b, pipeline._align(r))
    assert "tiles" in stages
    assert np.abs(fused - ref_f).max() < 1e-4
    assert len(np.unique(ref_l)) > 1 and np.array_equal(labels, ref_l)


def test_bad_inputs_name_the_problem(brats_runner):
    a, b = _pair(30, 40)
    with pytest.raises(ValueError, match="source B is 30x41 but source A is 30x40"):
        brats_runner.fuse(a, np.zeros((30, 41), np.float32))
    bad = a.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="source A contains 1 NaN"):
        brats_runner.fuse(bad, b)
    with pytest.raises(ValueError, match="2-D"):
        brats_runner.fuse(np.zeros((3, 30, 40), np.float32), np.zeros((3, 30, 40), np.float32))


def test_runner_without_segmenter_says_how_to_get_one():
    r = new_runner("ivif")
    assert not r.has_segmenter and r.classes == ()
    with pytest.raises(ValueError, match="fine-tune"):
        r.segment(np.zeros((8, 8), np.float32))


# ---------------------------------------------------------------------------------- losses
def test_intensity_term_minimiser_is_the_weighted_blend():
    a = torch.full((1, 1, 4, 4), 0.2)
    b = torch.full((1, 1, 4, 4), 0.8)
    w = torch.cat([torch.full((1, 1, 4, 4), 0.75), torch.full((1, 1, 4, 4), 0.25)], 1)
    f = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    opt = torch.optim.SGD([f], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        fusion_loss(f, a, b, w, grad_weight=0.0)[0].backward()
        opt.step()
    torch.testing.assert_close(f.detach(), torch.full_like(f, 0.75 * 0.2 + 0.25 * 0.8), atol=1e-4, rtol=0)
    # neutral weights: the loss is the sum of the two MSEs
    neutral = torch.full((1, 2, 4, 4), 0.5)
    li = fusion_loss(torch.full((1, 1, 4, 4), 0.5), a, b, neutral, 0.0)[1]["int"]
    assert float(li) == pytest.approx(0.3**2 + 0.3**2)


def test_weighted_gradient_target_is_the_max_at_neutral_and_follows_the_chosen_source():
    g = torch.Generator().manual_seed(0)
    a, b, f = (torch.rand((2, 1, 16, 16), generator=g) for _ in range(3))
    neutral = torch.full((2, 2, 16, 16), 0.5)
    assert float(gradient_loss(f, a, b, neutral, "weighted")) == pytest.approx(float(gradient_loss(f, a, b)), rel=1e-6)
    # the loss module follows A everywhere: B's texture leaves the target; A itself is then the optimum
    follow_a = torch.cat([torch.ones(2, 1, 16, 16), torch.zeros(2, 1, 16, 16)], 1)
    assert float(gradient_loss(a, a, b, follow_a, "weighted")) == pytest.approx(0.0, abs=1e-7)
    assert float(gradient_loss(a, a, b)) > 0.01  # with the paper's fixed max target, A alone is not
    # the weights get a gradient through the target (the meta step can learn texture too)
    w = follow_a.clone().mul(0.7).add(0.15).requires_grad_(True)
    gradient_loss(f, a, b, w, "weighted").backward()
    assert float(w.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="gradient target"):
        gradient_loss(f, a, b, neutral, "mean")
    with pytest.raises(ValueError, match="needs the intensity weights"):
        gradient_loss(f, a, b, None, "weighted")


def test_task_loss_rejects_labels_outside_the_classes():
    logits = torch.zeros(1, 5, 4, 4)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1, 1] = 7
    with pytest.raises(ValueError, match="values 0..7 but the segmenter has classes 0..4"):
        task_loss(logits, labels)
    labels[0, 1, 1] = IGNORE_INDEX
    assert float(task_loss(logits, labels)) == pytest.approx(np.log(5), rel=1e-6)


# ---------------------------------------------------------------------------------- bi-level step
def _meta_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 1, 32, 32, generator=g)
    b = torch.rand(2, 1, 32, 32, generator=g)
    labels = (a[:, 0] > b[:, 0]).long() + 1  # classes 1/2 depend on which source is brighter
    labels[:, :4] = IGNORE_INDEX
    return a, b, labels


@pytest.mark.parametrize("create_graph", [True, False])
def test_meta_gradient_reaches_loss_module_only_through_the_inner_step(create_graph):
    r = new_runner("brats", seed=1)
    a, b, labels = _meta_batch()
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in r.modules.items()}
    opt = torch.optim.Adam(r.loss_net.parameters(), lr=1e-3)
    out = meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, opt, inner_lr=0.1, create_graph=create_graph)
    head_grad = float(r.loss_net.head1.weight.grad.abs().sum() + r.loss_net.head1.bias.grad.abs().sum())
    if create_graph:
        assert head_grad > 0 and out["meta_grad_norm"] > 0
        changed = any(not torch.equal(t, before["loss"][n]) for n, t in r.loss_net.state_dict().items())
        assert changed, "the loss module must take a step"
    else:  # the bi-level graph is cut: nothing reaches the loss module
        assert head_grad == 0 and out["meta_grad_norm"] == 0
    for k in ("fusion", "seg"):  # the meta step never changes the fusion net or the segmenter
        for n, t in r.modules[k].state_dict().items():
            assert torch.equal(t, before[k][n]), f"{k}.{n} changed in the meta step"
    assert all(p.grad is None for p in r.fusion.parameters())


def test_meta_gradient_matches_finite_differences():
    """d task(theta') / d phi through the inner step, checked numerically on the loss head bias."""
    r = new_runner("brats", seed=2)
    for m in r.modules.values():  # float64, default layout (as the trainer runs it)
        m.double().to(memory_format=torch.contiguous_format)
    a, b, labels = _meta_batch(1)
    a, b = a.double(), b.double()
    with torch.no_grad():
        r.loss_net.head1.weight.normal_(0, 0.1)

    meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, inner_lr=0.5)
    analytic = float(r.loss_net.head1.bias.grad[0])

    def outer(delta: float) -> float:
        from torch.func import functional_call

        with torch.no_grad():
            r.loss_net.head1.bias[0] += delta
        params = dict(r.fusion.named_parameters())
        lf, _ = fusion_loss(functional_call(r.fusion, params, (a, b)), a, b, r.loss_net(a, b))
        grads = torch.autograd.grad(lf, list(params.values()))
        upd = {k: p - 0.5 * g for (k, p), g in zip(params.items(), grads)}
        val = float(task_loss(r.segmenter(functional_call(r.fusion, upd, (a, b))), labels).detach())
        with torch.no_grad():
            r.loss_net.head1.bias[0] -= delta
        return val

    eps = 1e-5
    numeric = (outer(eps) - outer(-eps)) / (2 * eps)
    assert analytic != 0
    assert analytic == pytest.approx(numeric, rel=1e-4, abs=0)


def test_trainer_ivif_keeps_neutral_loss_and_lowers_fusion_loss():
    r = new_runner("ivif", seed=0)
    rng = np.random.default_rng(0)
    pairs = [(rng.random((40, 50), dtype=np.float32), rng.random((40, 50), dtype=np.float32)) for _ in range(2)]
    sampler = PairSampler(pairs, crop=24, seed=0)
    tr = TDFusionTrainer(r, TrainConfig(lr_fusion=3e-3, meta_every=0), "cpu")
    a, b, _ = sampler.batch(4)
    losses = [tr.train_step(a, b)["fusion"] for _ in range(25)]
    assert losses[-1] < 0.8 * losses[0]
    assert float(r.loss_net.head1.weight.abs().sum()) == 0.0  # no labels: the loss module stays neutral


# ---------------------------------------------------------------------------------- data errors
def test_empty_training_data_errors(tmp_path):
    with pytest.raises(ValueError, match="empty training data"):
        PairSampler([], crop=32)
    with pytest.raises(ValueError, match="no BraTS slices"):
        BratsSampler(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)), np.zeros((0, 8, 8), np.int64), crop=8)
    np.savez(tmp_path / "empty.npz", nothing=np.zeros(3))
    with pytest.raises(ValueError, match="holds no image pairs"):
        load_training_data("ivif", tmp_path / "empty.npz")
    with pytest.raises(ValueError, match=r"lacks BraTS arrays \['a', 'b', 'labels'\]"):
        load_training_data("brats", tmp_path / "empty.npz")
    (tmp_path / "pairs" / "ir").mkdir(parents=True)
    (tmp_path / "pairs" / "vi").mkdir()
    with pytest.raises(FileNotFoundError, match="no pairs with the same name"):
        load_training_data("ivif", tmp_path / "pairs")
    with pytest.raises(FileNotFoundError, match="no BraTS cases"):
        load_training_data("brats", tmp_path / "pairs")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_training_data("brats", tmp_path / "missing.npz")


def test_brats_sampler_rejects_out_of_range_training_images():
    a = np.full((2, 16, 16), 3.0, np.float32)
    s = BratsSampler(a, a, np.zeros((2, 16, 16), np.int64), crop=8)
    with pytest.raises(ValueError, match="uint8 or float in \\[0, 1\\]"):
        s.batch(1)


# ---------------------------------------------------------------------------------- model files
def test_save_load_round_trip_is_exact(tmp_path, brats_runner):
    tensors, meta = brats_runner.to_bundle()
    meta["training"] = {"command": "test"}
    path = save_bundle(tmp_path / "m.safetensors", tensors, meta)
    back = registry.runner_from_file(path, device="cpu")
    assert isinstance(back, TDFusionRunner)
    t2, m2 = back.to_bundle()
    assert t2.keys() == tensors.keys()
    for k in tensors:
        assert torch.equal(t2[k], tensors[k]), k
    assert back.classes == brats_runner.classes and m2["training"] == {"command": "test"}
    a, b = _pair(24, 40, seed=5)
    np.testing.assert_array_equal(back.fuse_and_segment(a, b)[1], brats_runner.fuse_and_segment(a, b)[1])
    np.testing.assert_array_equal(back.fuse(a, b), brats_runner.fuse(a, b))


def test_pickle_and_mismatched_files_are_refused(tmp_path, brats_runner):
    pkl = tmp_path / "evil.safetensors"
    torch.save(brats_runner.fusion.state_dict(), pkl)
    with pytest.raises(ModelFileError, match="pickle"):
        registry.runner_from_file(pkl)
    tensors, meta = brats_runner.to_bundle()
    del tensors["fusion.head1.weight"]
    save_bundle(tmp_path / "broken.safetensors", tensors, meta)
    with pytest.raises(ModelFileError, match="does not match the TDFusion architecture"):
        registry.runner_from_file(tmp_path / "broken.safetensors")


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        registry.get_method("tdfusion-brats").build(device="cpu", weights=missing)


def test_methods_are_registered_with_their_outputs():
    td, brats = registry.get_method("tdfusion"), registry.get_method("tdfusion-brats")
    assert td.family == brats.family == "TDFusion" and td.learned and brats.learned
    assert td.outputs == brats.outputs == ("fused", "labels")
    assert td.weights == IVIF_WEIGHTS and brats.weights == BRATS_WEIGHTS
    assert [c.name for c in td.extra["classes"]] == ["background", "person", "bicycle", "car"]
    assert [c.index for c in brats.extra["classes"]] == [0, 1, 2, 3, 4]


def test_make_classes_rejects_duplicates():
    with pytest.raises(ValueError, match="unique"):
        make_classes([(1, "a"), (1, "b")])


# ---------------------------------------------------------------------------------- CLI training
@pytest.fixture(scope="module")
def tiny_brats(tmp_path_factory):
    """3 real BraTS training slices with large tumours, also packed as an npz (as the packer writes)."""
    from napari_fusion.training.data import load_brats_case

    root = shared_data_dir() / "labeled" / "BraTS2015_deepmedic" / "train"
    d = load_brats_case(sorted(p for p in root.iterdir() if p.is_dir())[0])
    tumour = np.flatnonzero((d["labels"] > 0).reshape(len(d["labels"]), -1).sum(1) > 800)
    idx = tumour[np.linspace(0, len(tumour) - 1, 3).round().astype(int)]
    u8 = lambda x: np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)  # noqa: E731
    a, b, lab = u8(d["a"][idx]), u8(d["b"][idx]), d["labels"][idx].astype(np.int64)
    path = tmp_path_factory.mktemp("brats") / "tiny.npz"
    np.savez(path, a=a, b=b, labels=lab.astype(np.uint8))
    return a, b, lab, path


@needs_data
def test_short_real_training_lowers_task_loss(tiny_brats):
    a, b, lab, _ = tiny_brats
    sampler = BratsSampler(a, b, lab, crop=40, seed=0)
    ea, eb, el = sampler.batch(6)  # a fixed evaluation batch of real slices
    r = new_runner("brats", seed=0)
    tr = TDFusionTrainer(r, TrainConfig(lr_fusion=2e-3, lr_seg=3e-3, meta_every=8, meta_start=8), "cpu")

    def eval_loss() -> float:
        with torch.no_grad():
            return float(task_loss(r.segmenter(r.fusion(ea, eb)), el))

    before = eval_loss()
    metas = []
    for _ in range(40):
        row = tr.train_step(*sampler.batch(4))
        if "meta_task" in row:
            metas.append(row["meta_grad_norm"])
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
    assert len(metas) == 4 and all(g > 0 for g in metas)  # the loss module did get meta-gradients


@needs_data
def test_cli_writes_logs_checkpoints_and_resumes_reproducibly(tmp_path, tiny_brats):
    common = ["--task", "brats", "--data", str(tiny_brats[3]), "--device", "cpu", "--crop", "24", "--threads", "1",
              "--batch", "1", "--meta-start", "1", "--log-every", "1", "--eval-slices", "0", "--seed", "3"]
    rec = main(common + ["--out", str(tmp_path / "a.safetensors"), "--steps", "3", "--log", str(tmp_path / "a.log")])
    assert rec["steps"] == 3 and "meta_task" in rec["final_losses"] and rec["data"] == str(tiny_brats[3])
    lines = [json.loads(x) for x in (tmp_path / "a.log").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert (tmp_path / "a.resume.pt").is_file()
    # the same seed gives the same model
    main(common + ["--out", str(tmp_path / "b.safetensors"), "--steps", "3"])
    ta, ma = registry.runner_from_file(tmp_path / "a.safetensors").to_bundle()
    tb, _ = registry.runner_from_file(tmp_path / "b.safetensors").to_bundle()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ma["training"]["command"].startswith("python -m napari_fusion.training.tdfusion --task brats")
    # resume continues from step 3 with the optimiser state
    rec2 = main(common + ["--out", str(tmp_path / "c.safetensors"), "--steps", "4", "--resume", str(tmp_path / "a.safetensors")])
    assert rec2["steps"] == 4 and rec2["resumed_from"]["step"] == 3


# ---------------------------------------------------------------------------------- shipped weights
@needs_data
@_weights(IVIF_WEIGHTS)
def test_shipped_ivif_weights_fuse_a_real_pair():
    from napari_fusion.training.data import load_pair_folder

    root = shared_data_dir() / "ivif" / "MSRS"
    ir, vi = load_pair_folder(root / "ir", root / "vi", limit=1)[0]
    ir, vi = ir[140:300, 200:440], vi[140:300, 200:440]  # a 160x240 window keeps the test fast
    r = registry.build_runner("tdfusion", device="cpu", cache=False)
    fused = r.fuse(ir, vi)
    assert fused.shape == ir.shape and fused.dtype == np.float32 and np.isfinite(fused).all()
    corr = lambda x, y: float(np.corrcoef(x.ravel(), y.ravel())[0, 1])  # noqa: E731
    assert corr(fused, ir) > 0.3 and corr(fused, vi) > 0.3  # both sources show through

    def grad(x):
        return float(np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean())

    assert grad(fused) > grad(0.5 * (ir + vi))  # keeps more detail than averaging
    training = r.meta["training"]
    assert training["steps"] > 0 and "command" in training
    # trained task-driven: the image-space meta step on the weighted-median loss, a centred loss module
    assert training["config"]["meta_mode"] == "image" and training["config"]["intensity"] == "l1"
    assert r.loss_net.centred and r.has_segmenter and [c.name for c in r.classes] == ["background", "person", "bicycle", "car"]


@needs_data
@_weights(IVIF_WEIGHTS)
def test_shipped_ivif_model_finds_the_person_on_a_real_night_test_pair():
    """MSRS 01037N (test split): a group of people on a dark road at night, bright in the infrared;
    ``detect`` must find at least one of them (box IoU >= 0.5). The model's own segmenter is weak
    (CPU-trained; end-to-end mAP in docs/results/ivif_task.md): it misses the woman of 00004N that
    ``multitaskvif-ivif`` finds (tests/test_multitask_ivif.py)."""
    import napari_fusion as nf
    from napari_fusion.boxes import read_yolo
    from napari_fusion.training.data import pair_split

    root = shared_data_dir() / "ivif" / "MSRS"
    assert pair_split(root / "ir")["01037N.png"] == "test"
    truth = [b for b in read_yolo(root / "boxes" / "fusion" / "01037N.txt", (480, 640), n_classes=3) if b.cls == 0]
    found = [b for b in nf.detect(str(root / "ir" / "01037N.png"), str(root / "vi" / "01037N.png"), "tdfusion", device="cpu")
             if b.name == "person"]

    def iou(p, t):
        ix = max(0.0, min(p.x1, t.x1) - max(p.x0, t.x0))
        iy = max(0.0, min(p.y1, t.y1) - max(p.y0, t.y0))
        inter = ix * iy
        return inter / ((p.x1 - p.x0) * (p.y1 - p.y0) + (t.x1 - t.x0) * (t.y1 - t.y0) - inter)

    best = max((iou(p, t) for p in found for t in truth), default=0.0)
    assert best >= 0.5, f"best person box IoU {best:.2f} ({len(found)} person boxes found)"


@needs_data
@_weights(BRATS_WEIGHTS)
def test_shipped_brats_weights_segment_a_real_test_slice():
    from napari_fusion.training.data import load_brats_split

    d = load_brats_split("test")
    z = int(np.argmax((d["labels"] > 0).reshape(len(d["labels"]), -1).sum(1)))  # the largest tumour
    r = registry.build_runner("tdfusion-brats", device="cpu", cache=False)
    fused, labels = r.fuse_and_segment(d["a"][z], d["b"][z])
    assert fused.shape == labels.shape == d["a"][z].shape
    truth = d["labels"][z] > 0
    pred = labels > 0
    dice = 2 * np.logical_and(truth, pred).sum() / (truth.sum() + pred.sum())
    assert dice > 0.5, f"whole-tumour Dice {dice:.3f} on the test slice with the largest tumour"


# ---------------------------------------------------------------------------------- the fixed loop (task issue)
def test_l1_intensity_term_follows_the_heavier_source_not_the_blend():
    """Weighted l1 (TDFusion's form): the per-pixel minimiser is the source with the larger weight,
    so the fused image keeps that source's contrast (the l2 form averages: a washed-out image)."""
    a = torch.full((1, 1, 4, 4), 0.2)
    b = torch.full((1, 1, 4, 4), 0.8)
    w = torch.cat([torch.full((1, 1, 4, 4), 0.7), torch.full((1, 1, 4, 4), 0.3)], 1)
    f = torch.full((1, 1, 4, 4), 0.5, requires_grad=True)
    opt = torch.optim.SGD([f], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        fusion_loss(f, a, b, w, grad_weight=0.0, intensity="l1")[0].backward()
        opt.step()
    assert float((f.detach() - 0.2).abs().max()) < 0.02
    with pytest.raises(ValueError, match="intensity loss kind"):
        fusion_loss(f, a, b, w, intensity="l3")


def test_centred_loss_module_cannot_drift_to_one_source_everywhere():
    torch.manual_seed(0)
    net = LossNet(dim=8, joint_blocks=1, centred=True)
    with torch.no_grad():
        net.head1.bias.copy_(torch.tensor([5.0, -5.0]))  # an uncentred module would say "A everywhere"
        net.head1.weight.normal_(0, 0.5)
    a, b = (torch.from_numpy(x)[None, None] for x in _pair(24, 30))
    with torch.no_grad():
        w = net(a, b)
    torch.testing.assert_close(w.sum(1), torch.ones(1, 24, 30))
    d = torch.logit(w[:, 0]) - torch.logit(w[:, 1])
    assert abs(float(d.mean())) < 1e-4 and float(w[:, 0].std()) > 0.01  # regional, balanced on average
    assert LossNet(centred=True).config["centred"] and "centred" not in LossNet().config


@pytest.mark.parametrize("mode", ["image", "params"])
def test_meta_step_modes_leave_fusion_and_segmenter_alone(mode):
    r = new_runner("brats", seed=1)
    a, b, labels = _meta_batch()
    before = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in r.modules.items() if k != "loss"}
    out = meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, mode=mode, intensity="l1", inner_lr=0.1)
    assert out["meta_grad_norm"] > 0
    for k, state in before.items():
        assert all(torch.equal(t, state[n]) for n, t in r.modules[k].state_dict().items())
    with pytest.raises(ValueError, match="meta mode"):
        meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, mode="implicit")


def test_image_meta_gradient_matches_finite_differences():
    """The image-space inner step: d task(F') / d phi checked numerically on the loss head's weights."""
    r = new_runner("brats", seed=4)
    for m in r.modules.values():
        m.double().to(memory_format=torch.contiguous_format)
    a, b, labels = _meta_batch(2)
    a, b = a.double(), b.double()
    with torch.no_grad():
        r.loss_net.head1.weight.normal_(0, 0.1)
    meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, mode="image", image_step=0.05, intensity="l2")
    analytic = float(r.loss_net.head1.weight.grad[0, 0, 1, 1])

    def outer(delta: float) -> float:
        with torch.no_grad():
            r.loss_net.head1.weight[0, 0, 1, 1] += delta
            fused = r.fusion(a, b)
        f = fused.clone().requires_grad_(True)
        lf, _ = fusion_loss(f, a, b, r.loss_net(a, b), 1.0, "l2")
        (g,) = torch.autograd.grad(lf, f, create_graph=True)
        # the step size is normalised by a constant (detached) scale, as meta_step does
        with torch.no_grad():
            r.loss_net.head1.weight[0, 0, 1, 1] -= delta
        return g, fused

    g0, fused = outer(0.0)
    scale = g0.detach().abs().mean()

    def task_at(delta: float) -> float:
        g, _ = outer(delta)
        with torch.no_grad():
            f2 = (fused - 0.05 * g / scale).clamp(0, 1)
            return float(task_loss(r.segmenter(f2), labels))

    eps = 1e-5
    numeric = (task_at(eps) - task_at(-eps)) / (2 * eps)
    assert analytic != 0
    assert analytic == pytest.approx(numeric, rel=1e-3, abs=1e-10)


def test_half_resolution_fusion_net_tiles_exactly_and_is_its_halo():
    torch.manual_seed(0)
    net = FusionNet(down=2, dec_blocks=2).eval()
    assert net.pad_multiple == 2 and net.config["down"] == 2
    s = 96
    xa = torch.rand(1, 1, s, s, requires_grad=True)
    xb = torch.rand(1, 1, s, s, requires_grad=True)
    net(xa, xb)[0, 0, s // 2, s // 2].backward()
    ys, xs = torch.nonzero((xa.grad.abs() + xb.grad.abs())[0, 0] > 0, as_tuple=True)
    radius = max(s // 2 - int(ys.min()), int(ys.max()) - s // 2, s // 2 - int(xs.min()), int(xs.max()) - s // 2)
    assert radius <= net.receptive_radius
    r = TDFusionRunner(net, LossNet())
    a, b = _pair(100, 120, seed=5)
    full = r.fuse(a, b)
    h = net.receptive_radius + 1
    h += h % 2  # even offsets: the same stride phase as the whole image
    y0, y1, x0, x1 = 40, 60, 44, 70
    part = r.fuse(a[y0 - h : y1 + h, x0 - h : x1 + h], b[y0 - h : y1 + h, x0 - h : x1 + h])
    np.testing.assert_allclose(part[h:-h, h:-h], full[y0:y1, x0:x1], atol=1e-5)
    with pytest.raises(ValueError, match="down must be 1 or 2"):
        FusionNet(down=3)


def test_pair_sampler_with_box_labels_centres_crops_on_objects():
    rng = np.random.default_rng(0)
    a = rng.random((60, 80), dtype=np.float32)
    lab = np.zeros((60, 80), np.int64)
    lab[40:46, 60:66] = 3
    lab[38:40, 58:68] = IGNORE_INDEX
    s = PairSampler([(a, a), (a, a)], crop=24, seed=0, labels=[lab, None], object_fraction=1.0)
    A, B, L = s.batch(8)
    assert L.shape == (8, 24, 24) and A.shape == (8, 1, 24, 24)
    assert all(bool((L[i] == 3).any()) for i in range(8))  # every crop shows the object
    s2 = PairSampler([(a, a), (a, a)], crop=24, seed=0, labels=[lab, None], object_fraction=0.0)
    counts = s2.class_counts(4)
    assert counts[3] == 36 and counts[0] == 60 * 80 - 36 - 20
    got = {bool((L_ == IGNORE_INDEX).all()) for L_ in s2.batch(16)[2]}
    assert got == {True, False}  # the unlabelled pair gives only ignored pixels
    with pytest.raises(ValueError, match="labels of shape"):
        PairSampler([(a, a)], crop=24, labels=[lab[:10]])


@needs_data
def test_meta_step_gives_the_loss_module_a_real_signal_on_msrs():
    """On a real MSRS batch with its box labels, the image-space meta step reaches the loss module
    with a gradient that is not negligible (and exactly nothing when the bi-level graph is cut)."""
    from napari_fusion.training.data import box_labels
    from napari_fusion.training.data import read_gray_unit

    root = shared_data_dir() / "ivif" / "MSRS"
    name = "00004N.png"
    ir, vi = read_gray_unit(root / "ir" / name), read_gray_unit(root / "vi" / name)
    lab = box_labels(root / "boxes" / "fusion" / "00004N.txt", ir.shape)
    assert set(np.unique(lab)) >= {0, 1}
    s = PairSampler([(ir, vi)], crop=64, seed=0, labels=[lab], object_fraction=1.0)
    a, b, labels = s.batch(2)
    r = new_runner("ivif", seed=0, labelled=True, fusion_config={"down": 2, "dec_blocks": 2},
                   loss_config={"dim": 8, "joint_blocks": 2, "centred": True})
    norms, tasks = {}, []
    for graph in (True, False):
        out = meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, mode="image", intensity="l1", create_graph=graph)
        norms[graph] = out["meta_grad_norm"]
    assert norms[False] == 0.0
    # the signal is real: a small step of the loss module along it lowers the task loss after the
    # inner step on this batch (a gradient of noise would not)
    for _ in range(3):
        out = meta_step(r.fusion, r.loss_net, r.segmenter, a, b, labels, None, mode="image", intensity="l1")
        tasks.append(out["meta_task"])
        assert out["meta_grad_norm"] > 1e-5, out
        with torch.no_grad():
            g = torch.cat([p.grad.ravel() for p in r.loss_net.parameters()])
            for p in r.loss_net.parameters():
                p -= 0.5 * p.grad / g.norm()
    assert tasks[-1] < tasks[0], tasks


def test_max_term_pulls_the_fused_image_towards_the_brighter_source():
    """``max_weight``: the fixed l1 term towards max(A, B) is 0 on max(A, B) itself and raises the
    loss of a blend; a fusion net trained with it ends brighter than one trained without."""
    import torch

    from napari_fusion.methods.tdfusion import FusionNet, LossNet
    from napari_fusion.training.losses import fusion_loss
    from napari_fusion.training.tdfusion import fusion_step

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    w = torch.full((2, 2, 32, 32), 0.5)
    top = torch.maximum(a, b)
    _, parts = fusion_loss(top, a, b, w, 1.0, "l1", max_weight=1.0)
    assert float(parts["max"]) == 0.0
    lf_blend, parts = fusion_loss((a + b) / 2, a, b, w, 1.0, "l1", max_weight=1.0)
    assert float(parts["max"]) > 0.1 and "max" not in fusion_loss((a + b) / 2, a, b, w, 1.0, "l1")[1]
    means = []
    for mw in (0.0, 2.0):
        torch.manual_seed(0)
        net, loss_net = FusionNet(down=2), LossNet(centred=True)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(40):
            fusion_step(net, loss_net, a, b, opt, intensity="l1", max_weight=mw)
        with torch.no_grad():
            means.append(float(net(a, b).mean()))
    assert means[1] > means[0] + 0.03, means
