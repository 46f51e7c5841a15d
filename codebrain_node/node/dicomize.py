"""``codebrain-node dicomize``: a folder of NIfTI volumes (one per contrast) becomes a DICOM MR study.

The study is what a scanner of the chosen vendor would send: one MR Image Storage series per contrast, one file a
slice, each on its volume's own grid (orientation and spacing from the NIfTI affine, which SimpleITK reads into
DICOM's LPS frame), written by the phantom's study writer (:func:`codebrain_node.phantom.dicom_study.
write_dicom_study`) so there is one copy of the header conventions. Users make test studies from their own
data with it; the tests make the native studies of ``../shared/data`` with it.

File names map onto contrasts as the rest of the node maps them (:meth:`Contrast.parse` on the last word of the
stem: ``t1n``, ``case-t1c``, ``Brats18_x_flair`` ...); other volumes (``seg``, ``lesions``) are left out, and say so.
MR magnitudes are never negative: small negative values (resampling artefacts of processed data) become 0; a
floating-point volume with a range too small for integers (a normalised [0, 1] image) is scaled to 0-4095.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from codebrain_node.contrasts import Contrast
from codebrain_node.imaging.series_io import VOLUME_SUFFIXES
from codebrain_node.phantom.dicom_study import SOURCE, VENDOR_NAMES, SeriesLayout, write_dicom_study

log = logging.getLogger(__name__)

#: Integer range a scaled floating-point volume is given (12 bits, as most MR scanners store).
FLOAT_SCALE_MAX = 4095.0


@dataclass
class DicomizeResult:
    """What was written: the study folder, each contrast's series folder, and the files left out with the reason."""

    study: Path
    series: dict[Contrast, Path]
    dropped: list[Contrast]
    ignored: dict[str, str] = field(default_factory=dict)


def contrast_volumes(case_dir: Path) -> tuple[dict[Contrast, Path], dict[str, str]]:
    """``{contrast: file}`` for the volumes in ``case_dir`` and ``{file name: why ignored}`` for the others."""
    found: dict[Contrast, Path] = {}
    ignored: dict[str, str] = {}
    for path in sorted(Path(case_dir).iterdir()):
        name = path.name
        suffix = next((s for s in VOLUME_SUFFIXES if name.lower().endswith(s)), None)
        if not path.is_file() or suffix is None:
            continue
        word = re.split(r"[-_.\s]", name[: -len(suffix)])[-1]
        try:
            contrast = Contrast.parse(word)
        except ValueError:
            ignored[name] = f"{word!r} names no contrast"
            continue
        if contrast in found:
            raise ValueError(f"{case_dir}: {found[contrast].name} and {name} are both {contrast}")
        found[contrast] = path
    order = list(Contrast)  # series numbers in the vocabulary's order: T1 is 101 whatever the file names
    return dict(sorted(found.items(), key=lambda item: order.index(item[0]))), ignored


def as_scanner_values(image: sitk.Image) -> sitk.Image:
    """The volume with the values a scanner stores: no negatives, and integers that keep its contrast."""
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if array.size and array.min() < 0:
        array = np.clip(array, 0.0, None)
    integral = np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer)
    peak = float(array.max()) if array.size else 0.0
    if not integral and 0.0 < peak < 256.0:
        array = array * (FLOAT_SCALE_MAX / peak)
    out = sitk.GetImageFromArray(np.clip(np.rint(array), 0, 65535).astype(np.uint16))
    out.CopyInformation(image)
    return out


def dicomize_case(
    case_dir: Path,
    out_dir: Path,
    *,
    vendor: str,
    drop: list[Contrast] | None = None,
    seed: int = 0,
    field_strength: float = 3.0,
) -> DicomizeResult:
    """Write the NIfTI volumes of ``case_dir`` as one DICOM study under ``out_dir``, leaving ``drop`` out."""
    manufacturer = VENDOR_NAMES.get(vendor.lower())
    if manufacturer is None:
        raise ValueError(f"unknown vendor {vendor!r}; expected one of {', '.join(VENDOR_NAMES)}")
    files, ignored = contrast_volumes(case_dir)
    if not files:
        raise ValueError(f"no NIfTI volume named for a contrast in {case_dir} (t1n, t1c, t2w, t2f, pd ...)")
    dropped = list(drop or [])
    missing = [c for c in dropped if c not in files]
    if missing:
        raise ValueError(f"cannot drop {', '.join(missing)}: {case_dir} has no such volume")
    if set(dropped) >= set(files):
        raise ValueError("every contrast would be dropped: nothing left to write")
    for name, why in ignored.items():
        log.info("dicomize: %s left out (%s)", name, why)
    images = {contrast: as_scanner_values(sitk.ReadImage(str(path))) for contrast, path in files.items()}
    out = Path(out_dir)
    write_dicom_study(
        images,
        out,
        omit=dropped,
        seed=seed,
        field_strength=field_strength,
        manufacturer=manufacturer,
        default_layout=SeriesLayout(SOURCE),
        identity=f"dicomize {Path(case_dir).resolve().name} {manufacturer}",
    )
    # the writer names folder NNN_<description> with NNN = 100 x (position in ``images``) + 1
    folders = {p.name.split("_", 1)[0]: p for p in out.iterdir() if p.is_dir()}
    series = {
        contrast: folders[f"{number * 100 + 1:03d}"]
        for number, contrast in enumerate(images, start=1)
        if contrast not in dropped and f"{number * 100 + 1:03d}" in folders
    }
    return DicomizeResult(study=out, series=series, dropped=dropped, ignored=ignored)
