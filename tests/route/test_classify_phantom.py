"""The phantom's DICOM studies (what the end-to-end tests send) are classified as the contrasts they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from codebrain_node.contrasts import Contrast
from codebrain_node.route.classify import classify_paths, load_rules

dicom_study = pytest.importorskip("codebrain_node.phantom.dicom_study", reason="phantom DICOM writer not present")
sitk = pytest.importorskip("SimpleITK")

ALL = [Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.PD, Contrast.FLAIR]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_study_series_classify_as_written(tmp_path: Path, seed: int) -> None:
    """Seeds 0, 1, 2 are Philips, GE and Siemens; every contrast's series must come back as that contrast."""
    rng = np.random.default_rng(seed)
    images = {}
    for contrast in ALL:
        image = sitk.GetImageFromArray(rng.uniform(0, 1000, size=(10, 12, 12)).astype(np.float32))
        image.SetSpacing((1.5, 1.5, 3.0))
        images[contrast] = image
    out = dicom_study.write_dicom_study(images, tmp_path / "study", seed=seed)
    rules = load_rules()
    found = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        result = classify_paths(sorted(folder.glob("*.dcm")), rules)
        assert result.contrast is not None, (folder.name, result.reason)
        found[result.contrast] = folder.name
    assert set(found) == set(ALL), found
