"""NIfTI volumes (.nii, .nii.gz) <-> arrays on a :class:`~napari_fusion.geometry.Grid`.

Axis convention. A volume is stored in whatever voxel order the scanner wrote (the spinal-cord T2
of SCT is sagittal, P-S-R). On reading, its voxel axes are flipped / permuted (no resampling) to the
closest of the display order **(S, P, L)**: array axis 0 runs inferior->superior (napari's slider),
axis 1 anterior->posterior (rows: anterior at the top) and axis 2 right->left (columns: patient's
right on the viewer's left, the radiological convention). The Grid's world frame is patient
coordinates in mm with the same axis order and signs: ``world = (z_RAS, -y_RAS, -x_RAS)``, i.e. DICOM
LPS reversed. Every volume read here shares that frame, so volumes on different grids (1 mm vs
0.5 x 0.5 x 7.5 mm, oblique) overlay in napari through their layer scale/translate/affine, and
:func:`~napari_fusion.geometry.bring_onto` resamples one onto another through the same affines.

Writing inverts the mapping; with ``like`` (the volume read from disk) the original voxel order,
affine and header are restored so the file drops back beside its source.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..geometry import Grid
from .common import LAZY_BYTES, ImageReadError, LoadedImage, check_pixels

__all__ = ["read_nifti", "write_nifti", "DISPLAY_AXCODES", "RAS_TO_WORLD", "nifti_affine_to_grid"]

DISPLAY_AXCODES = ("S", "P", "L")
# (x, y, z, 1) in RAS+ mm -> (S, P, L) world
RAS_TO_WORLD = np.array([[0, 0, 1, 0], [0, -1, 0, 0], [-1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def nifti_affine_to_grid(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[Grid, np.ndarray]:
    """Grid (in display order) of a voxel array with a RAS affine, and the orientation transform."""
    from nibabel import orientations as ornt

    tf = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(DISPLAY_AXCODES))
    new_aff = np.asarray(affine, float) @ ornt.inv_ornt_aff(tf, shape[:3])
    new_shape = tuple(int(shape[int(i)]) for i in np.argsort(tf[:, 0]))
    return Grid(new_shape, RAS_TO_WORLD @ new_aff, "mm"), tf


def _usable_affine(img, p: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The voxel -> RAS affine of a NIfTI image, or :class:`ImageReadError` saying why there is none.

    nibabel takes the sform when its code is set, else the qform, else the voxel sizes. A singular or
    non-finite affine (a corrupt header: zero rows, zero voxel size) cannot place the voxels: the
    qform is used instead when it is valid (with a warning), a zero-thickness axis of a single slice
    gets a unit normal, and anything else is refused naming the file and the affine.
    """
    import warnings

    hdr = img.header
    aff = np.asarray(img.affine, float)
    sform_code = int(hdr["sform_code"]) if "sform_code" in hdr else 0
    qform_code = int(hdr["qform_code"]) if "qform_code" in hdr else 0
    which = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "voxel-size (pixdim)"

    def problem(m: np.ndarray) -> str | None:
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            return "not finite"
        lin = m[:3, :3]
        norms = np.linalg.norm(lin, axis=0)
        if np.any(norms == 0) or abs(np.linalg.det(lin)) < 1e-6 * float(np.prod(norms)):
            return "singular (its voxel axes are degenerate: a zero row, column or voxel size)"
        return None

    why = problem(aff)
    if why is None:
        return aff
    lin = aff[:3, :3]
    norms = np.linalg.norm(lin, axis=0) if np.all(np.isfinite(lin)) else np.zeros(3)
    zero = [i for i in range(3) if norms[i] == 0]
    if len(zero) == 1 and shape[zero[0]] == 1 and np.all(np.isfinite(aff)):
        # one slice without a thickness: any normal places it; keep the others right-handed
        i, j, k = zero[0], (zero[0] + 1) % 3, (zero[0] + 2) % 3
        n = np.cross(lin[:, j], lin[:, k])
        if np.linalg.norm(n) > 0:
            fixed = aff.copy()
            fixed[:3, i] = n / np.linalg.norm(n)
            if problem(fixed) is None:
                return fixed
    if which == "sform" and qform_code > 0:
        try:
            q = np.asarray(hdr.get_qform(), float)
        except Exception:  # a broken qform too
            q = None
        if q is not None and problem(q) is None:
            warnings.warn(f"{p}: its sform affine is {why}; using its qform instead", stacklevel=3)
            return q
    aff_txt = np.array2string(aff, precision=4, suppress_small=True).replace("\n", "")
    raise ImageReadError(
        p,
        f"its {which} affine is {why}, so where its voxels lie is unknown (affine {aff_txt}); "
        "fix the header (e.g. nibabel's set_sform / set_qform, or fslorient)",
    )


def read_nifti(path: str | os.PathLike, *, name: str | None = None, modality: str | None = None) -> LoadedImage:
    """Read a 3-D (or 4-D: time/channels first after reading) NIfTI volume in (S, P, L) order."""
    import nibabel as nib
    from nibabel import orientations as ornt

    p = Path(path)
    try:
        img = nib.load(str(p))
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise ImageReadError(p, f"cannot read as NIfTI ({type(err).__name__}: {err})") from err
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 2 or len(shape) > 4:
        raise ImageReadError(p, f"NIfTI with {len(shape)} dimensions {shape}; only 3-D volumes and 4-D series are read")
    try:
        lazy = p.stat().st_size > LAZY_BYTES and not p.name.lower().endswith(".gz")
        data = np.asanyarray(img.dataobj) if lazy else np.asarray(img.dataobj)
    except Exception as err:
        raise ImageReadError(p, f"cannot read NIfTI voxel data ({type(err).__name__}: {err})") from err
    data = data.reshape(shape) if data.shape != shape else data
    if data.ndim == 2:
        data = data[..., None]
        shape = data.shape
    if np.iscomplexobj(data) or data.dtype == np.bool_ or data.dtype.kind not in "uif":
        raise ImageReadError(p, f"unsupported pixel type {data.dtype} (expected integers or floats)")
    affine = _usable_affine(img, p, shape[:3])
    try:
        grid, tf = nifti_affine_to_grid(affine, shape[:3])
    except ValueError as err:  # a degenerate affine that slipped through: still name the file
        raise ImageReadError(p, f"cannot orient its voxels from its affine ({err})") from err
    data = ornt.apply_orientation(data, tf)
    channel_axis = None
    if data.ndim == 4:
        data = np.moveaxis(data, 3, 0)
        channel_axis = 0
    if not lazy:
        data = np.ascontiguousarray(data)
    check_pixels(data, p)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    meta = {
        "path": str(p),
        "format": "nifti",
        "nifti_affine": affine,
        "nifti_shape": shape,
        "nifti_ornt": tf,
        "nifti_src_ornt": ornt.io_orientation(affine),
        "nifti_header": img.header.copy(),
        "voxel_size": zooms,
        "axcodes": "".join(ornt.aff2axcodes(affine)),
    }
    return LoadedImage(
        data=data,
        grid=grid,
        name=name or _stem(p),
        rgb=False,
        channel_axis=channel_axis,
        modality=modality,
        meta=meta,
    )


def write_nifti(path: str | os.PathLike, data: np.ndarray, grid: Grid | None, like: LoadedImage | None = None) -> Path:
    """Write a (Z, Y, X) / (T, Z, Y, X) / (Y, X) array on ``grid`` (display order) as NIfTI, atomically."""
    import nibabel as nib
    from nibabel import orientations as ornt

    from .atomic import atomic_path

    dest = Path(path)
    arr = np.asarray(data)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind not in "uif":
        raise ValueError(f"{dest}: cannot write pixel type {arr.dtype} to NIfTI")
    series = arr.ndim == 4
    spatial = arr.shape[1:] if series else arr.shape
    if grid is None:
        grid = like.grid if like is not None and tuple(like.grid.shape) == tuple(spatial) else Grid.identity(spatial)
    if len(spatial) == 2:  # a single slice: one-voxel-thick volume
        arr = arr[..., None, :, :] if not series else arr[:, None]
        aff2 = np.eye(4)
        aff2[1:, 1:] = grid.affine
        grid = Grid((1, *spatial), aff2, grid.units)
        spatial = grid.shape
    if tuple(grid.shape) != tuple(spatial):
        raise ValueError(f"{dest}: data is {spatial} but its grid is {grid.shape}")
    world_aff = np.array(grid.affine, float)
    if grid.units == "m":
        world_aff[:3] *= 1000.0
    ras_aff = np.linalg.inv(RAS_TO_WORLD) @ world_aff
    vol = np.moveaxis(arr, 0, 3) if series else arr
    header = None
    src_ornt = like.meta.get("nifti_src_ornt") if like is not None else None
    if src_ornt is not None and tuple(like.grid.shape) == tuple(spatial):
        # back to the source's voxel order, so the affine and header of A apply unchanged
        back = ornt.ornt_transform(ornt.axcodes2ornt(DISPLAY_AXCODES), src_ornt)
        header = like.meta.get("nifti_header")
    else:
        back = ornt.ornt_transform(ornt.io_orientation(ras_aff), ornt.axcodes2ornt(("R", "A", "S")))
    out = ornt.apply_orientation(vol, back)
    out_aff = ras_aff @ ornt.inv_ornt_aff(back, vol.shape[:3])
    if header is not None and np.allclose(out_aff, like.meta["nifti_affine"], atol=1e-4):
        out_aff = like.meta["nifti_affine"]
    if header is not None:
        header = header.copy()
        header.set_data_dtype(out.dtype)
        header.set_slope_inter(None, None)
        img = nib.Nifti1Image(np.ascontiguousarray(out), out_aff, header=header)
    else:
        img = nib.Nifti1Image(np.ascontiguousarray(out), out_aff)
        img.header.set_xyzt_units("mm")
    img.set_sform(out_aff, code=int(header["sform_code"]) if header is not None and int(header["sform_code"]) else 1)
    img.set_qform(out_aff, code=int(header["qform_code"]) if header is not None and int(header["qform_code"]) else 1)
    with atomic_path(dest) as tmp:
        nib.save(img, str(tmp))
    return dest

