"""The layers the Fine-tune widget owns: its tuned model's fused image and labels, named after the
model and the sources (``"tdfusion tuned (ir + vi)"``, ``"tdfusion tuned labels (ir + vi)"``),
what Cancel puts back, and what Reset removes. The user's own layers are never written."""
from __future__ import annotations

from typing import Any

import numpy as np

from .layers import META_KEY
from .results import classes_of, fused_layer_name, labels_layer_name, place_image, place_labels, result_kind

__all__ = ["MADE_BY", "TunedLayers"]

MADE_BY = "fine-tune"  # metadata[META_KEY]["made_by"] of the layers the Fine-tune widget owns


class TunedLayers:
    """The Fine-tune widget's result layers in one viewer."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.fused_of: dict[str, Any] = {}  # fused layer name -> the model whose fused image it shows

    def get(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def snapshot(self, names) -> dict:
        """What Cancel puts back: each target layer's data and look, or None (made by the job)."""
        out = {}
        for name in names:
            layer = self.get(name)
            if layer is None:
                out[name] = None
                continue
            item = {"data": layer.data, "metadata": dict(layer.metadata)}
            if hasattr(layer, "selected_label"):
                item.update(data=np.array(layer.data, copy=True), colormap=layer.colormap, features=layer.features.copy())
            out[name] = item
        return out

    def restore(self, snapshot: dict) -> None:
        """Put the layers of a :meth:`snapshot` back; those made since are removed."""
        for name, item in snapshot.items():
            self.fused_of.pop(name, None)
            layer = self.get(name)
            if item is None:
                if layer is not None:
                    self.viewer.layers.remove(name)
                continue
            if layer is None:
                continue
            layer.data = item["data"]
            layer.metadata = item["metadata"]
            if "colormap" in item:
                layer.colormap = item["colormap"]
                layer.features = item["features"]

    def rename(self, job: dict, label: str) -> None:
        """The job's layers follow its model to a new label."""
        a, b = job["req"]["names"]
        for key, name in (("fused_name", fused_layer_name(label, a, b)), ("labels_name", labels_layer_name(label, a, b))):
            if job[key] in self.viewer.layers:
                self.viewer.layers[job[key]].name = name
            job[key] = name

    def show(self, s, job: dict, req: dict) -> bool:
        """Put one result (a :class:`~.finetune_job.TuneView`) into the job's layers, created on
        the first result (then True); the fused layer is only rewritten when the model under the
        head changed (Live refits: labels only)."""
        a = self.get(req["names"][0]) or req["a"]
        meta = {"method": req["target"], "source_a": req["names"][0], "source_b": req["names"][1],
                "made_by": MADE_BY, "tuned": True, "root": req["root"]}
        base = getattr(s.runner, "base", None)
        fused_name, labels_name = job["fused_name"], job["labels_name"]
        created = False
        if s.fused is not None and (self.fused_of.get(fused_name) is not base or fused_name not in self.viewer.layers):
            created |= fused_name not in self.viewer.layers
            place_image(
                self.viewer, fused_name, s.fused, a, rgb=result_kind(s.fused, a) == "rgb",
                metadata={META_KEY: {**meta, "role": "fused"}}, grid=s.grid,
            )
            self.fused_of[fused_name] = base
        created |= labels_name not in self.viewer.layers
        place_labels(self.viewer, labels_name, s.labels, a, classes_of(s.runner), metadata={META_KEY: {**meta, "role": "labels"}})
        return created

    def show_result(self, result, a, b, label: str, *, tuned: bool, root: str) -> None:
        """A model's FusionResult on A + B (Apply): its fused image and, if any, its labels."""
        meta = {"method": label, "source_a": a.name, "source_b": b.name, "made_by": MADE_BY, "tuned": tuned, "root": root}
        place_image(
            self.viewer, fused_layer_name(label, a.name, b.name), result.fused, a,
            rgb=result_kind(result.fused, a) == "rgb", metadata={META_KEY: {**meta, "role": "fused"}}, grid=result.grid,
        )
        if result.labels is not None:
            place_labels(
                self.viewer, labels_layer_name(label, a.name, b.name), result.labels, a, classes_of(result),
                metadata={META_KEY: {**meta, "role": "labels"}},
            )

    def strokes_on_top(self, strokes) -> None:
        """Keep the strokes on top and selected, so the user can keep painting over the result."""
        if strokes is None or strokes.name not in self.viewer.layers:
            return
        names = [x.name for x in self.viewer.layers]
        i = names.index(strokes.name)
        if i != len(names) - 1:
            self.viewer.layers.move(i, len(names))
        self.viewer.layers.selection.active = self.viewer.layers[strokes.name]

    def remove_tuned(self, root: str) -> list[str]:
        """Remove the layers made for models tuned from the shipped model ``root``; their names."""
        removed = []
        for layer in list(self.viewer.layers):
            info = (getattr(layer, "metadata", None) or {}).get(META_KEY)
            if isinstance(info, dict) and info.get("made_by") == MADE_BY and info.get("tuned") and info.get("root", root) == root:
                removed.append(layer.name)
                self.fused_of.pop(layer.name, None)
                self.viewer.layers.remove(layer.name)
        return removed
