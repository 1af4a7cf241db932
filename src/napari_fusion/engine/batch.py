"""Batch at scale: folders of pairs (in-process or on a Dask cluster) and huge scenes disk to disk.

Folders: every pair is one job that reads both files, walks the pipeline and writes the result
atomically; a job that fails (unreadable file, size mismatch, NaN, missing partner) becomes a
"failed" outcome with its message and the batch goes on. Transient failures (out of memory, I/O,
CUDA errors) are retried up to ``retries`` times; bad-input errors (ValueError, missing files) are not,
since they would fail the same way again. The same job function runs in-process, on a local
``dask.distributed`` cluster (``workers=N``) or on a remote scheduler, so the files written are
byte-identical whichever way it ran.

Huge scenes: :func:`fuse_file_tiled` reads tiles from memory-mapped TIFF / zarr / ``.npy`` inputs
(B resampled onto A's grid tile by tile), fuses through :func:`~napari_fusion.engine.tiling.fuse_tiled_steps`
and writes a chunked zarr or tiled (Geo)TIFF with a multiscale pyramid; :func:`open_lazy` gives the
levels back as dask arrays for napari (``viewer.add_image(levels, multiscale=True)``).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import color
from ..geometry import Grid, implied_grid, resolution_ratio, same_grid, shape_str
from .tiling import Progress, count_tiles, fuse_tiled_steps

__all__ = [
    "BatchJob",
    "PairOutcome",
    "BatchReport",
    "plan_jobs",
    "output_path",
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
]

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".nii.gz")
SCHEDULER_TIMEOUT = 5  # seconds to reach a Dask scheduler before giving up with a message


# ------------------------------------------------------------------------------------------------
# folders of pairs
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchJob:
    """One unit of batch work: fuse ``path_a`` + ``path_b`` (or enhance ``path_a``) into ``out``."""

    name: str
    path_a: Path
    path_b: Path | None
    out: Path
    modality_a: str | None = None
    modality_b: str | None = None


@dataclass
class PairOutcome:
    """What happened to one job: "done", "skipped" (output existed) or "failed" (with the reason)."""

    name: str
    status: str
    out: Path | None = None
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 1


@dataclass
class BatchReport:
    """All outcomes of a batch, in job order."""

    outcomes: list[PairOutcome] = field(default_factory=list)
    seconds: float = 0.0
    startup_seconds: float = 0.0  # Dask: cluster start and worker imports, included in ``seconds``

    def _with(self, status: str) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[PairOutcome]:
        return self._with("done")

    @property
    def skipped(self) -> list[PairOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[PairOutcome]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """A few lines: counts, then one line per failure."""
        start = f" (cluster start {self.startup_seconds:.1f} s)" if self.startup_seconds else ""
        lines = [
            f"{len(self.done)} fused, {len(self.skipped)} skipped (already done), {len(self.failed)} failed "
            f"in {self.seconds:.1f} s{start}"
        ]
        for o in self.failed:
            tries = f" (after {o.attempts} attempts)" if o.attempts > 1 else ""
            lines.append(f"  FAILED {o.name}: {o.error}{tries}")
        return "\n".join(lines)


def _stem(p: Path) -> str:
    n = p.name
    return n[: -len(".nii.gz")] if n.lower().endswith(".nii.gz") else p.stem


def _suffix(p: Path) -> str:
    n = p.name.lower()
    return ".nii.gz" if n.endswith(".nii.gz") else p.suffix.lower()


def _images(folder: Path, clashes: list[PairOutcome] | None = None) -> dict[str, Path]:
    """Image files of ``folder`` by name without extension.

    Two files with one name (``x.png`` and ``x.tif``) are ambiguous: that name is left out and,
    when ``clashes`` is given, reported there as a failed outcome naming both files.
    """
    seen: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(_SUFFIXES):
            seen.setdefault(_stem(p), []).append(p)
    out: dict[str, Path] = {}
    for stem, paths in seen.items():
        if len(paths) == 1:
            out[stem] = paths[0]
        elif clashes is not None:
            others = " and ".join(q.name for q in paths[1:])
            clashes.append(PairOutcome(stem, "failed", error=f"{paths[0]} and {others} share the name {stem!r}: rename or remove all but one"))
    return out


def refuse_outputs_over_sources(jobs: Iterable[BatchJob]) -> None:
    """Raise ValueError when a job would write into a folder that holds source images.

    Writing there overwrites the sources (``--out A``, ``--out pairs/ir``) or mixes results with
    them; it is refused whether or not outputs may be overwritten. Missing sources are ignored.
    """
    folders: dict[tuple[int, int], Path] = {}
    for job in jobs:
        for src in (job.path_a, job.path_b):
            if src is None:
                continue
            try:
                st = Path(src).parent.stat() if Path(src).is_file() else None
            except OSError:
                st = None
            if st is not None:
                folders.setdefault((st.st_dev, st.st_ino), Path(src))
    if not folders:
        return
    for job in jobs:
        outs = [job.out.parent] + ([_label_path(job.out).parent] if job.path_b is not None else [])
        for folder in outs:
            try:
                st = folder.stat()
            except OSError:
                continue
            src = folders.get((st.st_dev, st.st_ino))
            if src is not None:
                raise ValueError(
                    f"output folder {folder} holds the source images (e.g. {src}); writing there would "
                    "overwrite or mix with them: choose another output folder"
                )


def output_path(out_dir: str | os.PathLike, name: str, path_a: str | os.PathLike, suffix: str | None = None) -> Path:
    """Where a pair's result goes: ``OUT_DIR/NAME`` + A's format (JPEG -> PNG, lossless) or ``suffix``."""
    suf = suffix or _suffix(Path(path_a))
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
    ia, ib = _images(a_dir, problems), _images(b_dir, problems)
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


def _label_path(out: Path) -> Path:
    return out.parent / "labels" / out.name


def _write_labels(path: Path, labels: np.ndarray, like: Any, grid: Grid) -> None:
    from ..io import write_image

    lab = labels
    if _suffix(path) in (".png", ".jpg", ".jpeg"):
        path = path.with_suffix(".png")
        lab = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    write_image(path, lab, like=like, grid=grid, rgb=False)


def fuse_job(job: BatchJob, method: Any = None, device: str = "auto", tile: int | None = None, overwrite: bool = False) -> PairOutcome:
    """Run one pair through the pipeline and write its result (raises on failure)."""
    from ..io import Pair, read_pair, write_image
    from .pipeline import fuse_arrays

    t0 = time.perf_counter()
    if job.out.exists() and not overwrite:
        return PairOutcome(job.name, "skipped", job.out, seconds=time.perf_counter() - t0)
    if job.path_b is None:
        raise ValueError(f"{job.path_a} has no partner")
    pair = Pair(job.name, job.path_a, job.path_b, job.modality_a or "A", job.modality_b or "B")
    a, b = read_pair(pair)
    res = fuse_arrays(a.data, b.data, method, grid_a=a.grid, grid_b=b.grid, rgb_a=a.rgb, rgb_b=b.rgb,
                      channel_axis_b=b.channel_axis, device=device, tile=tile)
    is_rgb = res.fused.ndim == res.grid.ndim + 1 and res.fused.shape[-1] == 3
    write_image(job.out, res.fused, like=a, grid=res.grid, rgb=is_rgb)
    if res.labels is not None:
        _write_labels(_label_path(job.out), res.labels, a, res.grid)
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


def is_retryable(err: BaseException) -> bool:
    """Transient failures worth another try; bad input (ValueError, missing file, wrong type) is not."""
    return not isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError, NotImplementedError))


def _describe_error(err: BaseException) -> str:
    msg = str(err) or type(err).__name__
    if not isinstance(err, (ValueError, OSError, KeyError)):
        msg = f"{type(err).__name__}: {msg}"
    return msg


def run_jobs(
    jobs: Sequence[BatchJob],
    fn: Callable[[BatchJob], PairOutcome],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    retries: int = 0,
    processes: bool = True,
    progress: Callable[[PairOutcome], Any] | None = None,
) -> BatchReport:
    """Run ``fn(job)`` for every job: in-process (default), on a local Dask cluster (``workers``)
    or on the cluster at ``scheduler`` (``tcp://host:8786``). Outcomes come back in job order.

    ``fn`` must be picklable for process workers (a module-level function or a ``functools.partial``).
    Raises ValueError for a negative worker or retry count and for outputs in a folder of sources
    (:func:`refuse_outputs_over_sources`); ConnectionError when ``scheduler`` cannot be reached.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a positive number of Dask workers (or 0: in-process), not {workers!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries!r}")
    refuse_outputs_over_sources(jobs)
    t0 = time.perf_counter()
    startup = [0.0]
    if scheduler or workers:
        outcomes = _run_dask(jobs, fn, workers=workers, scheduler=scheduler, retries=retries, processes=processes,
                             progress=progress, startup=startup)
    else:
        outcomes = []
        for job in jobs:
            o = _attempt_local(job, fn, retries)
            outcomes.append(o)
            if progress is not None:
                progress(o)
    return BatchReport(outcomes, time.perf_counter() - t0, startup[0])


def _attempt_local(job: BatchJob, fn: Callable[[BatchJob], PairOutcome], retries: int) -> PairOutcome:
    attempt = 0
    while True:
        attempt += 1
        t0 = time.perf_counter()
        try:
            o = fn(job)
            o.attempts = attempt
            return o
        except Exception as err:  # noqa: BLE001 - every failure becomes a reported outcome
            if attempt <= retries and is_retryable(err):
                continue
            return PairOutcome(job.name, "failed", job.out, _describe_error(err), time.perf_counter() - t0, attempt)


def _warm_worker() -> int:
    """Load the method registry (torch and the learned families) on a worker."""
    from ..methods.registry import list_methods

    return len(list_methods())


def _guarded(fn: Callable[[BatchJob], PairOutcome], job: BatchJob) -> PairOutcome:
    """Run a job on a worker: bad input becomes a failed outcome; transient errors raise (to be retried)."""
    t0 = time.perf_counter()
    try:
        return fn(job)
    except Exception as err:  # noqa: BLE001
        if is_retryable(err):
            raise
        return PairOutcome(job.name, "failed", job.out, _describe_error(err), time.perf_counter() - t0)


def _run_dask(
    jobs: Sequence[BatchJob],
    fn: Callable[[BatchJob], PairOutcome],
    *,
    workers: int,
    scheduler: str | None,
    retries: int,
    processes: bool,
    progress: Callable[[PairOutcome], Any] | None,
    startup: list[float] | None = None,
) -> list[PairOutcome]:
    from distributed import Client, LocalCluster, as_completed

    t0 = time.perf_counter()
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, ValueError, TypeError) as err:  # refused, timed out, malformed address
            raise ConnectionError(f"could not reach the Dask scheduler at {scheduler}: {err}") from err
    else:
        cluster = LocalCluster(
            n_workers=int(workers), threads_per_worker=1, processes=processes, dashboard_address=None, silence_logs=logging.CRITICAL
        )
        client = Client(cluster)
    tag = uuid.uuid4().hex[:8]
    try:
        client.run(_warm_worker)  # imports and the registry once per worker, before the clock of the jobs
        if startup is not None:
            startup[0] = time.perf_counter() - t0
        futures = {}
        submitted = []
        for i, job in enumerate(jobs):
            fut = client.submit(_guarded, fn, job, key=f"napari-fusion-{tag}-{i}-1", pure=False)
            futures[fut.key] = (i, 1)
            submitted.append(fut)
        results: list[PairOutcome | None] = [None] * len(jobs)
        ac = as_completed(submitted)
        for fut in ac:
            i, attempt = futures[fut.key]
            job = jobs[i]
            if fut.status == "error":
                err = fut.exception()
                if attempt <= retries and is_retryable(err):
                    new = client.submit(_guarded, fn, job, key=f"napari-fusion-{tag}-{i}-{attempt + 1}", pure=False)
                    futures[new.key] = (i, attempt + 1)
                    ac.add(new)
                    continue
                o = PairOutcome(job.name, "failed", job.out, _describe_error(err), 0.0, attempt)
            else:
                o = fut.result()
                o.attempts = attempt
            results[i] = o
            if progress is not None:
                progress(o)
        return [r for r in results if r is not None]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


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


# ------------------------------------------------------------------------------------------------
# huge scenes, disk to disk
# ------------------------------------------------------------------------------------------------
@dataclass
class _LazySource:
    """A file opened without reading it: a sliceable array plus its layout, grid and intensity."""

    data: Any
    path: Path
    rgb: bool
    bands: bool  # bands-first (C, H, W)
    grid: Grid
    meta: dict
    intensity: color.Intensity | None = None
    label: str = ""  # "A" / "B", for messages

    @property
    def spatial(self) -> tuple[int, int]:
        s = tuple(self.data.shape)
        return (s[1], s[2]) if self.bands else (s[0], s[1])

    def _where(self, ys: slice, xs: slice) -> str:
        h, w = self.spatial
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        return f"rows {y0}-{max(y0, y1 - 1)}, columns {x0}-{max(x0, x1 - 1)}"

    def block(self, ys: slice, xs: slice) -> np.ndarray:
        """Pixels of one tile; ValueError naming the file and the tile when it cannot be read or
        holds NaN/inf (checked on every tile, so nothing non-finite reaches the output)."""
        try:
            blk = np.asarray(self.data[:, ys, xs] if self.bands else self.data[ys, xs])
        except (OSError, ValueError, RuntimeError) as err:  # truncated / corrupt chunk (tifffile, codecs, zarr)
            raise ValueError(f"source {self.label}: cannot read {self._where(ys, xs)} of {self.path}: {_describe_error(err)}") from err
        if blk.dtype.kind == "f" and not np.isfinite(blk).all():
            raise ValueError(
                f"source {self.label}: {self.path} has NaN or infinite values in {self._where(ys, xs)}; "
                "fill or mask them before fusing"
            )
        return blk


def _open_source(path: str | os.PathLike, name: str) -> _LazySource:
    """Open a scene lazily: zarr folder, ``.npy`` (memory-mapped) or TIFF (memmap or chunked zarr view)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"source {name}: {p} does not exist")
    meta: dict = {"path": str(p)}
    if p.is_dir() or _suffix(p) == ".zarr":
        import zarr

        z = zarr.open(str(p), mode="r")
        if not hasattr(z, "shape"):
            z = z["0"]
        data = z
        grid = _grid_from_attrs(getattr(z, "attrs", {}), data.shape)
    elif _suffix(p) == ".npy":
        data = np.load(p, mmap_mode="r")
        grid = None
    elif _suffix(p) in (".tif", ".tiff"):
        data, grid, meta = _open_tiff(p, name)
    else:
        from ..io import read_image

        img = read_image(p)
        return _LazySource(img.data, p, img.rgb, img.channel_axis is not None, img.grid, img.meta, label=name)
    shape = tuple(data.shape)
    rgb = len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4
    bands = len(shape) == 3 and not rgb
    if len(shape) not in (2, 3):
        raise ValueError(f"source {name}: {p} is {shape}; tiled disk-to-disk fusion takes 2-D gray, RGB or bands-first scenes")
    if np.dtype(data.dtype).kind not in "uif":
        raise ValueError(f"source {name}: {p} has unsupported dtype {data.dtype}")
    src = _LazySource(data, p, rgb, bands, None, meta, label=name)  # type: ignore[arg-type]
    src.grid = grid if grid is not None else Grid.identity(src.spatial)
    return src


def _grid_from_attrs(attrs: Any, shape: tuple[int, ...]) -> Grid | None:
    aff = attrs.get("affine") if hasattr(attrs, "get") else None
    if aff is None:
        return None
    aff = np.asarray(aff, float)
    n = aff.shape[0] - 1
    spatial = shape[-n:] if len(shape) == n or not (len(shape) == 3 and shape[-1] in (3, 4)) else shape[:n]
    return Grid(tuple(spatial), aff, str(attrs.get("units", "pixel")))


def _check_tiff_complete(tf: Any, p: Path, name: str) -> None:
    """ValueError when the pixel data of the first series runs past the end of the file (truncated)."""
    size = p.stat().st_size
    for page in tf.series[0].pages:
        if page is None:
            continue
        ends = [int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        if ends and max(ends) > size:
            raise ValueError(
                f"source {name}: {p} is truncated: its pixel data needs {max(ends)} bytes but the file has {size}"
            )


def _open_tiff(p: Path, name: str) -> tuple[Any, Grid | None, dict]:
    import tifffile

    from ..io.geotiff import grid_from_geotags, read_geotags

    if p.stat().st_size == 0:
        raise ValueError(f"source {name}: {p} is empty (0 bytes)")
    try:
        with tifffile.TiffFile(str(p)) as tf:
            if not tf.series:
                raise ValueError(f"source {name}: {p} holds no image")
            page = tf.pages[0]
            geotags = read_geotags(page)
            series_shape = tuple(tf.series[0].shape)
            _check_tiff_complete(tf, p, name)
    except (tifffile.TiffFileError, struct.error, IndexError, KeyError, OSError) as err:
        raise ValueError(f"source {name}: {p} is not a readable TIFF ({_describe_error(err)})") from err
    try:
        data = tifffile.memmap(str(p), mode="r")
    except Exception:
        import zarr

        z = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
        data = z if hasattr(z, "shape") else z["0"]
    if tuple(data.shape) != series_shape:
        data = data.reshape(series_shape)
    meta = {"path": str(p)}
    shape = tuple(data.shape)
    spatial = shape[:2] if (len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4) else shape[-2:]
    grid = None
    if geotags:
        grid = grid_from_geotags(geotags, tuple(spatial))
        if grid is not None:
            meta["geotiff_tags"] = geotags
    return data, grid, meta


def _sample(src: _LazySource, n_patches: int = 24, patch: int = 64, reader: Callable | None = None,
            shape: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels of evenly spread patches (the whole scene when small), for intensity statistics.

    Layout: gray ``(N,)``, RGB ``(N, 3)``, bands ``(C, N)``; reading 24 x 24 patches instead of
    strided rows keeps chunked (zarr/compressed TIFF) inputs from being decoded many times over.
    ``reader(ys, xs)`` / ``shape`` sample another grid (B resampled onto A's) at the same patches.
    """
    h, w = shape or src.spatial
    read = reader or src.block
    if h * w <= 4_000_000:
        blocks = [read(slice(0, h), slice(0, w))]
    else:
        ys = np.linspace(0, max(h - patch, 0), n_patches).astype(int)
        xs = np.linspace(0, max(w - patch, 0), n_patches).astype(int)
        blocks = [read(slice(y, y + patch), slice(x, x + patch)) for y in ys for x in xs]
    if src.bands:
        return np.concatenate([b.reshape(b.shape[0], -1) for b in blocks], axis=1)
    if src.rgb:
        return np.concatenate([b[..., :3].reshape(-1, 3) for b in blocks], axis=0)
    return np.concatenate([b.reshape(-1) for b in blocks])


class _BOnA:
    """Reads blocks of B resampled onto A's grid, one tile at a time (linear interpolation)."""

    def __init__(self, b: _LazySource, grid_a: Grid):
        self.b = b
        gb = b.grid
        if gb.is_identity and not same_grid(gb, grid_a):
            r = resolution_ratio(gb.shape, grid_a.shape)
            if r is None:
                raise ValueError(
                    f"source B is {shape_str(gb.shape)} but source A is {shape_str(grid_a.shape)}; "
                    "no known resolution ratio relates them"
                )
            gb = implied_grid(gb.shape, grid_a, r)
        elif gb.units != grid_a.units:
            raise ValueError(f"source B is in {gb.units!r} but source A in {grid_a.units!r}; their world coordinates do not relate")
        self.same = same_grid(gb, grid_a) or (gb.shape == grid_a.shape and np.allclose(gb.affine, grid_a.affine))
        self.a_to_b = np.linalg.inv(gb.affine) @ grid_a.affine

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        from scipy import ndimage

        b = self.b
        if self.same:
            return b.block(ys, xs)
        lin, off = self.a_to_b[:2, :2], self.a_to_b[:2, 2]
        corners = np.array([[ys.start, xs.start], [ys.start, xs.stop - 1], [ys.stop - 1, xs.start], [ys.stop - 1, xs.stop - 1]], float)
        cb = corners @ lin.T + off
        h, w = b.spatial
        r0 = int(max(0, math.floor(cb[:, 0].min()) - 2))
        r1 = int(min(h, math.ceil(cb[:, 0].max()) + 3))
        c0 = int(max(0, math.floor(cb[:, 1].min()) - 2))
        c1 = int(min(w, math.ceil(cb[:, 1].max()) + 3))
        shape = (ys.stop - ys.start, xs.stop - xs.start)
        if r0 >= r1 or c0 >= c1:  # the tile lies outside B
            extra = (3,) if b.rgb else ()
            lead = (b.data.shape[0],) if b.bands else ()
            return np.zeros(lead + shape + extra, dtype=b.data.dtype)
        dt = np.dtype(b.data.dtype)
        blk = b.block(slice(r0, r1), slice(c0, c1)).astype(np.float32)
        offset = off + lin @ np.array([ys.start, xs.start], float) - np.array([r0, c0], float)
        matrix = np.diag(lin) if np.allclose(lin, np.diag(np.diag(lin))) else lin
        # zero outside B's extent (more than half a B pixel beyond its edge), as bring_onto does
        ii = np.arange(shape[0], dtype=np.float64)[:, None]
        jj = np.arange(shape[1], dtype=np.float64)[None, :]
        br = lin[0, 0] * (ii + ys.start) + lin[0, 1] * (jj + xs.start) + off[0]
        bc = lin[1, 0] * (ii + ys.start) + lin[1, 1] * (jj + xs.start) + off[1]
        inside = (br >= -0.5 - 1e-6) & (br <= h - 0.5 + 1e-6) & (bc >= -0.5 - 1e-6) & (bc <= w - 0.5 + 1e-6)

        def one(x: np.ndarray) -> np.ndarray:
            o = ndimage.affine_transform(x, matrix, offset=offset, output_shape=shape, order=1, mode="nearest", prefilter=False)
            o[~inside] = 0
            if dt.kind in "ui":  # B keeps its dtype, as geometry.bring_onto does
                info = np.iinfo(dt)
                return np.clip(np.rint(o), info.min, info.max).astype(dt)
            return o.astype(dt if dt.itemsize >= 4 else np.float32)

        if b.bands:
            return np.stack([one(c) for c in blk])
        if b.rgb:
            return np.stack([one(blk[..., c]) for c in range(blk.shape[-1])], axis=-1)
        return one(blk)


def _unit_luma(x: np.ndarray, inten: color.Intensity, rgb: bool) -> tuple[np.ndarray, np.ndarray | None]:
    u, _ = color.to_unit(x[..., :3] if rgb else x, inten)
    if rgb:
        ycc = color.rgb_to_ycbcr(u)
        return ycc[..., 0], ycc[..., 1:]
    return u, None


def fuse_file_tiled_steps(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out_path: str | os.PathLike,
    method: Any = None,
    tile: int = 1024,
    overlap: int = 32,
    *,
    device: str = "auto",
    pyramid: bool = True,
    chunk: int = 512,
    overwrite: bool = True,
):
    """Generator form of :func:`fuse_file_tiled`: yields Progress per tile (then per pyramid level)."""
    from .pipeline import _align, _halo, _preferred_tile, fuse_unit, resolve_runner

    out_path = Path(out_path)
    refuse_output_over_source(out_path, path_a, path_b)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists (pass overwrite=True)")
    osuf = _suffix(out_path)
    if osuf not in (".zarr", ".tif", ".tiff"):
        raise ValueError(f"{out_path}: tiled output must be .zarr or .tif/.tiff")
    a = _open_source(path_a, "A")
    b = _open_source(path_b, "B")
    if a.bands:
        raise ValueError(f"source A ({a.path}) is multi-band {tuple(a.data.shape)}; pass the panchromatic scene as A")
    runner, name, m = resolve_runner(method, device)
    halo, align = _halo(runner, m), _align(runner)
    a.intensity = color.intensity_of(_sample(a), "source A")
    b.intensity = color.intensity_of(_sample(b), "source B")
    bon = _BOnA(b, a.grid)
    H, W = a.spatial

    # output layout
    if b.bands:
        C = int(b.data.shape[0])
        oshape, odtype, inten_out = (C, H, W), np.dtype(b.data.dtype), b.intensity
        ochunks = (1, chunk, chunk)
        # PAN matched to the MS intensity (mean/std from samples), as the in-memory pipeline does
        # statistics on the same A-grid pixels as the in-memory pipeline (identical for scenes <= 4 Mpx)
        pa_s, _ = _unit_luma(_sample(a), a.intensity, a.rgb)
        ms_s = color.to_unit(_sample(b, reader=bon.read, shape=(H, W)), b.intensity)[0].mean(axis=0)
        sx, sr = float(pa_s.std()), float(ms_s.std())
        gain_pan = sr / sx if sx > 1e-8 else 1.0
        mean_pan, mean_ms = float(pa_s.mean()), float(ms_s.mean())
    elif a.rgb or b.rgb:
        oshape, odtype, inten_out = (H, W, 3), np.dtype(a.data.dtype), a.intensity
        ochunks = (chunk, chunk, 3)
    else:
        oshape, odtype, inten_out = (H, W), np.dtype(a.data.dtype), a.intensity
        ochunks = (chunk, chunk)
    if odtype.kind == "f":
        odtype = np.dtype(np.float32)

    def read(ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
        ua, _ = _unit_luma(a.block(ys, xs), a.intensity, a.rgb)
        bb = bon.read(ys, xs)
        if b.bands:
            i = color.to_unit(bb, b.intensity)[0].mean(axis=0)
            ua = np.clip((ua - mean_pan) * gain_pan + mean_ms, 0.0, 1.0)
            return ua.astype(np.float32), i.astype(np.float32)
        ub, _ = _unit_luma(bb, b.intensity, b.rgb)
        return ua.astype(np.float32), ub.astype(np.float32)

    import zarr

    from ..io.atomic import atomic_path

    # everything (the zarr, or the scratch zarr of a TIFF) lives in atomic_path's private folder:
    # a failed or killed run leaves no target behind, and the next run removes the folder
    with atomic_path(out_path) as tmp:
        store = tmp if osuf == ".zarr" else tmp.parent / "levels.zarr"
        group = zarr.open_group(str(store), mode="w")
        z0 = group.create_array("0", shape=oshape, chunks=ochunks, dtype=odtype, fill_value=0)

        def write(ys: slice, xs: slice, f: np.ndarray) -> None:
            f = np.clip(f, 0.0, 1.0)
            if b.bands:
                bands = color.to_unit(bon.read(ys, xs), b.intensity)[0]
                i = bands.mean(axis=0)
                g = (f + 1e-3) / (i + 1e-3)
                z0[:, ys, xs] = color.from_unit(np.clip(bands * g[None], 0.0, 1.0), inten_out).astype(odtype)
            elif len(oshape) == 3:
                if a.rgb:
                    _, chroma = _unit_luma(a.block(ys, xs), a.intensity, True)
                else:
                    _, chroma = _unit_luma(bon.read(ys, xs), b.intensity, True)
                rgb = color.ycbcr_to_rgb(np.concatenate([f[..., None], chroma], axis=-1))
                z0[ys, xs, :] = color.from_unit(rgb, inten_out).astype(odtype)
            else:
                z0[ys, xs] = color.from_unit(f, inten_out).astype(odtype)

        ov = min(int(overlap), int(tile) // 2)
        # each I/O tile runs as the engine runs any plane: in the runner's preferred (cache-sized) tiles
        fn = (lambda x, y: fuse_unit(runner, x, y)) if _preferred_tile(runner) else runner
        gen = fuse_tiled_steps(fn, None, None, tile, ov, halo=halo, align=align, read=read, write=write, shape=(H, W), stage="tiles")
        yield from gen
        levels = [z0]
        if pyramid:
            levels = yield from _build_pyramid(group, z0, bands=b.bands)
        group.attrs["napari_fusion"] = {
            "method": name,
            "levels": len(levels),
            "source_a": str(a.path),
            "source_b": str(b.path),
        }
        group.attrs["affine"] = np.asarray(a.grid.affine).tolist()
        group.attrs["units"] = a.grid.units
        if osuf != ".zarr":
            _zarr_to_tiff(levels, tmp, a, rgb=len(oshape) == 3 and not b.bands, bands=b.bands)
    return out_path


def refuse_output_over_source(out_path: str | os.PathLike, path_a: str | os.PathLike, path_b: str | os.PathLike) -> None:
    """ValueError when a tiled output would replace a source (same path, or one folder inside the other)."""
    out = Path(out_path)
    for label, src in (("A", Path(path_a)), ("B", Path(path_b))):
        o, s = out.resolve(), src.resolve()
        same = o == s
        if not same and out.exists() and src.exists():
            try:
                same = os.path.samefile(out, src)
            except OSError:
                same = False
        if same or o in s.parents or s in o.parents:
            raise ValueError(f"output {out} would replace source {label} ({src}): choose another output path")


def _build_pyramid(group: Any, z0: Any, *, bands: bool, min_side: int = 256):
    """2x2-mean levels "1", "2", ... until the smaller side is below ``min_side``; block by block."""
    levels = [z0]
    cur = z0
    k = 0
    while True:
        h, w = (cur.shape[1], cur.shape[2]) if bands else (cur.shape[0], cur.shape[1])
        if min(h, w) // 2 < min_side:
            break
        k += 1
        nh, nw = h // 2, w // 2
        shape = (cur.shape[0], nh, nw) if bands else ((nh, nw) + tuple(cur.shape[2:]))
        chunks = tuple(cur.chunks)
        nxt = group.create_array(str(k), shape=shape, chunks=chunks, dtype=cur.dtype, fill_value=0)
        step = 2048
        nblocks = math.ceil(2 * nh / step)
        for bi, r in enumerate(range(0, 2 * nh, step)):
            for c in range(0, 2 * nw, step):
                r1, c1 = min(r + step, 2 * nh), min(c + step, 2 * nw)
                blk = np.asarray(cur[:, r:r1, c:c1] if bands else cur[r:r1, c:c1]).astype(np.float32)
                if bands:
                    red = 0.25 * (blk[:, 0::2, 0::2] + blk[:, 1::2, 0::2] + blk[:, 0::2, 1::2] + blk[:, 1::2, 1::2])
                else:
                    red = 0.25 * (blk[0::2, 0::2] + blk[1::2, 0::2] + blk[0::2, 1::2] + blk[1::2, 1::2])
                if np.dtype(cur.dtype).kind in "ui":
                    red = np.rint(red)
                red = red.astype(cur.dtype)
                if bands:
                    nxt[:, r // 2 : r1 // 2, c // 2 : c1 // 2] = red
                else:
                    nxt[r // 2 : r1 // 2, c // 2 : c1 // 2] = red
            yield Progress(bi + 1, nblocks, f"pyramid level {k}")
        levels.append(nxt)
        cur = nxt
    return levels


def _zarr_to_tiff(levels: list, out_path: Path, a: _LazySource, *, rgb: bool, bands: bool, tile: int = 256) -> None:
    """Stream zarr levels into a tiled, zlib-compressed (Geo)TIFF with the pyramid as SubIFDs (at
    ``out_path`` directly: the caller makes the write atomic)."""
    import tifffile

    from ..io.geotiff import geotags_from_grid

    extratags = []
    tags = a.meta.get("geotiff_tags")
    if tags:
        extratags = geotags_from_grid(a.grid, tags)

    def tiles(z):
        if bands:
            for ch in range(z.shape[0]):
                for r in range(0, z.shape[1], tile):
                    for c in range(0, z.shape[2], tile):
                        yield np.asarray(z[ch, r : r + tile, c : c + tile])
        else:
            for r in range(0, z.shape[0], tile):
                for c in range(0, z.shape[1], tile):
                    yield np.asarray(z[r : r + tile, c : c + tile])

    z0 = levels[0]
    nbytes = int(np.prod(z0.shape)) * np.dtype(z0.dtype).itemsize
    kw = dict(
        tile=(tile, tile),
        compression="zlib",
        photometric="rgb" if rgb else "minisblack",
        planarconfig="separate" if bands else None,
        metadata=None,
    )
    with tifffile.TiffWriter(str(out_path), bigtiff=nbytes > 3_000_000_000) as tw:
        tw.write(tiles(z0), shape=z0.shape, dtype=z0.dtype, subifds=len(levels) - 1, extratags=extratags, **kw)
        for z in levels[1:]:
            tw.write(tiles(z), shape=z.shape, dtype=z.dtype, subfiletype=1, **kw)


def fuse_file_tiled(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    out_path: str | os.PathLike,
    method: Any = None,
    tile: int = 1024,
    overlap: int = 32,
    *,
    device: str = "auto",
    pyramid: bool = True,
    progress: Callable[[Progress], Any] | None = None,
    **kw: Any,
) -> Path:
    """Fuse two scenes on disk into a chunked zarr (``.zarr``) or tiled (Geo)TIFF (``.tif``), tile by tile.

    Inputs: uncompressed TIFF (memory-mapped), tiled/compressed TIFF (read chunk by chunk), zarr or
    ``.npy``; gray, RGB or (B only) bands-first multispectral; B on A's grid, georeferenced, or an
    integer factor coarser (resampled per tile). Peak memory is a few tiles plus one overlap strip
    of the scene's width, whatever the scene size. The output keeps A's georeferencing and holds a
    2x pyramid for lazy display (:func:`open_lazy`). Example::

        fuse_file_tiled("pan_20k.tif", "ms_5k.tif", "fused.tif", "laplacian", tile=2048)
    """
    from .pipeline import _drain

    return _drain(fuse_file_tiled_steps(path_a, path_b, out_path, method, tile, overlap, device=device, pyramid=pyramid, **kw), progress)


def open_lazy(path: str | os.PathLike) -> list:
    """Multiscale levels (full resolution first) of a zarr or TIFF result as dask arrays, for napari.

    ``viewer.add_image(open_lazy("fused.tif"), multiscale=True)`` reads only the tiles in view.
    """
    import dask.array as da
    import zarr

    p = Path(path)
    if p.is_dir() or _suffix(p) == ".zarr":
        g = zarr.open(str(p), mode="r")
    else:
        import tifffile

        g = zarr.open(tifffile.imread(str(p), aszarr=True), mode="r")
    if hasattr(g, "shape"):
        return [da.from_zarr(g)]
    keys = sorted((k for k in g.array_keys() if k.isdigit()), key=int)
    return [da.from_zarr(g[k]) for k in keys]
