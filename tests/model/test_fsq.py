from __future__ import annotations

import math

import pytest
import torch

from codebrain_node.model import FSQ

DEFAULT_LEVELS = (8, 8, 8, 5, 5, 5)


def test_default_codebook_is_64000() -> None:
    fsq = FSQ(DEFAULT_LEVELS)
    assert fsq.codebook_size == 64_000 == math.prod(DEFAULT_LEVELS)
    assert fsq.dim == 6


@pytest.mark.parametrize("levels", [DEFAULT_LEVELS, (3, 4), (2, 7, 6)])
def test_quantised_values_take_exactly_L_levels(levels: tuple[int, ...]) -> None:
    fsq = FSQ(levels)
    z = torch.linspace(-20, 20, 4001).view(1, 1, -1, 1).expand(1, len(levels), -1, 1).contiguous()
    codes, indices = fsq(z)
    assert codes.dtype == torch.float32 and indices.dtype == torch.long
    assert codes.abs().max() <= 1.0
    for channel, count in enumerate(levels):
        values = codes[0, channel].unique()
        assert len(values) == count
        k = fsq.codes_to_levels(codes)[0, channel]
        assert int(k.min()) == 0 and int(k.max()) == count - 1
    assert int(indices.min()) == 0 and int(indices.max()) == math.prod(levels) - 1


def test_zero_maps_to_centre_code() -> None:
    codes, _ = FSQ(DEFAULT_LEVELS)(torch.zeros(1, 6, 1, 1))
    assert torch.equal(codes, torch.zeros_like(codes))


def test_index_round_trip_over_whole_codebook() -> None:
    fsq = FSQ(DEFAULT_LEVELS)
    indices = torch.arange(fsq.codebook_size).view(1, -1, 1)
    codes = fsq.indices_to_codes(indices)
    assert codes.shape == (1, 6, fsq.codebook_size, 1)
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    levels = fsq.indices_to_levels(indices)
    assert torch.equal(fsq.levels_to_indices(levels), indices)
    assert torch.equal(fsq.codes_to_levels(fsq.levels_to_codes(levels)), levels)
    # every code is distinct
    assert codes.flatten(2).squeeze(-1)[0].T.unique(dim=0).shape[0] == fsq.codebook_size


def test_quantising_a_code_returns_it() -> None:
    """Codes are fixed points up to the bound's ε: re-quantising a code's pre-image gives the same index."""
    fsq = FSQ(DEFAULT_LEVELS)
    z = torch.randn(2, 6, 4, 4) * 2
    codes, indices = fsq(z)
    assert torch.equal(fsq.codes_to_indices(codes), indices)
    assert torch.equal(fsq.indices_to_codes(indices), codes)


def test_straight_through_gradient_reaches_input() -> None:
    fsq = FSQ(DEFAULT_LEVELS)
    z = torch.randn(2, 6, 3, 3, requires_grad=True)
    codes, _ = fsq(z)
    (codes * torch.randn_like(codes)).sum().backward()
    assert z.grad is not None
    assert z.grad.abs().sum() > 0
    # the gradient equals d bound / dz / half_width, i.e. rounding is transparent
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / fsq.half_width(z2)).sum().backward()
    z3 = z.detach().clone().requires_grad_(True)
    fsq(z3)[0].sum().backward()
    assert torch.allclose(z3.grad, z2.grad)


def test_quantisation_stays_fp32_under_autocast() -> None:
    fsq = FSQ(DEFAULT_LEVELS)
    z = torch.randn(1, 6, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes, indices = fsq(z.bfloat16())
    assert codes.dtype == torch.float32
    reference, reference_indices = fsq(z.bfloat16().float())
    assert torch.equal(codes, reference) and torch.equal(indices, reference_indices)


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="6 channels"):
        FSQ(DEFAULT_LEVELS)(torch.zeros(1, 5, 2, 2))
