"""Pack training data from ``../shared/data`` into compact ``.npz`` files.

Used to train on a machine that has neither the shared data folder nor nibabel (the GPU box): the
packed files travel with the job. Held-out pairs (MSRS: split.csv; elsewhere sorted index % 5 == 0)
are never packed.

    python -m napari_fusion.training.pack --out .gpudata
writes ``brats.npz`` (a, b, labels: BraTS train+validation slices), ``ivif.npz`` (a_i, b_i: IR / visible-Y
training pairs; l_i: weak labels of the MSRS pairs' object boxes) and ``med.npz`` (a_i, b_i: MRI/CT and MRI/PET-Y pairs). ``--combine`` then makes
``gifnet.npz`` (ivif_*, med_*, gray_*: everything GIFNet's tasks are made from) out of those two, so
only the small files need to travel.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .data import read_gray_unit, box_labels, load_brats_training, pack_dataset, shared_data_dir, training_names, unit_to_u8

__all__ = ["pack_all", "combine"]

def _names(root: Path, da: str, db: str, max_pairs: int | None) -> list[str]:
    names = [n for n in training_names(root / da) if (root / db / n).exists()]
    if max_pairs:
        idx = np.linspace(0, len(names) - 1, min(max_pairs, len(names))).round().astype(int)
        names = [names[i] for i in sorted(set(idx))]
    return names


def _pairs(root: Path, da: str, db: str, max_pairs: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(unit_to_u8(read_gray_unit(root / da / n)), unit_to_u8(read_gray_unit(root / db / n)))
            for n in _names(root, da, db, max_pairs)]


def _box_labels(root: Path, names: list[str], shapes: list[tuple[int, int]]) -> list[np.ndarray | None]:
    """Weak labels of MSRS's object boxes (:func:`.data.box_labels`) as int16, None without a box file."""
    out = []
    for n, shape in zip(names, shapes):
        lab = box_labels(root / "boxes" / "fusion" / (Path(n).stem + ".txt"), shape)
        out.append(None if lab is None else lab.astype(np.int16))
    return out


def pack_all(out: str | Path, data: str | Path | None = None, max_msrs: int = 70, max_road: int = 40) -> dict[str, Path]:
    """Write brats.npz, ivif.npz and gifnet.npz into ``out``; returns their paths."""
    data = Path(data) if data else shared_data_dir()
    if data is None:
        raise FileNotFoundError("no ../shared/data found; set NAPARI_FUSION_DATA")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    brats = load_brats_training()
    paths["brats"] = pack_dataset(out / "brats.npz", a=brats["a"], b=brats["b"], labels=brats["labels"].astype(np.uint8))
    msrs = data / "ivif" / "MSRS"
    ivif = _pairs(msrs, "ir", "vi", max_msrs)
    labels = _box_labels(msrs, _names(msrs, "ir", "vi", max_msrs), [p[0].shape for p in ivif])  # l_i: MSRS boxes
    ivif += _pairs(data / "ivif" / "RoadScene", "ir", "vi", max_road)
    arrays = {f"{k}_{i}": p[j] for i, p in enumerate(ivif) for j, k in enumerate("ab")}
    arrays |= {f"l_{i}": lab for i, lab in enumerate(labels) if lab is not None}
    paths["ivif"] = pack_dataset(out / "ivif.npz", **arrays)
    med = _pairs(data / "medical" / "MRI_CT", "MRI", "CT", None) + _pairs(data / "medical" / "MRI_PET", "MRI", "PET", None)
    paths["med"] = pack_dataset(out / "med.npz", **{f"{k}_{i}": p[j] for i, p in enumerate(med) for j, k in enumerate("ab")})
    paths["gifnet"] = combine(out)
    return paths


def _pair_list(arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    n = sum(1 for k in arrays if k.startswith("a_"))
    return [(arrays[f"a_{i}"], arrays[f"b_{i}"]) for i in range(n)]


def combine(folder: str | Path) -> Path:
    """gifnet.npz from ivif.npz + med.npz in ``folder``: pairs of both kinds and sharp single images."""
    from .data import load_packed

    folder = Path(folder)
    ivif = _pair_list(load_packed(folder / "ivif.npz"))
    med = _pair_list(load_packed(folder / "med.npz"))
    gray = [p[1] for p in ivif[::2]] + [p[0] for p in med[::3]]
    arrays = {f"ivif_{k}_{i}": p[j] for i, p in enumerate(ivif) for j, k in enumerate("ab")}
    arrays |= {f"med_{k}_{i}": p[j] for i, p in enumerate(med) for j, k in enumerate("ab")}
    arrays |= {f"gray_{i}": g for i, g in enumerate(gray)}
    return pack_dataset(folder / "gifnet.npz", **arrays)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".gpudata")
    ap.add_argument("--data", default=None, help="shared data folder (default: ../shared/data)")
    ap.add_argument("--max-msrs", type=int, default=70)
    ap.add_argument("--max-road", type=int, default=40)
    ap.add_argument("--combine", action="store_true", help="only make gifnet.npz from ivif.npz + med.npz in --out")
    a = ap.parse_args(argv)
    if a.combine:
        p = combine(a.out)
        print(f"gifnet: {p} ({p.stat().st_size / 1e6:.1f} MB)")
        return
    for k, p in pack_all(a.out, a.data, a.max_msrs, a.max_road).items():
        print(f"{k}: {p} ({p.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
