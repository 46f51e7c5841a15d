from __future__ import annotations

import pytest

from tests.model.conftest import make_tiny_config
from training.bench import bench_inference, bench_train, format_result
from training.stage1 import Stage1Task
from training.stage2 import Stage2Task


def test_bench_inference_reports_throughput_and_size() -> None:
    cfg = make_tiny_config(3, confidence=True)
    result = bench_inference(cfg, batch=2, size=16, steps=1, warmup=0)
    assert result["slices_per_s"] > 0 and result["gflops_per_slice"] > 0
    assert result["params_inference"] < result["params_total"]
    baseline = bench_inference(cfg, batch=2, size=16, steps=1, warmup=0, baseline=True)
    assert baseline["model"] == "DirectRegression"
    assert "slices/s" in format_result(result)


@pytest.mark.parametrize("stage", [1, 2])
def test_bench_train_times_the_trainers_own_step(monkeypatch, stage: int) -> None:
    task = Stage1Task if stage == 1 else Stage2Task
    calls: list[int] = []
    original = task.train_step

    def counted(self, batch, step, generator):  # type: ignore[no-untyped-def]
        calls.append(step)
        return original(self, batch, step, generator)

    monkeypatch.setattr(task, "train_step", counted)
    result = bench_train(make_tiny_config(4), batch=2, size=32, steps=2, warmup=1, stage=stage)
    assert len(calls) == 3  # one warm-up step and the two timed ones, each the trainer's own
    if stage == 1:
        assert calls[0] > 0, "Stage I is timed with its GAN term on (at or after gan_start_step)"
    assert result["steps_per_s"] > 0 and result["stage"] == stage
    assert result["params_trained"] > 0
    assert "steps/s" in format_result(result)
