"""``napari-fusion fuse``, ``fuse-large`` and ``enhance``: pairs and single images, folders and huge scenes."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .common import count_jobs, print_report, progress_bar

__all__ = ["cmd_fuse", "cmd_fuse_large", "cmd_enhance"]


def cmd_fuse(args) -> int:
    from ..engine.batch import fuse_folder

    if Path(args.a_dir).is_file():
        return _fuse_files(args)
    bar = progress_bar(count_jobs(args), "fuse")

    def tick(o):
        bar.update(1)

    try:
        report = fuse_folder(
            args.a_dir, args.b_dir, args.out, args.method, device=args.device, tile=args.tile, overwrite=args.overwrite,
            workers=args.workers, scheduler=args.scheduler, retries=args.retries, processes=not args.threads,
            suffix=args.format, progress=tick,
        )
    finally:
        bar.close()
    return print_report(report)


def _fuse_files(args) -> int:
    """``fuse A_FILE B_FILE --out OUT_DIR``: one pair."""
    from ..engine.batch import BatchJob, file_stem, fuse_job, output_path, run_jobs

    if not args.b_dir or not Path(args.b_dir).is_file():
        print(f"error: {args.a_dir} is a file; give its partner file as B", file=sys.stderr)
        return 2
    a, b = Path(args.a_dir), Path(args.b_dir)
    job = BatchJob(file_stem(a), a, b, output_path(args.out, file_stem(a), a, args.format))
    import functools

    report = run_jobs([job], functools.partial(fuse_job, method=args.method, device=args.device, tile=args.tile, overwrite=args.overwrite), retries=args.retries)
    return print_report(report)


def cmd_fuse_large(args) -> int:
    from tqdm import tqdm

    from ..engine.batch import fuse_file_tiled, refuse_output_over_source

    out = Path(args.out_file)
    refuse_output_over_source(out, args.a_file, args.b_file)  # ValueError: error exit, never "skipped"
    if out.exists() and not args.overwrite:
        print(f"{out} exists; skipped (use --overwrite)")
        return 0
    bars: dict[str, Any] = {}

    def tick(p):
        bar = bars.get(p.stage)
        if bar is None:
            for old in bars.values():
                old.close()
            bar = bars[p.stage] = tqdm(total=p.total, desc=p.stage, file=sys.stderr, disable=None)
        bar.n = p.done
        bar.refresh()

    try:
        fuse_file_tiled(args.a_file, args.b_file, out, args.method, tile=args.tile, overlap=args.overlap, device=args.device, pyramid=not args.no_pyramid, progress=tick)
    except Exception as err:  # noqa: BLE001 - reported, exit code 1
        print(f"FAILED {out}: {err}", file=sys.stderr)
        return 1
    finally:
        for b in bars.values():
            b.close()
    print(f"wrote {out}")
    return 0


def cmd_enhance(args) -> int:
    import functools

    from ..engine.batch import BatchJob, enhance_job, file_stem, images_by_name, output_path, run_jobs

    src = Path(args.in_dir)
    clashes: list = []  # two files with one name: reported, not guessed between
    files = {src.name: src} if src.is_file() else images_by_name(src, clashes)
    if not files and not clashes:
        print(f"error: no images in {src}", file=sys.stderr)
        return 2
    jobs = [BatchJob(file_stem(p), p, None, output_path(args.out, file_stem(p), p, args.format)) for p in files.values()]
    bar = progress_bar(len(jobs), "enhance")
    fn = functools.partial(enhance_job, method=args.method, device=args.device, tile=args.tile, overwrite=args.overwrite)
    try:
        report = run_jobs(jobs, fn, workers=args.workers, scheduler=args.scheduler, retries=args.retries, processes=not args.threads, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    report.outcomes += clashes
    return print_report(report)
