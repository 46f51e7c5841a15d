"""Write the IHE IOCM rejection note that withdraws a synthetic series PACS already holds.

When a synthetic series that was sent is superseded (its contrast was acquired after all, or a replacement was
made from changed inputs), PACS must stop showing it. IHE Imaging Object Change Management (IOCM, transaction
RAD-66 "Rejection Note Stored") says how: a Key Object Selection Document (PS3.3 A.35.4, SOP Class
1.2.840.10008.5.1.4.1.1.88.59) whose Document Title is (113001, DCM, "Rejected for Quality Reasons") (PS3.16
CID 7010 "Key Object Selection Document Title"), in the same study, listing every rejected instance in its
content tree (TID 2010) and in the Current Requested Procedure Evidence Sequence (PS3.3 C.17.2). A PACS that
supports IOCM hides or deletes what it lists.

highdicom builds and checks the document (``highdicom.ko``); patient and study attributes come from the rejected
instances themselves. The Key Object Description says why, with no patient data. The file is written whole or
not at all (temporary name, fsync, rename) under ``out_dir/<SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.sr import CodedConcept
from pydicom.uid import generate_uid

from codebrain_node.durable import durable_file, make_dirs_durably
from codebrain_node.write.synthetic_series import MANUFACTURER

#: The KOS Document Title of an IOCM rejection note for a wrong (here: superseded) object, PS3.16 CID 7010.
REJECTED_FOR_QUALITY_REASONS = ("113001", "DCM", "Rejected for Quality Reasons")

#: Key Object Description is UT, but viewers show a line: keep it short.
MAX_DESCRIPTION = 1024


@dataclass(frozen=True)
class WrittenRejectionNote:
    sop_instance_uid: str
    series_instance_uid: str
    path: Path
    rejected: int


def rejection_series_number(rejected_series_number: int | None) -> int:
    """9000 + the rejected series' number modulo 1000: the note for series 1021 is series 9021."""
    return 9000 + (rejected_series_number or 0) % 1000


def write_rejection_note(
    rejected: Sequence[Path], out_dir: Path, *, series_number: int, description: str
) -> WrittenRejectionNote:
    """A Key Object Selection Document rejecting every instance in ``rejected`` (one series' files).

    ``description`` (no patient data) becomes the Key Object Description, e.g. "Synthetic FLAIR series 1022
    superseded: FLAIR acquired: series #5".
    """
    if not rejected:
        raise ValueError("a rejection note needs at least one rejected instance")
    evidence = [pydicom.dcmread(path, stop_before_pixels=True) for path in rejected]
    title = CodedConcept(*REJECTED_FOR_QUALITY_REASONS)
    content = KeyObjectSelection(
        document_title=title, referenced_objects=evidence, description=description[:MAX_DESCRIPTION]
    )
    reference = evidence[0]
    document = KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=generate_uid(),
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        institution_name=reference.get("InstitutionName") or None,
    )
    document.SeriesDescription = "REJECTED: superseded synthetic series"
    make_dirs_durably(out_dir)
    path = Path(out_dir) / f"{document.SOPInstanceUID}.dcm"
    with durable_file(path) as handle:
        pydicom.dcmwrite(handle, document, enforce_file_format=True)
    return WrittenRejectionNote(
        sop_instance_uid=str(document.SOPInstanceUID),
        series_instance_uid=str(document.SeriesInstanceUID),
        path=path,
        rejected=len(evidence),
    )
