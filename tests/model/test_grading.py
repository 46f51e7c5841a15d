from __future__ import annotations

import pytest
import torch

from codebrain_node.model import decode_grades, grading_loss, ordinal_targets
from codebrain_node.model.grading import split_logits

LEVELS = (8, 8, 8, 5, 5, 5)


def _all_levels_map(levels: tuple[int, ...]) -> torch.Tensor:
    """[1, D, 1, max L] holding every level of every channel (clamped where a channel has fewer)."""
    width = max(levels)
    rows = [torch.arange(width).clamp(max=count - 1) for count in levels]
    return torch.stack(rows).view(1, len(levels), 1, width)


@pytest.mark.parametrize("levels", [LEVELS, (2, 3, 4, 6, 7)])
def test_ordinal_encode_decode_every_level(levels: tuple[int, ...]) -> None:
    k = _all_levels_map(levels)
    targets = ordinal_targets(k, levels)
    assert targets.shape[1] == sum(count - 1 for count in levels)
    for channel, group in enumerate(split_logits(targets, levels, "ordinal")):
        # k ones followed by zeros
        assert torch.equal(group.sum(dim=1)[0], k[0, channel].float())
        assert torch.all(group[:, 1:] <= group[:, :-1])
    logits = (targets * 2 - 1) * 6.0  # confident, correct logits
    decoded, probability = decode_grades(logits, levels, "ordinal")
    assert torch.equal(decoded, k)
    assert torch.all(probability > 0.9)


def test_default_levels_have_33_ordinal_channels() -> None:
    assert ordinal_targets(torch.zeros(1, 6, 2, 2, dtype=torch.long), LEVELS).shape == (1, 33, 2, 2)


def test_decoding_is_monotone_consistent() -> None:
    """Non-monotone sigmoids (pass, fail, pass) decode to the leading run of passes, never past a failure."""
    logits = torch.tensor([4.0, -4.0, 4.0, 4.0]).view(1, 4, 1, 1)  # one channel with L = 5
    level, probability = decode_grades(logits, (5,), "ordinal")
    assert int(level) == 1
    assert 0.0 <= float(probability) <= 1.0


def test_level_probabilities_form_a_distribution() -> None:
    logits = torch.randn(2, 33, 3, 3) * 3
    _, probability = decode_grades(logits, LEVELS, "ordinal")
    assert probability.shape == (2, 6, 3, 3)
    assert torch.all(probability >= 0) and torch.all(probability <= 1)


def test_ordinal_loss_low_for_correct_and_high_for_wrong_logits() -> None:
    k = torch.randint(0, 5, (2, 6, 4, 4))
    targets = ordinal_targets(k, LEVELS)
    good = grading_loss((targets * 2 - 1) * 8, k, LEVELS)
    bad = grading_loss((1 - 2 * targets) * 8, k, LEVELS)
    assert good < 0.01 < 1.0 < bad


def test_ordinal_loss_penalises_far_misses_more() -> None:
    true_levels = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    near = (ordinal_targets(torch.full_like(true_levels, 1), (8,)) * 2 - 1) * 5
    far = (ordinal_targets(torch.full_like(true_levels, 7), (8,)) * 2 - 1) * 5
    assert grading_loss(near, true_levels, (8,)) < grading_loss(far, true_levels, (8,))


def test_classification_variant_round_trip() -> None:
    k = _all_levels_map(LEVELS)
    logits = torch.cat(
        [
            torch.nn.functional.one_hot(k[:, c], count).permute(0, 3, 1, 2).float() * 10
            for c, count in enumerate(LEVELS)
        ],
        dim=1,
    )
    assert logits.shape[1] == sum(LEVELS)
    decoded, probability = decode_grades(logits, LEVELS, "classification")
    assert torch.equal(decoded, k)
    assert grading_loss(logits, k, LEVELS, "classification") < 0.01
    assert torch.all(probability > 0.9)


def test_wrong_logit_count_is_refused() -> None:
    with pytest.raises(ValueError, match="33 logits"):
        decode_grades(torch.zeros(1, 32, 1, 1), LEVELS, "ordinal")
