"""Batch at scale: folders of pairs, in-process or on a Dask cluster, and huge scenes disk to disk.

Folders: every pair is one job (:class:`BatchJob`) that reads both files, walks the pipeline and
writes the result atomically; :func:`fuse_folder` plans the jobs (files pair up by name) and runs
them with :func:`~napari_fusion.engine.jobs.run_jobs` (in-process or on Dask, retries, a failed pair
reported and skipped). A pair too large for memory (more than :data:`LARGE_PAIR_SAMPLES` samples in
one of its files) takes the bounded path by itself: :func:`fuse_job` fuses it tile by tile from
disk to disk (:func:`~napari_fusion.engine.tiled.fuse_file_tiled`), so a folder of huge scenes needs
no other command.

This module is also where the batch names are imported from: the runner of jobs lives in
:mod:`.jobs`, lazy file access in :mod:`.lazy`, disk-to-disk fusion in :mod:`.tiled`, pyramids and
:func:`open_lazy` in :mod:`.pyramid`.
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..geometry import Grid
from ..io.writers import suffix_of
from .jobs import (
    SCHEDULER_TIMEOUT,
    BatchJob,
    BatchReport,
    PairOutcome,
    is_retryable,
    label_path,
    refuse_outputs_over_sources,
    run_jobs,
)
from .lazy import LAZY_SUFFIXES, scene_samples
from .pyramid import open_lazy
from .tiled import TILED_SUFFIXES, fuse_file_tiled, fuse_file_tiled_steps, refuse_output_over_source

__all__ = [
    "BatchJob",
    "PairOutcome",
    "BatchReport",
    "plan_jobs",
    "output_path",
    "file_stem",
    "images_by_name",
    "fuse_job",
    "enhance_job",
    "run_jobs",
    "fuse_folder",
    "fuse_file_tiled",
    "fuse_file_tiled_steps",
    "open_lazy",
    "is_retryable",
    "refuse_outputs_over_sources",
    "refuse_output_over_source",
    "takes_tiled_path",
    "LARGE_PAIR_SAMPLES",
    "SCHEDULER_TIMEOUT",
]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")

#: A pair whose larger file holds more samples (pixels x channels) than this is fused tile by tile
#: from disk to disk by :func:`fuse_job`: 32 Mi samples, e.g. a 5.8k x 5.8k gray scene or a 3.3k x
#: 3.3k RGB one. In memory a pair costs ~28 bytes per sample of a gray pair (both sources, their
#: unit copies, the result): a 5792 x 5792 gray pair, just below, peaks at 1.2 GB, a 16k x 16k one
#: would at 8.2 GB; tiled it stays at 0.33 GB (docs/results/folder_memory.md).
LARGE_PAIR_SAMPLES = 32 * 1024 * 1024


def file_stem(p: Path) -> str:
    """A file's name without its extension (``.nii.gz`` taken whole): the name pairs match on."""
    n = p.name
    return n[: -len(".nii.gz")] if n.lower().endswith(".nii.gz") else p.stem


def images_by_name(folder: Path, clashes: list[PairOutcome] | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by name without extension.

    Two files with one name (``x.png`` and ``x.tif``) are ambiguous: that name is left out and,
    when ``clashes`` is given, reported there as a failed outcome naming both files.
    """
    seen: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_SUFFIXES):
            seen.setdefault(file_stem(p), []).append(p)
    out: dict[str, Path] = {}
    for stem, paths in seen.items():
        if len(paths) == 1:
            out[stem] = paths[0]
        elif clashes is not None:
            others = " and ".join(q.name for q in paths[1:])
            clashes.append(PairOutcome(stem, "failed", error=f"{paths[0]} and {others} share the name {stem!r}: rename or remove all but one"))
    return out


def output_path(out_dir: str | os.PathLike, name: str, path_a: str | os.PathLike, suffix: str | None = None) -> Path:
    """Where a pair's result goes: ``OUT_DIR/NAME`` + A's format (JPEG -> PNG, lossless) or ``suffix``."""
    suf = suffix or suffix_of(Path(path_a))
    if suf in (".jpg", ".jpeg"):
        suf = ".png"
    if not suf.startswith("."):
        suf = "." + suf
    return Path(out_dir) / f"{name}{suf}"


def plan_jobs(
    a_dir: str | os.PathLike,
    b_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    suffix: str | None = None,
) -> tuple[list[BatchJob], list[PairOutcome]]:
    """Jobs for two folders (files pair up by name without extension) or one pair-layout folder.

    Returns ``(jobs, problems)``: a file without a partner is a failed outcome, not a job.
    """
    a_dir = Path(a_dir)
    if not a_dir.is_dir():
        raise NotADirectoryError(f"{a_dir}: not a folder")
    jobs: list[BatchJob] = []
    problems: list[PairOutcome] = []
    if b_dir is None:
        import warnings

        from ..io import find_pairs

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pairs = find_pairs(a_dir, missing="warn")
        for w in caught:
            msg = str(w.message)
            problems.append(PairOutcome(msg.split(" ")[0].rsplit("/", 1)[-1], "failed", error=msg.replace(" (skipped)", "")))
        if not pairs and not problems:
            raise FileNotFoundError(
                f"{a_dir}: no image pairs found (give A_DIR and B_DIR, or a folder laid out as ir/+vi/, "
                "MRI/+CT|PET|SPECT/ or NAME/pan.tif+ms.tif)"
            )
        for p in pairs:
            jobs.append(BatchJob(p.name, Path(p.path_a), Path(p.path_b), output_path(out_dir, p.name, p.path_a, suffix), p.modality_a, p.modality_b))
        return jobs, problems
    b_dir = Path(b_dir)
    if not b_dir.is_dir():
        raise NotADirectoryError(f"{b_dir}: not a folder")
    ia, ib = images_by_name(a_dir, problems), images_by_name(b_dir, problems)
    if not ia and not ib and not problems:
        raise FileNotFoundError(f"no images in {a_dir} or {b_dir}")
    clashing = {p.name for p in problems}
    for stem, pa in ia.items():
        if stem in ib:
            jobs.append(BatchJob(stem, pa, ib[stem], output_path(out_dir, stem, pa, suffix)))
        elif stem not in clashing:
            problems.append(PairOutcome(stem, "failed", error=f"{pa} has no partner named {stem}.* in {b_dir}"))
    for stem, pb in ib.items():
        if stem not in ia and stem not in clashing:
            problems.append(PairOutcome(stem, "failed", error=f"{pb} has no partner named {stem}.* in {a_dir}"))
    return jobs, problems


def _write_labels(path: Path, labels: np.ndarray, like: Any, grid: Grid) -> None:
    from ..io import write_image

    lab = labels
    if suffix_of(path) in (".png", ".jpg", ".jpeg"):
        path = path.with_suffix(".png")
        lab = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    write_image(path, lab, like=like, grid=grid, rgb=False)


def takes_tiled_path(job: BatchJob, method: Any = None, device: str = "auto", tile: int | None = None) -> bool:
    """Whether :func:`fuse_job` fuses this pair tile by tile from disk to disk (bounded memory).

    It does when the larger of the two files holds more than :data:`LARGE_PAIR_SAMPLES` samples
    (read from the headers) and the bounded path can take the pair: A is a 2-D gray or RGB scene
    read lazily (TIFF, zarr, ``.npy``), the result goes to a TIFF or zarr, the method does not
    segment (labels are made in memory) and ``tile`` is not 0 (never tile).
    """
    if tile == 0 or job.path_b is None or suffix_of(job.out) not in TILED_SUFFIXES or suffix_of(job.path_a) not in LAZY_SUFFIXES:
        return False
    if max(scene_samples(job.path_a), scene_samples(job.path_b)) <= LARGE_PAIR_SAMPLES:
        return False
    from .lazy import open_source
    from .pipeline import resolve_runner, segments_of

    if open_source(job.path_a, "A").bands:  # a volume or bands as A: the in-memory path says what is wrong
        return False
    runner, _, m = resolve_runner(method, device)
    return not segments_of(runner, m)


def fuse_job(job: BatchJob, method: Any = None, device: str = "auto", tile: int | None = None, overwrite: bool = False) -> PairOutcome:
    """Run one pair through the pipeline and write its result (raises on failure).

    A pair too large for memory (:func:`takes_tiled_path`) is fused tile by tile from disk to disk
    (``tile`` pixels per I/O tile; automatic: 1024) into a tiled (Geo)TIFF or zarr with a pyramid.
    """
    from ..io import Pair, read_pair, write_image
    from .pipeline import AUTO_TILE, fuse_arrays

    t0 = time.perf_counter()
    if job.out.exists() and not overwrite:
        return PairOutcome(job.name, "skipped", job.out, seconds=time.perf_counter() - t0)
    if job.path_b is None:
        raise ValueError(f"{job.path_a} has no partner")
    if takes_tiled_path(job, method, device, tile):
        fuse_file_tiled(job.path_a, job.path_b, job.out, method, tile=tile or AUTO_TILE, device=device)
        return PairOutcome(job.name, "done", job.out, seconds=time.perf_counter() - t0)
    pair = Pair(job.name, job.path_a, job.path_b, job.modality_a or "A", job.modality_b or "B")
    a, b = read_pair(pair)
    res = fuse_arrays(a.data, b.data, method, grid_a=a.grid, grid_b=b.grid, rgb_a=a.rgb, rgb_b=b.rgb,
                      channel_axis_b=b.channel_axis, device=device, tile=tile)
    is_rgb = res.fused.ndim == res.grid.ndim + 1 and res.fused.shape[-1] == 3
    write_image(job.out, res.fused, like=a, grid=res.grid, rgb=is_rgb)
    if res.labels is not None:
        _write_labels(label_path(job.out), res.labels, a, res.grid)
    return PairOutcome(job.name, "done", job.out, seconds=time.perf_counter() - t0)


def enhance_job(job: BatchJob, method: Any = "gifnet", device: str = "auto", tile: int | None = None, overwrite: bool = False) -> PairOutcome:
    """Enhance one image (``job.path_a``) and write it (raises on failure)."""
    from ..io import read_image, write_image
    from .pipeline import enhance_arrays

    t0 = time.perf_counter()
    if job.out.exists() and not overwrite:
        return PairOutcome(job.name, "skipped", job.out, seconds=time.perf_counter() - t0)
    img = read_image(job.path_a)
    res = enhance_arrays(img.data, method, grid=img.grid, rgb=img.rgb, device=device, tile=tile)
    write_image(job.out, res.fused, like=img, grid=res.grid, rgb=img.rgb)
    return PairOutcome(job.name, "done", job.out, seconds=time.perf_counter() - t0)


def fuse_folder(
    a_dir: str | os.PathLike,
    b_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    method: str | None = None,
    *,
    device: str = "auto",
    tile: int | None = None,
    overwrite: bool = False,
    workers: int = 0,
    scheduler: str | None = None,
    retries: int = 0,
    processes: bool = True,
    suffix: str | None = None,
    progress: Callable[[PairOutcome], Any] | None = None,
) -> BatchReport:
    """Fuse every pair of two folders (or one pair-layout folder) into ``out_dir``; never stops on a bad pair."""
    from ..methods.registry import default_method, get_method

    name = get_method(method or default_method()).name  # unknown method: fail before any work
    jobs, problems = plan_jobs(a_dir, b_dir, out_dir, suffix=suffix)
    fn = functools.partial(fuse_job, method=name, device=device, tile=tile, overwrite=overwrite)
    for p in problems:
        if progress is not None:
            progress(p)
    report = run_jobs(jobs, fn, workers=workers, scheduler=scheduler, retries=retries, processes=processes, progress=progress)
    report.outcomes = report.outcomes + problems
    return report
