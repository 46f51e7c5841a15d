"""An Enhanced MR Image (PS3.3 A.36.2) made from a classic single-frame series, as newer scanners send them.

highdicom converts the series to a Legacy Converted Enhanced MR image; the MR parameters it leaves in the
"unassigned shared converted attributes" group are then moved to the macros a scanner writes (MR Timing and Related
Parameters, MR Echo, MR Modifier, Echo Pulse Sequence), so readers are tested on what scanners really write.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, generate_uid


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        if value not in (None, ""):
            setattr(item, keyword, value)
    return item


def to_enhanced_mr(datasets: Sequence[Dataset], *, shuffle_seed: int | None = 0) -> Dataset:
    """One multi-frame Enhanced MR instance holding every slice of ``datasets`` (frames in shuffled order)."""
    slices = list(datasets)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(slices)
    first = slices[0]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        slices,
        series_instance_uid=generate_uid(),
        series_number=int(first.SeriesNumber),
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    shared = image.SharedFunctionalGroupsSequence[0]
    converted = shared.UnassignedSharedConvertedAttributesSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    value = converted.ScanningSequence
    scanning = [value] if isinstance(value, str) else list(value)
    shared.MRTimingAndRelatedParametersSequence = [
        _item(
            RepetitionTime=float(converted.RepetitionTime),
            FlipAngle=float(converted.get("FlipAngle") or 90),
            EchoTrainLength=int(converted.get("EchoTrainLength") or 1),
        )
    ]
    shared.MREchoSequence = [_item(EffectiveEchoTime=float(converted.EchoTime))]
    inversion = "IR" in scanning
    shared.MRModifierSequence = [
        _item(
            InversionRecovery="YES" if inversion else "NO",
            InversionTimes=[float(first.InversionTime)] if inversion else None,
        )
    ]
    image.EchoPulseSequence = "SPIN" if "SE" in scanning else "GRADIENT"
    image.SOPClassUID = EnhancedMRImageStorage
    image.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    return image


def rescale_each_frame(image: Dataset) -> None:
    """Give frame ``n`` its own Pixel Value Transformation (slope n, intercept -10 n), a per-frame group now."""
    for number, frame in enumerate(image.PerFrameFunctionalGroupsSequence, start=1):
        frame.PixelValueTransformationSequence = [
            _item(RescaleSlope=number, RescaleIntercept=-10 * number, RescaleType="US")
        ]
    del image.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
