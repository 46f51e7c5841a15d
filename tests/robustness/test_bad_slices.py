"""#16, defect 3: one bad slice never fails its study. The receiver refuses a slice the engine could never use
(garbled Image Position, no Pixel Data, Bits Allocated 7: 0xA900; native pixel data of undefined length: 0xC000);
the study's other slices and series go on and it gets its synthetic series. A bad slice the receiver cannot see
(inside a deflated instance) leaves its series out in the engine, logged and audited, and is never retried."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import _config
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import load_settings
from codebrain_node.contrasts import Contrast
from codebrain_node.db.models import Instance
from codebrain_node.model import CodeBrain, ModelConfig, save_inference_checkpoint
from codebrain_node.node.offline import impute_folder
from codebrain_node.phantom.case import make_phantom_case
from codebrain_node.phantom.dicom_study import write_dicom_study
from codebrain_node.receive.service import ReceiveService
from codebrain_node.receive.spool import encode_file_header
from tests.dicom_fixtures import make_mr_instance
from tests.robustness.conftest import EXPLICIT, associate

TINY = {
    "contrasts": ["T1", "T1Gd", "T2", "FLAIR"],
    "naf_dim": 4,
    "width_multiplier": 1,
    "naf_depth": 1,
    "stage_blocks": [0, 0, 1],
    "image_size": 256,
    "confidence": False,  # the synthetic MR slices are counted here; tests/write/test_parametric_map.py has the map
}
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"


def _dataset_bytes(part10: bytes) -> bytes:
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]


def garbled_position(data: bytes, dataset: pydicom.Dataset) -> bytes:
    """Image Position (Patient) '0à0\\...' (the byte a careless character-set conversion leaves)."""
    position = "\\".join(str(value) for value in dataset.ImagePositionPatient).encode()
    garbled = b"0\xe00" + position[3:]
    assert data.count(position) == 1 and len(garbled) == len(position)
    return data.replace(position, garbled)


def no_pixel_data(data: bytes, _dataset: pydicom.Dataset) -> bytes:
    return data[: data.index(PIXEL_DATA_HEADER)]


def undefined_length_pixel_data(data: bytes, _dataset: pydicom.Dataset) -> bytes:
    """Native pixel data with an undefined length and a sequence delimiter after it (PS3.5 A.4 forbids this)."""
    at = data.index(PIXEL_DATA_HEADER)
    (length,) = struct.unpack_from("<I", data, at + 8)
    pixels = data[at + 12 : at + 12 + length]
    return data[:at] + PIXEL_DATA_HEADER + b"\xff\xff\xff\xff" + pixels + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def bits_allocated_7(data: bytes, _dataset: pydicom.Dataset) -> bytes:
    element = b"\x28\x00\x00\x01US\x02\x00"  # (0028,0100) Bits Allocated
    at = data.index(element) + len(element)
    return data[:at] + struct.pack("<H", 7) + data[at + 2 :]


#: Each bad slice and the status it is answered with.
BAD_SLICES: dict[str, tuple[Callable[[bytes, pydicom.Dataset], bytes], int]] = {
    "garbled ImagePositionPatient": (garbled_position, 0xA900),
    "no PixelData": (no_pixel_data, 0xA900),
    "undefined-length native PixelData": (undefined_length_pixel_data, 0xC000),
    "BitsAllocated 7": (bits_allocated_7, 0xA900),
}


def _part10(dataset_bytes: bytes, dataset: pydicom.Dataset, syntax: str = EXPLICIT) -> bytes:
    return encode_file_header(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), syntax, "") + dataset_bytes


def test_bad_slices_are_refused_at_receipt_and_the_rest_of_the_series_is_stored(
    running_node: ReceiveService, any_factory: sessionmaker[Session], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, series = generate_uid(), generate_uid()
    good = [make_mr_instance(study, series, index, rows=8, columns=8) for index in range(6)]
    bad: dict[str, Path] = {}
    for number, (name, (spoil, _status)) in enumerate(BAD_SLICES.items(), start=6):
        dataset = make_mr_instance(study, series, number, rows=8, columns=8)
        path = tmp_path / f"bad{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        part10 = path.read_bytes()
        path.write_bytes(_part10(spoil(_dataset_bytes(part10), dataset), dataset))
        bad[name] = path
    assoc = associate(running_node.port)
    try:
        statuses = [assoc.send_c_store(dataset).Status for dataset in good[:3]]
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bad files go as their bytes
        answered = {name: assoc.send_c_store(path).Status for name, path in bad.items()}
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        statuses += [assoc.send_c_store(dataset).Status for dataset in good[3:]]
        assert assoc.send_c_echo().Status == 0x0000  # the association goes on
    finally:
        assoc.release()
    assert statuses == [0x0000] * 6
    assert answered == {name: status for name, (_spoil, status) in BAD_SLICES.items()}
    assert running_node.recorder.flush(30)
    with any_factory() as session:
        recorded = set(session.scalars(select(Instance.sop_instance_uid)))
    assert recorded == {str(dataset.SOPInstanceUID) for dataset in good}
    assert {path.stem for path in running_node.spool.incoming.rglob("*.dcm")} == recorded


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    case = make_phantom_case([Contrast.T1, Contrast.T2, Contrast.FLAIR], seed=5, resolution_mm=4.0)
    return write_dicom_study(case.images, folder, seed=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_inference_checkpoint(
        CodeBrain(ModelConfig.from_dict(TINY)).eval(), path, {"model_name": "tiny-test", "model_version": "1"}
    )


def _copy_with_one_bad_t1_slice(study: Path, folder: Path, spoil: Callable[[Path], bytes]) -> Path:
    """The study copied, one T1 slice from the middle of the series replaced by ``spoil(path)``."""
    for series_dir in sorted(study.iterdir()):
        (folder / series_dir.name).mkdir(parents=True)
        for path in sorted(series_dir.glob("*.dcm")):
            (folder / series_dir.name / path.name).write_bytes(path.read_bytes())
    t1 = sorted(next(folder.glob("101_*")).glob("*.dcm"))
    victim = t1[len(t1) // 2]
    victim.write_bytes(spoil(victim))
    return victim


@pytest.mark.parametrize("name", list(BAD_SLICES))
def test_a_study_with_one_bad_t1_slice_still_gets_its_synthetic_series(
    name: str, study: Path, checkpoint: Path, tmp_path: Path
) -> None:
    spoil, status = BAD_SLICES[name]

    def spoilt(path: Path) -> bytes:
        part10 = path.read_bytes()
        return part10[: len(part10) - len(_dataset_bytes(part10))] + spoil(
            _dataset_bytes(part10), pydicom.dcmread(path)
        )

    victim = _copy_with_one_bad_t1_slice(study, tmp_path / "in", spoilt)
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    result = impute_folder(settings, tmp_path / "in", tmp_path / "out", synthesize=[Contrast.T1GD])
    assert result.skipped_files == [f"{victim.name}: status 0x{status:04X}"]
    assert list(result.studies.values()) == ["exported"] and list(result.written.values()) == [["T1Gd"]]
    written = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    assert "T1 series" in written[0].DerivationDescription  # the T1 series is used, less its bad slice
    t1_count = len(list(next((tmp_path / "in").glob("101_*")).glob("*.dcm")))
    assert len(written) == t1_count - 1  # a synthetic slice on each acquired T1 slice


def test_a_bad_slice_the_receiver_cannot_check_leaves_its_series_out_once(
    study: Path, checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deflated, the garbled position is out of the receiver's sight: stored, then the engine leaves the T1 series
    out (logged and audited as input_skipped) and makes T1Gd from T2 and FLAIR, in one attempt."""

    def deflated_garbled(path: Path) -> bytes:
        dataset = pydicom.dcmread(path)
        part10 = path.read_bytes()
        data = garbled_position(_dataset_bytes(part10), dataset)
        squeezer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return _part10(squeezer.compress(data) + squeezer.flush(), dataset, DeflatedExplicitVRLittleEndian)

    _copy_with_one_bad_t1_slice(study, tmp_path / "in", deflated_garbled)
    settings = load_settings(environ={"CODEBRAIN_MODEL__WEIGHTS": str(checkpoint)})
    with caplog.at_level("WARNING", logger="codebrain_node.engine.worker"):
        result = impute_folder(settings, tmp_path / "in", tmp_path / "out", synthesize=[Contrast.T1GD])
    assert result.skipped_files == []  # the receiver took it
    assert list(result.studies.values()) == ["exported"] and list(result.written.values()) == [["T1Gd"]]
    left_out = [r.getMessage() for r in caplog.records if "input left out" in r.getMessage()]
    assert len(left_out) == 1 and "T1 series #101: unreadable (ValueError" in left_out[0]
    assert not [r for r in caplog.records if "failed on attempt" in r.getMessage()]  # never retried
    written = pydicom.dcmread(next((tmp_path / "out").rglob("*.dcm")))
    assert "T1 series" not in written.DerivationDescription and "T2 series" in written.DerivationDescription
