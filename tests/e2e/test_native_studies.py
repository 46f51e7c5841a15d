"""#14 end to end on real patients' series as acquired: skull on, thick slices, each series on its own grid.

TCGA-FG-6692-native (5.5 mm) and OpenMS-patient01-study1-native (3-4 mm), each written as a Siemens study by
``dicomize`` with FLAIR left out, go into ``serve`` by DCMTK storescu with brain extraction on and the shipped
weights; DCMTK storescp is the PACS. Every synthetic series must come back on the reference (T1) series' own grid,
slice for slice, flagged synthetic, zero outside the brain, and pass dciodvfy.
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
#: (native study, what its series make the node synthesise with FLAIR withheld; the model: T1, T1Gd, T2, FLAIR)
STUDIES = {"TCGA-FG-6692-native": 1, "OpenMS-patient01-study1-native": 2}

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.slow,
    pytest.mark.skipif(not NATIVE.parent.is_dir(), reason=f"{NATIVE.parent} not present (../shared/data)"),
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


@pytest.mark.parametrize("name", list(STUDIES))
def test_a_native_skull_on_study_comes_back_brain_only_on_the_reference_grid(tmp_path: Path, name: str) -> None:
    native = shared_data_dir() / name
    if not native.is_dir():
        pytest.skip(f"{native} not present")
    study = dicomize_case(native, tmp_path / "study", vendor="siemens", drop=[Contrast.FLAIR])
    expected = len(list(study.series[Contrast.T1].glob("*.dcm"))) * STUDIES[name]
    reference = sorted((pydicom.dcmread(p) for p in study.series[Contrast.T1].glob("*.dcm")), key=_along_normal)
    pacs = StoreSCP(tmp_path / "pacs", free_port())
    destination = DicomDestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=pacs.port)
    settings = node_settings(tmp_path / "node", DEFAULT_WEIGHTS, [destination], engine={"brain_extraction": "deepbet"})
    node = Node(settings, engine_mode="thread").start()
    try:
        sent = storescu(node.port, [study.study], extra=["--scan-directories", "--recurse"])
        assert sent.returncode == 0, sent.stderr
        synthetic = wait_for(
            lambda: (files := pacs.files()) and len(files) >= expected and files,
            240.0,
            f"{expected} synthetic instances at the PACS",
            1.0,
        )
    finally:
        node.stop()
        pacs.stop()

    assert len(synthetic) == expected
    by_series: dict[str, list[pydicom.Dataset]] = {}
    for path in synthetic:
        ds = pydicom.dcmread(path)
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert len(by_series) == STUDIES[name] and reference[0].SeriesInstanceUID not in by_series
    for series in by_series.values():
        datasets = sorted(series, key=_along_normal)
        assert len(datasets) == len(reference)
        for ds, ref in zip(datasets, reference, strict=True):
            assert "DERIVED" in ds.ImageType and ds.SyntheticData == "YES" and "SYNTHETIC" in ds.SeriesDescription
            assert (ds.Rows, ds.Columns) == (ref.Rows, ref.Columns)
            np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], ref.ImagePositionPatient, atol=1e-3)
            np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], ref.PixelSpacing, atol=1e-4)
        volume = np.stack([ds.pixel_array for ds in datasets]).astype(np.float32)
        assert volume.max() > 0  # a brain was synthesised ...
        corners = np.concatenate(
            [volume[:, :12, :12], volume[:, :12, -12:], volume[:, -12:, :12], volume[:, -12:, -12:]]
        )
        assert float(corners.max()) == 0.0  # ... and nothing outside it: no grey background, no pasted pixels
        assert 0.03 < float((volume > 0).mean()) < 0.35  # the brain (a quarter of the field of view), not the head
    for path in (synthetic[0], synthetic[len(synthetic) // 2]):
        assert _dciodvfy_errors(path) == [], path
