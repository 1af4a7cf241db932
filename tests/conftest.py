"""Shared pytest fixtures (others may append theirs below).

GUI tests: mark them ``gui`` and start the module with ``pytest.importorskip("napari")`` so the
non-GUI suite still runs where napari is absent; ``make_napari_viewer`` comes from napari's pytest
plugin and pytest-xvfb provides the display.
"""
from __future__ import annotations

import pytest


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
