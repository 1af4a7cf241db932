"""Sample data shipped with the plugin (File > Open Sample > napari fusion), small and licensed to ship.

Each folder uses a pair layout that :func:`napari_fusion.io.find_pairs` understands, so the samples
also serve as a tiny batch folder. Sources, commits and licences: ``SOURCES.md`` beside this file.

=========  ====================================================  ===========================
key        files                                                 what
=========  ====================================================  ===========================
ivif       ivif/{ir,vi}/FLIR_00211.jpg                           RoadScene infrared / visible
mri_ct     mri_ct/{MRI,CT}/19.png                                Harvard atlas MRI / CT slice
mri_pet    mri_pet/{MRI,PET}/40.png                              Harvard atlas MRI / colour PET
pan_ms     pan_ms/Landsat8_LC80200392015216/{pan,ms}.tif         Landsat-8 15 m pan / 30 m MS crop (GeoTIFF)
volume     volume/{t2,t2s}.nii.gz                                SCT spinal cord T2 1 mm / T2* 0.5x0.5x7.5 mm
=========  ====================================================  ===========================
"""
from __future__ import annotations

from pathlib import Path

__all__ = [
    "SAMPLES_DIR",
    "SAMPLE_KEYS",
    "sample_paths",
    "ivif_pair",
    "mri_ct_pair",
    "mri_pet_pair",
    "pan_ms_pair",
    "mri_volume_pair",
]

SAMPLES_DIR = Path(__file__).resolve().parent

_PATHS = {
    "ivif": ("ivif/ir/FLIR_00211.jpg", "ivif/vi/FLIR_00211.jpg"),
    "mri_ct": ("mri_ct/MRI/19.png", "mri_ct/CT/19.png"),
    "mri_pet": ("mri_pet/MRI/40.png", "mri_pet/PET/40.png"),
    "pan_ms": ("pan_ms/Landsat8_LC80200392015216/pan.tif", "pan_ms/Landsat8_LC80200392015216/ms.tif"),
    "volume": ("volume/t2.nii.gz", "volume/t2s.nii.gz"),
}
SAMPLE_KEYS = tuple(_PATHS)


def sample_paths(key: str) -> tuple[Path, Path]:
    """(path_a, path_b) of a shipped sample pair; keys: ivif, mri_ct, mri_pet, pan_ms, volume."""
    try:
        a, b = _PATHS[key]
    except KeyError:
        raise KeyError(f"unknown sample {key!r}; samples: {', '.join(SAMPLE_KEYS)}") from None
    return SAMPLES_DIR / a, SAMPLES_DIR / b


def _layers(key: str, modalities: tuple[str, str] | None = None) -> list[tuple]:
    from ..io import Pair, read_pair
    from ..io.napari_reader import layer_data

    pa, pb = sample_paths(key)
    if modalities is None:
        a, b = read_pair(pa, pb)
    else:
        a, b = read_pair(Pair(key, pa, pb, *modalities))
    return [layer_data(a, role="a"), layer_data(b, role="b")]


def ivif_pair() -> list[tuple]:
    """RoadScene FLIR_00211: infrared (gray) and visible (RGB), 301x496."""
    return _layers("ivif")


def mri_ct_pair() -> list[tuple]:
    """Harvard Whole Brain Atlas slice: MRI and CT, 256x256 gray."""
    return _layers("mri_ct")


def mri_pet_pair() -> list[tuple]:
    """Harvard Whole Brain Atlas slice: MRI (gray) and PET (pseudo-colour RGB), 256x256."""
    return _layers("mri_pet")


def pan_ms_pair() -> list[tuple]:
    """Landsat-8 crop: 256x256 pan (15 m) and 3x128x128 MS (30 m), overlaid through their GeoTIFF tags."""
    return _layers("pan_ms")


def mri_volume_pair() -> list[tuple]:
    """Spinal-cord MRI: T2 (1 mm iso) and T2* (0.5x0.5x7.5 mm, oblique) overlaid in world mm."""
    return _layers("volume", ("T2", "T2*"))
