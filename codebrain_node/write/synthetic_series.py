"""Write one synthesised contrast as a classic MR Image Storage series that no one can mistake for an acquisition.

One instance per reference slice, in the reference's study, frame of reference and geometry, so the series lies
slice for slice on the reference in any viewer. What marks it synthetic (each one a separate, machine-readable
flag, because PACS, viewers and AI pipelines each look at different ones):

- Synthetic Data (0008,001C) = YES — PS3.3 C.12.1 SOP Common Module ("the content was made artificially").
- Image Type ``DERIVED\\SECONDARY\\OTHER`` — PS3.3 C.7.6.1.1.2 (General Image) and C.8.3.1.1.1 (MR Image: Value 3
  ``OTHER``); a derived image, not from a patient exposure.
- Series Description ``SYNTHETIC <contrast> (<model>)``, Image Comments saying it is synthetic and not for
  diagnosis, Burned In Annotation NO — PS3.3 C.7.3.1 General Series, C.7.6.1 General Image. A series made again
  from changed inputs says which it replaces: ``SYNTHETIC T1Gd (<model>) - replaces series 1021`` (LO: at most 64
  characters of the default repertoire, PS3.5 6.2, so the model name is shortened first).
- Derivation Description (model, version, input series), Derivation Code Sequence and Source Image Sequence to
  the corresponding slice of every input series with Purpose of Reference (121322, DCM, "Source image for image
  processing operation") — PS3.3 C.7.6.1, CID 7202.
- Contributing Equipment Sequence with Purpose of Reference (109100, DCM, "Synthesizing Equipment") naming this
  node and the model, as the IHE AI Results (AIR) profile asks, plus the scanner as (109101, DCM, "Acquisition
  Equipment") — PS3.3 C.12.1 (Contributing Equipment Sequence, CID 7005).

Derivation Code: CID 7203 "Image Derivation" (PS3.16) is extensible and has no concept for generative synthesis
(its codes are resampling, filtering, projections, pixel arithmetic, segmentation ...; checked against the
DICOM content mapping resources shipped with pydicom 3.0). We therefore use (123110, DCM, "Artificial
Intelligence") from PS3.16 CID 7162, an existing DCM concept that names the operation truthfully, and say
exactly what was done in Derivation Description.

The MR Image Module (PS3.3 C.8.3.1) makes Scanning Sequence and Sequence Variant type 1 with enumerated values;
nothing was acquired, so they are ``RM`` (research mode) and ``NONE``; the type 2 acquisition parameters
(Echo Time, Repetition Time, Echo Train Length, Scan Options) are present and empty rather than copied from an
input, because copied values would describe a different sequence. No Contrast/Bolus Module (PS3.3 C.7.6.4:
required only if contrast media was used in *this* image): a synthetic T1Gd was made without any agent.

Every Type 1, 2 and required 2C attribute of the MR Image IOD (PS3.3 A.4.3) is written whatever the reference
holds, because a reference may come from a PACS or an anonymiser that stripped optional ones and a PACS that
validates refuses an incomplete object: Type 2 ones the reference lacks are present and empty (Patient Position,
2C in General Series C.7.3.1 for MR, included), the Frame of Reference UID (Type 1, C.7.4.1) is a new one for the
series when the reference has none, and the acquisition equipment goes into Contributing Equipment only when its
Manufacturer (Type 1 there, C.12.1) is known. ``tests/write/test_every_object_validates.py`` checks this with
dciodvfy from a minimal-header reference.

Pixels are unsigned 16-bit (PS3.3 C.7.6.3), Window Center/Width from robust percentiles of the whole series so
every slice displays alike. DS values are written with pydicom's auto-formatting (≤ 16 characters, PS3.5 6.2).
Files are written under ``out_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` via a temporary name, fsync and
rename, so a crash never leaves a half-written instance that looks complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DS

from codebrain_node import __version__
from codebrain_node.contrasts import Contrast
from codebrain_node.durable import durable_file, fsync_directory, make_dirs_durably

MANUFACTURER = "codebrain-node"

#: (code value, coding scheme, meaning) of the concepts used, from PS3.16.
SOURCE_IMAGE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")  # CID 7202
SYNTHESIZING_EQUIPMENT = ("109100", "DCM", "Synthesizing Equipment")  # CID 7005
ACQUISITION_EQUIPMENT = ("109101", "DCM", "Acquisition Equipment")  # CID 7005
DERIVATION_CODE = ("123110", "DCM", "Artificial Intelligence")  # CID 7162 (CID 7203 is extensible)

#: Patient, study and related attributes copied unchanged from the reference (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2).
COPIED_FROM_REFERENCE = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "IssuerOfAccessionNumberSequence",
    "TimezoneOffsetFromUTC",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PatientPosition",
    "InstitutionName",
    "InstitutionAddress",
    "MagneticFieldStrength",
)

#: Image Comments (LT) of every instance.
COMMENT = (
    "SYNTHETIC IMAGE: {contrast} computed by the AI model {model} {version} from {inputs}. "
    "Not acquired on a scanner; not for primary diagnosis."
)


#: The per-voxel confidence map the review page overlays (see :func:`save_confidence_map`).
CONFIDENCE_FILE = "confidence.npy"
#: Threads writing a series' instances: each write is mostly a wait on fsync, so a few overlap the building.
WRITER_THREADS = 4


@dataclass(frozen=True)
class WrittenInstance:
    """One file the writer made, with what the database records of it (no need to read it back)."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    instance_number: int
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class WrittenSeries:
    """One synthetic series as written: its identity and its instances in slice order."""

    contrast: Contrast
    series_instance_uid: str
    series_number: int
    series_description: str
    frame_of_reference_uid: str | None
    instances: list[WrittenInstance]

    @property
    def paths(self) -> list[Path]:
        return [instance.path for instance in self.instances]


def write_synthetic_series(
    reference: list[Dataset],
    pixels: np.ndarray,
    contrast: Contrast,
    model_name: str,
    model_version: str,
    sources: Mapping[Contrast, Sequence[Dataset]],
    out_dir: Path,
    series_number: int | None = None,
    confidence: np.ndarray | None = None,
    replaces: int | None = None,
) -> WrittenSeries:
    """Write ``pixels`` [Z, Rows, Cols] (reference grid, stored intensities) as one synthetic MR series.

    ``reference`` are the reference series' datasets sorted along the slice normal (slice ``z`` of ``pixels``
    lies on ``reference[z]``); ``sources`` the input series used, any order. ``confidence`` [Z, Rows, Cols] in
    [0, 1] (optional) is summarised per slice in Image Comments. ``replaces``: the number of the earlier
    synthetic series of this contrast that this one supersedes (named in the description and comments).
    Returns what was written, in slice order.
    """
    volume = _checked_volume(reference, pixels)
    contrast = Contrast(contrast)
    series_uid = generate_uid()
    now = datetime.now(UTC)
    center, width = window_from_data(volume)
    spacing = _spacing_between_slices(reference)
    inputs_text = ", ".join(f"{c.value} series {datasets[0].SeriesInstanceUID}" for c, datasets in _ordered(sources))
    source_slices = {c: _SourceSlices.of(datasets) for c, datasets in _ordered(sources)}
    number = series_number if series_number is not None else 1000 + int(reference[0].get("SeriesNumber", 0) or 0)
    # Frame of Reference Module (PS3.3 C.7.4.1): the UID is Type 1; a reference without one gets one new UID for the
    # whole synthetic series, so its slices still share one patient coordinate system
    frame_of_reference = str(reference[0].get("FrameOfReferenceUID", "") or "") or generate_uid()

    target_dir = Path(out_dir) / series_uid
    make_dirs_durably(target_dir)
    # Building a dataset is Python on one core; writing and fsyncing it mostly waits on the disk: the writes run
    # on a few threads while the next slices are built.
    pending: list[tuple[Dataset, Future[Path]]] = []
    with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="write-series") as writers:
        for index, (ref, plane) in enumerate(zip(reference, volume, strict=True)):
            ds = _instance(
                ref,
                contrast=contrast,
                model_name=model_name,
                model_version=model_version,
                series_uid=series_uid,
                series_number=number,
                instance_number=index + 1,
                now=now,
                inputs_text=inputs_text,
                replaces=replaces,
                frame_of_reference_uid=frame_of_reference,
            )
            ds.SourceImageSequence = _source_images(ref, source_slices)
            _set_geometry(ds, ref, spacing)
            _set_pixels(ds, plane, center, width)
            if confidence is not None:
                ds.ImageComments += f" Mean model confidence on this slice: {float(np.mean(confidence[index])):.3f}."
            pending.append((ds, writers.submit(_write_atomically, ds, target_dir)))
        paths = [future.result() for _, future in pending]  # all written (or the error raised) before the fsync
    instances = [
        WrittenInstance(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            instance_number=int(ds.InstanceNumber),
            path=path,
            size_bytes=path.stat().st_size,
        )
        for (ds, _), path in zip(pending, paths, strict=True)
    ]
    if confidence is not None:
        save_confidence_map(confidence, target_dir)
    fsync_directory(target_dir)
    return WrittenSeries(
        contrast=contrast,
        series_instance_uid=series_uid,
        series_number=number,
        series_description=str(ds.SeriesDescription),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")) or None,
        instances=instances,
    )


def save_confidence_map(confidence: np.ndarray, series_dir: Path) -> Path:
    """``confidence.npy`` beside the instances: float32 [Z, Rows, Cols] in [0, 1], slice k ↔ InstanceNumber k+1.

    Not DICOM: the review page overlays it; PACS never receives it (only the ``.dcm`` files are exported).
    """
    final = series_dir / CONFIDENCE_FILE
    with durable_file(final) as handle:
        np.save(handle, np.clip(confidence, 0.0, 1.0).astype(np.float32))
    return final


def window_from_data(volume: np.ndarray) -> tuple[float, float]:
    """Window center/width spanning the 0.5th to 99.5th percentile of the non-zero voxels of the series."""
    values = volume[volume > 0]
    if values.size == 0:
        return 0.5, 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    width = max(float(high - low), 1.0)
    return float(low) + width / 2, width


def slice_centre(ds: Dataset) -> np.ndarray | None:
    """Patient-space centre of a slice (IPP + half the field of view along rows and columns)."""
    try:
        position = np.array(ds.ImagePositionPatient, float)
        orientation = np.array(ds.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    along_row, along_column = orientation[:3], orientation[3:]
    return (
        position
        + along_row * column_spacing * (int(ds.Columns) - 1) / 2
        + along_column * row_spacing * (int(ds.Rows) - 1) / 2
    )


def _checked_volume(reference: Sequence[Dataset], pixels: np.ndarray) -> np.ndarray:
    volume = np.asarray(pixels, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"pixels must be [Z, Rows, Cols], got shape {volume.shape}")
    if len(reference) != volume.shape[0]:
        raise ValueError(f"{volume.shape[0]} synthetic slices for {len(reference)} reference slices")
    for ds in reference:
        if (int(ds.Rows), int(ds.Columns)) != volume.shape[1:]:
            raise ValueError(f"reference slice is {ds.Rows}x{ds.Columns}, synthetic is {volume.shape[1:]}")
    return np.nan_to_num(volume, nan=0.0, posinf=65535.0, neginf=0.0)


def _ordered(sources: Mapping[Contrast, Sequence[Dataset]]) -> list[tuple[Contrast, Sequence[Dataset]]]:
    order = list(Contrast)
    return sorted(((Contrast(c), ds) for c, ds in sources.items() if ds), key=lambda item: order.index(item[0]))


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def series_description(contrast: Contrast, model_name: str, replaces: int | None = None) -> str:
    """``SYNTHETIC <contrast> (<model>)`` [`` - replaces series N``], within LO's 64 characters (PS3.5 6.2): the
    model name gives way first, so what the series is and what it replaces always show."""
    suffix = f" - replaces series {replaces}" if replaces is not None else ""
    head = f"SYNTHETIC {Contrast(contrast).value} ("
    room = max(64 - len(head) - 1 - len(suffix), 0)
    return f"{head}{model_name[:room]}){suffix}"[:64]


def _instance(
    ref: Dataset,
    *,
    contrast: Contrast,
    model_name: str,
    model_version: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    now: datetime,
    inputs_text: str,
    frame_of_reference_uid: str,
    replaces: int | None = None,
) -> Dataset:
    """Every attribute except geometry, pixels and source references (PS3.3 A.4 MR Image IOD); what the reference
    lacks is filled as its module requires (see :func:`_fill_from_reference`)."""
    ds = _fill_from_reference(ref, frame_of_reference_uid)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")

    # SOP Common (C.12.1)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SyntheticData = "YES"
    ds.ContributingEquipmentSequence = _contributing_equipment(ref, model_name, model_version)

    # General Series (C.7.3.1)
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = series_description(contrast, model_name, replaces)
    # Body Part Examined tells validators the part is unpaired (so no Laterality, type 2C); this node only
    # synthesises brain MR, "HEAD" in PS3.16 CID 4031, when the reference does not say.
    ds.BodyPartExamined = ref.get("BodyPartExamined", "") or "HEAD"
    if ref.get("Laterality"):
        ds.Laterality = ref.Laterality

    # General Equipment (C.7.5.1): the equipment that made this series is the node.
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = model_name[:64]
    ds.SoftwareVersions = [f"codebrain-node {__version__}"[:64], f"{model_name} {model_version}"[:64]]

    # General Image (C.7.6.1)
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.DerivationDescription = (
        f"Synthesised {contrast.value} by the CodeBrain model {model_name} version {model_version} "
        f"(codebrain-node {__version__}) from {inputs_text}"
    )[:1024]
    ds.DerivationCodeSequence = [_code(DERIVATION_CODE)]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01" if str(ref.get("LossyImageCompression", "00")) == "01" else "00"
    if ds.LossyImageCompression == "01":
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in ref:
                ds[keyword] = ref[keyword]
    ds.ImageComments = COMMENT.format(
        contrast=contrast.value, model=model_name, version=model_version, inputs=inputs_text
    )
    if replaces is not None:
        ds.ImageComments += f" Replaces synthetic series {replaces}, made from earlier inputs."

    # MR Image (C.8.3.1): nothing was acquired.
    ds.ScanningSequence = "RM"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = ref.get("MRAcquisitionType", "") or ""
    ds.RepetitionTime = ""
    ds.EchoTime = ""
    ds.EchoTrainLength = ""
    ds.SequenceName = f"SYNTHETIC_{contrast.value}"[:16]
    return ds


#: Type 2 attributes of the modules whose values come from the reference: present and empty when it lacks them.
#: Patient Module C.7.1.1; General Study C.7.2.1; Frame of Reference C.7.4.1 (Position Reference Indicator);
#: General Series C.7.3.1 (Patient Position is 2C, required for MR images without a Patient Orientation Code
#: Sequence, which the node never writes, and may be empty).
EMPTY_IF_UNKNOWN = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
    "PatientPosition",
)


def _fill_from_reference(ref: Dataset, frame_of_reference_uid: str) -> Dataset:
    """Patient, study, frame of reference and patient position from the reference slice, complete even when it is
    not: PACS and anonymisers strip optional attributes, and an object missing a Type 1 or 2 one is refused by a
    validating archive (dciodvfy: "Missing attribute Type 2C Conditional Element=<PatientPosition>").

    Type 1: Frame of Reference UID (PS3.3 C.7.4.1), the series' own new one when the reference has none.
    Type 2 / 2C: :data:`EMPTY_IF_UNKNOWN`, present with zero length when unknown (PS3.5 7.4.3 and 7.4.4); nothing
    is guessed (a Patient Position of HFS, say, would be a claim about this patient).
    """
    ds = Dataset()
    for keyword in COPIED_FROM_REFERENCE:
        if keyword in ref:
            ds[keyword] = ref[keyword]
    for keyword in EMPTY_IF_UNKNOWN:
        ds.setdefault(keyword, "")
    if not ds.get("FrameOfReferenceUID"):
        ds.FrameOfReferenceUID = frame_of_reference_uid
    return ds


def _contributing_equipment(ref: Dataset, model_name: str, model_version: str) -> list[Dataset]:
    """Contributing Equipment Sequence (PS3.3 C.12.1, Table C.12-1): this node as Synthesizing Equipment, and the
    scanner as Acquisition Equipment when the reference names its Manufacturer (Type 1 within an item; an item
    with an empty one is invalid, and an unknown scanner is better left out than invented)."""
    node = Dataset()
    node.PurposeOfReferenceCodeSequence = [_code(SYNTHESIZING_EQUIPMENT)]
    node.Manufacturer = MANUFACTURER
    node.ManufacturerModelName = model_name[:64]
    node.SoftwareVersions = [f"codebrain-node {__version__}"[:64], f"{model_name} {model_version}"[:64]]
    node.ContributionDescription = f"AI synthesis of a missing MR contrast with {model_name} {model_version}"[:64]
    if not ref.get("Manufacturer"):
        return [node]
    scanner = Dataset()
    scanner.PurposeOfReferenceCodeSequence = [_code(ACQUISITION_EQUIPMENT)]
    scanner.Manufacturer = ref.Manufacturer
    for keyword in (
        "InstitutionName",
        "StationName",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
    ):
        if ref.get(keyword):
            scanner[keyword] = ref[keyword]
    return [node, scanner]


@dataclass(frozen=True)
class _SourceSlices:
    """One input series' slices and their centres ``[K, 3]`` (None when any slice lacks its geometry)."""

    datasets: Sequence[Dataset]
    centres: np.ndarray | None

    @classmethod
    def of(cls, datasets: Sequence[Dataset]) -> _SourceSlices:
        centres = [slice_centre(ds) for ds in datasets]
        known = all(centre is not None for centre in centres)
        return cls(datasets, np.stack(centres) if known and centres else None)

    def nearest(self, target: np.ndarray | None) -> Dataset:
        """The slice whose centre is nearest ``target`` (the middle slice when either has no geometry)."""
        if target is None or self.centres is None:
            return self.datasets[len(self.datasets) // 2]
        return self.datasets[int(np.argmin(((self.centres - target) ** 2).sum(axis=1)))]


def _source_images(ref: Dataset, sources: Mapping[Contrast, _SourceSlices]) -> list:
    """For each input series, the slice whose centre is nearest this reference slice's centre."""
    target = slice_centre(ref)
    items = []
    for source in sources.values():
        nearest = source.nearest(target)
        item = Dataset()
        item.ReferencedSOPClassUID = nearest.SOPClassUID
        item.ReferencedSOPInstanceUID = nearest.SOPInstanceUID
        if "ReferencedFrameNumber" in nearest:  # a frame of a multi-frame input (imaging.series_io.frame_headers)
            item.ReferencedFrameNumber = nearest.ReferencedFrameNumber
        item.PurposeOfReferenceCodeSequence = [_code(SOURCE_IMAGE_PURPOSE)]
        items.append(item)
    return items


def _spacing_between_slices(reference: Sequence[Dataset]) -> float | None:
    """Spacing along the slice normal from the positions (median step); the reference's value if it has one."""
    if "SpacingBetweenSlices" in reference[0]:
        return float(reference[0].SpacingBetweenSlices)
    if len(reference) < 2:
        return None
    orientation = np.array(reference[0].ImageOrientationPatient, float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [float(np.dot(normal, np.array(ds.ImagePositionPatient, float))) for ds in reference]
    steps = np.abs(np.diff(positions))
    return float(np.median(steps)) if steps.size and np.median(steps) > 0 else None


def _ds(value: float) -> DS:
    return DS(float(value), auto_format=True)


def _set_geometry(ds: Dataset, ref: Dataset, spacing: float | None) -> None:
    """Image Plane Module (C.7.6.2) from the reference slice, as valid DS strings."""
    ds.ImagePositionPatient = [_ds(v) for v in ref.ImagePositionPatient]
    ds.ImageOrientationPatient = [_ds(v) for v in ref.ImageOrientationPatient]
    ds.PixelSpacing = [_ds(v) for v in ref.PixelSpacing]
    ds.SliceThickness = _ds(ref.SliceThickness) if ref.get("SliceThickness") not in (None, "") else ""
    if spacing is not None:
        ds.SpacingBetweenSlices = _ds(spacing)
    if ref.get("SliceLocation") not in (None, ""):
        ds.SliceLocation = _ds(ref.SliceLocation)


def _set_pixels(ds: Dataset, plane: np.ndarray, center: float, width: float) -> None:
    """Image Pixel Module (C.7.6.3) and VOI LUT (C.11.2): unsigned 16-bit MONOCHROME2."""
    stored = np.clip(np.rint(plane), 0, 65535).astype(np.uint16)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = int(stored.min())
    ds.LargestImagePixelValue = int(stored.max())
    ds.WindowCenter = _ds(center)
    ds.WindowWidth = _ds(width)
    ds.WindowCenterWidthExplanation = "SYNTHETIC"
    ds.PixelData = stored.tobytes()


def _write_atomically(ds: Dataset, folder: Path) -> Path:
    """One instance, whole or not at all; the caller fsyncs the folder once for the series."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    final = folder / f"{ds.SOPInstanceUID}.dcm"
    with durable_file(final, sync_directory=False) as handle:
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
    return final
