"""YOLO box files (``class cx cy w h [score]``, normalised) and class-name files, read and written."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .box import Box

__all__ = ["read_yolo", "write_yolo", "read_class_names", "write_class_names"]


def _bad(path: Any, lineno: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {lineno}: {what}")


def read_yolo(
    path: str | os.PathLike,
    shape: Sequence[int],
    *,
    n_classes: int | None = None,
    names: Sequence[str] | Mapping[int, str] | None = None,
    with_score: bool = False,
) -> list[Box]:
    """Boxes of one YOLO text file (``class cx cy w h`` per line, normalised), in pixels of ``shape``.

    ``shape``: the image's (rows, cols). ``n_classes``: class ids must lie in ``0..n_classes-1``
    (default: ``len(names)`` when names are given, else any id >= 0). ``names``: class names by id.
    ``with_score``: a 6th column (confidence in 0..1) is allowed; without it a line has exactly 5.
    Blank lines are skipped; boxes overhanging the image edge are clipped to it. Any bad line raises
    ValueError naming the file and the line number: wrong column count, a value that is not a number,
    a class id that is not an integer or out of range, a coordinate outside 0..1, a width or height of 0.
    """
    path = Path(path)
    if n_classes is None and names is not None:
        n_classes = len(names)
    name_of = _name_lookup(names)
    rows, cols = float(shape[0]), float(shape[1])
    want = "5 (class cx cy w h)" + (" or 6 (… score)" if with_score else "")
    out: list[Box] = []
    text = path.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5 and not (with_score and len(parts) == 6):
            raise _bad(path, lineno, f"{len(parts)} columns, expected {want}: {line.strip()!r}")
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise _bad(path, lineno, f"not a number in {line.strip()!r}") from None
        if not all(math.isfinite(v) for v in vals):
            raise _bad(path, lineno, f"not a finite number in {line.strip()!r}")
        c = vals[0]
        if c != int(c):
            raise _bad(path, lineno, f"class {parts[0]!r} is not an integer")
        c = int(c)
        if c < 0 or (n_classes is not None and c >= n_classes):
            rng = f"0..{n_classes - 1}" if n_classes is not None else ">= 0"
            raise _bad(path, lineno, f"class {c} out of range {rng}")
        cx, cy, w, h = vals[1:5]
        for key, v in zip(("cx", "cy", "w", "h"), (cx, cy, w, h)):
            if not 0.0 <= v <= 1.0:
                raise _bad(path, lineno, f"{key} = {v:g} is outside 0..1 (coordinates are normalised)")
        if w <= 0 or h <= 0:
            raise _bad(path, lineno, f"box of zero size (w = {w:g}, h = {h:g})")
        score = 1.0
        if len(vals) == 6:
            score = vals[5]
            if not 0.0 <= score <= 1.0:
                raise _bad(path, lineno, f"score = {score:g} is outside 0..1")
        x0, x1 = max((cx - w / 2) * cols, 0.0), min((cx + w / 2) * cols, cols)
        y0, y1 = max((cy - h / 2) * rows, 0.0), min((cy + h / 2) * rows, rows)
        out.append(Box(c, x0, y0, x1, y1, score, name_of(c)))
    return out


def write_yolo(path: str | os.PathLike, boxes: Iterable[Box], shape: Sequence[int], *, with_score: bool = False) -> Path:
    """Write boxes as YOLO text (``class cx cy w h`` [``score``]) for an image of ``shape``, atomically."""
    from ..io.atomic import write_atomic

    lines = []
    for b in boxes:
        c, cx, cy, w, h = b.to_yolo(shape)
        cx, cy, w, h = (min(max(v, 0.0), 1.0) for v in (cx, cy, w, h))
        line = f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
        if with_score:
            line += f" {min(max(float(b.score), 0.0), 1.0):.4f}"
        lines.append(line)
    text = "".join(line + "\n" for line in lines)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names of a ``classes.txt``: lines ``ID NAME`` (as MSRS has them) or ``NAME``, ids 0, 1, ..."""
    path = Path(path)
    names: dict[int, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        first, _, rest = s.partition(" ")
        if first.isdigit() and rest.strip():
            i, name = int(first), rest.strip()
        else:
            i, name = len(names), s
        if i in names:
            raise _bad(path, lineno, f"class id {i} given twice")
        names[i] = name
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class ids must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


def write_class_names(path: str | os.PathLike, names: Sequence[str]) -> Path:
    """Write ``classes.txt`` (``ID NAME`` per line, the MSRS layout), atomically."""
    from ..io.atomic import write_atomic

    text = "".join(f"{i} {n}\n" for i, n in enumerate(names))
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _name_lookup(names: Sequence[str] | Mapping[int, str] | None):
    if names is None:
        return lambda c: f"class {c}"
    table = dict(names) if isinstance(names, Mapping) else dict(enumerate(names))
    return lambda c: str(table.get(c, f"class {c}"))

