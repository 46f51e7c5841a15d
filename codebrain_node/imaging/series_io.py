"""Read one series, NIfTI/NRRD/MHA file or DICOM (a folder or a list of files), into a SimpleITK image.

DICOM slices are ordered by their position along the slice normal (ImagePositionPatient · normal), not by file name
or InstanceNumber, because PACS and modality numbering cannot be trusted; rescale slope/intercept are applied. The
volume is always one stack on a regular grid: a missing slice is interpolated (see :class:`DicomSeries`), and a
series that is not one stack (two orientations, two images at one position, slices off a regular spacing) raises
:class:`UnusableSeriesError` with the reason rather than becoming a volume with the wrong geometry.

Multi-frame images (Enhanced MR, PS3.3 A.36.2, and its legacy-converted form, A.36.5) keep each frame's geometry
and MR parameters in functional group macros (C.7.6.16). :func:`frame_headers` flattens them into one classic-looking
header per frame, so the classifier, the engine and the writer treat a frame exactly as a single-frame slice; the
pixel data of those frames is decoded by highdicom, which applies each frame's Pixel Value Transformation.

Compressed pixel data (any encapsulated transfer syntax the receiver accepts: JPEG baseline/extended/lossless,
JPEG-LS, JPEG 2000, HTJ2K, RLE; PS3.5 8.2 and A.4) is decoded by pydicom through the pylibjpeg plugins declared in
pyproject.toml (pylibjpeg-libjpeg for JPEG and JPEG-LS, pylibjpeg-openjpeg for JPEG 2000 and HTJ2K; RLE by
pydicom itself), not by SimpleITK's bundled GDCM: one decoder for the engine, multi-frame input and the review
page, whose codecs are a declared dependency rather than a property of one SimpleITK wheel (that GDCM also writes
"Unsupported JPEG data precision 12" to stderr for every 12-bit JPEG slice). The planes get the same Modality LUT
(rescale) as SimpleITK applies, so a losslessly compressed series reads voxel for voxel like its uncompressed twin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_rescale

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")

#: Top-level attributes of a multi-frame image that mean nothing for one frame (Number of Frames stays: it tells
#: how many slices the instance holds).
_MULTI_FRAME_ONLY = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "PixelData")

#: Enhanced MR Echo Pulse Sequence (C.8.13.1) → classic Scanning Sequence (C.8.3.1) codes.
_ECHO_PULSE_TO_SCANNING = {"SPIN": ["SE"], "GRADIENT": ["GR"], "BOTH": ["SE", "GR"]}


class UnusableSeriesError(ValueError):
    """The series cannot be one volume as it is (several stacks, several images per position, images of different
    sizes, slices off a regular spacing): the same files give the same answer, so trying again cannot help."""


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` names a single-file volume format SimpleITK reads directly."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def is_multi_frame(dataset: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in dataset


def frame_headers(dataset: Dataset, limit: int | None = None) -> list[Dataset]:
    """One single-frame header per frame of a multi-frame image (the first ``limit`` frames when given); a
    single-frame dataset comes back as it is.

    Each frame header has the top-level attributes, then those of every shared functional group, then those of
    the frame's own groups (later wins, as C.7.6.16 says per-frame values override shared ones), and the
    classic names the classifier reads: Echo Time from Effective Echo Time, Inversion Time from Inversion Times,
    Scanning Sequence from Echo Pulse Sequence and Inversion Recovery, Contrast/Bolus Agent from the agent code.
    It also carries Referenced Frame Number (0008,1160), 1-based, so that SOP Instance UID and frame number
    together reference the frame (PS3.3 Table 10-3, Image SOP Instance Reference Macro).
    """
    if not is_multi_frame(dataset):
        return [dataset]
    top = Dataset()
    for element in dataset:
        if element.keyword not in _MULTI_FRAME_ONLY:
            top.add(element)
    shared = dataset.get("SharedFunctionalGroupsSequence") or [Dataset()]
    frames = []
    for number, per_frame in enumerate(dataset.PerFrameFunctionalGroupsSequence[:limit], start=1):
        frame = Dataset()
        frame.update(top)
        for groups in (shared[0], per_frame):
            for group in groups:
                if group.VR == "SQ" and group.value:
                    frame.update(group.value[0])
        _add_classic_names(frame)
        frame.ReferencedFrameNumber = number
        frames.append(frame)
    return frames


def _add_classic_names(frame: Dataset) -> None:
    if "EchoTime" not in frame and "EffectiveEchoTime" in frame:
        frame.EchoTime = frame.EffectiveEchoTime
    if "InversionTime" not in frame and frame.get("InversionTimes"):
        times = frame.InversionTimes
        frame.InversionTime = times[0] if isinstance(times, Sequence) else times
    if "ScanningSequence" not in frame and "EchoPulseSequence" in frame:
        codes = list(_ECHO_PULSE_TO_SCANNING.get(str(frame.EchoPulseSequence).upper(), []))
        if str(frame.get("InversionRecovery", "")).upper() == "YES":
            codes.append("IR")
        if codes:
            frame.ScanningSequence = codes
    if not frame.get("ContrastBolusAgent") and frame.get("ContrastBolusAgentSequence"):
        frame.ContrastBolusAgent = str(frame.ContrastBolusAgentSequence[0].get("CodeMeaning", "")) or "agent"


def slice_position(header: Dataset) -> float:
    """Where a slice (or flattened frame) lies along the normal of its own orientation, in mm."""
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.array([float(v) for v in header.ImagePositionPatient]) @ normal)


def _sort_key(header: Dataset) -> tuple[float, int, int]:
    return (
        slice_position(header),
        int(header.get("InstanceNumber", 0) or 0),
        int(header.get("ReferencedFrameNumber", 0) or 0),
    )


@dataclass(frozen=True)
class DicomSeries:
    """One series as slice headers sorted along the normal (no pixel data) and its volume on a regular grid.

    ``slice_index[i]`` is the volume slice that header ``i`` lies on. It is ``0 … n-1`` unless slices are missing
    (an instance that never arrived): the grid then keeps its regular spacing and the missing slices are
    interpolated from their neighbours, so every other series is resampled at the right place; only the slices
    of real headers are ever written back.
    """

    headers: list[Dataset]
    image: sitk.Image
    slice_index: list[int]

    @property
    def missing_slices(self) -> int:
        return self.image.GetDepth() - len(self.headers)


def read_dicom_series(paths: Sequence[Path]) -> DicomSeries:
    """The files of ONE series, any order: single-frame (uncompressed pixels by SimpleITK, compressed ones by
    pydicom's plugins) or multi-frame (highdicom)."""
    if not paths:
        raise ValueError("no DICOM files given")
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
    if any(is_multi_frame(header) for header in headers):
        headers, planes = _read_frames(paths, headers)
        return _on_regular_grid(headers, np.stack(planes))
    order = sorted(range(len(paths)), key=lambda i: _sort_key(headers[i]))
    compressed = any(is_compressed(headers[i]) for i in order)
    headers = [headers[i] for i in order]
    _check_one_stack(headers)
    if compressed:
        return _on_regular_grid(headers, np.stack([_decoded_plane(paths[i]) for i in order]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(paths[i]) for i in order])
    image = reader.Execute()
    if _regular(headers):
        return DicomSeries(headers, image, list(range(len(headers))))
    return _on_regular_grid(headers, sitk.GetArrayFromImage(image))


def is_compressed(header: Dataset) -> bool:
    """Whether the file's pixel data is encapsulated (compressed), by its File Meta transfer syntax."""
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return bool(syntax is not None and syntax.is_compressed)


def _decoded_plane(path: Path) -> np.ndarray:
    """One single-frame slice decoded by pydicom (pylibjpeg plugins) with its Modality LUT applied: Rescale
    Slope/Intercept or a Modality LUT Sequence (PS3.3 C.11.1), as SimpleITK does for uncompressed files, so the
    values (float64 with a rescale, the stored integers without) are those of the uncompressed twin."""
    dataset = pydicom.dcmread(path)
    return apply_rescale(dataset.pixel_array, dataset)


def _regular(headers: Sequence[Dataset], tolerance: float = 0.1) -> bool:
    steps = np.diff([slice_position(header) for header in headers])
    return len(steps) == 0 or bool(np.all(np.abs(steps - np.median(steps)) <= tolerance * np.median(steps)))


def _on_regular_grid(headers: list[Dataset], planes: np.ndarray, tolerance: float = 0.1) -> DicomSeries:
    """Place the sorted planes [n, rows, cols] on a grid of the median slice step, filling missing slices."""
    first = headers[0]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    positions = np.array([slice_position(header) for header in headers])
    steps = np.diff(positions)
    step = float(np.median(steps)) if len(steps) else float(first.get("SliceThickness") or 1.0)
    index = np.rint((positions - positions[0]) / step).astype(int)
    off_grid = np.abs(positions - positions[0] - index * step) > tolerance * step
    if np.any(off_grid):
        raise UnusableSeriesError(
            f"irregular slice spacing: {int(off_grid.sum())} of {len(headers)} slices off the {step:.2f} mm grid"
        )
    depth = int(index[-1]) + 1
    if depth > 2 * len(headers):
        raise UnusableSeriesError(f"too many slices missing: {len(headers)} of {depth} positions hold an image")
    volume = np.empty((depth, *planes.shape[1:]), dtype=planes.dtype)
    volume[index] = planes
    for missing in sorted(set(range(depth)) - set(index.tolist())):
        below, above = index[index < missing].max(), index[index > missing].min()
        weight = (missing - below) / (above - below)
        volume[missing] = (1 - weight) * volume[below] + weight * volume[above]
    image = sitk.GetImageFromArray(volume)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    image.SetSpacing((column_spacing, row_spacing, step))
    image.SetOrigin(tuple(float(v) for v in first.ImagePositionPatient))
    normal = np.cross(orientation[:3], orientation[3:])
    image.SetDirection(tuple(np.column_stack([orientation[:3], orientation[3:], normal]).ravel()))
    return DicomSeries(headers, image, index.tolist())


def _check_one_stack(headers: Sequence[Dataset], tolerance_mm: float = 0.01) -> None:
    """A volume is one stack: one orientation, one image per slice position. Several orientations, or several
    images at one position (echoes of a multi-echo sequence, phases of a dynamic one, a repeated acquisition),
    would be stacked as extra slices in the wrong places, so they are refused with the reason."""
    orientation = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    for header in headers[1:]:
        if not np.allclose([float(v) for v in header.ImageOrientationPatient], orientation, atol=1e-3):
            raise UnusableSeriesError("several stacks: the images lie in more than one orientation")
    sizes = {(int(header.Rows), int(header.Columns)) for header in headers}
    if len(sizes) > 1:
        raise UnusableSeriesError(f"images of different sizes: {sorted(sizes)}")
    positions = np.array([slice_position(header) for header in headers])
    shared = int(np.count_nonzero(np.diff(positions) < tolerance_mm))
    if shared:
        echoes = {str(header.get("EchoTime", "")) for header in headers}
        kind = f"multi-echo series ({len(echoes)} echo times)" if len(echoes) > 1 else "repeated or dynamic images"
        raise UnusableSeriesError(f"{kind}: {shared} of {len(headers)} images share a slice position with another")


def _read_frames(paths: Sequence[Path], headers: Sequence[Dataset]) -> tuple[list[Dataset], list[np.ndarray]]:
    """Multi-frame files (and any single-frame ones beside them; ``headers`` are theirs, without pixel data) via
    highdicom, which applies each frame's rescale: frame headers and planes, sorted along the normal."""
    slices: list[tuple[Dataset, np.ndarray]] = []
    for path, header in zip(paths, headers, strict=True):
        image = hd.Image.from_dataset(pydicom.dcmread(path), copy=False)
        for frame in frame_headers(header):
            number = int(frame.get("ReferencedFrameNumber", 1))
            slices.append((frame, image.get_frame(number, dtype=np.float32, apply_modality_transform=True)))
    slices.sort(key=lambda item: _sort_key(item[0]))
    headers = [header for header, _ in slices]
    _check_one_stack(headers)
    return headers, [pixels for _, pixels in slices]


def read_dicom_files(paths: Sequence[Path]) -> sitk.Image:
    """Read the files of ONE series (any order) into a 3-D image with its patient geometry."""
    return read_dicom_series(paths).image


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from a folder; ``series_uid`` picks one when the folder holds several."""
    folder = Path(folder)
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    by_series: dict[str, list[Path]] = {}
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except (InvalidDicomError, OSError):
            continue
        uid = str(getattr(header, "SeriesInstanceUID", ""))
        if uid:
            by_series.setdefault(uid, []).append(path)
    if not by_series:
        raise ValueError(f"no DICOM series found in {folder}")
    if series_uid is None:
        if len(by_series) > 1:
            raise ValueError(f"{folder} holds {len(by_series)} series; pass series_uid to choose one")
        series_uid = next(iter(by_series))
    if series_uid not in by_series:
        raise ValueError(f"series {series_uid} not found in {folder}")
    return read_dicom_files(by_series[series_uid])


def read_series(path: Path | str, series_uid: str | None = None) -> sitk.Image:
    """Read a NIfTI (or other single-file volume) or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_folder(path, series_uid)
    if is_volume_file(path):
        return sitk.ReadImage(str(path))
    if path.is_file():
        return read_dicom_files([path])
    raise FileNotFoundError(f"no series at {path}")
