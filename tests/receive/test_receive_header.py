"""The fast header scan agrees with pydicom, and hands pydicom what it cannot read itself."""

from __future__ import annotations

import io
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from codebrain_node.receive.header import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    HEADER_TAGS,
    HeaderError,
    _from_pydicom,
    filing_uids,
    read_dataset_header,
    scan_header,
)
from tests.dicom_fixtures import make_mr_instance


def _wire(dataset: Dataset, syntax: str) -> bytes:
    """The dataset as a peer sends it in ``syntax`` (no File Meta)."""
    dataset = dataset.copy()
    del dataset.file_meta
    buffer = io.BytesIO()
    dataset.save_as(
        buffer,
        enforce_file_format=False,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    data = buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def _reference(dataset: Dataset) -> dict[str, str | None]:
    return _from_pydicom(lambda: dataset)


def _instance() -> Dataset:
    dataset = make_mr_instance(generate_uid(), generate_uid(), 4, rows=8, columns=8)
    dataset.SpecificCharacterSet = "ISO_IR 192"
    dataset.PatientName = "Müller^Jörg"
    dataset.AccessionNumber = "A123"
    dataset.SyntheticData = "YES"
    return dataset


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_fast_scan_equals_pydicom(syntax: str) -> None:
    dataset = _instance()
    fast = scan_header(_wire(dataset, syntax), syntax)
    assert fast is not None
    expected = {k: v for k, v in _reference(dataset).items() if v is not None}
    assert fast == expected
    assert fast["PatientName"] == "Müller^Jörg" and fast["InstanceNumber"] == "5"


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_syntaxes_go_to_pydicom(syntax: str) -> None:
    dataset = _instance()
    data = _wire(dataset, syntax)
    assert scan_header(data, syntax) is None
    header = read_dataset_header(data, syntax)
    assert header["SOPInstanceUID"] == dataset.SOPInstanceUID
    assert header["PatientName"] == "Müller^Jörg"


def test_undefined_length_sequence_and_iso2022_fall_back() -> None:
    dataset = _instance()
    item = Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    dataset.ReferencedImageSequence = Sequence([item])
    dataset["ReferencedImageSequence"].is_undefined_length = True
    data = _wire(dataset, ExplicitVRLittleEndian)
    assert scan_header(data, ExplicitVRLittleEndian) is None
    assert read_dataset_header(data, ExplicitVRLittleEndian)["SeriesInstanceUID"] == dataset.SeriesInstanceUID

    japanese = _instance()
    japanese.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    japanese.PatientName = "Yamada^Tarou"
    assert scan_header(_wire(japanese, ExplicitVRLittleEndian), ExplicitVRLittleEndian) is None


def test_statuses_for_unreadable_and_incomplete_datasets() -> None:
    with pytest.raises(HeaderError) as garbage:
        filing_uids(read_dataset_header(bytes(range(256)) * 8, ExplicitVRLittleEndian))
    assert garbage.value.status == CANNOT_UNDERSTAND
    dataset = _instance()
    del dataset.SeriesInstanceUID
    with pytest.raises(HeaderError) as missing:
        filing_uids(read_dataset_header(_wire(dataset, ExplicitVRLittleEndian), ExplicitVRLittleEndian))
    assert missing.value.status == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert set(HEADER_TAGS) >= {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}
