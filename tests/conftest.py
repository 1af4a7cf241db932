"""Shared pytest fixtures (others may append theirs below).

GUI tests: mark them ``gui`` and start the module with ``pytest.importorskip("napari")`` so the
non-GUI suite still runs where napari is absent; ``make_napari_viewer`` comes from napari's pytest
plugin and pytest-xvfb provides the display.

Where no display can be had (no ``DISPLAY``/``WAYLAND_DISPLAY``, no X server behind ``DISPLAY``, and
no ``Xvfb`` for pytest-xvfb to start), every ``gui``-marked test and every test that needs a Qt
application (``qapp``, ``qtbot``, ``make_napari_viewer``) is skipped with the reason, instead of Qt
aborting the whole run ("Fatal Python error: Aborted") before pytest can print its summary.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest

# Fixtures that create a QApplication (pytest-qt's ``qapp``; ``qtbot`` and napari's
# ``make_napari_viewer`` depend on it): a test using any of them needs a display.
_QT_FIXTURES = frozenset({"qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy"})
_GUI_SKIPPED = pytest.StashKey[tuple]()  # (how many, why), for the terminal summary
_APT_LINE = "apt-get install -y xvfb libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 ..., the full line in README.md"


def _x_server_answers(display: str) -> bool:
    """Whether an X server listens behind ``display`` (``:N``, ``unix:N``, ``host:N``; ``.S`` ignored)."""
    host, _, rest = display.rpartition(":")
    try:
        number = int(rest.split(".")[0])
    except ValueError:
        return True  # a form we do not parse: trust it
    if host in ("", "unix") or host.startswith("/"):
        path = f"/tmp/.X11-unix/X{number}"
        for address in (path, "\0" + path):  # filesystem socket, then Linux's abstract one
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                try:
                    s.connect(address)
                    return True
                except OSError:
                    continue
        return False
    try:
        with socket.create_connection((host, 6000 + number), timeout=1.0):
            return True
    except OSError:
        return False


def no_display_reason(config: pytest.Config | None = None) -> str | None:
    """Why no GUI test can run here, or None when a display is there.

    Called after every plugin's ``pytest_configure``, so a display pytest-xvfb started is seen as
    ``DISPLAY``. ``QT_QPA_PLATFORM=offscreen`` is no substitute: napari's canvas needs OpenGL
    ("QOpenGLWidget is not supported on this platform").
    """
    if os.environ.get("WAYLAND_DISPLAY"):
        return None
    display = os.environ.get("DISPLAY", "")
    if display:
        if _x_server_answers(display):
            return None
        return f"no display: DISPLAY={display} but no X server answers there; unset DISPLAY and install Xvfb ({_APT_LINE})"
    if shutil.which("Xvfb"):
        why = "pytest-xvfb is disabled (--no-xvfb)" if config is not None and config.getoption("--no-xvfb", False) else (
            "pytest-xvfb did not start it (pip install pytest-xvfb)"
        )
        return f"no display: Xvfb is installed but {why}; or set DISPLAY"
    return f"no display: install Xvfb ({_APT_LINE}) or set DISPLAY"


def _needs_display(item: pytest.Item) -> bool:
    return item.get_closest_marker("gui") is not None or bool(_QT_FIXTURES.intersection(getattr(item, "fixturenames", ())))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = no_display_reason(config)
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    skipped = 0
    for item in items:
        if _needs_display(item):
            item.add_marker(skip)
            skipped += 1
    config.stash[_GUI_SKIPPED] = (skipped, reason)


def pytest_report_header(config: pytest.Config) -> str | None:
    reason = no_display_reason(config)
    return None if reason is None else f"GUI tests will be skipped: {reason}"


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    # -q hides skip reasons; say once, above the summary line, why the GUI tests did not run
    skipped, reason = config.stash.get(_GUI_SKIPPED, (0, ""))
    if skipped:
        terminalreporter.write_line(f"{skipped} GUI test(s) skipped: {reason}", yellow=True)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests: small tensors run as fast on one, and far faster on a
    shared, oversubscribed CPU (no OpenMP spinning). Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cpu_only(monkeypatch):
    """Pin the device choice "auto" to the CPU for one test (``NAPARI_FUSION_DEVICE=cpu``)."""
    monkeypatch.setenv("NAPARI_FUSION_DEVICE", "cpu")


@pytest.fixture
def notifications():
    """The napari notifications dispatched during a test (a live list of messages)."""
    pytest.importorskip("napari")
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class _Seen:
        @property
        def messages(self) -> list[str]:
            return [str(n.message) for n in notification_manager.records[start:]]

        @property
        def errors(self) -> list[str]:
            return [
                str(n.message)
                for n in notification_manager.records[start:]
                if str(getattr(n.severity, "value", n.severity)).lower() == "error"
            ]

    return _Seen()


@pytest.fixture
def sample_layers():
    """``add(viewer, key)``: the shipped sample pair ``key`` added to a viewer, as napari would
    (File > Open Sample > napari fusion); returns the added layers."""
    pytest.importorskip("napari")

    def add(viewer, key: str = "ivif") -> list:
        return list(viewer.open_sample("napari-fusion", key))

    return add
