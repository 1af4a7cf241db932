"""What the Fine-tune widget does with a whole model: Apply it to A + B, Reset to the shipped model it
started from, Save… it to and Load… it from one safetensors file (written atomically; loading never
runs code from the file)."""
from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QWidget

from .job import Task, error_text, notify_info
from .layers import layer_array
from .models import ModelEntry, method_segments

__all__ = ["MODEL_FILTER", "ModelActions", "ask_load_path", "ask_save_path", "entry_from_file", "save_entry"]

MODEL_FILTER = "napari-fusion model (*.safetensors);;All files (*)"


def ask_save_path(parent: QWidget, entry: ModelEntry) -> Path | None:
    """A file to save ``entry`` to, from a dialog (None: the user cancelled)."""
    suggested = entry.label.replace(" ", "_") + ".safetensors"
    path, _ = QFileDialog.getSaveFileName(parent, "Save tuned model", suggested, MODEL_FILTER)
    return Path(path) if path else None


def ask_load_path(parent: QWidget) -> Path | None:
    """A model file to load, from a dialog (None: the user cancelled)."""
    path, _ = QFileDialog.getOpenFileName(parent, "Load model", "", MODEL_FILTER)
    return Path(path) if path else None


def save_entry(entry: ModelEntry, path: str | Path) -> Path:
    """Write a tuned/loaded model (its runner's ``to_bundle``) to one safetensors file, with its
    label, base method and description in the metadata; ``.safetensors`` is added to a bare name."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".safetensors")
    from ..methods.store import save_bundle

    tensors, meta = entry.runner.to_bundle()
    meta = dict(meta)
    meta.setdefault("label", entry.label)
    if entry.base:
        meta.setdefault("base", entry.base)
    if entry.info:
        meta.setdefault("description", entry.info)
    return save_bundle(path, tensors, meta)


def entry_from_file(path: str | Path, device: str) -> ModelEntry:
    """A model file as a :class:`ModelEntry` (``source="loaded"``) with its runner on ``device``;
    a corrupt, truncated or foreign file (or a pickle) raises."""
    from ..methods.registry import runner_from_file
    from ..methods.store import read_metadata

    path = Path(path)
    meta = read_metadata(path)
    runner = runner_from_file(path, device=device)
    label = str(meta.get("label") or path.name.split(".")[0])
    info = str(meta.get("description") or f"{meta.get('family', 'model')} loaded from {path.name}")
    return ModelEntry(label=label, runner=runner, base=meta.get("base"), info=info, source="loaded", extra={"path": str(path)})


class ModelActions:
    """Apply, Reset, Save… and Load…, mixed into :class:`~.finetune.FinetuneWidget`, which provides
    the controls (``model``, ``device``, ``strokes``, ``status``, ``progress``, ``loss``), the
    viewer's ``shelf`` and ``tuned_layers``, ``_sources`` (the chosen pair, checked), and, from
    :class:`~.finetune_live.LiveRefits`, ``_live_timer``, ``_supersede_live`` and ``_after_job``."""

    def apply(self, label: str | None = None) -> Task | None:
        """Run the chosen (or named) model on A + B and show its results (layers named after it)."""
        if self.running:
            return None
        if label is not None and not self.model.select(label):
            return self.refuse(f"no model {label!r} to apply")
        src = self._sources("Apply")
        if src is None:
            return None
        a, b, src_kw = src
        label = self.model.label()
        if not label:
            return self.refuse("no model is available")
        spec = self.model.method_spec()
        entry = self.current_entry()
        tuned = entry is not None and entry.source == "tuned"
        root = self.root_method() or label
        kw = dict(src_kw, device=self.device.device(), names=(a.name, b.name))
        xa, xb = layer_array(a), layer_array(b)

        def job():
            from ..engine.pipeline import fuse_steps

            return (yield from fuse_steps(xa, xb, spec, segment=method_segments(spec), **kw))

        def show(result):
            self.tuned_layers.show_result(result, a, b, label, tuned=tuned, root=root)
            self.last_result = result
            self.tuned_layers.strokes_on_top(self.strokes.layer())
            self.status.setText(f"applied {label!r} to {a.name} + {b.name}")

        self._supersede_live()
        return self.start_job(
            job, busy=f"fusing with {label}", on_result=show, what=f"Fusion of {a.name!r} + {b.name!r} with {label}",
            finished=self._after_job,
        )

    def reset(self) -> list[str] | None:
        """Back to the shipped model the current one started from; the result layers this widget
        made for models tuned from it are removed (the shipped model's own layers were never touched). Returns the
        names of the layers removed (None if refused)."""
        if self.running:
            return None
        root = self.root_method()
        if not root:
            return self.refuse("no shipped model to reset to")
        if not self.model.select(root):
            return self.refuse(f"the shipped model {root!r} is not installed")
        self._live_timer.stop()
        self._supersede_live()
        removed = self.tuned_layers.remove_tuned(root)
        self.progress.reset_idle()
        self.loss.setText("")
        self.status.setText(f"back to {root!r}" + (f"; removed {', '.join(removed)}" if removed else ""))
        return removed

    # ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen tuned/loaded model to one safetensors file (atomic write)."""
        entry = self.current_entry()
        if entry is None:
            return self.refuse("nothing to save: the shipped model comes with napari-fusion; fine-tune or load a model first")
        if not hasattr(entry.runner, "to_bundle"):
            return self.refuse(f"model {entry.label!r} cannot be saved (it has no weights to write)")
        path = ask_save_path(self, entry) if path is None else path
        if path is None:
            return None
        try:
            out = save_entry(entry, path)
        except Exception as err:  # noqa: BLE001
            return self.refuse(f"could not save model {entry.label!r} to {path}: {error_text(err)}")
        self.status.setText(f"saved {entry.label!r} → {out}")
        notify_info(f"model {entry.label!r} saved to {out}")
        return out

    def load(self, path: str | Path | None = None) -> ModelEntry | None:
        """Load a model file into this viewer's models and choose it; a bad file changes nothing."""
        if self.running:
            return None
        path = ask_load_path(self) if path is None else Path(path)
        if path is None:
            return None
        try:
            from ..engine.device import resolve_device

            entry = entry_from_file(path, resolve_device(self.device.device()))
        except Exception as err:  # noqa: BLE001 - corrupt, truncated, foreign, pickle, no such device: all refused
            return self.refuse(f"could not load model {path.name}: {error_text(err)}")
        entry = self.shelf.add(entry)
        self.model.select(entry.label)
        self.update_buttons()
        self.status.setText(f"loaded {entry.label!r} from {path}; Apply runs it on A + B")
        return entry
