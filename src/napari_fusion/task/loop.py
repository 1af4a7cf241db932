"""The two-speed task loop behind ``napari_fusion.finetune`` and the Fine-tune widget.

1. **Instant result**: the model's fused image, filter features of A, B and the fused image, a
   :class:`~.head.PixelHead` fitted on the painted pixels: labels in about a second.
2. **Then the fusion adapts** (``steps > 0``): the model's own task-driven training on the painted
   pixels (:func:`napari_fusion.training.finetune.finetune_steps`: TDFusion's bi-level loop, where the
   loss module is meta-learned so that the task loss after a fusion update is small; MultiTaskVIF's
   joint loss). Every ``refresh_seconds`` the head is refitted on the adapted fused image and a
   result is yielded, so a viewer can show the fused image and labels as they improve.

Both stages yield :class:`TuneProgress`; the generator returns the final :class:`~.tuned.TunedRunner`.
Stop iterating to stop: the last yielded ``runner`` is a complete model (Stop keeps it, Cancel
drops it); the model given is never modified.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generator, Mapping

import numpy as np

from ..methods.runner import as_runner
from .head import fit_head
from .tuned import TunedRunner, base_label_values, fuse_with_base_labels, head_features

__all__ = ["TuneProgress", "tune_steps", "base_of", "prepare_instant"]


@dataclass
class TuneProgress:
    """One update: ``stage`` "instant", "adapting" (a training step) or "refreshed" (new result)."""

    stage: str
    step: int
    steps: int
    seconds: float
    task_loss: float = float("nan")
    fusion_loss: float = float("nan")
    runner: TunedRunner | None = None  # a complete tuned model (stages "instant" and "refreshed")
    fused: np.ndarray | None = None  # unit fused image of ``runner``
    labels: np.ndarray | None = None  # int32 labels of ``runner`` (painted values)

    @property
    def done(self) -> int:  # for progress bars (engine.Progress-like)
        return self.step

    @property
    def total(self) -> int:
        return max(self.steps, 1)


def base_of(runner: Any) -> Any:
    """The fusion model under a tuned one (tuning a tuned model refits on its base)."""
    return runner.base if isinstance(runner, TunedRunner) else runner


@contextmanager
def _inference(model: Any):
    """Run a model that is being trained in eval mode for a moment, then put its modes back."""
    mods = list(getattr(model, "modules", {}).values())
    modes = [m.training for m in mods]
    try:
        yield
    finally:
        for m, t in zip(mods, modes):
            m.train(t)


REPLAY_FRACTION = 0.02  # unpainted pixels given the base's own labels when the strokes are corrections
REPLAY_PER_PAINTED = 2.0  # ... but at most this many per painted pixel
# Corrections: the head's class must beat the model's own by this probability margin to replace it.
# BraTS (strokes on 3 slices, every 6th other slice): no gate 0.36 whole-tumour Dice, 0.2: 0.44,
# 0.4: 0.51, 0.6: 0.53, 0.8: 0.51; the model alone 0.51.
CORRECTIONS_GATE = 0.6


def _fit(base, a, b, labels, head_kw, cache=None):
    """Fused image, features, head: a complete tuned model with its fused image and labels.

    A segmenting base's labels are features too; when the strokes *correct* it (it already labels at
    least half of the painted pixels right, in the painted values' terms), its labels on a random
    :data:`REPLAY_FRACTION` of the unpainted pixels (capped by :data:`REPLAY_PER_PAINTED`) join the strokes, so the head keeps what the base
    knows where nothing was painted. ``cache``: see :func:`tune_steps`.
    """
    got = prepare_instant(base, a, b, {} if cache is None else cache)
    fused, base_labels, feats = got["fused"], got["base_labels"], got["features"]
    replay, priors, gate = None, None, None
    if base_labels is not None:
        replay = _base_replay(labels, base_labels, head_kw.get("background_value"), head_kw.get("seed", 0))
        if replay is not None:  # corrections: the model's labels say how common each class is, and
            bg = head_kw.get("background_value")  # the head overrides them only where it is clearly surer
            classes = {0 if v == bg else int(v) for v in np.unique(labels) if v != 0}
            # by class (the head's values: class 0 for the background); a painted class the model
            # never gives has no prior of its own (its painted share stands)
            priors = {c: share for c in classes if (share := float(np.mean(base_labels == c))) > 0}
            # one gate for every class: scaling it by the model's recall on each class's strokes let
            # strokes on 3 BraTS slices repaint the others (whole-tumour Dice 0.618 -> 0.567) and did
            # not help on MSRS boxes (0.440 -> 0.436)
            gate = CORRECTIONS_GATE
    head = fit_head(feats, labels, replay=replay, priors=priors, gate=gate, base_labels=base_labels, **head_kw)
    return TunedRunner(base, head), fused, head.last_decision[0]  # = head.predict(feats), computed while fitting


def prepare_instant(base, a, b, cache: dict) -> dict:
    """What the instant result needs before any stroke: the model's fused image, its own labels (a
    segmenting model) and the head's features of A, B and the fused image, stored in ``cache`` (a
    dict kept for one model and one pair; left as it is when it holds them). A viewer can run this
    while the user paints, so that a click only fits the head."""
    base = base_of(base)  # a tuned model is refitted on its base
    if "features" not in cache:
        fused, base_labels = fuse_with_base_labels(base, a, b)
        feats = head_features(a, b, fused, base_labels, base_label_values(base), as_runner(base).device)
        cache.update(fused=fused, base_labels=base_labels, features=feats)
    return cache


def _base_replay(labels, base_labels, background_value, seed) -> np.ndarray | None:
    """The model's labels on a random :data:`REPLAY_FRACTION` of the unpainted pixels (in painted
    values), when the strokes correct the model; None when they paint a new task."""
    painted = labels > 0
    as_class = np.where(labels == background_value, 0, labels) if background_value is not None else labels
    if float((base_labels[painted] == as_class[painted]).mean()) < 0.5:
        return None  # a new task: the base's classes mean something else
    values = np.unique(as_class[painted])
    if len(values) > 1 and sum(bool((base_labels[painted & (as_class == v)] == v).any()) for v in values) < 2:
        return None  # the model gives one painted class to every stroke: nothing of it to keep
    rng = np.random.default_rng(seed)
    # REPLAY_FRACTION of the unpainted pixels, at most REPLAY_PER_PAINTED per painted pixel (a few
    # strokes on a large image must not be outweighed by the model's labels, nor slow the fit)
    share = min(REPLAY_FRACTION, REPLAY_PER_PAINTED * painted.sum() / max((~painted).sum(), 1))
    pick = ~painted & (rng.random(labels.shape) < share)
    if background_value is None:
        pick &= base_labels > 0  # class 0 has no painted value to stand for it
    out = np.zeros_like(labels)
    out[pick] = np.where(base_labels[pick] == 0, background_value or 0, base_labels[pick])
    return out


def tune_steps(
    runner: Any,
    a: np.ndarray,
    b: np.ndarray,
    sparse_labels: np.ndarray,
    *,
    steps: int = 0,
    lr: float | None = None,
    class_names: Mapping[int, str] | None = None,
    class_colors: Mapping[int, str] | None = None,
    background_value: int | None = None,
    device: Any = None,
    refresh_seconds: float = 5.0,
    seed: int = 0,
    cache: dict | None = None,
    **train_kw: Any,
) -> Generator[TuneProgress, None, TunedRunner]:
    """Instant head on the painted pixels, then ``steps`` task-driven steps of the fusion model.

    ``a``, ``b``: unit 2-D sources of one shape (as the engine prepares them); ``sparse_labels``: 0 =
    unpainted, v > 0 = class v; ``background_value`` means class 0. Raises (when called) for bad
    labels, a single painted class, or ``steps > 0`` on a model that cannot be trained.
    ``cache``: a dict the caller keeps for one model and one pair ``a``, ``b`` (a viewer refitting the
    head as the user paints): the instant stage stores the fused image, the model's own labels and the
    head's features in it, and a later call given the same dict only refits the head.
    """
    from ..training.finetune import check_sparse_labels, finetune_steps

    labels = check_sparse_labels(sparse_labels, np.shape(a))
    if cache and "fused" in cache and np.shape(cache["fused"]) != np.shape(a):
        raise ValueError(f"the cached fused image is {np.shape(cache.get('fused'))} but the sources are {np.shape(a)}")
    if isinstance(runner, str):
        from ..engine.pipeline import resolve_runner

        runner = resolve_runner(runner, "auto" if device is None else str(device))[0]
    base = base_of(runner)
    head_kw = {"background_value": background_value, "class_names": class_names, "class_colors": class_colors, "seed": seed}
    classes = {0 if v == background_value else int(v) for v in np.unique(labels) if v != 0}
    if len(classes) < 2:
        what = f"only class {classes.pop()} is painted" if classes else "nothing is painted"
        raise ValueError(f"{what}; paint at least two classes (for example the object and its surroundings)")
    train = None
    if int(steps) > 0:
        net_labels, net_bg = _network_labels(labels, background_value)
        train = finetune_steps(base, a, b, net_labels, steps=int(steps), lr=lr, class_names=class_names if net_bg is background_value else None,
                               device=device, background_value=net_bg, seed=seed, **train_kw)
    return (yield from _run(base, a, b, labels, head_kw, train, int(steps), refresh_seconds, cache))


MAX_NETWORK_CLASS = 64  # painted values above this are renumbered for the network (its head has one output per value)


def _network_labels(labels: np.ndarray, background_value: int | None) -> tuple[np.ndarray, int | None]:
    """Painted values as the fusion model's task network trains on them.

    Values a model may already know (up to :data:`MAX_NETWORK_CLASS`) are kept; otherwise the
    painted values are renumbered 1..K (and the background K+1), so painting class 10000 costs what
    class 2 costs. The head always answers with the painted values themselves.
    """
    values = [int(v) for v in np.unique(labels) if v != 0]
    if max(values) <= MAX_NETWORK_CLASS:
        return labels, background_value
    classes = [v for v in values if v != background_value]
    lut = {v: i + 1 for i, v in enumerate(classes)}
    out = np.zeros(labels.shape, np.int64)
    for v, i in lut.items():
        out[labels == v] = i
    bg = None
    if background_value is not None and background_value in values:
        bg = len(classes) + 1
        out[labels == background_value] = bg
    return out, bg


def _run(base, a, b, labels, head_kw, train, steps, refresh_seconds, cache=None) -> Generator[TuneProgress, None, TunedRunner]:
    t0 = time.perf_counter()
    tuned, fused, lab = _fit(base, a, b, labels, head_kw, cache)
    yield TuneProgress("instant", 0, steps, time.perf_counter() - t0, runner=tuned, fused=fused, labels=lab)
    if train is None:
        return tuned
    last_refresh = time.perf_counter()
    model = None
    while True:
        try:
            p = next(train)
        except StopIteration as stop:
            model = stop.value
            break
        model = p.model
        yield TuneProgress("adapting", p.step, steps, time.perf_counter() - t0, p.task_loss, p.fusion_loss)
        if model is not None and p.step < steps and time.perf_counter() - last_refresh >= refresh_seconds:
            with _inference(model):  # a copy: the model itself trains on after this result is shown
                snapshot = model.copy() if hasattr(model, "copy") else model
                tuned, fused, lab = _fit(snapshot, a, b, labels, head_kw)
            yield TuneProgress("refreshed", p.step, steps, time.perf_counter() - t0, p.task_loss, p.fusion_loss, tuned, fused, lab)
            last_refresh = time.perf_counter()
    tuned, fused, lab = _fit(model, a, b, labels, head_kw)
    yield TuneProgress("refreshed", steps, steps, time.perf_counter() - t0, runner=tuned, fused=fused, labels=lab)
    return tuned
