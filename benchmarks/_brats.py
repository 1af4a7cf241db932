"""BraTS test cases through the public API, as a user has them: the NIfTI files, read and fused whole.

Every BraTS number in the docs comes from here: ``napari_fusion.fuse(flair, t1c, method, full=True)``
on the FLAIR and T1c volumes of each held-out case (read by ``napari_fusion.io.read_image``, so in the
reader's display order), scored on the axial slices with at least 8 % brain (the slices the training
loader keeps). ``single_slice=True`` gives each slice to the API alone, as a 2-D image, which is what a
user with one exported slice gets (its intensities are mapped from that slice only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_BRAIN = 0.08  # the training loader's rule (training.data.load_brats_case)


@dataclass
class CaseResult:
    name: str
    z: np.ndarray  # kept axial slices
    a: np.ndarray  # (n, H, W) FLAIR as the method saw it (unit, the method's intensity mapping)
    b: np.ndarray  # T1c likewise
    fused: np.ndarray  # (n, H, W) fused, unit, same mapping as A
    labels: np.ndarray  # (n, H, W) int32 predicted labels
    truth: np.ndarray  # (n, H, W) int32 ground truth
    raw_a: np.ndarray  # (n, H, W) FLAIR slices as read from the file
    raw_b: np.ndarray  # (n, H, W) T1c slices as read


def test_cases(split: str = "test") -> list[Path]:
    from napari_fusion.training.data import shared_data_dir

    root = shared_data_dir()
    if root is None:
        raise FileNotFoundError("BraTS lives in ../shared/data (or $NAPARI_FUSION_DATA); neither was found")
    cases = sorted(p for p in (root / "labeled" / "BraTS2015_deepmedic" / split).glob("*") if p.is_dir())
    if not cases:
        raise FileNotFoundError(f"no BraTS cases in {root / 'labeled' / 'BraTS2015_deepmedic' / split}")
    return cases


def read_case(case: Path):
    """(flair, t1c, seg, kept z) as the reader gives them (LoadedImage, LoadedImage, int32 array, z)."""
    from napari_fusion.io import read_image

    flair, t1c = read_image(case / "flair.nii.gz"), read_image(case / "t1c.nii.gz")
    seg = np.asarray(read_image(case / "seg.nii.gz").data).astype(np.int32)
    mask = np.asarray(read_image(case / "brainmask.nii.gz").data) > 0
    z = np.flatnonzero(mask.reshape(len(mask), -1).mean(1) >= MIN_BRAIN)
    return flair, t1c, seg, z


def run_case(case: Path, method, device: str = "cpu", single_slice: bool = False) -> CaseResult:
    """One case through ``napari_fusion.fuse(..., full=True)``: whole volumes, or slice by slice."""
    from napari_fusion import color, fuse
    from napari_fusion.engine.pipeline import input_intensity_of, prepare_pair, resolve_runner

    flair, t1c, seg, z = read_case(case)
    runner, _, _ = resolve_runner(method, device)
    spec = input_intensity_of(runner)
    if single_slice:
        parts = {k: [] for k in ("a", "b", "fused", "labels")}
        for k in z:
            fa, fb = np.asarray(flair.data[k]), np.asarray(t1c.data[k])
            res = fuse(fa, fb, runner, full=True, device=device)
            prep = prepare_pair(fa, fb, input_intensity=spec)
            parts["a"].append(prep.a)
            parts["b"].append(prep.b)
            parts["fused"].append(color.to_unit(res.fused, prep.intensity)[0])
            parts["labels"].append(res.labels)
        a, b, fused, labels = (np.stack(parts[k]) for k in ("a", "b", "fused", "labels"))
    else:
        res = fuse(flair, t1c, runner, full=True, device=device)
        prep = prepare_pair(flair.data, t1c.data, grid_a=flair.grid, grid_b=t1c.grid, input_intensity=spec)
        a, b = prep.a[z], prep.b[z]
        fused = color.to_unit(res.fused[z], prep.intensity)[0]
        labels = res.labels[z]
    raw_a, raw_b = np.asarray(flair.data)[z], np.asarray(t1c.data)[z]
    return CaseResult(case.name, z, a, b, fused, np.asarray(labels, np.int32), seg[z], raw_a, raw_b)


def run_split(method, device: str = "cpu", single_slice: bool = False, split: str = "test") -> CaseResult:
    """Every case of a split, stacked along the slice axis (``name`` lists the cases; ``case`` not kept:
    use :func:`case_index` for it)."""
    parts = [run_case(c, method, device, single_slice) for c in test_cases(split)]
    cat = lambda k: np.concatenate([getattr(p, k) for p in parts])  # noqa: E731
    keys = ("z", "a", "b", "fused", "labels", "truth", "raw_a", "raw_b")
    return CaseResult(", ".join(p.name for p in parts), *(cat(k) for k in keys))


def case_index(split: str = "test") -> np.ndarray:
    """The case number of every kept slice of :func:`run_split`, in its order."""
    return np.concatenate([np.full(len(read_case(c)[3]), i) for i, c in enumerate(test_cases(split))])
