"""``bench ingest`` runs end to end on a handful of tiny instances (figures themselves are not asserted)."""

from __future__ import annotations

import pytest

from codebrain_node.receive.bench import ORTHANC, bench_ingest
from tests.dicom_fixtures import STORESCP, STORESCU


@pytest.mark.skipif(not (STORESCU.exists() and STORESCP.exists()), reason="DCMTK storescu/storescp not installed")
def test_bench_ingest_reports_both_receivers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = bench_ingest(6, 2, rows=16, columns=16, work_dir=tmp_path, compare_baseline=False)
    assert set(result["runs"]) == {"1_association", "2_associations"}
    for run in result["runs"].values():
        assert run["ours_per_s"] > 0 and run["storescp_per_s"] > 0 and run["ours_without_nodelay_per_s"] > 0
        assert run["ratio"] == pytest.approx(run["ours_per_s"] / run["storescp_per_s"], rel=0.05)
        assert run["durable_write_only_per_s"] > 0
        ceiling = run["durable_write_only_per_s"] / run["storescp_per_s"]
        assert run["ratio_ceiling_with_durable_write"] == pytest.approx(ceiling, rel=0.05)
    if ORTHANC.exists():  # the PACS a site would otherwise run, and the two ratios the target is set on
        for name, run in result["runs"].items():
            assert run["orthanc_per_s"] > 0
            assert run["ratio_vs_orthanc"] == pytest.approx(run["ours_per_s"] / run["orthanc_per_s"], rel=0.05)
            assert result["ratios"][name]["vs_orthanc"] == run["ratio_vs_orthanc"]
            assert result["ratios"][name]["vs_storescp_fsync"] == run.get("ratio_vs_storescp_fsync")
        assert "SyncStorageArea" in result["orthanc_durability"]
    parallel = result["runs"]["2_associations"]  # ours as serve runs it, with 1 and 2 receiver processes
    for name in ("1_process", "2_processes"):
        assert parallel[f"ours_{name}_per_s"] > 0 and parallel[f"ours_{name}_cpu_ms_per_instance"] > 0
    assert "ours_1_process_per_s" not in result["runs"]["1_association"]
    assert not list(tmp_path.iterdir())  # the work folder is removed
