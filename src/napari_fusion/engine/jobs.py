"""Running pairs: each job in-process or on a Dask cluster, with retries, as outcomes in job order.

A job that fails (unreadable file, size mismatch, NaN, missing partner) becomes a "failed" outcome
with its message and the batch goes on. Transient failures (out of memory, I/O, CUDA errors) are
retried up to ``retries`` times (on Dask by Dask's own ``Client.submit(..., retries=)``); bad-input
errors (ValueError, missing files) are not, since they would fail the same way again. The same job function runs in-process, on a local
``dask.distributed`` cluster (``workers=N``) or on a remote scheduler, so the files written are
byte-identical whichever way it ran. What the jobs are (folders of pairs) is :mod:`.batch`.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

__all__ = [
    "BatchJob",
    "PairOutcome",
    "BatchReport",
    "run_jobs",
    "is_retryable",
    "describe_error",
    "label_path",
    "refuse_outputs_over_sources",
    "SCHEDULER_TIMEOUT",
]

SCHEDULER_TIMEOUT = 5  # seconds to reach a Dask scheduler before giving up with a message


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


def label_path(out: Path) -> Path:
    """Where the labels of a segmenting method's result ``out`` go: ``labels/`` beside it."""
    return out.parent / "labels" / out.name


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
        outs = [job.out.parent] + ([label_path(job.out).parent] if job.path_b is not None else [])
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


def is_retryable(err: BaseException) -> bool:
    """Transient failures worth another try; bad input (ValueError, missing file, wrong type) is not."""
    return not isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, KeyError, TypeError, NotImplementedError))


def describe_error(err: BaseException) -> str:
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
            return PairOutcome(job.name, "failed", job.out, describe_error(err), time.perf_counter() - t0, attempt)


def _warm_worker() -> int:
    """Load the method registry (torch and the learned families) on a worker."""
    from ..methods.registry import list_methods

    return len(list_methods())


def _guarded(fn: Callable[[BatchJob], PairOutcome], job: BatchJob) -> PairOutcome:
    """Run a job on a worker: bad input becomes a failed outcome; transient errors raise (Dask retries them)."""
    t0 = time.perf_counter()
    try:
        return fn(job)
    except Exception as err:  # noqa: BLE001
        if is_retryable(err):
            raise
        return PairOutcome(job.name, "failed", job.out, describe_error(err), time.perf_counter() - t0)


def _retries_left(dask_scheduler: Any, keys: Sequence[str]) -> dict[str, int]:
    """On the scheduler: how many of its ``retries`` each task has not used (``TaskState.retries``)."""
    return {k: dask_scheduler.tasks[k].retries for k in keys if k in dask_scheduler.tasks}


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
    """Each job as one Dask task with Dask's own ``retries``: only transient errors reach Dask (bad
    input is returned by :func:`_guarded` as a failed outcome), so only those are tried again.

    Dask does not hand the number of tries to the client. ``attempts`` is read from the scheduler
    afterwards (``retries`` minus the retries the task has left, plus one) while the futures are
    still held; where the scheduler refuses that call (``distributed.scheduler.pickle`` off) a pair
    that failed after all its retries counts ``retries + 1`` and every other outcome counts 1.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ImportError(
            "running pairs on Dask workers (--workers / --scheduler) needs dask.distributed: "
            "pip install 'napari-fusion[cluster]' (or pip install distributed)"
        ) from err

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
        futures = [
            client.submit(_guarded, fn, job, key=f"napari-fusion-{tag}-{i}", pure=False, retries=retries)
            for i, job in enumerate(jobs)
        ]
        index = {fut.key: i for i, fut in enumerate(futures)}
        results: list[PairOutcome | None] = [None] * len(jobs)
        for fut in as_completed(futures):
            i = index[fut.key]
            job = jobs[i]
            if fut.status == "error":  # a transient error, after all its retries
                o = PairOutcome(job.name, "failed", job.out, describe_error(fut.exception()), 0.0, retries + 1)
            else:
                o = fut.result()
            results[i] = o
            if progress is not None:
                progress(o)
        try:
            left = client.run_on_scheduler(_retries_left, keys=list(index))
        except Exception:  # noqa: BLE001 - the count is a report, not worth failing the batch for
            left = {}
        for key, i in index.items():
            if key in left and results[i] is not None:
                results[i].attempts = retries - int(left[key]) + 1
        return [r for r in results if r is not None]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
