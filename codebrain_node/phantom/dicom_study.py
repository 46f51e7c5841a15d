"""Turn any co-registered case (phantom or real NIfTI) into a realistic DICOM MR study, one series per contrast.

Each series is MR Image Storage, one file a slice, with headers as a scanner would write them: vendor-like
SeriesDescription, ScanningSequence/SequenceVariant, RepetitionTime/EchoTime/InversionTime/FlipAngle, a
ContrastBolusAgent on the post-gadolinium series, and full slice geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing, SliceThickness, SpacingBetweenSlices). Per series one may ask for another
matrix, orientation or slice thickness (the volume is then resampled onto that acquisition grid) and may leave
contrasts out, to build the incomplete studies the node exists for. Patient and study attributes are fake and
deterministic for a seed; all series share one FrameOfReferenceUID, because the case is co-registered.

A series may also keep its volume's own grid whatever its orientation (``SeriesLayout("source")``): that is how
``codebrain-node dicomize`` writes acquired NIfTI series, oblique and thick-sliced, as a scanner sent them. The
vendor (``manufacturer``) decides the header conventions of :data:`VENDOR_STYLES`: Manufacturer, the
SeriesDescription/ProtocolName pattern, SequenceName, ImageType values 3 and up, SoftwareVersions; nothing private.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from codebrain_node.contrasts import Contrast
from codebrain_node.phantom.physics import Sequence

#: Row, column and normal direction (LPS) of each acquisition plane, as scanners write ImageOrientationPatient.
PLANES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}

_VENDORS = {
    "SIEMENS": ("Skyra", "Avanto"),
    "GE MEDICAL SYSTEMS": ("DISCOVERY MR750", "SIGNA HDxt"),
    "Philips Medical Systems": ("Ingenia", "Achieva"),
}


@dataclass(frozen=True)
class VendorStyle:
    """How one vendor fills the standard (non-private) attributes that differ between scanners.

    ``image_type`` gives ImageType (0008,0008) values 3 and up per sequence kind (PS3.3 C.8.3.1.1.1 leaves them to
    the implementation: Siemens ``M\\ND\\NORM``, GE ``OTHER``, Philips ``M_SE\\M\\SE``); ``sequence_names``
    the SequenceName (0018,0024) per (contrast, kind), the vendor's pulse sequence as its console shows it;
    ``protocol_name`` None means ProtocolName repeats SeriesDescription (Siemens, Philips), GE writes the exam
    protocol there.
    """

    image_type: dict[str, tuple[str, ...]]
    sequence_names: dict[tuple[Contrast, str], str]
    software_versions: str | tuple[str, ...]
    station_name: str
    protocol_name: str | None = None


VENDOR_STYLES: dict[str, VendorStyle] = {
    "SIEMENS": VendorStyle(
        image_type={kind: ("M", "ND", "NORM") for kind in ("SE", "IR", "GRE3D")},
        sequence_names={
            (Contrast.T1, "SE"): "*se2d1",
            (Contrast.T1GD, "SE"): "*se2d1",
            (Contrast.T2, "SE"): "*tse2d1_15",
            (Contrast.PD, "SE"): "*tse2d1_7",
            (Contrast.FLAIR, "IR"): "*tir2d1_16",
            (Contrast.T1, "GRE3D"): "*fl3d1",
            (Contrast.T1GD, "GRE3D"): "*fl3d1",
        },
        software_versions="syngo MR E11",
        station_name="MRC35104",
    ),
    "GE MEDICAL SYSTEMS": VendorStyle(
        image_type={kind: ("OTHER",) for kind in ("SE", "IR", "GRE3D")},
        sequence_names={
            (Contrast.T1, "SE"): "memp",
            (Contrast.T1GD, "SE"): "memp",
            (Contrast.T2, "SE"): "fse-xl",
            (Contrast.PD, "SE"): "fse-xl",
            (Contrast.FLAIR, "IR"): "fse-xl",
            (Contrast.T1, "GRE3D"): "efgre3d",
            (Contrast.T1GD, "GRE3D"): "efgre3d",
        },
        software_versions=("27", "LX", "MR Software release:DV26.0_R03"),
        station_name="GEMR750",
        protocol_name="BRAIN ROUTINE",
    ),
    "Philips Medical Systems": VendorStyle(
        image_type={"SE": ("M_SE", "M", "SE"), "IR": ("M_IR", "M", "IR"), "GRE3D": ("M_FFE", "M", "FFE")},
        sequence_names={
            (Contrast.T1, "SE"): "SE",
            (Contrast.T1GD, "SE"): "SE",
            (Contrast.T2, "SE"): "TSE",
            (Contrast.PD, "SE"): "TSE",
            (Contrast.FLAIR, "IR"): "IR_TSE",
            (Contrast.T1, "GRE3D"): "T1FFE",
            (Contrast.T1GD, "GRE3D"): "T1FFE",
        },
        software_versions=("5.6.1", "5.6.1.2"),
        station_name="PHILIPS-MR1",
    ),
}

#: The ``--vendor`` words of ``codebrain-node dicomize``, each the Manufacturer (0008,0070) that vendor writes.
VENDOR_NAMES = {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS", "philips": "Philips Medical Systems"}

#: SeriesDescription per vendor, contrast and T1 family (``SE`` / ``GRE3D``), as the vendors' protocols name them.
_DESCRIPTIONS: dict[str, dict[tuple[Contrast, str], str]] = {
    "SIEMENS": {
        (Contrast.T1, "SE"): "t1_se_{plane}",
        (Contrast.T1, "GRE3D"): "t1_fl3d_{plane}",
        (Contrast.T1GD, "SE"): "t1_se_{plane}_KM",
        (Contrast.T1GD, "GRE3D"): "t1_fl3d_{plane}_KM",
        (Contrast.T2, "SE"): "t2_tse_{plane}",
        (Contrast.PD, "SE"): "pd_tse_{plane}",
        (Contrast.FLAIR, "IR"): "t2_tirm_{plane}_dark-fluid",
    },
    "GE MEDICAL SYSTEMS": {
        (Contrast.T1, "SE"): "{PLANE} T1 SE",
        (Contrast.T1, "GRE3D"): "{PLANE} 3D T1 SPGR",
        (Contrast.T1GD, "SE"): "{PLANE} T1 SE POST GAD",
        (Contrast.T1GD, "GRE3D"): "{PLANE} 3D T1 SPGR POST",
        (Contrast.T2, "SE"): "{PLANE} T2 FSE",
        (Contrast.PD, "SE"): "{PLANE} PD FSE",
        (Contrast.FLAIR, "IR"): "{PLANE} T2 FLAIR",
    },
    "Philips Medical Systems": {
        (Contrast.T1, "SE"): "T1W_SE_{PLANE}",
        (Contrast.T1, "GRE3D"): "T1W_3D_FFE_{PLANE}",
        (Contrast.T1GD, "SE"): "T1W_SE_{PLANE} +C",
        (Contrast.T1GD, "GRE3D"): "T1W_3D_FFE_{PLANE} +C",
        (Contrast.T2, "SE"): "T2W_TSE_{PLANE}",
        (Contrast.PD, "SE"): "PDW_TSE_{PLANE}",
        (Contrast.FLAIR, "IR"): "T2W_FLAIR_{PLANE}",
    },
}
_PLANE_ABBREVIATIONS = {
    "SIEMENS": {"axial": "tra", "coronal": "cor", "sagittal": "sag"},
    "GE MEDICAL SYSTEMS": {"axial": "AX", "coronal": "COR", "sagittal": "SAG"},
    "Philips Medical Systems": {"axial": "TRA", "coronal": "COR", "sagittal": "SAG"},
}
#: ScanningSequence, SequenceVariant, MRAcquisitionType per sequence kind.
_SEQUENCE_CODES = {
    "SE": (["SE"], ["SK", "SP"], "2D"),
    "IR": (["SE", "IR"], ["SK", "SP", "MP"], "2D"),
    "GRE3D": (["GR"], ["SP", "SS"], "3D"),
}
_DEFAULT_SEQUENCES = {
    Contrast.T1: Sequence(Contrast.T1, "SE", 550.0, 10.0),
    Contrast.T1GD: Sequence(Contrast.T1GD, "SE", 550.0, 10.0, contrast_agent=True),
    Contrast.T2: Sequence(Contrast.T2, "SE", 4500.0, 100.0),
    Contrast.PD: Sequence(Contrast.PD, "SE", 3000.0, 15.0),
    Contrast.FLAIR: Sequence(Contrast.FLAIR, "IR", 9000.0, 110.0, inversion_time=2500.0),
}
_GYROMAGNETIC_MHZ_PER_T = 42.577478


@dataclass(frozen=True)
class SeriesLayout:
    """How one series is acquired; ``None`` keeps the source volume's value.

    ``matrix`` is (rows, columns); the field of view stays the source's, so the pixel spacing follows from it.
    ``slice_thickness`` sets both SliceThickness and the slice spacing (contiguous slices).
    ``orientation="source"`` keeps the volume's own grid as it is (an acquired, possibly oblique series).
    """

    orientation: str = "axial"
    matrix: tuple[int, int] | None = None
    slice_thickness: float | None = None


@dataclass(frozen=True)
class PatientStudy:
    """Fake, deterministic patient and study attributes."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    frame_of_reference_uid: str
    study_date: str
    study_time: str
    accession: str
    manufacturer: str
    model: str
    identity: str = ""

    @classmethod
    def fake(cls, seed: int, manufacturer: str | None = None, identity: str = "") -> PatientStudy:
        """Attributes drawn from ``seed``; ``manufacturer`` (a key of :data:`VENDOR_STYLES`) fixes the vendor.

        ``identity`` (e.g. a case name) enters every UID, so two cases written with one seed share no UID.
        """
        rng = np.random.default_rng(seed + 7919)
        drawn = sorted(_VENDORS)[int(rng.integers(len(_VENDORS)))]
        if manufacturer is not None and manufacturer not in _VENDORS:
            raise ValueError(f"unknown manufacturer {manufacturer!r}; expected one of {sorted(_VENDORS)}")
        manufacturer = manufacturer or drawn
        models = _VENDORS[manufacturer]
        return cls(
            patient_name=f"PHANTOM^SUBJECT{seed:05d}",
            patient_id=f"PH{seed:08d}",
            birth_date=f"19{int(rng.integers(40, 99)):02d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            sex="F" if rng.random() < 0.5 else "M",
            study_uid=_uid(seed, *_salt(identity), "study"),
            frame_of_reference_uid=_uid(seed, *_salt(identity), "frame-of-reference"),
            study_date=f"2024{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
            study_time=f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
            accession=f"A{seed:07d}",
            manufacturer=manufacturer,
            model=models[int(rng.integers(len(models)))],
            identity=identity,
        )


def _salt(identity: str) -> tuple[str, ...]:
    return (identity,) if identity else ()


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID: same seed and parts, same UID."""
    return generate_uid(entropy_srcs=["codebrain-node phantom", str(seed), *[str(p) for p in parts]])


# --- geometry -------------------------------------------------------------------------------------------------


def _corners(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    points = [
        image.TransformContinuousIndexToPhysicalPoint([float(v) for v in (i, j, k)])
        for i in (-0.5, size[0] + 0.5)
        for j in (-0.5, size[1] + 0.5)
        for k in (-0.5, size[2] + 0.5)
    ]
    return np.array(points)


#: The layout that writes a volume on its own grid, voxel for voxel.
SOURCE = "source"


def plane_of(image: sitk.Image) -> str:
    """axial, coronal or sagittal: the plane whose normal is closest to the image's slice axis (an oblique
    acquisition is named by the plane it is tilted from, as consoles do)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def acquisition_grid(source: sitk.Image, layout: SeriesLayout) -> sitk.Image:
    """The grid a scanner would acquire for ``layout`` covering the source volume's extent."""
    if layout.orientation not in PLANES:
        raise ValueError(f"orientation must be one of {sorted(PLANES)}, got {layout.orientation!r}")
    row, column = (np.array(v) for v in PLANES[layout.orientation])
    normal = np.cross(row, column)
    axes = np.stack([row, column, normal], axis=1)  # direction matrix, columns = axes
    corners = _corners(source) @ axes  # coordinates along row, column, normal
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    source_spacing = np.abs(np.array(source.GetDirection()).reshape(3, 3).T @ axes).T @ np.array(source.GetSpacing())
    if layout.matrix is not None:
        rows, columns = layout.matrix
        spacing_row, spacing_column = extent[0] / columns, extent[1] / rows
    else:
        spacing_row, spacing_column = float(source_spacing[0]), float(source_spacing[1])
        columns, rows = max(round(extent[0] / spacing_row), 1), max(round(extent[1] / spacing_column), 1)
    thickness = float(layout.slice_thickness or source_spacing[2])
    slices = max(round(extent[2] / thickness), 1)
    spacing = np.array([spacing_row, spacing_column, thickness])
    size = np.array([columns, rows, slices])
    centre = (low + high) / 2
    origin_local = centre - (size - 1) / 2 * spacing
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing([float(v) for v in spacing])
    grid.SetDirection([float(v) for v in axes.ravel()])
    grid.SetOrigin([float(v) for v in axes @ origin_local])
    return grid


def _keeps_source_grid(source: sitk.Image, layout: SeriesLayout) -> bool:
    if layout.orientation == SOURCE:
        if layout.matrix is not None or layout.slice_thickness is not None:
            raise ValueError("orientation 'source' keeps the volume's grid: give no matrix or slice thickness")
        return True
    row, column = PLANES[layout.orientation]
    direction = np.array(source.GetDirection()).reshape(3, 3)
    return (
        layout.matrix is None
        and layout.slice_thickness is None
        and np.allclose(direction[:, 0], row, atol=1e-4)
        and np.allclose(direction[:, 1], column, atol=1e-4)
    )


def _on_layout(source: sitk.Image, layout: SeriesLayout) -> sitk.Image:
    if _keeps_source_grid(source, layout):
        return source
    grid = acquisition_grid(source, layout)
    image = sitk.Cast(source, sitk.sitkFloat32)
    thickness = grid.GetSpacing()[2]
    if thickness > 1.5 * min(source.GetSpacing()):  # a thick slice averages its profile
        image = sitk.SmoothingRecursiveGaussian(image, thickness / 2.355)
    return sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


# --- writing --------------------------------------------------------------------------------------------------


def series_description(manufacturer: str, contrast: Contrast, kind: str, orientation: str) -> str:
    """A SeriesDescription as the vendor's protocol would name the series."""
    plane = _PLANE_ABBREVIATIONS[manufacturer][orientation]
    template = _DESCRIPTIONS[manufacturer][(contrast, kind)]
    return template.format(plane=plane, PLANE=plane)


def _slice_dataset(
    meta: PatientStudy, series: Dataset, pixels: np.ndarray, position: np.ndarray, index: int, seed: int
) -> Dataset:
    ds = Dataset()
    ds.update(series)
    sop_uid = _uid(seed, series.SeriesInstanceUID, index)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float))
    ds.SliceLocation = f"{float(position @ normal):.6f}"
    ds.Rows, ds.Columns = pixels.shape
    signed = series.PixelRepresentation == 1
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def write_dicom_study(
    images: Mapping[Contrast, sitk.Image],
    out_dir: Path | str,
    *,
    sequences: Mapping[Contrast, Sequence] | None = None,
    layouts: Mapping[Contrast, SeriesLayout] | None = None,
    omit: Iterable[Contrast] = (),
    seed: int = 0,
    field_strength: float | None = None,
    manufacturer: str | None = None,
    default_layout: SeriesLayout | None = None,
    identity: str = "",
) -> Path:
    """Write one DICOM series per contrast under ``out_dir/<NNN>_<description>/IM0001.dcm``; returns ``out_dir``.

    ``layouts`` changes a series' orientation, matrix or slice thickness (``default_layout`` for the series not
    named there: axial on the source's extent unless given); ``omit`` leaves contrasts out; ``manufacturer`` (a key
    of :data:`VENDOR_STYLES`) fixes the vendor instead of drawing it from ``seed``; ``identity`` enters every UID.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = PatientStudy.fake(seed, manufacturer, identity)
    skipped = set(omit)
    for number, (contrast, image) in enumerate(images.items(), start=1):
        if contrast in skipped:
            continue
        sequence = (sequences or {}).get(contrast, _DEFAULT_SEQUENCES[contrast])
        layout = (layouts or {}).get(contrast, default_layout or SeriesLayout())
        volume = _on_layout(image, layout)
        array = np.rint(sitk.GetArrayFromImage(volume)).astype(np.int32)
        series = _series_dataset(meta, contrast, sequence, layout, volume, number, seed, field_strength)
        series.PixelRepresentation = 1 if array.min() < 0 else 0
        lo, hi = (-32768, 32767) if series.PixelRepresentation else (0, 65535)
        array = np.clip(array, lo, hi)
        p_low, p_high = np.percentile(array, [1, 99.5])
        series.WindowCenter = f"{(p_low + p_high) / 2:.1f}"
        series.WindowWidth = f"{max(p_high - p_low, 1):.1f}"
        folder = out / f"{number * 100 + 1:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', series.SeriesDescription).strip('_')}"
        folder.mkdir(parents=True, exist_ok=True)
        direction = np.array(volume.GetDirection()).reshape(3, 3)
        for k in range(array.shape[0]):
            position = np.array(volume.GetOrigin()) + direction[:, 2] * k * volume.GetSpacing()[2]
            ds = _slice_dataset(meta, series, array[k], position, k, seed)
            ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
    return out


def _series_dataset(
    meta: PatientStudy,
    contrast: Contrast,
    sequence: Sequence,
    layout: SeriesLayout,
    volume: sitk.Image,
    number: int,
    seed: int,
    field_strength: float | None,
) -> Dataset:
    ds = Dataset()
    style = VENDOR_STYLES[meta.manufacturer]
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", *style.image_type[sequence.kind]]
    ds.PatientName = meta.patient_name
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = meta.birth_date
    ds.PatientSex = meta.sex
    ds.StudyInstanceUID = meta.study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = meta.study_date
    ds.StudyTime = meta.study_time
    ds.SeriesTime = f"{int(meta.study_time[:2]):02d}{(int(meta.study_time[2:4]) + number) % 60:02d}00"
    ds.StudyID = "1"
    ds.AccessionNumber = meta.accession
    ds.StudyDescription = "MRI BRAIN W/WO CONTRAST"
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = meta.manufacturer
    ds.ManufacturerModelName = meta.model
    ds.SoftwareVersions = (
        list(style.software_versions) if isinstance(style.software_versions, tuple) else (style.software_versions)
    )
    ds.StationName = style.station_name
    ds.InstitutionName = "CODEBRAIN PHANTOM HOSPITAL"
    ds.BodyPartExamined = "HEAD"
    ds.PatientPosition = "HFS"
    ds.SeriesInstanceUID = _uid(seed, *_salt(meta.identity), "series", contrast, number)
    ds.SeriesNumber = number * 100 + 1
    plane = plane_of(volume) if layout.orientation == SOURCE else layout.orientation
    ds.SeriesDescription = series_description(meta.manufacturer, contrast, sequence.kind, plane)
    ds.ProtocolName = style.protocol_name or ds.SeriesDescription
    ds.FrameOfReferenceUID = meta.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    scanning, variant, acquisition = _SEQUENCE_CODES[sequence.kind]
    ds.ScanningSequence = scanning
    ds.SequenceVariant = variant
    ds.ScanOptions = ["IR"] if sequence.kind == "IR" else ""
    ds.MRAcquisitionType = acquisition
    ds.SequenceName = style.sequence_names.get((contrast, sequence.kind), sequence.kind)
    ds.RepetitionTime = f"{sequence.repetition_time:.2f}"
    ds.EchoTime = f"{sequence.echo_time:.2f}"
    if sequence.inversion_time is not None:
        ds.InversionTime = f"{sequence.inversion_time:.2f}"
    ds.FlipAngle = f"{sequence.flip_angle:.1f}"
    ds.EchoTrainLength = 1 if sequence.kind == "GRE3D" else (4 if contrast in (Contrast.T1, Contrast.T1GD) else 16)
    tesla = field_strength or sequence.field_strength
    ds.MagneticFieldStrength = f"{tesla:.1f}"
    ds.ImagingFrequency = f"{tesla * _GYROMAGNETIC_MHZ_PER_T:.6f}"
    ds.ImagedNucleus = "1H"
    if sequence.contrast_agent:
        ds.ContrastBolusAgent = "GADOBUTROL (Gadovist)"
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusVolume = "7.5"
    spacing = volume.GetSpacing()
    direction = np.array(volume.GetDirection()).reshape(3, 3)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    ds.SliceThickness = f"{spacing[2]:.6f}"
    ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    return ds


def read_study_headers(folder: Path | str) -> list[pydicom.Dataset]:
    """Every slice header under a study folder (no pixels), for checks and tests."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(folder).rglob("*.dcm"))]
