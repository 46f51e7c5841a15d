from __future__ import annotations

import pytest

from codebrain_node.engine.bench import bench_inference, bench_train, format_result


def test_bench_inference_reports_throughput_and_size(tiny_config) -> None:
    cfg = tiny_config(3, confidence=True)
    result = bench_inference(cfg, batch=2, size=16, steps=1, warmup=0)
    assert result["slices_per_s"] > 0 and result["gflops_per_slice"] > 0
    assert result["params_inference"] < result["params_total"]
    baseline = bench_inference(cfg, batch=2, size=16, steps=1, warmup=0, baseline=True)
    assert baseline["model"] == "DirectRegression"
    assert "slices/s" in format_result(result)


@pytest.mark.parametrize("stage", [1, 2])
def test_bench_train_reports_steps_per_second(tiny_config, stage: int) -> None:
    result = bench_train(tiny_config(4), batch=2, size=32, steps=1, warmup=0, stage=stage)
    assert result["steps_per_s"] > 0 and result["stage"] == stage
    assert result["params_trained"] > 0
    assert "steps/s" in format_result(result)
