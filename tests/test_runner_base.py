"""The Runner base class: every runner of the package is one, and a user's object or function still
goes wherever a method goes (adapted once by ``as_runner``)."""
from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

import napari_fusion as nf
from napari_fusion.color import InputIntensity
from napari_fusion.engine.pipeline import fuse_arrays, halo_of, resolve_runner, segments_of
from napari_fusion.methods.registry import ClassInfo, Method, get_method, list_methods
from napari_fusion.methods.runner import FunctionRunner, Runner, WrappedRunner, as_runner

TWO = (ClassInfo(0, "dark", "#000000"), ClassInfo(1, "bright", "#ffffff"))


def _pair(shape=(48, 64)):
    rng = np.random.default_rng(0)
    return rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


def _pair8():
    return tuple(np.round(x * 255).astype(np.uint8) for x in _pair())  # 8-bit: unit = value / 255


def _installed(name: str) -> Method:
    m = get_method(name)
    if m.weights_path is not None and not m.weights_path.is_file():
        pytest.skip(f"weights of {name!r} are not installed")
    return m


@pytest.mark.parametrize("name", [m.name for m in list_methods()])
def test_every_registered_runner_is_a_runner_with_sane_traits(name):
    m = _installed(name)
    r, rname, rm = resolve_runner(name, "cpu")
    assert isinstance(r, Runner) and rm is m and rname == m.name
    assert r.name == m.name and r.family == m.family
    assert isinstance(r.halo, int) and r.halo >= 0  # every registry runner declares its halo
    assert isinstance(r.pad_multiple, int) and r.pad_multiple >= 1
    assert r.preferred_tile is None or (isinstance(r.preferred_tile, int) and r.preferred_tile >= 64)
    assert isinstance(r.tiles_exact, bool)
    assert isinstance(r.classes, tuple) and all(isinstance(c, ClassInfo) for c in r.classes)
    assert r.segments == m.segments == segments_of(r, m)
    assert r.input_intensity is None or isinstance(r.input_intensity, InputIntensity)
    assert isinstance(r.meta, dict)
    a, b = _pair()
    f = r.fuse(a, b)
    assert f.shape == a.shape and f.dtype == np.float32 and 0.0 <= f.min() and f.max() <= 1.0
    if r.segments:
        f2, lab = r.fuse_and_segment(a, b)
        assert lab.shape == a.shape and set(np.unique(lab)) <= {c.index for c in r.classes}


@pytest.mark.parametrize("name, segments", [("average", False), ("gifnet", False), ("tdfusion-brats", True), ("multitaskvif", True)])
def test_segments_of_shipped_methods(name, segments):
    _installed(name)
    r, _, _ = resolve_runner(name, "cpu")
    assert r.segments is segments


def test_method_has_no_preprocessing_field():
    assert "preprocessing" not in {f.name for f in dataclasses.fields(Method)}


# ------------------------------------------------------------------------ a user's own objects
class _OnlyFuse:
    def fuse(self, a, b):
        return np.maximum(a, b)


def _mean(a, b):
    return 0.5 * (a + b)


def test_duck_typed_object_and_plain_function_fuse_through_the_api():
    a8, b8 = _pair8()
    res = nf.fuse(a8, b8, _OnlyFuse(), full=True)
    assert res.method == "_OnlyFuse" and res.labels is None
    np.testing.assert_array_equal(res.fused, np.maximum(a8, b8))
    res = nf.fuse(a8, b8, _mean, full=True)
    assert res.method == "_mean"
    np.testing.assert_allclose(res.fused.astype(float), (a8.astype(float) + b8) / 2, atol=1)
    # the registered function's result equals the user's function's
    np.testing.assert_array_equal(nf.fuse(a8, b8, "average"), res.fused)


def test_adapter_defaults_and_what_it_reads():
    r = as_runner(_OnlyFuse())
    assert isinstance(r, Runner) and as_runner(r) is r
    assert (r.name, r.family, r.halo, r.pad_multiple, r.preferred_tile, r.tiles_exact, r.classes) == (
        "_OnlyFuse", None, None, 1, None, False, ())
    assert not r.segments and not r.can_segment and r.input_intensity is None
    assert halo_of(r, None) == 32  # not declared: the engine's default context

    class Declares(_OnlyFuse):
        name, halo, pad_multiple, preferred_tile, tiles_exact = "mine", 5, 4, 256, True
        meta = {"input_intensity": {"percentiles": [1, 99]}}

        def extra(self):
            return "passed through"

    d = as_runner(Declares())
    assert (d.name, d.halo, d.pad_multiple, d.preferred_tile, d.tiles_exact) == ("mine", 5, 4, 256, True)
    assert d.input_intensity == InputIntensity((1.0, 99.0)) and d.extra() == "passed through"
    f = as_runner(_mean)
    assert isinstance(f, FunctionRunner) and f.name == "_mean" and not f.segments
    with pytest.raises(TypeError, match="expected a runner"):
        as_runner(42)
    with pytest.raises(TypeError, match="registered name, a Method, a runner or a function"):
        resolve_runner(42)


def test_adapted_object_pickles():
    r = pickle.loads(pickle.dumps(as_runner(_OnlyFuse())))
    a, b = _pair()
    np.testing.assert_array_equal(r.fuse(a, b), np.maximum(a, b))


class _UserSeg:
    name = "user-seg"
    classes = TWO

    def fuse(self, a, b):
        return np.maximum(a, b)

    def segment(self, fused, a=None, b=None):
        return (fused > 0.5).astype(np.int32)


def test_user_object_with_segment_and_classes_segments():
    a, b = _pair8()
    r = as_runner(_UserSeg())
    assert r.segments and r.classes == TWO
    lab = nf.segment(a, b, _UserSeg())
    np.testing.assert_array_equal(lab, (np.maximum(a, b) / 255.0 > 0.5).astype(np.int32))
    np.testing.assert_array_equal(nf.segment(a, method=_UserSeg()), (a / 255.0 > 0.5).astype(np.int32))
    res = fuse_arrays(a, b, _UserSeg(), tile=32)  # tiled: the labels come tile by tile
    assert res.classes == TWO and res.labels.shape == a.shape

    class NoClasses(_UserSeg):
        classes = ()

    class NoSegment(_OnlyFuse):
        classes = TWO

    assert as_runner(NoClasses()).can_segment and not as_runner(NoClasses()).segments
    assert not as_runner(NoSegment()).segments
    with pytest.raises(ValueError, match="does not segment"):
        nf.segment(a, b, NoSegment())


# ------------------------------------------------------------------------ subclasses of Runner
class _Max(Runner):
    name = "max-sub"

    def fuse(self, a, b):
        return np.maximum(a, b)


class _MaxSeg(_Max):
    classes = TWO

    def segment(self, fused, a=None, b=None):
        return (fused > 0.5).astype(np.int32)


def test_runner_defaults_and_default_calls():
    a, b = _pair()
    r = _Max()
    assert (r.family, r.halo, r.pad_multiple, r.preferred_tile, r.tiles_exact, r.classes, r.meta) == (None, None, 1, None, False, (), {})
    assert r.meta is r.meta and _Max().meta is not r.meta  # one dict per runner
    assert not r.can_segment and not r.segments
    np.testing.assert_array_equal(r.enhance(a), a)  # fused with itself
    with pytest.raises(TypeError, match="does not segment"):
        r.fuse_and_segment(a, b)
    s = _MaxSeg()
    assert s.can_segment and s.segments
    f, lab = s.fuse_and_segment(a, b)  # the default: fuse, then segment
    np.testing.assert_array_equal(lab, (np.maximum(a, b) > 0.5).astype(np.int32))
    res = nf.fuse(a, b, s, full=True)
    assert res.method == "max-sub" and res.classes == TWO and res.labels is not None
    with pytest.raises(NotImplementedError):
        Runner().fuse(a, b)


def test_wrapped_runner_copies_traits_once():
    inner = _MaxSeg()
    inner.halo, inner.meta = 7, {"input_intensity": {"percentiles": [2, 98]}}
    w = WrappedRunner(inner, name="renamed", classes=())
    assert (w.name, w.halo, w.classes, w.inner) == ("renamed", 7, (), inner)
    assert w.input_intensity == InputIntensity((2.0, 98.0)) and not w.segments
    inner.halo = 9
    assert w.halo == 7
    with pytest.raises(TypeError, match="unknown runner traits"):
        WrappedRunner(inner, colour="red")
