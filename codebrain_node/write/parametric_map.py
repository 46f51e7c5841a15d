"""Write the model's confidence in a synthetic series as a Parametric Map, so PACS holds what the reviewer saw.

The review page overlays the per-voxel confidence the model gives with a synthetic series (``confidence.npy``
beside its instances, :func:`codebrain_node.write.synthetic_series.save_confidence_map`). The same map goes to
PACS as one multi-frame Parametric Map instance (PS3.3 A.75 Parametric Map IOD, SOP Class
1.2.840.10008.5.1.4.1.1.30), built and checked by highdicom (``highdicom.pm.ParametricMap``):

- Same study, and the synthetic series' Frame of Reference (PS3.3 C.7.4.1): one frame per synthetic MR instance,
  frame ``k`` on the plane of the instance with Instance Number ``k + 1`` (Plane Position / Orientation and Pixel
  Measures functional groups, PS3.3 C.7.6.16.2), so a viewer that overlays parametric maps lays it on the series.
- It references that series: every synthetic MR instance is a source image (Referenced Series Sequence of the
  Common Instance Reference Module, PS3.3 C.12.2; per frame the Derivation Image functional group,
  C.7.6.16.2.6, with Purpose of Reference (121322, DCM, "Source image for image processing operation") and
  Derivation Code (123110, DCM, "Artificial Intelligence"), as the MR writer uses where CID 7203 has no concept).
- Derived: Image Type ``DERIVED\\PRIMARY\\VOLUME\\QUANTITY`` (PS3.3 C.8.32.3.1, Parametric Map Image Module),
  Content Qualification ``RESEARCH`` (the model is not a cleared device), Content Label ``CONFIDENCE``, Synthetic
  Data (0008,001C) ``YES`` like the series it describes (PS3.3 C.12.1: the content was made by the model, not
  acquired), and the node (109100, DCM, "Synthesizing Equipment") and the scanner in Contributing Equipment, as on
  the MR instances.
- The values are coded (Real World Value Mapping functional group, PS3.3 C.7.6.16.2.11): stored unsigned 16-bit
  ``round(confidence × 1000)`` (0 … 1000, :data:`CONFIDENCE_SCALE`), mapped linearly with slope 1/1000 and
  intercept 0 back to the confidence in [0, 1], so a value maps back to within 0.0005. Units
  (1, UCUM, "no units") from PS3.16 CID 7181: a confidence is a dimensionless probability. Quantity (Quantity
  Definition Sequence, concept (246205007, SCT, "Quantity")): CID 7180 and the DCM and SCT concepts in PS3.16 have
  none for an AI model's confidence in its own output (the nearest, "Fractional Probabilistic Segmentation" or
  "Certainty of Finding", mean something else), so it is (CONFIDENCE, 99CODEBRAIN, "Model confidence") from this
  node's private coding scheme: a Coding Scheme Designator beginning ``99`` is private by PS3.3 8.2.1, and the
  Coding Scheme Identification Sequence (PS3.3 C.12.1) names the scheme in the instance. Its meaning: for each
  8×8-pixel region of the model's grid, the mean over code channels of the grading probability of the decoded code
  level (``codebrain_node/model/codebrain.py``), resampled to the synthetic series' pixels.
- A VOI window over the whole range (0 … 1000) and Pixel Presentation MONOCHROME.

Integer pixels rather than Float Pixel Data: more PACS and viewers store and show them, and 1/1000 is finer than
the model's 8×8-region map resolves. The file is written whole or not at all (temporary name, fsync, rename) under
``out_dir/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, beside the synthetic series' folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from highdicom import ContentQualificationValues, VOILUTTransformation
from highdicom.pm import DerivedPixelContrastValues, ImageFlavorValues, ParametricMap, RealWorldValueMapping
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from codebrain_node import __version__
from codebrain_node.contrasts import Contrast
from codebrain_node.durable import durable_file, make_dirs_durably
from codebrain_node.write.synthetic_series import DERIVATION_CODE, MANUFACTURER, WrittenInstance, WrittenSeries

#: Stored value = round(confidence × CONFIDENCE_SCALE); the Real World Value Mapping's slope is its inverse.
CONFIDENCE_SCALE = 1000

#: This node's private coding scheme (PS3.3 8.2.1: a designator beginning "99" is private).
PRIVATE_SCHEME = "99CODEBRAIN"
#: The quantity the map holds; see the module docstring for why it is a private code.
MODEL_CONFIDENCE = Code("CONFIDENCE", PRIVATE_SCHEME, "Model confidence")
#: PS3.16 CID 7181 "Abstract Multi-dimensional Image Model Component Units".
NO_UNITS = Code("1", "UCUM", "no units")

CONTENT_LABEL = "CONFIDENCE"  # CS, at most 16 characters
#: The map's series number: its synthetic series' number + this (1021 → 5021), then + 100 until free.
SERIES_NUMBER_OFFSET = 4000


@dataclass(frozen=True)
class WrittenParametricMap:
    """The one-instance Parametric Map series written for a synthetic series, and which series it describes."""

    contrast: Contrast
    series_instance_uid: str
    series_number: int
    series_description: str
    frame_of_reference_uid: str | None
    describes_series_instance_uid: str
    instance: WrittenInstance


def confidence_series_description(contrast: Contrast, series_number: int) -> str:
    """``CONFIDENCE of synthetic T1Gd series 1021`` (LO, at most 64 characters, PS3.5 6.2)."""
    return f"CONFIDENCE of synthetic {Contrast(contrast).value} series {series_number}"[:64]


def confidence_series_number(series_number: int, taken: set[int] | frozenset[int] = frozenset()) -> int:
    """The synthetic series' number + :data:`SERIES_NUMBER_OFFSET`, then + 100 until no series of the study has it."""
    number = series_number + SERIES_NUMBER_OFFSET
    while number in taken:
        number += 100
    return number


def stored_values(confidence: np.ndarray) -> np.ndarray:
    """[Z, Rows, Cols] confidence in [0, 1] → the stored uint16 values (NaN counts as no confidence)."""
    clipped = np.clip(np.nan_to_num(np.asarray(confidence, np.float64), nan=0.0), 0.0, 1.0)
    return np.rint(clipped * CONFIDENCE_SCALE).astype(np.uint16)


def write_confidence_map(
    series: WrittenSeries,
    confidence: np.ndarray,
    out_dir: Path,
    *,
    model_name: str,
    model_version: str,
    series_number: int,
) -> WrittenParametricMap:
    """One Parametric Map instance holding ``confidence`` [Z, Rows, Cols] in [0, 1] of ``series`` (as written,
    slice ``k`` ↔ Instance Number ``k + 1``), in a new series ``series_number`` under ``out_dir``."""
    sources = [pydicom.dcmread(path, stop_before_pixels=True) for path in series.paths]
    sources.sort(key=lambda ds: int(ds.InstanceNumber))
    volume = np.asarray(confidence)
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    if volume.shape != (len(sources), rows, columns):
        raise ValueError(f"confidence is {volume.shape}, the series is {(len(sources), rows, columns)}")
    mapping = RealWorldValueMapping(
        lut_label=CONTENT_LABEL,
        lut_explanation="Model confidence, 0 (none) to 1 (certain)",
        unit=NO_UNITS,
        value_range=(0, CONFIDENCE_SCALE),
        slope=1.0 / CONFIDENCE_SCALE,
        intercept=0.0,
        quantity_definition=MODEL_CONFIDENCE,
    )
    versions = [f"codebrain-node {__version__}"[:64], f"{model_name} {model_version}"[:64]]
    pm = ParametricMap(
        source_images=sources,
        pixel_array=stored_values(volume),
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name[:64],
        software_versions=versions,
        device_serial_number=f"{model_name} {model_version}"[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            VOILUTTransformation(window_center=CONFIDENCE_SCALE / 2, window_width=CONFIDENCE_SCALE)
        ],
        content_label=CONTENT_LABEL,
        content_description=f"Model confidence in synthetic {series.contrast.value} series {series.series_number}",
        content_qualification=ContentQualificationValues.RESEARCH,
        image_flavor=ImageFlavorValues.VOLUME,
        derived_pixel_contrast=DerivedPixelContrastValues.QUANTITY,
        derivation=Code(*DERIVATION_CODE),
    )
    _describe(pm, sources[0], series)
    target_dir = Path(out_dir) / str(pm.SeriesInstanceUID)
    make_dirs_durably(target_dir)
    path = target_dir / f"{pm.SOPInstanceUID}.dcm"
    with durable_file(path) as handle:
        pydicom.dcmwrite(handle, pm, enforce_file_format=True)
    return WrittenParametricMap(
        contrast=series.contrast,
        series_instance_uid=str(pm.SeriesInstanceUID),
        series_number=series_number,
        series_description=str(pm.SeriesDescription),
        frame_of_reference_uid=str(pm.get("FrameOfReferenceUID", "")) or None,
        describes_series_instance_uid=series.series_instance_uid,
        instance=WrittenInstance(
            sop_instance_uid=str(pm.SOPInstanceUID),
            sop_class_uid=str(pm.SOPClassUID),
            transfer_syntax_uid=str(pm.file_meta.TransferSyntaxUID),
            instance_number=1,
            path=path,
            size_bytes=path.stat().st_size,
        ),
    )


def _describe(pm: Dataset, source: Dataset, series: WrittenSeries) -> None:
    """What highdicom leaves to the caller: the description, the synthetic flag, the equipment chain of the
    synthetic series (highdicom would name its source's manufacturer, this node, as acquisition equipment), and
    the private coding scheme's identification (PS3.3 C.12.1)."""
    pm.SeriesDescription = confidence_series_description(series.contrast, series.series_number)
    pm.SyntheticData = "YES"
    pm.ContributingEquipmentSequence = source.ContributingEquipmentSequence
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "codebrain-node model outputs"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    pm.CodingSchemeIdentificationSequence = [scheme]
    if source.get("BodyPartExamined"):
        pm.BodyPartExamined = source.BodyPartExamined
