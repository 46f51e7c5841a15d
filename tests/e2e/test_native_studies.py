"""#14 end to end on a real patient's series as acquired: skull on, 5.5 mm slices, its own grids per series.

TCGA-FG-6692-native (``../shared/data``), written as a Siemens study by ``dicomize`` with FLAIR left out, goes
into ``serve`` by DCMTK storescu with brain extraction on and the shipped weights; DCMTK storescp is the PACS. The
synthetic FLAIR must come back on the reference (T1) series' own grid, slice for slice, flagged synthetic, zero
outside the brain, and pass dciodvfy.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from e2e_support import DCIODVFY, StoreSCP, node_settings, storescu, wait_for

from codebrain_node.config import DicomDestinationSettings
from codebrain_node.contrasts import Contrast
from codebrain_node.engine.weights import DEFAULT_WEIGHTS
from codebrain_node.node.dicomize import dicomize_case
from codebrain_node.node.serve import Node
from tests.conftest import shared_data_dir
from tests.dicom_fixtures import free_port

NATIVE = shared_data_dir() / "TCGA-FG-6692-native"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(not NATIVE.is_dir(), reason=f"{NATIVE} not present (../shared/data holds the native series)"),
    pytest.mark.skipif(not DCIODVFY.exists(), reason="dciodvfy (dicom3tools) not installed"),
]
pytest.importorskip("deepbet", reason="deepbet (the brain extraction) not installed")


def _dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    return [line for line in errors if not re.search(r"0x0008,0x001c", line, re.IGNORECASE)]  # unknown to it


def _along_normal(ds: pydicom.Dataset) -> float:
    """Position along the slice normal: both series compared slice for slice in space, whatever their numbering."""
    orientation = np.array(ds.ImageOrientationPatient, float)
    return float(np.dot(np.cross(orientation[:3], orientation[3:]), np.array(ds.ImagePositionPatient, float)))


def test_a_native_skull_on_study_comes_back_brain_only_on_the_reference_grid(tmp_path: Path) -> None:
    study = dicomize_case(NATIVE, tmp_path / "study", vendor="siemens", drop=[Contrast.FLAIR])
    reference = sorted((pydicom.dcmread(p) for p in study.series[Contrast.T1].glob("*.dcm")), key=_along_normal)
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    destination = DicomDestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
    settings = node_settings(tmp_path / "node", DEFAULT_WEIGHTS, [destination], engine={"brain_extraction": "deepbet"})
    node = Node(settings, engine_mode="thread").start()
    try:
        sent = storescu(node.port, [study.study], extra=["--scan-directories", "--recurse"])
        assert sent.returncode == 0, sent.stderr
        synthetic = wait_for(
            lambda: (files := pacs.files()) and len(files) >= len(reference) and files,
            240.0,
            f"{len(reference)} synthetic FLAIR instances at the PACS",
            1.0,
        )
    finally:
        node.stop()
        pacs.stop()

    datasets = sorted((pydicom.dcmread(p) for p in synthetic), key=_along_normal)
    assert len(datasets) == len(reference)
    assert {ds.SeriesInstanceUID for ds in datasets} != {reference[0].SeriesInstanceUID}
    for ds, ref in zip(datasets, reference, strict=True):
        assert "DERIVED" in ds.ImageType and ds.SyntheticData == "YES" and "SYNTHETIC" in ds.SeriesDescription
        assert (ds.Rows, ds.Columns) == (ref.Rows, ref.Columns)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], ref.ImagePositionPatient, atol=1e-3)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], ref.PixelSpacing, atol=1e-4)
    volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
    assert volume.max() > 0  # a brain was synthesised ...
    corners = np.concatenate([volume[:, :12, :12], volume[:, :12, -12:], volume[:, -12:, :12], volume[:, -12:, -12:]])
    assert float(corners.max()) == 0.0  # ... and nothing outside it: no grey background, no pasted pixels
    assert 0.05 < float((volume > 0).mean()) < 0.35  # the brain (24 % of this field of view), not the whole head
    for path in (synthetic[0], synthetic[len(synthetic) // 2]):
        assert _dciodvfy_errors(path) == [], path
