"""NAFNet building blocks (Chen et al. 2022, "Simple Baselines for Image Restoration") and the CodeBrain
encoder / decoder made of them, after the authors' public code.

NAFBlock, for input x with c channels:

    y = x + β · conv1x1( SCA( SG( dwconv3x3( conv1x1_{c→2c}( LN(x) ) ) ) ) )
    out = y + γ · conv1x1( SG( conv1x1_{c→2c}( LN(y) ) ) )

SG(a ‖ b) = a ⊙ b (SimpleGate: half the channels gate the other half, no nonlinearity needed);
SCA(x) = x ⊙ conv1x1(avgpool(x)) (simplified channel attention). β and γ start at 0, so every block starts as the
identity and training is stable without warm-up tricks.

Encoder (no skips, ×8 down): conv3x3 → blocks at full size → 3 × (conv2x2 stride 2 doubling the width → blocks),
``depth`` blocks at the 1/8 bottom (width 8·dim). ``stage_blocks`` = blocks at full, 1/2 and 1/4 size (the authors
use 1, 1, 1). Decoder, the mirror: 1x1 fusion of its inputs to 16·dim → ``depth`` blocks → 3 × (1x1 conv,
PixelShuffle(2): 4× fewer channels, 2× larger → blocks) → conv3x3 to the output channels with no activation
(the authors found a final tanh unstable).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a ``[B, C, H, W]`` map; statistics in fp32 so bf16 stays accurate."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel over the channel axis made last: free when x is channels_last, one copy otherwise;
        # either way far fewer memory passes than mean/var by hand, which is what bounds small NAFNets on a CPU.
        # The output keeps x's memory format (a channels_last tensor sends CPU 1x1 convolutions to a slow path).
        y = F.layer_norm(x.permute(0, 2, 3, 1).float(), (x.shape[1],), self.weight.float(), self.bias.float(), self.eps)
        y = y.permute(0, 3, 1, 2).to(x.dtype)
        return y if x.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


class PointwiseConv(nn.Conv2d):
    """1x1 convolution. On a channels-last CPU tensor it runs as one GEMM with fused bias over the pixels
    (x·Wᵀ + b), because CPU convolution routes channels-last 1x1 kernels through im2col plus a bias copy that
    cost about as much as the product itself. Same parameters and state-dict keys as ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


class SimpleGate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw_channels = channels * dw_expand
        ffn_channels = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = PointwiseConv(channels, dw_channels)
        self.conv2 = nn.Conv2d(dw_channels, dw_channels, 3, padding=1, groups=dw_channels)
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), PointwiseConv(dw_channels // 2, dw_channels // 2))
        self.conv3 = PointwiseConv(dw_channels // 2, channels)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = PointwiseConv(channels, ffn_channels)
        self.conv5 = PointwiseConv(ffn_channels // 2, channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


def _blocks(channels: int, count: int) -> list[nn.Module]:
    return [NAFBlock(channels) for _ in range(count)]


class Encoder(nn.Module):
    """``[B, in, H, W]`` → ``[B, out or 8·dim, H/8, W/8]``; no skip connections leave it."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        depth: int,
        out_channels: int | None = None,
        stage_blocks: tuple[int, int, int] = (1, 1, 1),
    ) -> None:
        super().__init__()
        full, half, quarter = stage_blocks
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dim, 3, padding=1), *_blocks(dim, full))
        self.down1 = nn.Sequential(nn.Conv2d(dim, 2 * dim, 2, 2), *_blocks(2 * dim, half))
        self.down2 = nn.Sequential(nn.Conv2d(2 * dim, 4 * dim, 2, 2), *_blocks(4 * dim, quarter))
        self.down3 = nn.Sequential(nn.Conv2d(4 * dim, 8 * dim, 2, 2), *_blocks(8 * dim, depth))
        self.out_channels = 8 * dim if out_channels is None else out_channels
        self.project = nn.Identity() if out_channels is None else PointwiseConv(8 * dim, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.down3(self.down2(self.down1(self.stem(x)))))


class Decoder(nn.Module):
    """``concat(inputs)`` at 1/8 size → ``[B, out, H, W]`` by PixelShuffle upsampling (the authors' decoder_2)."""

    def __init__(
        self, in_channels: int, dim: int, depth: int, out_channels: int, stage_blocks: tuple[int, int, int] = (1, 1, 1)
    ) -> None:
        super().__init__()
        full, half, quarter = stage_blocks
        self.fuse = PointwiseConv(in_channels, 16 * dim)
        self.up1 = nn.Sequential(
            *_blocks(16 * dim, depth), PointwiseConv(16 * dim, 16 * dim), nn.PixelShuffle(2)
        )  # → 4·dim at 1/4
        self.up2 = nn.Sequential(*_blocks(4 * dim, quarter), PointwiseConv(4 * dim, 8 * dim), nn.PixelShuffle(2))
        self.up3 = nn.Sequential(*_blocks(2 * dim, half), PointwiseConv(2 * dim, 4 * dim), nn.PixelShuffle(2))
        self.head = nn.Sequential(*_blocks(dim, full), nn.Conv2d(dim, out_channels, 3, padding=1))

    def forward(self, *inputs: Tensor) -> Tensor:
        x = self.fuse(torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0])
        return self.head(self.up3(self.up2(self.up1(x))))
