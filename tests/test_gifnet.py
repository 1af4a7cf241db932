"""GIFNet: network and runner contracts, synthesised tasks, training, CLI, shipped weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_fusion.methods import registry
from napari_fusion.methods.gifnet import FAMILY, WEIGHTS, GIFNet, GIFNetRunner, load_runner, receptive_radius
from napari_fusion.methods.store import ModelFileError, read_metadata, save_bundle
from napari_fusion.training import synth
from napari_fusion.training.data import pack_dataset, shared_data_dir
from napari_fusion.training.gifnet import GIFNetTrainer, lr_at, main, new_runner, ssim
from napari_fusion.training.gifnet_data import TASKS, GIFNetData, TaskSampler, load_gifnet_data

torch.set_num_threads(1)  # shared 2-core machine: one thread per test process
needs_data = pytest.mark.skipif(shared_data_dir() is None, reason="needs ../shared/data")
SHIPPED = registry.WEIGHTS_DIR / WEIGHTS
needs_weights = pytest.mark.skipif(not SHIPPED.is_file(), reason=f"shipped weights {WEIGHTS} not trained yet")


@pytest.fixture(scope="module")
def fresh() -> GIFNetRunner:
    """A freshly initialised (seeded) GIFNet runner on the CPU."""
    return new_runner(seed=0)


@pytest.fixture(scope="module")
def scrambled(fresh) -> GIFNetRunner:
    """A runner with random weights everywhere (a fresh net's zero-initialised projections hide context)."""
    r = fresh.copy()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in r.net.parameters():
            p.normal_(0.0, 0.3)
    return r


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    x = 0.5 + 0.25 * np.sin(xx / 5.0 + seed) * np.cos(yy / 7.0) + 0.1 * rng.standard_normal((h, w))
    return np.clip(x, 0, 1).astype(np.float32)


def _small_data(n: int = 4) -> GIFNetData:
    """Synthetic material in the packed layout's types (uint8), for CLI/sampler tests without data."""
    ivif = [((_textured(70, 90, i) * 255).astype(np.uint8), (_textured(70, 90, i + 50) * 255).astype(np.uint8)) for i in range(n)]
    med = [((_textured(64, 64, i + 7) * 200).astype(np.uint8), (_textured(64, 64, i + 9) * 255).astype(np.uint8)) for i in range(n)]
    gray = [(_textured(80, 80, i + 20) * 255).astype(np.uint8) for i in range(n)]
    return GIFNetData(ivif, med, gray, "synthetic")


# ---------------------------------------------------------------------------------- network
def test_network_is_small_and_registered():
    m = registry.get_method("gifnet")
    assert m.family == FAMILY == "GIFNet"
    assert m.outputs == ("fused",) and m.learned and not m.segments
    assert m.weights == WEIGHTS
    assert m.halo == receptive_radius() == GIFNet().receptive_radius
    n = GIFNetRunner(GIFNet()).n_parameters
    # a few hundred k at most (the authors' model has 822,780): ours is an order of magnitude smaller
    assert 20_000 <= n <= 150_000


@pytest.mark.parametrize("shape", [(37, 53), (256, 320), (1, 1), (3, 130)])
def test_any_size_gives_unit_float32_of_that_size(fresh, shape):
    a, b = _textured(*shape, seed=1), _textured(*shape, seed=2)
    out = fresh.fuse(a, b)
    assert out.shape == shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    e = fresh.enhance(a)
    assert e.shape == shape and e.dtype == np.float32 and 0.0 <= e.min() and e.max() <= 1.0


def test_rejects_bad_inputs_with_clear_errors(fresh):
    a = _textured(20, 30)
    with pytest.raises(ValueError, match="source B is 20x31 but source A is 20x30"):
        fresh.fuse(a, _textured(20, 31))
    with pytest.raises(ValueError, match="2-D"):
        fresh.fuse(np.stack([a, a], -1), np.stack([a, a], -1))
    bad = a.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fresh.fuse(a, bad)
    with pytest.raises(ValueError, match="unknown GIFNet branch"):
        fresh.net(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), "segmentation")


def test_receptive_field_is_finite_and_within_the_halo(scrambled):
    """Changing one input pixel changes the output only within ``halo`` pixels (what exact tiling needs)."""
    fresh = scrambled
    a, b = _textured(96, 96, 3), _textured(96, 96, 4)
    base = fresh.fuse(a, b)
    a2 = a.copy()
    a2[48, 48] = 1.0 - a2[48, 48]
    diff = np.abs(fresh.fuse(a2, b) - base) > 1e-7
    ys, xs = np.nonzero(diff)
    assert len(ys) > 0, "the output must depend on the input"
    reach = max(np.abs(ys - 48).max(), np.abs(xs - 48).max())
    assert reach <= fresh.halo
    assert reach >= fresh.halo // 3  # the halo is not a gross over-estimate either


def test_tiled_equals_untiled(scrambled):
    fresh = scrambled
    from napari_fusion.engine.tiling import fuse_tiled, run_aligned

    a, b = _textured(150, 171, 5), _textured(150, 171, 6)
    whole = run_aligned(fresh.fuse, a, b, align=fresh.pad_multiple)  # the engine's untiled call
    tiled = fuse_tiled(fresh, a, b, tile=96, overlap=16, align=fresh.pad_multiple)
    assert np.abs(tiled - whole).max() < 1e-4


@needs_weights
def test_engine_tiles_large_cpu_planes_exactly(monkeypatch):
    """Planes above the preferred tile go through halo'd tiles without overlap; same result as one pass.

    Trained weights, not scrambled ones: a net with N(0, 0.3) weights everywhere has activations so
    large that float rounding differences between tile and whole-image kernels flip a few outputs.
    """
    from napari_fusion.engine import pipeline
    from napari_fusion.engine.tiling import run_aligned

    r = load_runner(SHIPPED)
    assert GIFNetRunner.cpu_tile == 512 and r.tiles_exact and r.preferred_tile == 512
    monkeypatch.setattr(r, "cpu_tile", 64)  # small tiles keep the test fast; same code path
    a, b = _textured(150, 171, 7), _textured(150, 171, 8)
    stages, calls, overlaps = [], [], []
    real_fuse, real_tiled = r.fuse, pipeline.fuse_tiled_steps
    monkeypatch.setattr(r, "fuse", lambda x, y: calls.append(x.shape) or real_fuse(x, y))
    monkeypatch.setattr(pipeline, "fuse_tiled_steps", lambda *a_, **k: overlaps.append(a_[4]) or real_tiled(*a_, **k))
    gen = pipeline.run_unit_steps(r, a, b)
    fused = pipeline._drain(gen, lambda p: stages.append(p.stage))
    whole = run_aligned(real_fuse, a, b, align=pipeline._align(r))  # the engine's untiled call
    assert set(stages) == {"tiles"} and len(calls) == 3 * 3  # ceil(150/64) x ceil(171/64)
    assert overlaps == [0]  # exact tiles: no blended overlap
    assert np.abs(fused[0] - whole).max() < 1e-4
    # an explicit tile keeps the caller's overlap; off the CPU there is no preference
    overlaps.clear()
    pipeline._drain(pipeline.run_unit_steps(r, a, b, tile=100, overlap=16), None)
    assert overlaps == [16]
    monkeypatch.setattr(r, "_device", torch.device("cuda"))
    assert r.preferred_tile is None


def test_fuse_unit_is_one_pass_below_the_preferred_tile(fresh):
    from napari_fusion.engine.pipeline import _align, fuse_unit
    from napari_fusion.engine.tiling import run_aligned

    a, b = _textured(200, 230, 1), _textured(200, 230, 2)
    np.testing.assert_allclose(fuse_unit(fresh, a, b), run_aligned(fresh.fuse, a, b, _align(fresh)), atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        fuse_unit(fresh, a, b[:, :-1])
    with pytest.raises(ValueError, match="2-D"):
        fuse_unit(fresh, a[None], b[None])


def test_bundle_round_trip_and_family_loader(fresh, tmp_path):
    tensors, meta = fresh.to_bundle()
    assert meta["family"] == FAMILY and meta["halo"] == fresh.halo and meta["n_parameters"] == fresh.n_parameters
    path = save_bundle(tmp_path / "g.safetensors", tensors, meta | {"training": {"steps": 0}})
    back = registry.runner_from_file(path)
    assert isinstance(back, GIFNetRunner)
    a, b = _textured(40, 44, 1), _textured(40, 44, 2)
    np.testing.assert_array_equal(back.fuse(a, b), fresh.fuse(a, b))
    assert read_metadata(path)["training"] == {"steps": 0}
    # a model file of another family is refused by the GIFNet loader with a clear message
    other = save_bundle(tmp_path / "o.safetensors", {"w": torch.zeros(1)}, {"family": "TDFusion"})
    with pytest.raises(ModelFileError, match="not a GIFNet"):
        load_runner(other)
    # tensors that do not fit the architecture
    bad = save_bundle(tmp_path / "b.safetensors", {k: v for k, v in list(tensors.items())[1:]}, meta)
    with pytest.raises(ModelFileError, match="does not match the GIFNet architecture"):
        load_runner(bad)


def test_copy_is_independent(fresh):
    c = fresh.copy()
    with torch.no_grad():
        next(c.net.parameters()).add_(1.0)
    a, b = _textured(16, 16, 1), _textured(16, 16, 2)
    assert not np.array_equal(c.fuse(a, b), fresh.fuse(a, b))


# ---------------------------------------------------------------------------------- synthesis
def test_gaussian_blur_matches_scipy_and_keeps_the_mean():
    from scipy import ndimage

    x = torch.from_numpy(_textured(40, 50, 3))[None, None]
    for s in (0.8, 2.5):
        ours = synth.gaussian_blur(x, s)[0, 0].numpy()
        ref = ndimage.gaussian_filter(x[0, 0].numpy(), s, mode="mirror", truncate=3.0)
        assert np.abs(ours - ref).max() < 2e-3
        assert abs(float(ours.mean()) - float(x.mean())) < 2e-3
    # per-image sigmas: a batch blurred with (1, 3) equals each blurred alone
    xb = torch.cat([x, x])
    both = synth.gaussian_blur(xb, torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(both[1:], synth.gaussian_blur(x, 3.0), atol=1e-5, rtol=0)


def test_multi_focus_pairs_are_complementary():
    g = torch.Generator().manual_seed(0)
    sharp = torch.from_numpy(np.stack([_textured(64, 64, i) for i in range(6)]))[:, None]
    a, b, t = synth.multi_focus(sharp, g, sigma=(2.0, 3.0))
    assert torch.equal(t, sharp)
    blurred_err = (a - t).abs().mean((1, 2, 3)), (b - t).abs().mean((1, 2, 3))
    # each input is sharp (= target) on part of the image and blurred elsewhere, in complementary places
    sharp_a = (a - t).abs() < 1e-3
    sharp_b = (b - t).abs() < 1e-3
    frac_a = sharp_a.float().mean((1, 2, 3))
    assert torch.all(frac_a > 0.05) and torch.all(frac_a < 0.95)
    assert float((sharp_a & sharp_b).float().mean()) < 0.1  # mostly not sharp in both at once
    assert torch.all(blurred_err[0] > 0.005) and torch.all(blurred_err[1] > 0.005)
    # a + b = sharp + blurred everywhere: what is not sharp is a smoothed copy of the image
    blurred = a + b - t
    energy = lambda x: (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean((1, 2, 3))  # noqa: E731
    assert torch.all(energy(blurred) < 0.5 * energy(t))
    torch.testing.assert_close(blurred.mean((1, 2, 3)), t.mean((1, 2, 3)), atol=2e-3, rtol=0)


def test_masks_cover_about_half_and_stay_in_unit_range():
    g = torch.Generator().manual_seed(1)
    m = synth.smooth_masks(32, 48, 64, g)
    assert m.shape == (32, 1, 48, 64) and float(m.min()) >= 0 and float(m.max()) <= 1
    frac = m.mean((1, 2, 3))
    assert 0.3 < float(frac.mean()) < 0.7


def test_multi_exposure_pairs_bracket_the_target():
    g = torch.Generator().manual_seed(2)
    img = torch.from_numpy(np.stack([_textured(32, 32, i) for i in range(64)]))[:, None]
    a, b, t = synth.multi_exposure(img, g, both_bad=0.0, noise=0.0)
    assert torch.equal(t, img)
    lo = torch.minimum(a.mean((1, 2, 3)), b.mean((1, 2, 3)))
    hi = torch.maximum(a.mean((1, 2, 3)), b.mean((1, 2, 3)))
    tm = t.mean((1, 2, 3))
    assert torch.all(lo < tm) and torch.all(hi > tm)  # one darker, one brighter than the target
    a2, b2, _ = synth.multi_exposure(img, torch.Generator().manual_seed(2), both_bad=1.0, noise=0.0)
    same_side = (a2.mean((1, 2, 3)) - tm).sign() == (b2.mean((1, 2, 3)) - tm).sign()
    assert bool(same_side.all())  # both badly exposed on the same side (single-image correction)


def test_well_exposed_filter():
    assert synth.is_well_exposed(_textured(64, 64))
    assert not synth.is_well_exposed(np.full((16, 16), 0.1, np.float32))  # dark
    assert not synth.is_well_exposed(np.full((16, 16), 128, np.uint8))  # flat


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    x = torch.from_numpy(_textured(48, 48))[None, None]
    assert abs(float(ssim(x, x)) - 1.0) < 1e-5
    assert float(ssim(x, (x + 0.2 * torch.rand_like(x)).clamp(0, 1))) < 0.9


# ---------------------------------------------------------------------------------- training
def test_lr_schedule_warms_up_and_anneals():
    assert lr_at(0.0, 1.0) < 0.1 and lr_at(0.02, 1.0) == pytest.approx(1.0)
    assert lr_at(0.51, 1.0) == pytest.approx(0.525, abs=1e-6)  # half-way through the cosine
    assert lr_at(1.0, 1.0) == pytest.approx(0.05) and lr_at(2.0, 1.0) == pytest.approx(0.05)


def test_sampler_gives_task_batches_and_is_seeded():
    d = _small_data()
    s1, s2 = TaskSampler(d, 32, seed=3), TaskSampler(d, 32, seed=3)
    for task in TASKS:
        x1, x2 = s1.batch(task, 3), s2.batch(task, 3)
        assert len(x1) == (2 if task == "fusion" else 1)
        assert x1[0].shape == (3, 1, 32, 32) and x1[0].dtype == torch.float32
        for u, v in zip(x1, x2):
            assert torch.equal(u, v)
    with pytest.raises(ValueError, match="even"):
        TaskSampler(d, 33)
    with pytest.raises(ValueError, match="no registered pairs"):
        TaskSampler(GIFNetData([], [], d.gray, "x"), 32)


def _real_data() -> GIFNetData:
    return load_gifnet_data("auto", limit=3, pan=False)


@needs_data
def test_short_real_training_lowers_each_task_loss():
    """A few optimiser steps on real images lower the fusion, multi-focus, multi-exposure and
    reconstruction losses (evaluated on the same fixed, freshly synthesised batches)."""
    torch.manual_seed(0)
    data = _real_data()
    sampler = TaskSampler(data, 32, seed=0)
    batches = {k: sampler.batch(k, 3) for k in TASKS}
    trainer = GIFNetTrainer(new_runner(seed=0), lr=3e-3, seed=0)
    before = trainer.evaluate(batches)
    for _ in range(25):
        trainer.train_step(batches)
    after = trainer.evaluate(batches)
    for task in TASKS:
        assert after[task] < 0.9 * before[task], f"{task}: {before[task]:.4f} -> {after[task]:.4f}"


def test_cli_trains_checkpoints_resumes_and_is_reproducible(tmp_path):
    data = pack_dataset(tmp_path / "g.npz", **_small_data().to_arrays())
    common = ["--data", str(data), "--device", "cpu", "--batch", "2", "--crop", "32", "--seed", "5", "--log-every", "1", "--threads", "2"]
    rec = main(common + ["--out", str(tmp_path / "full.safetensors"), "--steps", "4", "--log", str(tmp_path / "log.jsonl")])
    assert rec["steps"] == 4 and set(TASKS) <= set(rec["final_losses"])
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    meta = read_metadata(tmp_path / "full.safetensors")
    assert meta["family"] == FAMILY and meta["training"]["seed"] == 5 and "--steps 4" in meta["training"]["command"]
    # the same run again gives the same weights (seeded, CPU)
    main(common + ["--out", str(tmp_path / "again.safetensors"), "--steps", "4"])
    # 2 steps, then resumed for 2 more, gives the same weights as 4 at once
    main(common + ["--out", str(tmp_path / "half.safetensors"), "--steps", "2", "--schedule-steps", "4"])
    main(common + ["--out", str(tmp_path / "half.safetensors"), "--steps", "4", "--resume", str(tmp_path / "half.safetensors")])
    full, again, resumed = (load_runner(tmp_path / f"{n}.safetensors") for n in ("full", "again", "half"))
    for other in (again, resumed):
        for (k, p), q in zip(full.net.state_dict().items(), other.net.state_dict().values()):
            assert torch.equal(p, q), k
    assert read_metadata(tmp_path / "half.safetensors")["training"]["resumed_from"]["step"] == 2


def test_cli_time_budget_and_bad_data(tmp_path):
    data = pack_dataset(tmp_path / "g.npz", **_small_data().to_arrays())
    rec = main(["--data", str(data), "--out", str(tmp_path / "m.safetensors"), "--device", "cpu", "--batch", "2",
                "--crop", "32", "--steps", "1000", "--time-budget", "0.5", "--threads", "2"])
    assert 1 <= rec["steps"] < 1000
    assert (tmp_path / "m.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gifnet_data(tmp_path / "missing.npz")
    empty = pack_dataset(tmp_path / "e.npz", other=np.zeros(3))
    with pytest.raises(ValueError, match="no GIFNet arrays"):
        load_gifnet_data(empty)


def test_packed_round_trip(tmp_path):
    d = _small_data(2)
    back = load_gifnet_data(pack_dataset(tmp_path / "p.npz", **d.to_arrays()))
    assert len(back.ivif) == 2 and len(back.med) == 2 and len(back.gray) == 2
    np.testing.assert_array_equal(back.ivif[1][0], d.ivif[1][0])


# ---------------------------------------------------------------------------------- shipped weights
def _held_out(folder: str, sa: str, sb: str, n: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    from napari_fusion.training.data import read_gray_unit

    root = shared_data_dir()
    fa, fb = root / folder / sa, root / folder / sb
    from napari_fusion.training.data import pair_split

    held = [nm for nm, part in pair_split(fa).items() if part == "test" and (fb / nm).exists()][:n]
    return [(read_gray_unit(fa / nm), read_gray_unit(fb / nm)) for nm in held]


@needs_data
@needs_weights
@pytest.mark.parametrize(
    "folder,sa,sb",
    [("ivif/RoadScene", "ir", "vi"), ("medical/MRI_CT", "MRI", "CT"), ("medical/MRI_PET", "MRI", "PET")],
)
def test_shipped_weights_beat_average_on_qabf(folder, sa, sb):
    from napari_fusion.metrics import qabf

    runner = registry.build_runner("gifnet", device="cpu")
    q_g, q_avg = [], []
    for a, b in _held_out(folder, sa, sb):
        to255 = lambda x: np.clip(np.rint(x * 255.0), 0, 255)  # noqa: E731
        fused = runner.fuse(a, b)
        q_g.append(qabf(to255(fused), to255(a), to255(b)))
        q_avg.append(qabf(to255(0.5 * (a + b)), to255(a), to255(b)))
    assert np.mean(q_g) > np.mean(q_avg) + 0.05, (folder, q_g, q_avg)


@needs_weights
def test_shipped_weights_metadata_records_the_training():
    meta = read_metadata(SHIPPED)
    t = meta["training"]
    assert t["command"].startswith("python -m napari_fusion.training.gifnet")
    assert t["steps"] > 0 and "seed" in t and "final_losses" in t and "seconds" in t
    assert SHIPPED.stat().st_size < 5_000_000


@needs_weights
def test_enhancement_changes_the_image_but_keeps_its_shape():
    runner = registry.build_runner("gifnet", device="cpu")
    x = _textured(61, 80, 9) * 0.5 + 0.1  # a dull, low-contrast image
    e = runner.enhance(x)
    assert e.shape == x.shape and e.dtype == np.float32
    assert np.abs(e - x).mean() > 0.01
    # structure is kept: enhanced and input are strongly correlated
    assert np.corrcoef(e.ravel(), x.ravel())[0, 1] > 0.8
