"""The DICOMweb destination against Orthanc (Debian) with its DICOMweb plugin (orthanc-dicomweb), HTTP Basic
authentication required (RegisteredUsers): the series goes in by STOW-RS and is read back through QIDO-RS (search
for series, PS3.18 §10.6) and WADO-RS (retrieve instances, PS3.18 §10.4): the same SOP Instance UIDs, the same
pixel data. Skips when Orthanc or the plugin is not installed; one Orthanc serves the module."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from codebrain_node.config import Settings
from codebrain_node.db.models import Export, ExportStatus, Study, StudyState, utcnow
from codebrain_node.export.dicomweb import DicomWebDestination
from codebrain_node.export.dispatch import build_destinations, run_due_exports
from tests.dicom_fixtures import make_mr_instance
from tests.e2e.e2e_support import Orthanc
from tests.export.conftest import ApprovedStudy

USERS = {"node": "stow-pass-1"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), dicomweb=True, users=USERS)
    try:
        yield server
    finally:
        server.stop()


def _entry(pacs: Orthanc, password: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "orthanc-web",
        "kind": "dicomweb",
        "url": pacs.dicomweb_url,
        "auth": "basic",
        "username": "node",
        "password": password,
        **extra,
    }


def _reader(pacs: Orthanc) -> DICOMwebClient:
    """Our own QIDO-RS / WADO-RS client (not the destination's code), as the registered user."""
    session = requests.Session()
    session.trust_env = False
    session.auth = ("node", USERS["node"])
    return DICOMwebClient(pacs.dicomweb_url, session=session, timeout=30)


def assert_read_back(pacs: Orthanc, files: list[Path]) -> None:
    """QIDO-RS finds the series with every instance; WADO-RS returns the same instances and pixels."""
    sent = {str(ds.SOPInstanceUID): ds for ds in (dcmread(path) for path in files)}
    first = next(iter(sent.values()))
    study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    reader = _reader(pacs)
    found = reader.search_for_series(
        search_filters={"StudyInstanceUID": study_uid}, fields=["NumberOfSeriesRelatedInstances"]
    )
    assert [item["0020000E"]["Value"][0] for item in found] == [series_uid]
    assert found[0]["00201209"]["Value"][0] == len(files)
    retrieved = reader.retrieve_series(study_uid, series_uid)
    assert sorted(str(ds.SOPInstanceUID) for ds in retrieved) == sorted(sent)
    for dataset in retrieved:
        original = sent[str(dataset.SOPInstanceUID)]
        assert dataset.SOPClassUID == original.SOPClassUID
        np.testing.assert_array_equal(dataset.pixel_array, original.pixel_array)


def test_wrong_password_refused_then_the_series_goes_by_stow_and_reads_back(  # type: ignore[no-untyped-def]
    factory: sessionmaker[Session], approved_study: ApprovedStudy, make_settings, pacs: Orthanc, tmp_path: Path
) -> None:
    clock_now = [utcnow()]
    wrong = make_settings([_entry(pacs, "not-the-password")], backoff_initial_s=1, backoff_max_s=1)
    assert run_due_exports(factory, wrong, now=lambda: clock_now[0]) == 0
    with factory() as session:
        export = session.scalars(select(Export)).one()
    assert export.status == ExportStatus.PENDING and "HTTP 401 authentication refused" in (export.last_error or "")
    assert _reader(pacs).search_for_series(search_filters={"StudyInstanceUID": approved_study.study_uid}) == []

    right = make_settings([_entry(pacs, USERS["node"])], backoff_initial_s=1, backoff_max_s=1)
    clock_now[0] += timedelta(seconds=1)
    assert run_due_exports(factory, right, now=lambda: clock_now[0]) == 1
    with factory() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == approved_study.study_uid)).one()
        assert StudyState(study.state) == StudyState.EXPORTED
    files = sorted((tmp_path / "synthetic" / approved_study.study_uid / approved_study.series_uid).glob("*.dcm"))
    assert len(files) == 3
    assert_read_back(pacs, files)


def test_a_series_over_a_megabyte_goes_in_several_batches(pacs: Orthanc, tmp_path: Path) -> None:
    """12 slices of 256² (1.5 MB), 5 a request: dicomweb-client streams a body over 1 MB in chunks
    (Transfer-Encoding: chunked), which Orthanc must take as well as a plain one."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for index in range(12):
        path = tmp_path / f"{index:02d}.dcm"
        make_mr_instance(study_uid, series_uid, index, seed=7).save_as(path, enforce_file_format=True)
        files.append(path)
    settings = Settings.model_validate(
        {"export": {"destinations": [_entry(pacs, USERS["node"], batch_size=10, timeout_s=30)]}}
    )
    destination = build_destinations(settings)["orthanc-web"]
    assert isinstance(destination, DicomWebDestination)
    delivered: list[Path] = []
    destination.send(files, delivered.append)
    assert sorted(delivered) == files
    assert_read_back(pacs, files)
