"""CodeBrain (Wu et al., arXiv 2501.18328): missing-contrast imputation as code prediction, and its baseline.

Stage I (reconstruction) learns a compact code for the *complete* set:

    c = FSQ(E_post(x_full))          [B, 6, H/8, W/8], posterior encoder + finite scalar quantisation
    F_c = E_c(x_incomplete)          [B, 8·w, H/8, W/8], common encoder on the zero-filled incomplete set
    x̂ = D(c, F_c)                    [B, N, H, W], every contrast, available or not

Stage II (grading) trains the prior encoder P(x_incomplete) → Σ(L−1) ordinal logits to predict the levels of c
(targets from the frozen posterior encoder). At inference the posterior encoder is not needed:
x̂ = D(FSQ⁻¹(decode(P(x_incomplete))), E_c(x_incomplete)); available contrasts are copied through unchanged.

Every encoder reads one axial slice of every contrast (2-D). Confidence (``confidence = true``): for each 8×8
region the mean over code channels of the grading probability of the decoded level, upsampled bilinearly to image
size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codebrain_node.model.config import ModelConfig
from codebrain_node.model.fsq import FSQ
from codebrain_node.model.grading import decode_grades
from codebrain_node.model.nafnet import Decoder, Encoder

DOWNSAMPLING = 8


@dataclass
class ImputeOutput:
    """``images`` float ``[B, N, H, W]`` in [0, 1]; ``confidence`` float ``[B, 1, H, W]`` in [0, 1] or None;
    ``features``: CodeBrain's common-encoder feature F_c of the incomplete input (kept when asked for, so a caller
    decoding the same input with other codes, the evaluation's posterior-code row, need not encode it again)."""

    images: Tensor
    confidence: Tensor | None = None
    features: Tensor | None = None


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_inputs(cfg: ModelConfig, images: Tensor, available: Tensor) -> None:
    n = cfg.num_contrasts
    if images.ndim != 4 or images.shape[1] != n:
        raise ValueError(f"images must be [B, {n}, H, W] for contrasts {list(cfg.contrasts)}, got {list(images.shape)}")
    if images.shape[-1] % DOWNSAMPLING or images.shape[-2] % DOWNSAMPLING:
        raise ValueError(f"image height and width must be multiples of {DOWNSAMPLING}, got {list(images.shape[-2:])}")
    if available.shape != images.shape[:2]:
        raise ValueError(f"available must be [B, {n}], got {list(available.shape)}")


def encoder_input(images: Tensor, available: Tensor | None) -> Tensor:
    """What an encoder reads: the slice's contrasts, every missing one zeroed when ``available`` is given."""
    if available is None:
        return images
    return images * available.to(images.dtype).view(*available.shape, 1, 1)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 runs natively here: CUDA with bf16, or a CPU whose oneDNN has bf16 kernels (AVX-512 BF16 or
    AMX); elsewhere bf16 would be emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def inference_settings(device: torch.device, precision: str = "auto") -> tuple[bool, bool]:
    """(channels_last, bf16). channels_last measured faster on CPU and on CUDA (fused LayerNorm over a contiguous
    channel axis, tensor-core convolutions); bf16 by default wherever it is native (:func:`bf16_supported`)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return True, precision == "bf16"
    return True, bf16_supported(device)


class _Imputer(nn.Module, ABC):
    """Shared ``impute()``: eval + inference_mode, channels_last (+ bf16 on CUDA), available contrasts copied."""

    cfg: ModelConfig

    @abstractmethod
    def _synthesise(
        self, x_in: Tensor, images: Tensor, available: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Encoder input → (every contrast, raw; confidence or None; common-encoder features or None)."""

    def impute(
        self, images: Tensor, available: Tensor, *, precision: str = "auto", keep_features: bool = False
    ) -> ImputeOutput:
        """Synthesise the missing contrasts of a batch; ``precision`` auto = bf16 where native, else fp32.

        A network whose weights are bf16 (:meth:`for_inference`) runs in bf16 throughout; fp32 weights asked for
        bf16 run under autocast, which casts every weight again on every call (a quarter slower on a CPU).
        """
        _check_inputs(self.cfg, images, available)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                available = available.to(device=images.device, dtype=torch.bool)
                channels_last, bf16 = inference_settings(images.device, precision)
                weights_dtype = next(self.parameters()).dtype
                x_in = encoder_input(images.float(), available).to(weights_dtype)
                if channels_last:
                    x_in = x_in.contiguous(memory_format=torch.channels_last)
                autocast = bf16 and weights_dtype == torch.float32
                with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=autocast):
                    synthetic, confidence, features = self._synthesise(x_in, images, available)
                synthetic = synthetic.float().clamp(0.0, 1.0).contiguous()
                composed = torch.where(available.view(*available.shape, 1, 1), images.float(), synthetic)
                if confidence is not None:
                    confidence = confidence.float().contiguous()
                return ImputeOutput(composed, confidence, features if keep_features else None)
        finally:
            self.train(was_training)

    def for_inference(self, device: torch.device, precision: str = "auto") -> Self:
        """This network moved to ``device``, channels_last, in eval mode, its weights cast to bf16 where
        ``precision`` resolves to bf16 (halves the memory traffic of every layer). For serving, never training:
        the cast is in place."""
        channels_last, bf16 = inference_settings(device, precision)
        network = self.to(device).eval()
        if channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network.to(torch.bfloat16) if bf16 else network.float()


class CodeBrain(_Imputer):
    """Posterior encoder + FSQ + common encoder E_c + decoder (Stage I) and the prior encoder (Stage II)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_in, wide = cfg.input_channels, cfg.wide_dim
        self.posterior_encoder = Encoder(n_in, cfg.naf_dim, cfg.naf_depth, cfg.code_dim, cfg.stage_blocks)
        self.quantizer = FSQ(cfg.levels, eps=cfg.fsq_eps)
        self.common_encoder = Encoder(n_in, wide, cfg.naf_depth, None, cfg.stage_blocks)
        self.decoder = Decoder(cfg.code_dim + 8 * wide, wide, cfg.naf_depth, cfg.num_contrasts, cfg.stage_blocks)
        self.prior_encoder = Encoder(n_in, cfg.prior_dim, cfg.naf_depth, cfg.grading_channels, cfg.stage_blocks)

    # --- parameter sets (Stage I trains all but the prior; Stage II only the prior) ---------------------------
    def stage1_parameters(self) -> list[nn.Parameter]:
        modules = (self.posterior_encoder, self.common_encoder, self.decoder)
        return [p for m in modules for p in m.parameters()]

    def prior_parameters(self) -> list[nn.Parameter]:
        return list(self.prior_encoder.parameters())

    def parameter_counts(self) -> dict[str, int]:
        stage1 = sum(p.numel() for p in self.stage1_parameters())
        prior = sum(p.numel() for p in self.prior_parameters())
        return {
            "stage1": stage1,
            "prior": prior,
            "inference": prior + stage1 - count_parameters(self.posterior_encoder),
            "total": stage1 + prior,
        }

    # --- Stage I ---------------------------------------------------------------------------------------------
    def encode_codes(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Complete set → (codes float [B, D, h, w], levels long [B, D, h, w])."""
        codes, _ = self.quantizer(self.posterior_encoder(encoder_input(images, None)))
        return codes, self.quantizer.codes_to_levels(codes)

    def decode(self, codes: Tensor, images: Tensor, available: Tensor) -> Tensor:
        """Codes + the incomplete set → every contrast (raw decoder output, not clamped)."""
        features = self.common_encoder(encoder_input(images, available))
        return self.decoder(codes.to(features.dtype), features)

    def stage1_forward(self, images: Tensor, available: Tensor) -> dict[str, Tensor]:
        _check_inputs(self.cfg, images, available)
        codes, levels = self.encode_codes(images)
        recon = self.decode(codes, images, available)
        return {"recon": recon, "codes": codes, "levels": levels, "indices": self.quantizer.levels_to_indices(levels)}

    def forward(self, images: Tensor, available: Tensor) -> dict[str, Tensor]:
        return self.stage1_forward(images, available)

    # --- Stage II --------------------------------------------------------------------------------------------
    def code_levels(self, images: Tensor) -> Tensor:
        """Grading targets: levels of the complete set's code, long ``[B, D, H/8, W/8]`` (no gradient)."""
        with torch.no_grad():
            return self.encode_codes(images)[1]

    def prior_logits(self, images: Tensor, available: Tensor) -> Tensor:
        _check_inputs(self.cfg, images, available)
        return self.prior_encoder(encoder_input(images, available))

    def decode_prior(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Prior logits → (codes, probability of each decoded level) — both ``[B, D, h, w]``."""
        levels, probability = decode_grades(logits, self.cfg.levels, self.cfg.grading)
        return self.quantizer.levels_to_codes(levels), probability

    # --- inference -------------------------------------------------------------------------------------------
    def _synthesise(self, x_in: Tensor, images: Tensor, available: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        codes, probability = self.decode_prior(self.prior_encoder(x_in).float())
        features = self.common_encoder(x_in)
        synthetic = self.decoder(codes.to(features.dtype), features)
        confidence = None
        if self.cfg.confidence:
            region = probability.mean(dim=1, keepdim=True)
            confidence = F.interpolate(region, scale_factor=DOWNSAMPLING, mode="bilinear", align_corners=False)
            confidence = confidence.clamp(0.0, 1.0)
        return synthetic, confidence, features


class DirectRegression(_Imputer):
    """Baseline: the same NAFNet encoder/decoder (E_c + decoder widths) mapping the zero-filled set plus N
    availability planes straight to every contrast — pixel-level translation, no codes, no prior."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        wide = cfg.wide_dim
        self.encoder = Encoder(cfg.input_channels + cfg.num_contrasts, wide, cfg.naf_depth, None, cfg.stage_blocks)
        self.decoder = Decoder(8 * wide, wide, cfg.naf_depth, cfg.num_contrasts, cfg.stage_blocks)

    def parameter_counts(self) -> dict[str, int]:
        total = count_parameters(self)
        return {"stage1": total, "prior": 0, "inference": total, "total": total}

    def _with_mask_planes(self, x_in: Tensor, available: Tensor) -> Tensor:
        planes = available.to(x_in.dtype).view(*available.shape, 1, 1).expand(-1, -1, *x_in.shape[-2:])
        return torch.cat([x_in, planes], dim=1)

    def forward(self, images: Tensor, available: Tensor) -> Tensor:
        _check_inputs(self.cfg, images, available)
        x_in = encoder_input(images, available)
        return self.decoder(self.encoder(self._with_mask_planes(x_in, available)))

    def stage1_forward(self, images: Tensor, available: Tensor) -> dict[str, Tensor]:
        return {"recon": self.forward(images, available)}

    def _synthesise(self, x_in: Tensor, images: Tensor, available: Tensor) -> tuple[Tensor, None, None]:
        return self.decoder(self.encoder(self._with_mask_planes(x_in, available))), None, None
