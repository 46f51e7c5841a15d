"""The engine's model stage: every slice with head in it goes through the network, the others cost nothing."""

from __future__ import annotations

import numpy as np
import torch

from codebrain_node.contrasts import Contrast
from codebrain_node.engine.weights import LoadedModel
from codebrain_node.engine.worker import run_model
from codebrain_node.model import CodeBrain
from codebrain_node.model.config import ModelConfig

CONTRASTS = (Contrast.T1, Contrast.T1GD, Contrast.T2, Contrast.FLAIR)


def _model(confidence: bool) -> tuple[LoadedModel, list[int]]:
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="tiny",
        contrasts=tuple(str(c) for c in CONTRASTS),
        naf_dim=4,
        width_multiplier=1,
        naf_depth=3,
        stage_blocks=(0, 0, 0),
        image_size=32,
        confidence=confidence,
    )
    network = CodeBrain(cfg).eval()
    calls: list[int] = []
    network.prior_encoder.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    loaded = LoadedModel(network, "tiny", "0", "0" * 64, torch.device("cpu"), CONTRASTS)
    return loaded, calls


def test_empty_slices_get_zero_and_no_forward_pass_the_rest_what_impute_gives():
    loaded, calls = _model(confidence=True)
    rng = np.random.default_rng(0)
    stacked = rng.random((2, 7, 32, 32), dtype=np.float32)  # T1 and T2 given, 7 slices
    present = np.array([False, True, True, False, True, True, False])
    stacked[:, ~present] = 0.0
    available = [Contrast.T1, Contrast.T2]
    output, confidence = run_model(loaded, stacked, available, batch_size=3, present=present)
    assert sum(calls) == int(present.sum()) and calls == [3, 1]
    assert output.shape == (4, 7, 32, 32) and confidence is not None and confidence.shape == (7, 32, 32)
    assert not output[1, ~present].any() and not output[3, ~present].any() and not confidence[~present].any()
    np.testing.assert_array_equal(output[0], stacked[0])  # available contrasts pass through unchanged
    np.testing.assert_array_equal(output[2], stacked[1])
    images = torch.zeros((int(present.sum()), 4, 32, 32))
    images[:, 0], images[:, 2] = torch.from_numpy(stacked[0][present]), torch.from_numpy(stacked[1][present])
    expected = loaded.network.impute(images, torch.tensor([[True, False, True, False]] * int(present.sum())))
    np.testing.assert_allclose(output[:, present], expected.images.permute(1, 0, 2, 3).numpy(), atol=1e-5)
    np.testing.assert_allclose(confidence[present], expected.confidence[:, 0].numpy(), atol=1e-5)


def test_without_presence_every_slice_runs_and_no_head_at_all_runs_nothing():
    loaded, calls = _model(confidence=False)
    stacked = np.zeros((1, 4, 32, 32), dtype=np.float32)
    output, confidence = run_model(loaded, stacked, [Contrast.T1], batch_size=8)
    assert calls == [4] and confidence is None and output.shape == (4, 4, 32, 32)
    calls.clear()
    output, confidence = run_model(loaded, stacked, [Contrast.T1], batch_size=8, present=np.zeros(4, dtype=bool))
    assert calls == [] and confidence is None and not output.any()
