"""The worker side of the Fine-tune widget: what a Fine-tune or Live job runs off the GUI thread
(:func:`tune_job` around the core's ``task.loop.tune_steps``), the per-pair cache that lets Live
refit only the head, and the warm-up that spares the first click what a head fit imports."""
from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

__all__ = ["FINETUNE_FAMILIES", "TuneCache", "TuneView", "fingerprint", "prepare_job", "trainable", "tune_job", "tuned_label", "warm_up"]

FINETUNE_FAMILIES = ("TDFusion", "MultiTaskVIF")  # families whose fusion trains on the strokes (Steps > 0)


def trainable(runner_or_method) -> bool:
    """Whether Steps > 0 can train the fusion of this model (a shipped method or a runner)."""
    from ..methods.registry import Method
    from ..methods.runner import as_runner, is_runner

    if isinstance(runner_or_method, Method):
        return runner_or_method.family in FINETUNE_FAMILIES
    return is_runner(runner_or_method) and as_runner(runner_or_method).family in FINETUNE_FAMILIES


def fingerprint(x) -> tuple:
    """A cheap identity of a source's pixels (shape, dtype and a strided sample)."""
    arr = np.asarray(x)
    step = tuple(max(1, s // 48) for s in arr.shape[:2])
    sample = np.ascontiguousarray(arr[:: step[0], :: step[1]] if arr.ndim >= 2 else arr)
    return (arr.shape, str(arr.dtype), hash(sample.tobytes()))


def tuned_label(label: str) -> str:
    """The label of a model tuned from ``label``: ``"tdfusion tuned"`` (a tuned one keeps its stem)."""
    stem = re.sub(r" \d+$", "", label)
    return stem if stem.endswith(" tuned") else f"{label} tuned"


_WARMED: list[bool] = []


def warm_up() -> None:
    """Fit a toy head in the background when the dock opens, so that the first click does not pay
    for what a head fit imports and initialises once per session (torch's optimisers pulled in
    ``torch._dynamo``: 2.6 s on the 2-core machine; a forest imports scikit-learn)."""
    if _WARMED:
        return
    _WARMED.append(True)

    def work() -> None:
        try:
            from ..task.head import fit_head

            feats = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
            strokes = np.zeros((8, 8), np.int32)
            strokes[:2], strokes[-2:] = 1, 2
            fit_head(feats, strokes)
        except Exception:  # noqa: BLE001 - only a warm-up
            pass

    threading.Thread(target=work, name="napari-fusion fine-tune warm-up", daemon=True).start()


class TuneView:
    """What one update of Fine-tune or Live puts into the layers: the display fused image, the
    labels and the model under them (from the core's ``TuneProgress``), and the grid."""

    def __init__(self, p, fused, grid) -> None:
        self.progress = p  # the core's TuneProgress
        self.fused = fused  # display intensities (A's range, colour back), or None
        self.grid = grid

    @property
    def labels(self):
        return self.progress.labels

    @property
    def runner(self):
        return self.progress.runner


class TuneCache:
    """One model's work on one pair, kept between jobs so that Live refits only fit the head.

    ``lock`` is held while a job builds the model or fills the cache: a preparation started while
    the user paints (:func:`prepare_job`) and the Fine-tune or Live job after it take turns, the
    later one finding the work done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runners: dict[tuple[str, str], Any] = {}  # shipped methods built once per device
        self.key: tuple | None = None
        self.base = None  # held so that the key's id() stays this model's
        self.prepared = None
        self.tune: dict = {}  # tune_steps(cache=...): fused image, the model's labels, features

    def runner(self, label: str, device: str):
        from ..methods.registry import build_runner

        key = (label, str(device))
        if key not in self.runners:
            self.runners = {key: build_runner(label, device=device)}  # one at a time: memory
        return self.runners[key]

    def pair(self, base, xa, xb, src_kw: dict, names: tuple[str, str]):
        """(prepared pair, tune cache dict) for this model and these sources."""
        from ..engine.pipeline import input_intensity_of, prepare_pair
        from ..task.loop import base_of

        core = base_of(base)
        key = (id(core), names, fingerprint(xa), fingerprint(xb), repr(src_kw))
        if key != self.key:
            self.prepared = prepare_pair(xa, xb, **src_kw, input_intensity=input_intensity_of(core), names=names)
            self.key, self.base, self.tune = key, core, {}
        return self.prepared, self.tune

    def clear(self) -> None:
        self.key = self.base = self.prepared = None
        self.tune = {}



def tune_job(req: dict, steps: int, cache: TuneCache, *, refresh_seconds: float):
    """The worker side of Fine-tune and Live (a generator function for :class:`~.job.Task`): the
    core's ``tune_steps`` on the request ``req`` (what the widget read on the GUI thread), each
    complete result made displayable (A's intensity range, colour back) here, off the GUI thread.
    ``steps`` 0: the labels head only (Live); ``refresh_seconds``: how often a result is shown while
    the fusion trains."""
    lr = req.get("lr")

    def gen():
        from ..engine.device import resolve_device
        from ..engine.pipeline import finish
        from ..task.loop import tune_steps

        device = resolve_device(req["device"])
        with cache.lock:  # (waits for a preparation still running; then its work is here)
            runner, prepared, tune_cache = _prepared(req, cache, device)
        loop = tune_steps(
            runner, prepared.a, prepared.b, req["labels"], steps=steps, lr=lr, class_names=req["class_names"],
            class_colors=req["colors"], background_value=req["background"], device=device,
            refresh_seconds=refresh_seconds, cache=tune_cache,
        )
        while True:
            try:
                p = next(loop)
            except StopIteration as stop:
                return stop.value
            if p.runner is not None and p.stage == "refreshed" and p.step < p.steps:
                # the network under a refreshed result trains on after the yield: keep a snapshot,
                # so that Stop keeps exactly what was shown
                p.runner = p.runner.copy()
            shown = finish(p.fused, prepared) if p.fused is not None else None
            yield TuneView(p, shown, prepared.grid)

    return gen


def _prepared(req: dict, cache: TuneCache, device):
    """(model, prepared pair, filled tune cache) of a request; called with ``cache.lock`` held."""
    from ..task.loop import prepare_instant

    runner = req["runner"] if req["runner"] is not None else cache.runner(req["label"], device)
    prepared, tune_cache = cache.pair(runner, req["xa"], req["xb"], req["src_kw"], req["names"])
    prepare_instant(runner, prepared.a, prepared.b, tune_cache)
    return runner, prepared, tune_cache


def prepare_job(req: dict, cache: TuneCache) -> threading.Thread:
    """Start computing, in a background thread, what the first labels need before any stroke (the
    model's fused image and labels, the head's features; like an interactive segmenter's image
    embedding), so that a click while or after painting only fits the head. ``req``: sources,
    model and device as the widget read them on the GUI thread. Failures are left for the click
    to report (it runs the same steps and says what is wrong)."""

    def work() -> None:
        from ..engine.device import resolve_device

        try:
            with cache.lock:
                _prepared(req, cache, resolve_device(req["device"]))
        except Exception:  # noqa: BLE001 - the Fine-tune click repeats it and reports the error
            pass

    t = threading.Thread(target=work, name="napari-fusion fine-tune preparation", daemon=True)
    t.start()
    return t
