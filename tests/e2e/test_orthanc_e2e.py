"""The node end to end: DCMTK storescu as the scanner, a running node, Orthanc (Debian) as the PACS.

A phantom study with T1, T2 and FLAIR goes in; the node imputes T1Gd and PD and stores them in Orthanc; the test
reads them back through Orthanc's REST API and checks the synthetic flags, the geometry against the reference
(T1) series, and dciodvfy. One node and one Orthanc serve the whole module; every test sends its own study.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from e2e_support import (
    DCIODVFY,
    SCANNER_AE,
    TARGETS,
    Orthanc,
    echoscu,
    node_settings,
    orthanc_destination,
    series_files,
    storescu,
    study_state,
    study_uid_of,
    wait_for,
)
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from codebrain_node.contrasts import Contrast
from codebrain_node.node.serve import Node
from codebrain_node.phantom.dicom_study import SeriesLayout

ARRIVAL_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def node(pacs: Orthanc, tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = node_settings(tmp_path_factory.mktemp("node"), tiny_weights, [orthanc_destination(pacs)])
    running = Node(settings, engine_mode="thread").start()
    try:
        yield running
    finally:
        running.stop()


def _send_study(node: Node, folder: Path, extra: list[str] = ()) -> subprocess.CompletedProcess[str]:
    return storescu(node.port, [folder], extra=["--scan-directories", "--recurse", *extra])


def _arrived(pacs: Orthanc, study_uid: str, instances: int) -> list[dict]:
    return wait_for(
        lambda: pacs.complete_synthetic(study_uid, TARGETS, instances),
        ARRIVAL_TIMEOUT_S,
        f"{', '.join(TARGETS)} of study {study_uid} in Orthanc",
        0.5,
    )


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    # Its dictionary predates Synthetic Data (0008,001C): the one error it may report.
    return [line for line in errors if not re.search(r"0x0008,0x001c", line, re.IGNORECASE)]


def _position(ds: pydicom.Dataset) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in ds.ImagePositionPatient)


def assert_on_reference_grid(synthetic: list[pydicom.Dataset], reference_files: list[Path]) -> None:
    """Slice for slice on the reference: same count, orientation, spacing, matrix, and one slice per position."""
    reference = [pydicom.dcmread(p, stop_before_pixels=True) for p in reference_files]
    assert len(synthetic) == len(reference)
    first = reference[0]
    for ds in synthetic:
        np.testing.assert_allclose(
            [float(v) for v in ds.ImageOrientationPatient], [float(v) for v in first.ImageOrientationPatient], atol=1e-5
        )
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing])
        assert (ds.Rows, ds.Columns) == (first.Rows, first.Columns)
        assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    np.testing.assert_allclose(
        sorted(_position(ds) for ds in synthetic), sorted(_position(ds) for ds in reference), atol=2e-3
    )


def test_phantom_study_comes_back_as_flagged_synthetic_series_in_orthanc(
    node: Node, pacs: Orthanc, make_study, tmp_path: Path
) -> None:
    study = make_study(seed=101)
    sent = _send_study(node, study)
    assert sent.returncode == 0, sent.stderr
    study_uid = study_uid_of(study)
    reference_files = series_files(study, "101_")  # T1: the reference series
    found = _arrived(pacs, study_uid, len(reference_files))

    assert sorted(s["MainDicomTags"]["SeriesDescription"].split()[1] for s in found) == TARGETS
    reference = pydicom.dcmread(reference_files[0], stop_before_pixels=True)
    inputs = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in study.rglob("*.dcm")}
    for series in found:
        downloaded = pacs.datasets(series, tmp_path / series["ID"])
        datasets = [ds for _, ds in downloaded]
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        for ds in datasets:
            assert list(ds.ImageType)[:3] == ["DERIVED", "SECONDARY", "OTHER"]
            assert ds[0x0008, 0x001C].value == "YES"  # Synthetic Data
            assert ds.SeriesDescription.startswith("SYNTHETIC ") and "test-random" in ds.SeriesDescription
            assert ds.StudyInstanceUID == study_uid and ds.SeriesInstanceUID != reference.SeriesInstanceUID
            assert ds.SOPInstanceUID not in inputs
            assert ds.BurnedInAnnotation == "NO"
            sources = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
            assert sources and sources <= inputs
            assert {item.PurposeOfReferenceCodeSequence[0].CodeValue for item in ds.SourceImageSequence} == {"121322"}
            purposes = [e.PurposeOfReferenceCodeSequence[0].CodeValue for e in ds.ContributingEquipmentSequence]
            assert "109100" in purposes
            assert ds.PatientID == reference.PatientID
        assert_on_reference_grid(datasets, reference_files)
        if DCIODVFY.exists():
            assert _dciodvfy_errors(downloaded[0][0]) == []
    wait_for(lambda: study_state(node.factory, study_uid) == "exported", 30, "the study to be EXPORTED")
    # delivered once: exactly one series per target in the PACS
    assert len(pacs.synthetic_series(study_uid)) == len(TARGETS)
    if not DCIODVFY.exists():
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; everything else passed")


def test_series_with_other_matrices_and_orientations_land_on_the_reference_grid(
    node: Node, pacs: Orthanc, make_study, tmp_path: Path
) -> None:
    """As in the shared native case: T1 axial 5 mm with a 52×64 matrix, T2 axial 64×56, FLAIR coronal."""
    layouts = {
        Contrast.T1: SeriesLayout("axial", matrix=(52, 64), slice_thickness=5.0),
        Contrast.T2: SeriesLayout("axial", matrix=(64, 56)),
        Contrast.FLAIR: SeriesLayout("coronal", matrix=(30, 60), slice_thickness=4.0),
    }
    study = make_study(seed=202, layouts=layouts)
    matrices = {
        prefix: (ds.Rows, ds.Columns, tuple(ds.ImageOrientationPatient))
        for prefix in ("101_", "201_", "301_")
        for ds in [pydicom.dcmread(series_files(study, prefix)[0], stop_before_pixels=True)]
    }
    assert len(set(matrices.values())) == 3  # three different grids really were sent
    sent = _send_study(node, study)
    assert sent.returncode == 0, sent.stderr
    study_uid = study_uid_of(study)
    reference_files = series_files(study, "101_")
    found = _arrived(pacs, study_uid, len(reference_files))
    for series in found:
        datasets = [ds for _, ds in pacs.datasets(series, tmp_path / series["ID"])]
        assert_on_reference_grid(datasets, reference_files)
        assert all(ds[0x0008, 0x001C].value == "YES" for ds in datasets)


def test_unknown_caller_is_rejected_at_association(node: Node) -> None:
    refused = echoscu(node.port, "NOBODY")
    assert refused.returncode != 0
    assert "reject" in (refused.stdout + refused.stderr).lower()
    accepted = echoscu(node.port, "STORESCU")
    assert accepted.returncode == 0, accepted.stderr


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_corrupt_instance_is_refused_and_the_rest_of_the_study_is_processed(
    node: Node, pacs: Orthanc, make_study, tmp_path: Path
) -> None:
    """Two bad extra T2 slices, one with a garbage Study Instance UID, one cut off in its pixel data: the node
    answers failure for each and files and imputes the rest of the study."""
    study = make_study(seed=303)
    study_uid = study_uid_of(study)
    t2 = series_files(study, "201_")
    corrupt = pydicom.dcmread(t2[0])
    corrupt.StudyInstanceUID = "garbage!UID"
    corrupt.SOPInstanceUID = corrupt.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    bad_file = tmp_path / "corrupt.dcm"
    corrupt.save_as(bad_file, enforce_file_format=True)

    sent = storescu(node.port, [bad_file, *sorted(study.rglob("*.dcm"))], extra=["--no-halt", "-v"])
    output = sent.stdout + sent.stderr
    # storescu saw exactly one refusal (0xA900: dataset does not match SOP class), and successes for the rest
    assert len(re.findall(r"Received Store Response \(Error", output)) == 1, output
    assert node.receive.receiver.stats.failed >= 1

    # a cut-off file: storescu will not send one (it fails reading it), a careless sender sends the bytes it has
    truncated = pydicom.dcmread(t2[1])
    truncated.SOPInstanceUID = truncated.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    cut_file = tmp_path / "truncated.dcm"
    truncated.save_as(cut_file, enforce_file_format=True)
    cut_file.write_bytes(cut_file.read_bytes()[: cut_file.stat().st_size // 2])
    sender = AE(ae_title=SCANNER_AE)
    sender.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    association = sender.associate("127.0.0.1", node.port, ae_title=node.settings.dicom.ae_title)
    assert association.is_established
    try:
        status = association.send_c_store(cut_file)  # pydicom reads what is there: pixel data half as long
    finally:
        association.release()
    assert status.Status == 0xC000  # cannot understand: refused, not acknowledged
    assert not list((node.settings.paths.data_dir / "incoming").rglob(f"{truncated.SOPInstanceUID}.dcm"))

    reference_files = series_files(study, "101_")
    found = _arrived(pacs, study_uid, len(reference_files))
    assert len(found) == len(TARGETS)
    assert study_state(node.factory, study_uid) in {"approved", "exported"}
    assert not list((node.settings.paths.data_dir / "incoming").glob("garbage*"))
