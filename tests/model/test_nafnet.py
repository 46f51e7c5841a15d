from __future__ import annotations

import torch

from codebrain_node.model.nafnet import Decoder, Encoder, LayerNorm2d, NAFBlock, PointwiseConv


def test_nafblock_starts_as_identity() -> None:
    block = NAFBlock(8)
    assert torch.count_nonzero(block.beta) == 0 and torch.count_nonzero(block.gamma) == 0
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(block(x), x)


def test_channels_last_path_matches_convolution() -> None:
    torch.manual_seed(0)
    conv = PointwiseConv(6, 10)
    x = torch.randn(2, 6, 5, 7)
    assert torch.allclose(conv(x.contiguous(memory_format=torch.channels_last)), conv(x), atol=1e-5)
    block = NAFBlock(8)
    with torch.no_grad():
        block.beta.fill_(0.5)
        block.gamma.fill_(0.5)
    y = torch.randn(2, 8, 6, 6)
    assert torch.allclose(block(y.contiguous(memory_format=torch.channels_last)), block(y), atol=1e-5)


def test_layernorm_normalises_channels_and_keeps_memory_format() -> None:
    norm = LayerNorm2d(5)
    x = torch.randn(2, 5, 4, 4) * 3 + 1
    y = norm(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 4, 4), atol=1e-5)
    assert y.is_contiguous()
    assert norm(x.contiguous(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)


def test_encoder_downsamples_by_eight_and_decoder_restores() -> None:
    encoder = Encoder(3, dim=4, depth=1, out_channels=6, stage_blocks=(0, 1, 1))
    decoder = Decoder(6, dim=4, depth=1, out_channels=3, stage_blocks=(0, 1, 1))
    codes = encoder(torch.rand(1, 3, 24, 40))
    assert codes.shape == (1, 6, 3, 5)
    assert decoder(codes).shape == (1, 3, 24, 40)
