"""Stage III (beyond the paper): fit the image path — common encoder E_c and decoder — to the prior's codes.

Stage I trains the decoder on the posterior encoder's codes of the *complete* set; at inference it reads the
prior's codes instead, and every code the prior gets wrong is a code the decoder never saw beside that F_c. Stage
III fine-tunes E_c and the decoder on exactly what inference feeds them, the frozen prior's decoded (rounded)
codes of the incomplete set, with Stage I's reconstruction loss:

    x̂ = D(FSQ⁻¹(decode(P(x_incomplete))), E_c(x_incomplete))
    L = λ_missing · L_psnr(missing) + λ_available · L_psnr(available)          (no GAN term)

The posterior encoder and the prior do not change, so Stage II's grading targets stay valid and the run's inference
checkpoint is a complete CodeBrain model. The posterior-code "ceiling" of such a model measures a decoder now fitted
to the prior's codes, not to the posterior's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from codebrain_node.model import CodeBrain, encoder_input
from training.loop import Distributed, autocast, clip_and_step, make_adamw, make_cosine_schedule, wrap_ddp
from training.stage1 import draw_availability, masked_psnr_loss, random_availability
from training.train_config import TrainConfig


class ImagePath(nn.Module):
    """E_c + decoder as one module (the one DDP wraps): prior codes and the incomplete set → every contrast."""

    def __init__(self, model: CodeBrain) -> None:
        super().__init__()
        self.common_encoder, self.decoder = model.common_encoder, model.decoder

    def forward(self, codes: Tensor, x_in: Tensor) -> Tensor:
        features = self.common_encoder(x_in)
        return self.decoder(codes.to(features.dtype), features)


class Stage3Task:
    name = "stage3"

    def __init__(self, model: CodeBrain, cfg: TrainConfig, dist: Distributed) -> None:
        if not isinstance(model, CodeBrain):
            raise TypeError("Stage III fits a CodeBrain model's decoder to its prior; the direct baseline has none")
        self.cfg, self.dist = cfg, dist
        self.model = model.to(dist.device).eval()  # posterior and prior frozen, in eval mode
        self.model.requires_grad_(False)
        self.image_path = ImagePath(self.model).requires_grad_(True).train()
        self.net = wrap_ddp(self.image_path, dist)
        self.optimizers = {"image_path": make_adamw(list(self.image_path.parameters()), cfg, cfg.lr)}
        self.schedulers = {"image_path": make_cosine_schedule(self.optimizers["image_path"], cfg, cfg.steps)}

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def inference_model(self) -> nn.Module:
        return self.model

    def _prior_codes(self, x_in: Tensor) -> Tensor:
        """The codes inference decodes: the frozen prior's rounded levels, no gradient."""
        with torch.no_grad(), autocast(self.dist):
            logits = self.model.prior_encoder(x_in)
        return self.model.decode_prior(logits.float())[0]

    def train_step(self, batch: dict[str, Tensor], step: int, generator: torch.Generator) -> dict[str, float]:
        images = batch["image"]
        available = draw_availability(images, self.cfg, step, generator)
        x_in = encoder_input(batch.get("input", images), available)
        with autocast(self.dist):
            recon = self.net(self._prior_codes(x_in), x_in).float()
        loss_missing = masked_psnr_loss(recon, images, ~available)
        loss_available = masked_psnr_loss(recon, images, available)
        loss = self.cfg.lambda_missing * loss_missing + self.cfg.lambda_available * loss_available
        optimizer = self.optimizers["image_path"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_and_step(optimizer, self.schedulers["image_path"], self.cfg.grad_clip)
        return {
            "loss": loss.item(),
            "loss_missing": loss_missing.item(),
            "loss_available": loss_available.item(),
            "grad_norm": grad_norm,
        }

    def validate(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, float]:
        """PSNR of the full inference path on the missing contrasts (as Stage II reports it)."""
        images = batch["image"]
        available = random_availability(images.shape[0], images.shape[1], generator).to(images.device)
        self.image_path.eval()
        try:
            imputed = self.model.impute(images, available).images
        finally:
            self.image_path.train()
        return {"psnr_missing": -masked_psnr_loss(imputed, images, ~available).item()}
