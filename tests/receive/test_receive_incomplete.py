"""A cut-off instance is refused at receipt (0xC000), so it can never fail its whole study later."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from codebrain_node.receive.header import incomplete_reason
from codebrain_node.receive.spool import CANNOT_UNDERSTAND, SUCCESS, Spool


def _instance(syntax: str, pixels: bytes | None = None) -> tuple[bytes, str]:
    """A small MR instance's dataset bytes in ``syntax`` (no File Meta, as a peer sends it)."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 6, 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pixels if pixels is not None else np.arange(48, dtype=np.uint16).tobytes()
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
    write_dataset(buffer, ds)
    return buffer.getvalue(), str(ds.SOPInstanceUID)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_whole_instance_passes_and_cut_ones_are_named(syntax: str) -> None:
    data, _ = _instance(syntax)
    assert incomplete_reason(data, syntax) is None
    assert "runs past the end" in incomplete_reason(data[:-10], syntax)
    assert "element header" in incomplete_reason(data[: len(data) - 96 - 5], syntax)
    short, _ = _instance(syntax, pixels=bytes(40))  # consistently encoded, but 40 of the 96 bytes needed
    assert incomplete_reason(short, syntax) == "pixel data has 40 bytes, its image attributes need 96"


def test_spool_refuses_a_cut_off_instance_and_keeps_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    data, sop = _instance(ExplicitVRLittleEndian)
    args = {"sop_class_uid": MRImageStorage, "sop_instance_uid": sop, "transfer_syntax_uid": ExplicitVRLittleEndian}
    assert spool.store(data[: len(data) // 2 + 80], **args).status == CANNOT_UNDERSTAND
    assert not list(spool.incoming.rglob("*.dcm")) and not list(spool.tmp.iterdir())
    assert spool.store(data, **args).status == SUCCESS  # the whole instance, sent again, is stored
