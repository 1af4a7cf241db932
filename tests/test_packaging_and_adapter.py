"""Issue 16: packaging and a newcomer's first hour (headless test runs, declared imports, one version,
umask, lint in CI) and the divergent copies (one layer -> Grid adapter, tile size 0, volume slices)."""
from __future__ import annotations

import ast
import os
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

import napari_fusion as nf
from napari_fusion import api
from napari_fusion.geometry import Grid
from napari_fusion.io.layers import data_to_world, grid_of_layer, placement_of_layer

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# --------------------------------------------------------------------------------------------------
# headless: GUI tests skip with a reason instead of Qt aborting the run


def _env_without_display(tmp_path: Path) -> dict:
    """Environment with no DISPLAY and a PATH without Xvfb: this Python's folder's programs (linked),
    all but Xvfb (on a bare CI box both can live in /usr/bin); Python itself is run by full path."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for exe in Path(sys.executable).parent.iterdir():
        if exe.name != "Xvfb":
            (bindir / exe.name).symlink_to(exe)
    env["PATH"] = str(bindir)
    return env


def test_no_display_reason_rules(monkeypatch, tmp_path):
    conftest = pytest.importorskip("conftest")  # tests/conftest.py
    for key in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no Xvfb on it
    why = conftest.no_display_reason()
    assert why.startswith("no display: install Xvfb (apt-get install -y xvfb") and "set DISPLAY" in why
    monkeypatch.setenv("DISPLAY", ":987")  # nothing listens there
    assert "no X server answers" in conftest.no_display_reason()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert conftest.no_display_reason() is None
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.delenv("DISPLAY")
    fake = tmp_path / "Xvfb"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert "Xvfb is installed but" in conftest.no_display_reason()


def test_gui_tests_skip_with_the_reason_on_a_headless_machine_without_xvfb(tmp_path):
    # the README's command on a GUI test file, with no display and no Xvfb: a summary, not an abort
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_widgets.py", "-k", "plugins_menu or grid_of"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env_without_display(tmp_path), capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert "Fatal Python error" not in out, out[-3000:]
    assert r.returncode == 0, out[-3000:]
    assert re.search(r"\b2 skipped\b", out), out[-3000:]
    assert "GUI test(s) skipped: no display: install Xvfb (apt-get install -y xvfb" in out


def test_readme_ci_and_apt_line_agree():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -q -p no:cacheprovider tests"
    assert command in readme and ci.rstrip().splitlines()[-1] == command
    ci_apt = re.search(r"apt-get install -y -qq (.*?)>/dev/null", ci, re.S).group(1)
    ci_pkgs = shlex.split(ci_apt.replace("\\\n", " "))
    readme_apt = re.search(r"^apt-get install -y (.*)$", readme, re.M).group(1)
    assert shlex.split(readme_apt) == ci_pkgs
    lint = ci.index("ruff check src tests benchmarks")
    assert "pip install -q ruff" in ci and lint < ci.index(command)
    assert PYPROJECT["tool"]["ruff"]["line-length"] == 140


# --------------------------------------------------------------------------------------------------
# declared dependencies, one version


def _imported_top_modules(folder: Path) -> set[str]:
    mods: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names and m != "napari_fusion"}


def _req_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in reqs}


def test_every_imported_package_is_declared():
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    # dask.distributed is an extra: only --workers / --scheduler import it, with a message naming it
    declared = _req_names(project["dependencies"]) | _req_names(extras["napari"]) | _req_names(extras["cluster"])
    optional_fallbacks = {"faster_coco_eval"}  # boxes._coco_backend: used only when pycocotools is missing
    missing = []
    for mod in sorted(_imported_top_modules(ROOT / "src" / "napari_fusion") - optional_fallbacks):
        names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if not names & declared:
            missing.append(f"{mod} ({', '.join(sorted(names))})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_pins_extras_and_one_version():
    from importlib.metadata import version

    project = PYPROJECT["project"]
    deps = project["dependencies"]
    assert "zarr>=3" in [d.split(" ")[0] for d in deps]  # Group.create_array
    tiff = next(d for d in deps if d.startswith("tifffile"))
    assert tuple(int(x) for x in re.search(r">=(\d+)\.(\d+)\.(\d+)", tiff).groups()) >= (2025, 5, 21)  # zarr-3 stores
    assert project["requires-python"] == ">=3.11"  # what zarr 3 and that tifffile need
    extras = project["optional-dependencies"]
    qt = re.compile(r"pyqt|pyside", re.I)
    assert not any(qt.match(r) for r in extras["napari"]) and any(r.startswith("napari[all]") for r in extras["napari"])
    assert any(r.startswith("napari[pyqt6]") for r in extras["testing"]) and "scikit-learn" in extras["testing"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "napari_fusion.__version__"}
    assert nf.__version__ == version("napari-fusion")


def test_dask_distributed_is_imported_only_for_a_cluster():
    code = (
        "import sys, napari_fusion, napari_fusion.api, napari_fusion.cli, napari_fusion.engine.batch\n"
        "napari_fusion.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'distributed'))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# files honour the umask


def _gray8(shape=(48, 64), seed=0):
    x = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2)
    return np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)


def test_fused_output_and_saved_model_honour_umask_022(tmp_path):
    import imageio.v3 as iio

    from napari_fusion import cli

    for d, seed in (("ir", 0), ("vi", 1)):
        (tmp_path / d).mkdir()
        iio.imwrite(tmp_path / d / "p1.png", _gray8(seed=seed))
    old = os.umask(0o022)
    try:
        assert cli.main(["fuse", str(tmp_path / "ir"), str(tmp_path / "vi"), "--out", str(tmp_path / "out"), "-m", "average"]) == 0
        model = nf.save_model("gifnet", tmp_path / "gifnet.safetensors")
    finally:
        os.umask(old)
    written = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in written] == ["p1.png"]
    for p in (*written, Path(model)):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, (p, oct(p.stat().st_mode))


# --------------------------------------------------------------------------------------------------
# one layer -> Grid adapter (napari-free): API, widget and writer agree


def _composed(scale, translate, rotate_deg, shear_upper, affine):
    """napari's data -> world matrix, written out for 2-D: affine @ [R @ Sh @ S | t]."""
    c, s = np.cos(np.deg2rad(rotate_deg)), np.sin(np.deg2rad(rotate_deg))
    lin = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear_upper], [0.0, 1.0]]) @ np.diag(scale)
    inner = np.eye(3)
    inner[:2, :2], inner[:2, 2] = lin, translate
    return np.asarray(affine, float) @ inner


class _Layer(SimpleNamespace):
    """A plain object with a napari layer's attributes (what the adapter reads)."""


def _plain_layer(data, name, *, scale=(1.0, 1.0), translate=(0.0, 0.0), rotate=0.0, shear=(0.0,), affine=None, units=None):
    return _Layer(
        data=data, name=name, ndim=2, rgb=False, multiscale=False, metadata={},
        scale=np.asarray(scale, float), translate=np.asarray(translate, float), rotate=rotate,
        shear=np.asarray(shear, float), affine=np.eye(3) if affine is None else np.asarray(affine, float),
        units=units,
    )


EXTRA = np.array([[1.0, 0.05, 3.0], [0.0, 0.98, -2.0], [0.0, 0.0, 1.0]])


def _rotated_pair():
    a = _gray8((64, 80), seed=3)
    b = _gray8((40, 50), seed=4)
    la = _plain_layer(a, "ir", scale=(1.0, 1.0))
    # B: coarser, rotated 12 degrees, sheared, shifted by an extra affine; covers most of A
    lb = _plain_layer(b, "vi", scale=(1.5, 1.5), translate=(6.0, 8.0), rotate=12.0, shear=(0.1,), affine=EXTRA)
    return la, lb


def test_adapter_composes_rotate_shear_affine_like_napari():
    la, lb = _rotated_pair()
    want = _composed((1.5, 1.5), (6.0, 8.0), 12.0, 0.1, EXTRA)
    np.testing.assert_allclose(data_to_world(lb), want, atol=1e-12)
    g = grid_of_layer(lb)
    assert g.shape == (40, 50) and g.units == "pixel"
    np.testing.assert_allclose(g.affine, want, atol=1e-12)
    # napari's attribute dict (writer contract) and a layer with pint-like unit names
    state = {"scale": [1.5, 1.5], "translate": [6.0, 8.0], "rotate": lb_rotate_matrix(12.0), "shear": [0.1], "affine": EXTRA,
             "units": ("millimeter", "millimeter"), "metadata": {}}
    gs = grid_of_layer(state, (40, 50))
    np.testing.assert_allclose(gs.affine, want, atol=1e-12)
    assert gs.units == "mm"
    # 3-D: three angles and a shear vector, on the trailing axes
    l3 = _Layer(data=np.zeros((3, 4, 5)), ndim=3, scale=(2.0, 1.0, 1.0), rotate=(10.0, 20.0, 30.0), shear=(0.1, 0.0, 0.2), metadata={})
    assert grid_of_layer(l3).shape == (3, 4, 5)


def test_adapter_matches_napari_layers_without_a_viewer():
    pytest.importorskip("napari")
    from napari.layers import Image

    rng = np.random.default_rng(1)
    for nd, rotate in ((2, 30.0), (3, (10.0, 20.0, 30.0)), (3, 45.0)):
        extra = np.eye(nd + 1)
        extra[:nd, :nd] += rng.uniform(-0.1, 0.1, (nd, nd))
        extra[:nd, nd] = rng.uniform(-3, 3, nd)
        layer = Image(
            np.zeros((5,) * nd), scale=rng.uniform(0.5, 2, nd), translate=rng.uniform(-5, 5, nd), rotate=rotate,
            shear=rng.uniform(-0.3, 0.3, nd * (nd - 1) // 2), affine=extra, units="um",
        )
        want = np.asarray(layer._data_to_world.affine_matrix)
        for like in (layer, layer._get_state()):
            g = grid_of_layer(like, (5,) * nd)
            np.testing.assert_allclose(g.affine, want, atol=1e-12)
            assert g.units == "um"


def lb_rotate_matrix(deg):
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return [[c, -s], [s, c]]


def test_reader_grid_kept_when_transforms_agree_and_dropped_when_the_layer_moved():
    g = Grid.from_scale((32, 40), 0.5, (10.0, 20.0), "mm")
    kw = g.layer_kwargs()
    layer = _Layer(data=np.zeros((32, 40)), ndim=2, scale=kw["scale"], translate=kw["translate"], metadata={"grid": g})
    assert grid_of_layer(layer) is g
    bare = _Layer(data=np.zeros((32, 40)), ndim=2, metadata={"grid": g})  # only the grid (API objects)
    assert grid_of_layer(bare) is g
    moved = _Layer(data=np.zeros((32, 40)), ndim=2, scale=kw["scale"], translate=(15.0, 20.0), metadata={"grid": g})
    got = grid_of_layer(moved)
    assert got.units == "mm" and np.allclose(got.translate, (15.0, 20.0))  # where napari shows it
    # the writer's path is the same rule
    from napari_fusion.io.napari_writer import grid_from_attributes

    attrs = {"scale": list(kw["scale"]), "translate": [15.0, 20.0], "metadata": {"grid": g}}
    assert grid_from_attributes((32, 40), attrs) == got


def test_api_and_widget_paths_give_one_grid_and_one_fused_image_for_a_rotated_layer():
    pytest.importorskip("qtpy")
    from napari_fusion.engine.pipeline import _drain, fuse_steps
    from napari_fusion.io.napari_writer import grid_from_attributes
    from napari_fusion.widgets._common import grid_of, layer_array, source_kwargs

    la, lb = _rotated_pair()
    g_api = api.as_input(lb).grid
    g_widget = grid_of(lb)
    g_writer = grid_from_attributes((40, 50), vars(lb))
    assert g_api == g_widget == g_writer
    np.testing.assert_allclose(g_api.affine, _composed((1.5, 1.5), (6.0, 8.0), 12.0, 0.1, EXTRA), atol=1e-12)

    via_api = nf.fuse(la, lb, "average")
    kw = {**source_kwargs(la, "a"), **source_kwargs(lb, "b")}  # what the Fusion widget hands the engine
    via_widget = _drain(fuse_steps(layer_array(la), layer_array(lb), "average", **kw), None).fused
    np.testing.assert_array_equal(via_api, via_widget)
    # the rotation matters: ignoring it (the API's old reading) gives another image
    unrotated = _plain_layer(lb.data, "vi", scale=(1.5, 1.5), translate=(6.0, 8.0), affine=EXTRA)
    assert np.abs(nf.fuse(la, unrotated, "average").astype(int) - via_api.astype(int)).mean() > 1.0


def test_placement_of_a_layer_round_trips():
    _, lb = _rotated_pair()
    kw = placement_of_layer(lb)
    again = _Layer(data=lb.data, ndim=2, metadata={}, **kw)
    np.testing.assert_allclose(data_to_world(again), data_to_world(lb), atol=1e-12)


# --------------------------------------------------------------------------------------------------
# tile size: None / "auto" automatic, 0 never, everywhere


def test_cli_tile_auto_zero_and_negative():
    from napari_fusion.cli import build_parser

    p = build_parser()
    assert p.parse_args(["fuse", "a", "--out", "o"]).tile is None
    assert p.parse_args(["fuse", "a", "--out", "o", "--tile", "auto"]).tile is None
    assert p.parse_args(["fuse", "a", "--out", "o", "--tile", "0"]).tile == 0
    assert p.parse_args(["detect", "a", "--out", "o", "--tile", "AUTO"]).tile is None
    with pytest.raises(SystemExit):
        p.parse_args(["fuse", "a", "--out", "o", "--tile", "-1"])


def test_api_tile_zero_is_one_pass_and_none_is_automatic():
    from napari_fusion.engine.pipeline import _pick_tile

    assert _pick_tile((4000, 4000), 0) is None
    assert _pick_tile((4000, 4000), None) is not None
    seen = []
    nf.fuse(_gray8((300, 300)), _gray8((300, 300), 1), "laplacian", tile=0, progress=seen.append)
    assert seen and seen[-1].total == 1


# --------------------------------------------------------------------------------------------------
# volumes: one slice rule for API and widget


def test_scored_slices_rule():
    from napari_fusion.metrics import scored_slices

    a = np.zeros((40, 8, 8))
    b = np.zeros((40, 8, 8))
    a[5:35, 2, 2] = 10.0
    b[3] = 7.0  # constant, nonzero: not scored
    assert scored_slices(a, b, None) == list(range(5, 35))
    picked = scored_slices(a, b)
    assert len(picked) == 16 and picked[0] == 5 and picked[-1] == 34
    assert scored_slices(np.zeros((3, 4, 4)), np.zeros((3, 4, 4))) == []


def test_api_and_widget_score_a_volume_on_the_same_slices():
    pytest.importorskip("qtpy")
    from napari_fusion.widgets.evaluate import score

    rng = np.random.default_rng(0)
    a = np.zeros((30, 48, 48), np.float32)
    b = np.zeros((30, 48, 48), np.float32)
    a[4:26] = ndimage.gaussian_filter(rng.random((22, 48, 48)), (0, 2, 2)).astype(np.float32)
    b[4:26] = ndimage.gaussian_filter(rng.random((22, 48, 48)), (0, 2, 2)).astype(np.float32)
    b[2] = 0.5  # constant: the old API (.any()) scored it, the widget (std > 0) did not
    fused = nf.fuse(a, b, "average")
    got_api = nf.evaluate(fused, a, b)
    inputs = {
        "a": a, "b": b, "fused": fused, "fused_rgb": False, "names": ("A", "B"),
        "source_kw": {}, "pred": None, "truth": None, "class_names": None,
    }
    got_widget = score(inputs)
    for k, v in got_api.items():
        assert got_widget[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    with pytest.raises(ValueError, match="constant"):
        nf.evaluate(np.zeros((3, 8, 8)), np.zeros((3, 8, 8)), np.zeros((3, 8, 8)))


# --------------------------------------------------------------------------------------------------
# GUI: a real rotated/sheared napari layer through the API and the Fusion widget


@pytest.mark.gui
def test_rotated_napari_layer_fuses_the_same_through_api_and_widget(make_napari_viewer, qtbot):
    pytest.importorskip("napari")
    from napari_fusion.io.napari_writer import grid_from_attributes
    from napari_fusion.widgets._common import grid_of

    viewer = make_napari_viewer()
    a = _gray8((64, 80), seed=3)
    b = _gray8((40, 50), seed=4)
    la = viewer.add_image(a, name="ir", rotate=20.0, translate=(5.0, -3.0))
    lb = viewer.add_image(b, name="vi", scale=(1.5, 1.5), translate=(6.0, 8.0), rotate=32.0, shear=[0.1], affine=EXTRA)
    for layer in (la, lb):
        napari_m = np.asarray(layer._data_to_world.affine_matrix)
        g = api.as_input(layer).grid
        assert g == grid_of(layer) == grid_from_attributes(layer.data.shape, layer._get_state())
        np.testing.assert_allclose(g.affine, napari_m, atol=1e-9)

    via_api = nf.fuse(la, lb, "average", viewer=viewer, name="api result")
    _, w = viewer.window.add_plugin_dock_widget("napari-fusion", "Fusion")
    w.source_a.setCurrentText("ir")
    w.source_b.setCurrentText("vi")
    assert w.method.select("average")
    w.tile.setTile(0)
    assert w.tile.text() == "never" and w.tile.tile() == 0
    w.fuse()
    qtbot.waitUntil(lambda: not w.running, timeout=180_000)
    out = viewer.layers["average (ir + vi)"]
    np.testing.assert_array_equal(out.data, via_api)
    # both results lie where A is shown (the API kept A's rotation)
    for layer in (out, viewer.layers["api result"]):
        np.testing.assert_allclose(layer._data_to_world.affine_matrix, la._data_to_world.affine_matrix, atol=1e-9)


@pytest.mark.gui
def test_tile_spin_box_auto_never_and_sizes(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-fusion", "Fusion")
    t = w.tile
    assert t.text() == "auto" and t.tile() is None  # the default: automatic, as the API's None
    t.stepBy(1)
    assert t.text() == "never" and t.tile() == 0
    t.stepBy(2)
    assert t.text() == "256 px" and t.tile() == 256
    t.stepBy(-3)
    assert t.tile() is None
    t.setValue(64)
    assert t.tile() == 64 and t.text() == "64 px"


def test_dask_workers_without_distributed_name_the_extra(monkeypatch):
    """A plain install has no dask.distributed: --workers then says which extra to install."""
    import sys

    from napari_fusion.engine.jobs import BatchJob, run_jobs

    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    from pathlib import Path

    job = BatchJob("p", Path("a.png"), Path("b.png"), Path("out/p.png"))
    with pytest.raises(ImportError, match=r"napari-fusion\[cluster\]"):
        run_jobs([job], lambda j: None, workers=1)
