"""``bench e2e``: a real node between DCMTK storescu and storescp, timed from the node's own records."""

from __future__ import annotations

from pathlib import Path

from e2e_support import STORESCP, STORESCU, node_settings, require

from codebrain_node.engine.weights import load_model
from codebrain_node.node.bench_e2e import bench_e2e, format_e2e


def test_bench_e2e_times_each_stage_after_the_last_instance(phantom_images, tiny_weights: Path, tmp_path: Path):
    require(STORESCU, "DCMTK storescu")
    require(STORESCP, "DCMTK storescp")
    settings = node_settings(tmp_path / "unused", tiny_weights, [])
    model = load_model(tiny_weights, "cpu")
    messages: list[str] = []
    (result,) = bench_e2e(
        settings, model=model, quiet_period_s=0.5, repeats=1, images=phantom_images, progress=messages.append
    )
    assert result.slices == next(iter(phantom_images.values())).GetSize()[2]
    assert sorted(result.targets) == ["PD", "T1Gd"]
    # the stages are reached in order, the first no sooner than the quiet period allows
    assert result.quiet_period_s <= result.stable_s <= result.claimed_s <= result.written_s <= result.acknowledged_s
    assert {"load_s", "preprocess_s", "model_s", "write_s"} <= set(result.job_timings)
    table = format_e2e([result])
    assert "PACS ack" in table and f"{result.acknowledged_s:.2f}" in table
    assert messages and "PACS ack" in messages[0]


def test_read_case_finds_brats_files_by_stem_and_names_what_is_missing(tmp_path: Path):
    import numpy as np
    import pytest
    import SimpleITK as sitk

    from codebrain_node.contrasts import Contrast
    from codebrain_node.node.bench_e2e import read_case

    volume = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    sitk.WriteImage(volume, str(tmp_path / "t1n.nii.gz"))
    sitk.WriteImage(volume * 2, str(tmp_path / "Case-001-t2w.nii.gz"))
    images = read_case(tmp_path, [Contrast.T1, Contrast.T2])
    assert images[Contrast.T2].GetSize() == (4, 3, 2)
    assert sitk.GetArrayFromImage(images[Contrast.T2]).max() == 46.0
    with pytest.raises(FileNotFoundError, match=r"t2f\.nii\.gz for FLAIR"):
        read_case(tmp_path, [Contrast.FLAIR])
