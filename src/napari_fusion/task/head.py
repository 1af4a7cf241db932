"""A pixel classifier fitted in about a second on painted strokes: the instant result of fine-tuning.

The head is a random forest (scikit-learn: 50 trees of depth at most 10, as ilastik-style pixel
classifiers use) on the filter features of the sources and of the fused image (:mod:`.features`),
plus a segmenting model's own labels. We tried a small class-balanced MLP first: on the MSRS 00055D
strokes it reached 0.95 held-out stroke accuracy where a forest on the same features reached 1.00
(it extrapolated one held-out road stroke into foliage), and on BraTS its class weights
over-predicted the rare tumour classes; the forest has neither problem.

The forest is scikit-learn's, for fitting and predicting; in a model file it is kept as plain arrays
(its nodes: children, features, thresholds, class fractions; safetensors, no pickle) and rebuilt
into a scikit-learn forest when the file is loaded (:func:`_forest_from_arrays`). After fitting, a painted class that the head would still lose on most of
its own strokes gets its probability raised until it wins there: no painted class can vanish.

Label values are the painted values themselves (painting class 10000 costs what class 2 costs: the
forest has one output per *painted* class), except ``background_value``, which means class 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

__all__ = ["PixelHead", "fit_head", "N_TREES", "MAX_DEPTH"]

N_TREES = 50
MAX_DEPTH = 10
MAX_PIXELS_PER_CLASS = 20_000  # painted pixels used per class (a random subset beyond it)
# Each tree's bootstrap draws this many pixels per painted pixel (None: as many as all training
# pixels, scikit-learn's default). With a model's labels replayed (up to 2 per painted pixel) the
# forest then costs what a forest on the strokes alone costs, and the trees still see all of them.
TREE_DRAWS_PER_PAINTED: float | None = 1.0
MIN_STROKE_RECALL = 0.5  # a painted class must win on at least this share of its own strokes
MIN_PAINTED_RECALL = 0.25  # ... and on at least this share of its strokes alone (not counting replayed labels)
MAX_ATTEMPTS = 16  # gate and bias adjustments tried
_TENSORS = ("node_count", "feature", "threshold", "left", "right", "value", "bias")  # + "weight" (optional)


@dataclass
class PixelHead:
    """The forest (scikit-learn) and what its outputs mean (``values[k]`` is output ``k``'s label value)."""

    values: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[str, ...]
    forest: Any  # sklearn RandomForestClassifier fitted on output indices 0..K-1
    bias: torch.Tensor  # (K,) added to the probabilities (raised for a class that would vanish)
    n_features: int = 0
    weight: torch.Tensor | None = None  # (K,) prior correction: probabilities x weight before the decision
    gate: torch.Tensor | None = None  # (K,) corrections: the head's class k replaces the model's label only by this margin
    background_value: int | None = None  # the painted value that means class 0 (to map a model's labels)
    smooth: float = 1.0  # Gaussian sigma on the class probabilities before the decision (0: none)
    info: dict = field(default_factory=dict)
    last_decision: list = field(default_factory=list, repr=False)  # labels of the images it was fitted on

    def probabilities(self, feats: np.ndarray) -> torch.Tensor:
        """(H, W, C) features -> (1, K, H, W) class probabilities of the forest."""
        f = np.asarray(feats, np.float32)
        if f.ndim != 3 or f.shape[-1] != self.n_features:
            raise ValueError(f"the head takes (H, W, {self.n_features}) features, got {tuple(f.shape)}")
        h, w, c = f.shape
        self.forest.n_jobs = _n_jobs()
        p = self.forest.predict_proba(f.reshape(-1, c)).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(p.T)).reshape(1, len(self.values), h, w)

    def scores(self, probs: torch.Tensor) -> torch.Tensor:
        """(1, K, H, W) probabilities -> the smoothed, prior-corrected class scores (without the bias;
        a constant bias commutes with the smoothing, so it is added at the decision)."""
        if self.weight is not None:
            probs = probs * self.weight.view(1, -1, 1, 1)
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
        if self.smooth > 0:
            from .features import gaussian_blur

            probs = gaussian_blur(probs, self.smooth)
        return probs

    def decide(self, probs: torch.Tensor, bias: torch.Tensor | None = None, base: np.ndarray | None = None,
               gate: torch.Tensor | None = None, *, scored: bool = False) -> torch.Tensor:
        """(1, K, H, W) probabilities (``scored``: already :meth:`scores`) -> (H, W) output indices.

        ``base``: the output index of a segmenting model's own label at each pixel (-1: none of the
        head's classes). With a ``gate`` the head's answer replaces the model's only where its
        probability beats the model's class by more than the gate (corrections keep what the model
        knows: strokes on a few slices must not repaint the others).
        """
        p = (probs if scored else self.scores(probs)) + (self.bias if bias is None else self.bias + bias).view(1, -1, 1, 1)
        k = p.argmax(1)[0]
        gate = self.gate if gate is None else gate
        if gate is None or base is None:
            return k
        b = torch.from_numpy(np.asarray(base, np.int64))
        p_base = p[0].gather(0, b.clamp_min(0)[None])[0]
        keep_base = (b >= 0) & (p[0].max(0).values - p_base <= gate[k])
        return torch.where(keep_base, b, k)

    def base_index(self, base_labels: np.ndarray | None) -> np.ndarray | None:
        """A model's labels -> the head's output index of the same class at each pixel (-1: none)."""
        if base_labels is None or self.gate is None:
            return None
        lut = {0 if v == self.background_value else v: i for i, v in enumerate(self.values)}
        out = np.full(np.shape(base_labels), -1, np.int64)
        for c, i in lut.items():
            out[np.asarray(base_labels) == c] = i
        return out

    def predict(self, feats: np.ndarray | torch.Tensor, base_labels: np.ndarray | None = None) -> np.ndarray:
        """(H, W, C) features (+ a segmenting model's labels, for a gated head) -> (H, W) int32 label values."""
        k = self.decide(self.probabilities(feats), base=self.base_index(base_labels)).cpu().numpy()
        return np.asarray(self.values, np.int32)[k]

    # --- persistence (tensors + JSON-able metadata; no code) ----------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        arrays = _forest_arrays(self.forest, len(self.values))
        arrays["bias"] = self.bias.detach().cpu().clone()
        arrays["weight"] = (self.weight if self.weight is not None else torch.ones(len(self.values))).detach().cpu().clone()
        return arrays

    def meta(self) -> dict[str, Any]:
        return {"kind": "random-forest", "values": list(self.values), "names": list(self.names), "colors": list(self.colors),
                "smooth": self.smooth, "n_features": self.n_features, "info": self.info,
                "gate": None if self.gate is None else [round(float(g), 6) for g in self.gate],
                "background_value": self.background_value}

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> "PixelHead":
        if meta.get("kind") != "random-forest":
            raise ValueError(f"unknown head kind {meta.get('kind')!r}; this build reads 'random-forest' heads")
        values = tuple(int(v) for v in meta["values"])
        k, c = len(values), int(meta["n_features"])
        for name in _TENSORS:
            if name not in tensors:
                raise KeyError(f"head tensor {name!r} is missing")
        t_, n_ = tensors["feature"].shape
        want = {"node_count": (t_,), "threshold": (t_, n_), "left": (t_, n_), "right": (t_, n_), "value": (t_, n_, k), "bias": (k,)}
        for name, shape in want.items():
            if tuple(tensors[name].shape) != shape:
                raise ValueError(f"head tensor {name!r} is {tuple(tensors[name].shape)}, expected {shape}")
        names, colors = tuple(str(x) for x in meta["names"]), tuple(str(x) for x in meta["colors"])
        if len(names) != k or len(colors) != k or len(set(values)) != k:
            raise ValueError("head metadata: values, names and colors must be lists of one length with unique values")
        if tensors["feature"].device.type == "meta":  # the loader's dry run: shapes only
            forest = None
        else:
            forest = _forest_from_arrays({n: tensors[n].cpu().numpy() for n in _TENSORS}, c, k)
        weight = tensors.get("weight")
        if weight is not None and tuple(weight.shape) != (k,):
            raise ValueError(f"head tensor 'weight' is {tuple(weight.shape)}, expected {(k,)}")
        return cls(values, names, colors, forest, tensors["bias"].float(), n_features=c,
                   weight=None if weight is None else weight.float(),
                   gate=None if meta.get("gate") is None else torch.tensor([float(g) for g in meta["gate"]])[:k],
                   background_value=None if meta.get("background_value") is None else int(meta["background_value"]),
                   smooth=float(meta.get("smooth", 1.0)), info=dict(meta.get("info") or {}))


def _default_color(value: int) -> str:
    from ..methods.tdfusion import default_class_color

    return default_class_color(int(value))


def _forest_arrays(rf, n_classes: int) -> dict[str, torch.Tensor]:
    """A fitted forest's trees as padded (T, N) node arrays (scikit-learn's own conventions: child -1
    and feature -2 at leaves) and (T, N, K) class fractions."""
    trees = [e.tree_ for e in rf.estimators_]
    n, T = max(t.node_count for t in trees), len(trees)
    out = {"node_count": np.zeros(T, np.int64), "feature": np.full((T, n), -2, np.int64), "threshold": np.zeros((T, n), np.float64),
           "left": np.full((T, n), -1, np.int64), "right": np.full((T, n), -1, np.int64), "value": np.zeros((T, n, n_classes), np.float32)}
    for i, t in enumerate(trees):
        m = t.node_count
        out["node_count"][i] = m
        out["feature"][i, :m], out["threshold"][i, :m] = t.feature[:m], t.threshold[:m]
        out["left"][i, :m], out["right"][i, :m] = t.children_left[:m], t.children_right[:m]
        v = t.value[:m, 0, :]
        out["value"][i, :m] = v / np.maximum(v.sum(1, keepdims=True), 1e-12)
    return {k: torch.from_numpy(v) for k, v in out.items()}


def _forest_from_arrays(a: Mapping[str, np.ndarray], n_features: int, n_classes: int):
    """A scikit-learn forest rebuilt from :func:`_forest_arrays` (checked: indices in range, a tree)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    probe = DecisionTreeClassifier(max_depth=1).fit([[0.0], [1.0]], [0, 1]).tree_.__getstate__()["nodes"].dtype
    estimators = []
    for i, m in enumerate(a["node_count"].astype(int)):
        if not 0 < m <= a["feature"].shape[1]:
            raise ValueError(f"head tree {i}: node count {m} outside 1..{a['feature'].shape[1]}")
        left, right, feat = a["left"][i, :m], a["right"][i, :m], a["feature"][i, :m]
        leaf = left < 0
        if np.any(leaf != (right < 0)) or np.any(left[~leaf] <= np.arange(m)[~leaf]) or np.any(right[~leaf] >= m) \
                or np.any(left[~leaf] >= m) or np.any(right[~leaf] <= np.arange(m)[~leaf]) \
                or np.any((feat[~leaf] < 0) | (feat[~leaf] >= n_features)) or not np.all(np.isfinite(a["threshold"][i, :m])):
            raise ValueError(f"head tree {i} is not a valid decision tree (children, features or thresholds out of range)")
        nodes = np.zeros(m, dtype=probe)
        nodes["left_child"], nodes["right_child"], nodes["feature"] = left, right, np.where(leaf, -2, feat)
        nodes["threshold"] = np.where(leaf, -2.0, a["threshold"][i, :m])
        nodes["n_node_samples"], nodes["weighted_n_node_samples"] = 1, 1.0
        tree = Tree(n_features, np.array([n_classes], dtype=np.intp), 1)
        depth = _depth(left, right)
        tree.__setstate__({"max_depth": depth, "node_count": m, "nodes": nodes,
                           "values": np.ascontiguousarray(a["value"][i, :m, None, :], dtype=np.float64)})
        est = DecisionTreeClassifier()
        est.tree_, est.n_outputs_, est.n_classes_, est.classes_, est.n_features_in_ = tree, 1, n_classes, np.arange(n_classes), n_features
        estimators.append(est)
    rf = RandomForestClassifier(n_estimators=len(estimators), n_jobs=1)
    rf.estimators_, rf.n_outputs_, rf.n_classes_, rf.classes_, rf.n_features_in_ = estimators, 1, n_classes, np.arange(n_classes), n_features
    return rf


def _n_jobs() -> int:
    """Threads for the forest's fit and prediction: as many as torch may use (the trees release the
    GIL; a benchmark that sets one torch thread gets one here too). The trees do not depend on it."""
    return max(1, int(torch.get_num_threads()))


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth = np.zeros(len(left), np.int64)
    for i in range(len(left)):  # children come after their parent (checked above)
        if left[i] >= 0:
            depth[left[i]] = depth[right[i]] = depth[i] + 1
    return int(depth.max())


def fit_head(
    feats: np.ndarray | Sequence[np.ndarray],
    strokes: np.ndarray | Sequence[np.ndarray],
    *,
    background_value: int | None = None,
    class_names: Mapping[int, str] | None = None,
    class_colors: Mapping[int, str] | None = None,
    n_trees: int = N_TREES,
    max_depth: int = MAX_DEPTH,
    smooth: float = 1.0,
    seed: int = 0,
    priors: Mapping[int, float] | None = None,
    gate: float | None = None,
    base_labels: np.ndarray | Sequence[np.ndarray] | None = None,
    replay: np.ndarray | Sequence[np.ndarray] | None = None,
) -> PixelHead:
    """Fit a head on the painted pixels (``strokes > 0``) of one or several images.

    ``feats``: (H, W, C) features of each image (:func:`.features.pixel_features`); ``strokes``: the
    painted labels on the same grid (0 = unpainted). At least two classes must be painted.
    ``priors``: how common each class (by label value; class 0 for the background) really is, e.g.
    from a segmenting model's labels. Strokes over-sample rare classes (a few strokes of tumour, a
    few of background); the forest's probabilities are then corrected by prior / painted share, the
    usual label-shift correction, so a rare class is not painted over every look-alike pixel.
    ``gate`` with ``base_labels`` (a segmenting model's labels of each image): see :meth:`PixelHead.decide`.
    ``replay``: labels (painted values, 0 = none) of unpainted pixels that join the training pixels
    (a model's own labels, to keep what it knows) but not the check that each painted class wins on
    its own strokes.
    """
    from sklearn.ensemble import RandomForestClassifier

    feats = [feats] if isinstance(feats, np.ndarray) else list(feats)
    strokes = [np.asarray(strokes)] if isinstance(strokes, np.ndarray) else [np.asarray(s) for s in strokes]
    if len(feats) != len(strokes):
        raise ValueError(f"{len(feats)} feature images but {len(strokes)} stroke images")
    for i, (f, s) in enumerate(zip(feats, strokes)):
        if f.shape[:2] != s.shape:
            raise ValueError(f"strokes {i} are {s.shape} but their features are {f.shape[:2]}")
    to_class = lambda s: np.where(s == background_value, 0, s) if background_value is not None else s  # noqa: E731
    as_class = [to_class(s) for s in strokes]
    masks = [s > 0 for s in strokes]
    y_painted = np.concatenate([c[m].astype(np.int64) for c, m in zip(as_class, masks)])
    values = tuple(int(v) for v in np.unique(y_painted))
    if len(values) < 2:
        what = "nothing is painted" if not values else f"only class {values[0]} is painted"
        raise ValueError(f"{what}; paint at least two classes (for example the object and its surroundings)")
    painted = {str(v): int(c) for v, c in zip(values, np.bincount(np.searchsorted(values, y_painted), minlength=len(values)))}
    if replay is not None:  # the model's own labels join where nothing is painted (only painted classes)
        replay = [np.asarray(replay)] if isinstance(replay, np.ndarray) else [np.asarray(r) for r in replay]
        train = [np.where(m, c, np.where(np.isin(to_class(r), values) & (r > 0), to_class(r), -1))
                 for c, m, r in zip(as_class, masks, replay)]
    else:
        train = [np.where(m, c, -1) for c, m in zip(as_class, masks)]
    x = np.concatenate([np.asarray(f[t >= 0], np.float32) for f, t in zip(feats, train)])
    y = np.concatenate([t[t >= 0].astype(np.int64) for t in train])
    rng = np.random.default_rng(seed)
    keep = []
    for v in values:  # at most MAX_PIXELS_PER_CLASS pixels of each class
        idx = np.flatnonzero(y == v)
        keep.append(idx if len(idx) <= MAX_PIXELS_PER_CLASS else rng.choice(idx, MAX_PIXELS_PER_CLASS, replace=False))
    keep = np.concatenate(keep)
    draws = None
    if TREE_DRAWS_PER_PAINTED is not None and len(keep) > len(y_painted):
        draws = min(len(keep), max(int(TREE_DRAWS_PER_PAINTED * len(y_painted)), 2))
    rf = RandomForestClassifier(n_estimators=int(n_trees), max_depth=int(max_depth), n_jobs=_n_jobs(), random_state=seed, max_samples=draws)
    rf.fit(x[keep], np.searchsorted(values, y[keep]))
    names = {int(k): str(v) for k, v in (class_names or {}).items()}
    colors = {int(k): str(v) for k, v in (class_colors or {}).items()}
    name_of = lambda v: names.get(v, "background" if v == 0 else f"class {v}")  # noqa: E731
    weight = None
    if priors:
        share = np.bincount(np.searchsorted(values, y[keep]), minlength=len(values)) / len(keep)
        prior = np.array([float(priors.get(v, share[k])) for k, v in enumerate(values)])
        weight = torch.from_numpy(np.clip(prior / np.maximum(share, 1e-9), 0.02, 50.0).astype(np.float32))
    head = PixelHead(values, tuple(name_of(v) for v in values), tuple(colors.get(v, _default_color(v)) for v in values),
                     rf, bias=torch.zeros(len(values)), n_features=int(x.shape[1]), weight=weight, smooth=float(smooth),
                     gate=None if gate is None or base_labels is None else torch.full((len(values),), float(gate)),
                     background_value=None if background_value is None else int(background_value))
    bases = [None] * len(feats)
    if head.gate is not None:
        bases = [head.base_index(bl) for bl in ([base_labels] if isinstance(base_labels, np.ndarray) else list(base_labels))]
    # every painted class must win on at least half of the pixels it was taught on (its strokes and
    # the model's replayed labels of it) and on a quarter of its strokes alone, as the head decides on
    # whole images (smoothed probabilities): lower the gate of a losing class (trust the user over the
    # model), else raise the worst class's score by the margin it lacks there. The best state seen is
    # kept: a raise that makes others lose more is never the result. (Requiring half of the strokes
    # alone let strokes on 3 BraTS slices repaint the others: whole-tumour Dice 0.618 -> 0.582.)
    scored = [head.scores(head.probabilities(f)) for f in feats]
    # the check looks only at the taught pixels: their scores (smoothed on the whole image above) and
    # the model's labels there, gathered once as (1, K, 1, n) so each attempt costs little
    taught = [t >= 0 for t in train]
    at = [s[..., torch.from_numpy(m)][:, :, None, :] for s, m in zip(scored, taught)]
    at_base = [None if bi is None else bi[m][None, :] for bi, m in zip(bases, taught)]
    views = {"taught": ([np.searchsorted(values, t[m]) for t, m in zip(train, taught)], [np.ones(int(m.sum()), bool) for m in taught], MIN_STROKE_RECALL),
             "painted": ([np.searchsorted(values, np.maximum(c[m], 0)) for c, m in zip(as_class, taught)], [pm[m] for pm, m in zip(masks, taught)], MIN_PAINTED_RECALL)}
    bias = torch.zeros(len(values))
    best = None
    for _attempt in range(MAX_ATTEMPTS):
        decided = [head.decide(s, bias, base=bi, scored=True).cpu().numpy()[0] for s, bi in zip(at, at_base)]
        short, need, ranks = {}, {}, []
        for view, (index, ms, floor) in views.items():
            hit, total, deficit = np.zeros(len(values)), np.zeros(len(values)), [[] for _ in values]
            for s, k, idx, m in zip(at, decided, index, ms):
                np.add.at(total, idx[m], 1)
                np.add.at(hit, idx[m][k[m] == idx[m]], 1)
                sc = (s[0, :, 0] + bias.view(-1, 1)).numpy()[:, m]  # (K, pixels)
                own = sc[idx[m], np.arange(sc.shape[1])]
                sc[idx[m], np.arange(sc.shape[1])] = -np.inf
                for j in range(len(values)):
                    deficit[j].append((sc.max(0) - own)[idx[m] == j])
            recall = np.where(total > 0, hit / np.maximum(total, 1), 1.0)
            for j in range(len(values)):
                if total[j] and recall[j] < floor and j not in short:
                    short[j] = recall[j] / floor
                    need[j] = float(np.quantile(np.concatenate(deficit[j]), 1.0 - floor))
            ranks.append(float(np.minimum(recall / floor, 1.0).sum()))
            if view == "painted":
                accuracy = hit.sum() / max(total.sum(), 1)
        rank = (-len(short), sum(ranks), accuracy)
        if best is None or rank > best[0]:
            best = (rank, bias.clone(), None if head.gate is None else head.gate.clone(), accuracy)
        if not short:
            break
        gated = [k for k in short if head.gate is not None and head.gate[k] > 0]
        for k in gated:
            head.gate[k] = max(0.0, float(head.gate[k]) - 0.2)
        if not gated:
            k = min(short, key=short.get)
            bias[k] += max(need[k], 0.0) + 1e-3
    _, bias, gate_best, accuracy = best
    if gate_best is not None:
        head.gate = gate_best
    decided = [head.decide(s, bias, base=bi, scored=True).cpu().numpy() for s, bi in zip(scored, bases)]  # whole images, once
    raised = {values[k] for k in range(len(values)) if bias[k] > 0}
    head.bias = head.bias + bias
    head.info = {"painted_pixels": painted, "stroke_accuracy": round(float(accuracy), 4),
                 "bias_raised_for": sorted(raised), "trees": int(n_trees), "max_depth": int(max_depth)}
    head.last_decision = [np.asarray(values, np.int32)[k] for k in decided]
    return head
