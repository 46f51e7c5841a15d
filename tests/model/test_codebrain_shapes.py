from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from codebrain_node.model import CodeBrain, DirectRegression, ImputeOutput

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batch(n: int, size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(batch, n, size, size)
    available = torch.ones(batch, n, dtype=torch.bool)
    available[0, 0] = False
    available[-1, -1] = False
    available[-1, 1] = False
    return images, available


@pytest.mark.parametrize("n", [3, 4, 5])
@pytest.mark.parametrize("size", [16, 40])
def test_shapes_for_any_contrast_count(tiny_config, n: int, size: int) -> None:
    cfg = tiny_config(n)
    model = CodeBrain(cfg)
    images, available = _batch(n, size)
    out = model.stage1_forward(images, available)
    h = size // 8
    assert out["recon"].shape == (2, n, size, size)
    assert out["codes"].shape == (2, 6, h, h)
    assert out["levels"].shape == (2, 6, h, h) and out["levels"].dtype == torch.long
    assert out["indices"].shape == (2, h, h)
    assert model.code_levels(images).shape == (2, 6, h, h)
    assert model.prior_logits(images, available).shape == (2, 33, h, h)
    imputed = model.impute(images, available)
    assert isinstance(imputed, ImputeOutput)
    assert imputed.images.shape == (2, n, size, size) and imputed.confidence is None
    baseline = DirectRegression(cfg)
    assert baseline(images, available).shape == (2, n, size, size)
    assert baseline.impute(images, available).images.shape == (2, n, size, size)


def test_impute_keeps_available_contrasts_and_bounds_synthetic(tiny_config) -> None:
    model = CodeBrain(tiny_config(4)).train()
    images, available = _batch(4, 24)
    out = model.impute(images, available).images
    mask = available.view(2, 4, 1, 1).expand_as(images)
    assert torch.equal(out[mask], images[mask])
    assert out.min() >= 0 and out.max() <= 1
    assert model.training, "impute must restore the caller's train/eval mode"


def test_synthetic_contrasts_do_not_depend_on_missing_inputs(tiny_config) -> None:
    """A missing contrast is zero-filled: whatever the caller left in its channel cannot leak into the output."""
    model = CodeBrain(tiny_config(4))
    images, available = _batch(4, 16)
    scrambled = images.clone()
    scrambled[~available] = torch.rand_like(scrambled[~available])
    assert torch.equal(model.impute(images, available).images, model.impute(scrambled, available).images)


def test_confidence_is_a_probability_map(tiny_config) -> None:
    model = CodeBrain(tiny_config(3, confidence=True))
    images, available = _batch(3, 32)
    with_confidence = model.impute(images, available)
    confidence = with_confidence.confidence
    assert confidence is not None
    assert confidence.shape == (2, 1, 32, 32)
    assert confidence.min() >= 0 and confidence.max() <= 1
    assert confidence.std() > 0  # a map, not a constant
    model.cfg = dataclasses.replace(model.cfg, confidence=False)
    plain = model.impute(images, available)
    assert plain.confidence is None
    assert torch.equal(plain.images, with_confidence.images)  # read off the same logits: the images do not change


def test_classification_grading_head(tiny_config) -> None:
    model = CodeBrain(tiny_config(4, grading="classification", confidence=True))
    images, available = _batch(4, 16)
    assert model.prior_logits(images, available).shape == (2, 39, 2, 2)
    assert model.impute(images, available).confidence.shape == (2, 1, 16, 16)


def test_bad_inputs_are_refused(tiny_config) -> None:
    model = CodeBrain(tiny_config(4))
    with pytest.raises(ValueError, match="multiples of 8"):
        model.impute(torch.rand(1, 4, 12, 16), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        model.impute(torch.rand(1, 3, 16, 16), torch.ones(1, 3, dtype=torch.bool))


def test_bf16_precision_runs_on_cpu(tiny_config) -> None:
    model = CodeBrain(tiny_config(4))
    images, available = _batch(4, 16)
    out = model.impute(images, available, precision="bf16").images
    assert out.dtype == torch.float32
    assert (out - model.impute(images, available, precision="fp32").images).abs().max() < 0.2


def test_for_inference_casts_the_weights_as_asked_and_gives_the_fp32_images(tiny_config) -> None:
    """The engine's network: bf16 weights when asked (no per-call autocast), fp32 kept when asked, and the bf16
    network's images within bf16 rounding of the fp32 network's."""
    torch.manual_seed(0)
    cfg = tiny_config(4)
    fp32 = CodeBrain(cfg).for_inference(torch.device("cpu"), "fp32")
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    bf16 = copy.deepcopy(fp32).for_inference(torch.device("cpu"), "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16} and not bf16.training
    images, available = _batch(4, 16)
    reference = fp32.impute(images, available, precision="fp32").images
    out = bf16.impute(images, available, precision="bf16").images
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert torch.equal(out[available], images[available])  # acquired contrasts copied exactly, not rounded
    assert 0 < float((out - reference).abs().max()) < 0.05


def test_auto_precision_is_bf16_only_where_native() -> None:
    from codebrain_node.model.codebrain import bf16_supported, inference_settings

    cpu = torch.device("cpu")
    assert inference_settings(cpu, "auto") == (True, bf16_supported(cpu))
    assert inference_settings(cpu, "fp32") == (True, False) and inference_settings(cpu, "bf16") == (True, True)
    with pytest.raises(ValueError, match="precision"):
        inference_settings(cpu, "fp16")
