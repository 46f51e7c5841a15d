"""Stage II: train the prior encoder to predict the Stage I code from an incomplete set (grading).

Targets are the FSQ levels of the complete set under the *frozen* Stage I posterior encoder
(``model.code_levels``); the prior sees the same slice with a random non-empty, non-full availability pattern
(missing contrasts zero-filled) and is trained with the grading loss of the model config: ordinal BCE (the
paper's) or cross-entropy (the classification ablation). Only the prior's weights change, so the run's final
inference checkpoint is the complete CodeBrain model, ready for ``impute``.

With ``image_loss_weight`` > 0 (beyond the paper) the prior also answers for the images its codes decode to: the
frozen decoder reads the prior's codes, rounded as at inference in the forward pass, the expected level
Σ_j p̃_j in the backward pass (straight-through), and λ_missing · PSNR-loss of the missing contrasts joins
the grading loss. The grading loss counts every wrong level alike; this term weighs them by what they cost in the
image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codebrain_node.model import CodeBrain, encoder_input, grading_accuracy, grading_loss
from codebrain_node.model.grading import monotone_exceedance, ordinal_level, split_logits
from training.loop import Distributed, autocast, clip_and_step, make_adamw, make_cosine_schedule, wrap_ddp
from training.stage1 import draw_availability, masked_psnr_loss, random_availability
from training.train_config import TrainConfig


class Stage2Task:
    name = "stage2"

    def __init__(self, model: CodeBrain, cfg: TrainConfig, dist: Distributed) -> None:
        if not isinstance(model, CodeBrain):
            raise TypeError("Stage II trains the prior of a CodeBrain model; the direct baseline has no Stage II")
        if cfg.image_loss_weight > 0 and model.cfg.grading != "ordinal":
            raise ValueError("image_loss_weight needs ordinal grading (the expected level carries its gradient)")
        self.cfg, self.dist = cfg, dist
        self.model = model.to(dist.device).eval()  # Stage I parts stay frozen (and in eval mode)
        self.model.requires_grad_(False)
        self.model.prior_encoder.requires_grad_(True).train()
        # Only the prior is wrapped: it is the one module whose gradients need averaging across ranks.
        self.prior = wrap_ddp(self.model.prior_encoder, dist)
        self.optimizers = {"prior": make_adamw(self.model.prior_parameters(), cfg, cfg.lr)}
        self.schedulers = {"prior": make_cosine_schedule(self.optimizers["prior"], cfg, cfg.steps)}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def inference_model(self) -> nn.Module:
        return self.model

    def _logits_and_targets(
        self, images: Tensor, inputs: Tensor, available: Tensor, prior: nn.Module
    ) -> tuple[Tensor, Tensor]:
        """The prior's logits on what it reads (``inputs``, maybe intensity-augmented) and the frozen posterior's
        codes of the clean complete set."""
        targets = self.model.code_levels(images)
        with autocast(self.dist):
            logits = prior(encoder_input(inputs, available))
        return logits.float(), targets

    def straight_through_codes(self, logits: Tensor) -> Tensor:
        """Codes ``[B, D, h, w]``: the decoded (rounded) levels forward, the expected levels' gradient backward."""
        levels = []
        for group in split_logits(logits, self.model.cfg.levels):
            exceed = monotone_exceedance(group)
            rounded, expected = ordinal_level(exceed).float(), exceed.sum(dim=1)
            levels.append(rounded + (expected - expected.detach()))
        return self.model.quantizer.levels_to_codes(torch.stack(levels, dim=1))

    def _image_loss(self, logits: Tensor, inputs: Tensor, images: Tensor, available: Tensor) -> Tensor:
        x_in = encoder_input(inputs, available)
        with torch.no_grad(), autocast(self.dist):
            features = self.model.common_encoder(x_in)
        with autocast(self.dist):
            recon = self.model.decoder(self.straight_through_codes(logits).to(features.dtype), features)
        return self.cfg.lambda_missing * masked_psnr_loss(recon, images, ~available)

    def train_step(self, batch: dict[str, Tensor], step: int, generator: torch.Generator) -> dict[str, float]:
        images = batch["image"]
        inputs = batch.get("input", images)
        available = draw_availability(images, self.cfg, step, generator)
        logits, targets = self._logits_and_targets(images, inputs, available, self.prior)
        cfg = self.model.cfg
        loss = grading = grading_loss(logits, targets, cfg.levels, cfg.grading)
        figures: dict[str, float] = {}
        if self.cfg.image_loss_weight > 0:
            image = self._image_loss(logits, inputs, images, available)
            loss = grading + self.cfg.image_loss_weight * image
            figures = {"loss_grading": grading.item(), "loss_image": image.item()}
        optimizer = self.optimizers["prior"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_and_step(optimizer, self.schedulers["prior"], self.cfg.grad_clip)
        accuracy = grading_accuracy(logits.detach(), targets, cfg.levels, cfg.grading)
        return {"loss": loss.item(), "code_accuracy": accuracy.item(), "grad_norm": grad_norm, **figures}

    def validate(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, float]:
        """Grading loss/accuracy and the PSNR of the full inference path on the missing contrasts."""
        images = batch["image"]
        available = random_availability(images.shape[0], images.shape[1], generator).to(images.device)
        self.model.prior_encoder.eval()
        try:
            logits, targets = self._logits_and_targets(images, images, available, self.model.prior_encoder)
            imputed = self.model.impute(images, available).images
        finally:
            self.model.prior_encoder.train()
        cfg = self.model.cfg
        return {
            "loss": grading_loss(logits, targets, cfg.levels, cfg.grading).item(),
            "code_accuracy": grading_accuracy(logits, targets, cfg.levels, cfg.grading).item(),
            "psnr_missing": -masked_psnr_loss(imputed, images, ~available).item(),
        }
