"""A PACS that is not listening is reported as unreachable, not as an aborted association (#16, item 9): the
admin reading ``status`` or the log should look at the PACS's service or the firewall, not at DICOM settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from codebrain_node.config import Settings
from codebrain_node.export.base import DeliveryError
from codebrain_node.export.dispatch import build_destinations
from tests.dicom_fixtures import free_port, make_mr_instance


def test_a_closed_port_is_reported_unreachable(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens here
    settings = Settings.model_validate(
        {
            "paths": {"data_dir": str(tmp_path)},
            "dicom": {"network_timeout_s": 5, "acse_timeout_s": 5, "dimse_timeout_s": 5},
            "export": {
                "calling_ae_title": "NODE",
                "destinations": [
                    {"name": "pacs", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": closed}
                ],
            },
        }
    )
    path = tmp_path / "one.dcm"
    make_mr_instance(generate_uid(), generate_uid(), 0, rows=8, columns=8).save_as(path, enforce_file_format=True)
    with pytest.raises(DeliveryError, match=r"unreachable \(connection refused"):
        build_destinations(settings)["pacs"].send([path])
